"""Synthetic Criteo-like data with a known teacher, calibrated to real Criteo rows.

Categorical ids are drawn per column from a Zipf-like power law over the real
Kaggle cardinalities (optionally scaled or capped), with the real per-column
missing rates; dense counts are drawn from the real per-column distributions
(missing rate plus 21 quantiles); labels come from a hidden "teacher" logit
with first-order effects (per-category biases, dense weights) and pairwise
interactions (dot products of per-category latent vectors on a fixed set of
column pairs), so interaction and attention models have something to find.
Per-category teacher parameters are derived by hashing (column, id), so any
cardinality — up to the real Kaggle 33.8M rows — costs no memory.

Because the teacher's click probability is known for every row, the
Bayes-optimal AUC and logloss of an evaluation split are reported beside a
model's (`CTRDataset.oracle_prob`). `write_tsv` writes the same rows as raw
Criteo TSV (8-hex-digit hashed categoricals, empty missing fields) of any size,
in bounded memory, to test and benchmark preprocessing.

How the constants below were fitted (`fit_calibration`, re-run by
tests/test_synthetic.py on ../shared/data/criteo/criteo_kaggle_train_first10k.tsv,
the first 10,000 rows of Kaggle train.txt):
* DENSE_MISSING / CAT_MISSING: the fraction of empty fields per column.
* DENSE_QUANTILES: per dense column, the 0, 5, ..., 100 % quantiles of
  sign(x) * log(1 + |x|) over the present values; sampling interpolates them
  linearly at a uniform u, inverts the transform and rounds to an integer.
* ZIPF_EXPONENTS: per categorical column, the exponent s for which `zipf_ids`
  over the Kaggle cardinality reproduces, in as many draws as the sample has
  present values, the sample's number of distinct values (tables > 1,000 rows,
  where the long tail matters) or its most frequent value's share (small tables).
  Bisection over s in [0.3, 4] with a fixed seed.
"""

from __future__ import annotations

import dataclasses

import os

import numpy as np

from jaxrec.data.criteo import splitmix64
from jaxrec.data.dataset import CTRDataset, NUM_DENSE, NUM_SPARSE

# Per-column cardinalities of the Criteo Kaggle (DAC) training set, as the DLRM
# reference reports them.
KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3,
                        93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10,
                        5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)

# Fitted to the real Kaggle sample (see the module docstring).
KAGGLE_POSITIVE_RATE = 0.2182
DENSE_MISSING = (0.448, 0.0, 0.204, 0.198, 0.049, 0.251, 0.049, 0.001, 0.049, 0.448, 0.049,
                 0.773, 0.198)
CAT_MISSING = (0.0, 0.0, 0.036, 0.036, 0.0, 0.133, 0.0, 0.0, 0.0, 0.0, 0.0, 0.036, 0.0, 0.0,
               0.0, 0.036, 0.0, 0.0, 0.45, 0.45, 0.036, 0.818, 0.0, 0.036, 0.45, 0.45)
ZIPF_EXPONENTS = (2.009, 1.041, 1.031, 1.099, 2.586, 2.036, 0.987, 2.278, 3.929, 1.126, 1.072,
                  1.041, 1.052, 1.505, 1.166, 1.067, 1.54, 1.297, 1.38, 0.647, 1.053, 2.029,
                  1.701, 1.187, 1.52, 1.13)
DENSE_QUANTILES = (
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.693, 0.693, 0.693, 1.099, 1.099, 1.386,
     1.609, 1.792, 2.197, 2.773, 5.371),
    (-1.099, -0.693, 0.0, 0.0, 0.0, 0.0, 0.693, 0.693, 0.693, 1.099, 1.386, 1.792, 2.303, 2.833,
     3.258, 3.664, 4.111, 4.615, 5.263, 6.353, 9.827),
    (0.0, 0.693, 0.693, 0.693, 1.099, 1.099, 1.386, 1.609, 1.792, 1.946, 2.079, 2.197, 2.398,
     2.639, 2.833, 3.091, 3.332, 3.638, 3.966, 4.543, 11.09),
    (0.0, 0.0, 0.693, 0.693, 0.693, 1.099, 1.099, 1.386, 1.386, 1.609, 1.609, 1.792, 1.946,
     2.079, 2.303, 2.398, 2.639, 2.833, 3.045, 3.367, 5.638),
    (0.0, 1.099, 2.565, 3.714, 4.736, 5.609, 6.296, 6.955, 7.319, 7.494, 7.816, 8.083, 8.406,
     8.704, 8.959, 9.258, 9.624, 9.984, 10.387, 10.843, 14.297),
    (0.0, 0.0, 1.099, 1.609, 1.946, 2.303, 2.639, 2.996, 3.219, 3.497, 3.714, 3.951, 4.187,
     4.407, 4.621, 4.868, 5.156, 5.46, 5.815, 6.382, 9.407),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.693, 0.693, 1.099, 1.099, 1.386, 1.609, 1.792, 1.946,
     2.197, 2.398, 2.708, 3.045, 3.434, 4.078, 7.414),
    (0.0, 0.0, 0.0, 0.693, 0.693, 1.099, 1.386, 1.609, 1.792, 1.946, 2.079, 2.303, 2.485,
     2.708, 2.89, 3.045, 3.219, 3.401, 3.584, 3.761, 6.526),
    (0.0, 0.693, 1.099, 1.609, 2.079, 2.398, 2.708, 3.045, 3.296, 3.526, 3.738, 3.951, 4.159,
     4.369, 4.595, 4.82, 5.094, 5.394, 5.733, 6.221, 8.901),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.693, 0.693, 0.693, 0.693, 0.693,
     0.693, 0.693, 0.693, 1.099, 1.946),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.693, 0.693, 0.693, 0.693, 0.693, 0.693, 0.693, 1.099,
     1.099, 1.099, 1.386, 1.609, 1.792, 2.303, 4.382),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.693, 0.693,
     0.693, 1.099, 1.609, 4.595),
    (0.0, 0.0, 0.693, 0.693, 0.693, 1.099, 1.099, 1.386, 1.386, 1.609, 1.792, 1.946, 2.079,
     2.303, 2.485, 2.639, 2.833, 3.091, 3.332, 3.664, 6.648),
)
_QUANTILE_LEVELS = np.linspace(0.0, 1.0, 21)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Shape and difficulty of a synthetic Criteo-like dataset.

  Attributes:
    num_rows: rows to generate.
    vocab_sizes: per-column cardinalities (default: Kaggle's).
    cardinality_scale: multiplies every cardinality (at least 2 rows remain).
    max_vocab: cap applied to every table size after scaling (None = no cap).
    zipf_exponent: power-law exponent of the category frequencies; None: the
      per-column exponents fitted to real rows (ZIPF_EXPONENTS).
    dense_missing_rate: probability that a dense count is missing; None: the
      fitted per-column rates (DENSE_MISSING).
    categorical_missing: whether categoricals are missing at the fitted rates
      (CAT_MISSING); a missing value is id 0 (an empty field in TSV).
    latent_dim: teacher latent size for pairwise effects.
    num_pairs: how many column pairs carry a pairwise effect.
    pair_scale / first_order_scale / dense_scale: teacher logit scales.
    positive_rate: target click rate (the intercept is solved to hit it).
    seed: seed of the teacher and of the rows.
  """

  num_rows: int = 200_000
  vocab_sizes: tuple[int, ...] = KAGGLE_CARDINALITIES
  cardinality_scale: float = 1.0
  max_vocab: int | None = 100_000
  zipf_exponent: float | None = None
  dense_missing_rate: float | None = None
  categorical_missing: bool = True
  latent_dim: int = 4
  num_pairs: int = 40
  pair_scale: float = 0.2
  first_order_scale: float = 0.25
  dense_scale: float = 0.3
  positive_rate: float = KAGGLE_POSITIVE_RATE
  seed: int = 0

  @property
  def table_sizes(self) -> tuple[int, ...]:
    sizes = tuple(max(2, int(round(n * self.cardinality_scale))) for n in self.vocab_sizes)
    if self.max_vocab is None:
      return sizes
    return tuple(min(n, self.max_vocab) for n in sizes)


_splitmix64 = splitmix64
_BLOCK_ROWS = 1 << 18  # rows are generated in blocks seeded by (seed, block)


def _hash_normal(seed: int, column: int, ids: np.ndarray, slot: int) -> np.ndarray:
  """Deterministic ~N(0, 1) per (seed, column, id, slot) via a hashed Box-Muller."""
  base = (np.uint64(seed) * np.uint64(1_000_003) + np.uint64(column) * np.uint64(7919)
          + np.uint64(slot) * np.uint64(104_729))
  with np.errstate(over="ignore"):
    h1 = _splitmix64(ids.astype(np.uint64) * np.uint64(2) + base)
    h2 = _splitmix64(ids.astype(np.uint64) * np.uint64(2) + np.uint64(1) + base)
  u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
  u2 = ((h2 >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
  return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def zipf_ids(rng: np.random.Generator, size: int, n: int, exponent: float) -> np.ndarray:
  """Ids in [0, n) with P(id = k) roughly proportional to (k + 1) ** -exponent."""
  u = rng.random(size)
  if abs(exponent - 1.0) < 1e-9:
    x = np.exp(u * np.log(n + 1.0))
  else:
    a = 1.0 - exponent
    x = ((np.power(n + 1.0, a) - 1.0) * u + 1.0) ** (1.0 / a)
  return np.clip(np.floor(x).astype(np.int64) - 1, 0, n - 1).astype(np.int32)


def _teacher_pairs(config: SyntheticConfig) -> np.ndarray:
  rng = np.random.default_rng(config.seed + 7)
  iu = np.stack(np.triu_indices(NUM_SPARSE, k=1), axis=1)
  pick = rng.choice(len(iu), size=min(config.num_pairs, len(iu)), replace=False)
  return iu[np.sort(pick)]


def teacher_logit(config: SyntheticConfig, dense: np.ndarray, cat: np.ndarray) -> np.ndarray:
  """The hidden teacher's logit (without intercept) for rows (transformed dense, cat ids)."""
  rng = np.random.default_rng(config.seed + 11)
  dense_w = rng.normal(size=dense.shape[1]) * config.dense_scale
  logit = dense @ dense_w
  pairs = _teacher_pairs(config)
  paired = set(pairs.reshape(-1).tolist())
  latents = {}
  for j in range(cat.shape[1]):
    # Per-category parameters are hashed once per distinct id, then gathered.
    ids, inverse = np.unique(cat[:, j], return_inverse=True)
    logit += config.first_order_scale * _hash_normal(config.seed, j, ids, slot=0)[inverse]
    if j in paired:
      latents[j] = np.stack([_hash_normal(config.seed, j, ids, slot=1 + s)
                             for s in range(config.latent_dim)], axis=1)[inverse]
  pair_scale = config.pair_scale / np.sqrt(config.latent_dim)
  for i, j in pairs:
    logit += pair_scale * np.einsum("nd,nd->n", latents[i], latents[j])
  return logit


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
  lo, hi = -20.0, 20.0
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < rate:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def _raw_block(config: SyntheticConfig, rng: np.random.Generator, n: int):
  """Raw counts (float64 [n, 13], NaN = missing) and ids (int32 [n, 26], 0 = missing)."""
  sizes = config.table_sizes
  cat = np.empty((n, NUM_SPARSE), np.int32)
  for j, size in enumerate(sizes):
    exponent = ZIPF_EXPONENTS[j] if config.zipf_exponent is None else config.zipf_exponent
    ids = zipf_ids(rng, n, size - 1, exponent).astype(np.int64)
    # Scramble which ids are popular so that frequency is not id order; 0 is "missing".
    offset = int(_splitmix64(np.array([config.seed * 31 + j]))[0] % np.uint64(size - 1))
    ids = 1 + (ids + offset) % (size - 1)
    if config.categorical_missing and CAT_MISSING[j] > 0:
      ids[rng.random(n) < CAT_MISSING[j]] = 0
    cat[:, j] = ids
  counts = np.empty((n, NUM_DENSE))
  for j in range(NUM_DENSE):
    y = np.interp(rng.random(n), _QUANTILE_LEVELS, DENSE_QUANTILES[j])
    counts[:, j] = np.round(np.sign(y) * np.expm1(np.abs(y)))
    rate = DENSE_MISSING[j] if config.dense_missing_rate is None else config.dense_missing_rate
    counts[rng.random(n) < rate, j] = np.nan
  return counts, cat


def transform_counts(counts: np.ndarray) -> np.ndarray:
  """log(1 + max(x, 0)) with missing -> 0, as the Criteo preprocessing does."""
  return np.log1p(np.maximum(np.nan_to_num(counts, nan=0.0), 0.0)).astype(np.float32)


def _intercept(config: SyntheticConfig) -> float:
  """The teacher intercept hitting `positive_rate`, solved on 100k rows of a fixed seed."""
  counts, cat = _raw_block(config, np.random.default_rng([config.seed, 99]), 100_000)
  logit = teacher_logit(config, transform_counts(counts).astype(np.float64), cat)
  return _solve_intercept(logit, config.positive_rate)


def iter_blocks(config: SyntheticConfig, block_rows: int = _BLOCK_ROWS):
  """Yields (counts, cat ids, click probability, label) in blocks; bounded memory."""
  intercept = _intercept(config)
  for b, start in enumerate(range(0, config.num_rows, block_rows)):
    n = min(block_rows, config.num_rows - start)
    rng = np.random.default_rng([config.seed, b])
    counts, cat = _raw_block(config, rng, n)
    logit = teacher_logit(config, transform_counts(counts).astype(np.float64), cat) + intercept
    prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n) < prob).astype(np.int8)
    yield counts, cat, prob, label


def generate(config: SyntheticConfig) -> CTRDataset:
  """A synthetic dataset; `oracle_prob` holds the teacher's click probability."""
  blocks = list(iter_blocks(config))
  counts = np.concatenate([b[0] for b in blocks])
  cat = np.concatenate([b[1] for b in blocks])
  prob = np.concatenate([b[2] for b in blocks])
  label = np.concatenate([b[3] for b in blocks])
  return CTRDataset(dense=transform_counts(counts), cat=cat, label=label.astype(np.float32),
                    vocab_sizes=config.table_sizes, oracle_prob=prob.astype(np.float32))


def hex_keys(config: SyntheticConfig, column: int, ids: np.ndarray) -> np.ndarray:
  """The 32-bit categorical hash written to TSV for ids of `column` (uint32)."""
  base = np.uint64((config.seed * 1_000_003 + column) << 32)
  return (_splitmix64(ids.astype(np.uint64) + base) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex_strings(keys: np.ndarray, present: np.ndarray):
  """pyarrow string array of 8 lowercase hex digits, "" where not `present`."""
  import pyarrow as pa
  shifts = np.arange(28, -1, -4, dtype=np.uint32)
  chars = _HEX_DIGITS[(keys[present, None] >> shifts) & np.uint32(0xF)]
  offsets = np.zeros(len(keys) + 1, np.int32)
  np.cumsum(present.astype(np.int32) * 8, out=offsets[1:])
  return pa.Array.from_buffers(pa.string(), len(keys),
                               [None, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])


def write_tsv(config: SyntheticConfig, path: str) -> dict:
  """Writes the rows of `config` as a raw Criteo TSV (``.gz``: gzipped); returns stats.

  The rows are `generate(config)`'s: raw counts, ids mapped to 32-bit hex
  hashes (`hex_keys`), missing values as empty fields.
  """
  return _write_files(config, [(path, config.num_rows)])


def write_days(config: SyntheticConfig, directory: str, days: int) -> dict:
  """Writes the rows of `config` cut into `days` consecutive files ``day_0 .. day_{days-1}``
  (the Criteo Terabyte layout, for ``--split=days``); returns stats."""
  if not 1 <= days <= config.num_rows:
    raise ValueError(f"days must be in [1, num_rows], got {days}")
  os.makedirs(directory, exist_ok=True)
  sizes = [len(part) for part in np.array_split(np.arange(config.num_rows), days)]
  return _write_files(config, [(os.path.join(directory, f"day_{d}"), n)
                               for d, n in enumerate(sizes)])


def _write_files(config: SyntheticConfig, targets: list[tuple[str, int]]) -> dict:
  """Streams the rows of `config` into consecutive files, `rows` lines each."""
  import gzip
  import pyarrow as pa
  import pyarrow.csv as pacsv
  from jaxrec.data.dataset import DENSE_NAMES, SPARSE_NAMES
  options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
  rows = positives = 0
  prob_sum = 0.0
  targets = list(targets)
  f, left = None, 0
  try:
    for counts, cat, prob, label in iter_blocks(config):
      columns = [pa.array(label)]
      for j in range(NUM_DENSE):
        missing = np.isnan(counts[:, j])
        columns.append(pa.array(np.nan_to_num(counts[:, j]).astype(np.int64), mask=missing))
      for j in range(NUM_SPARSE):
        columns.append(_hex_strings(hex_keys(config, j, cat[:, j]), cat[:, j] != 0))
      table = pa.Table.from_arrays(columns, names=["label", *DENSE_NAMES, *SPARSE_NAMES])
      while table.num_rows:
        if left == 0:
          if f is not None:
            f.close()
          path, left = targets.pop(0)
          f = (gzip.open if path.endswith(".gz") else open)(path, "wb")
        part, table = table.slice(0, left), table.slice(left)
        pacsv.write_csv(part, f, options)
        left -= part.num_rows
      rows += len(label)
      positives += int(label.sum())
      prob_sum += float(prob.sum())
  finally:
    if f is not None:
      f.close()
  return {"rows": rows, "positive_rate": positives / max(rows, 1),
          "mean_click_probability": prob_sum / max(rows, 1)}


def fit_calibration(raw, cardinalities: tuple[int, ...] = KAGGLE_CARDINALITIES) -> dict:
  """Refits the calibration constants from real rows (`criteo.RawBlock`); see the docstring."""
  from jaxrec.data.criteo import MISSING_KEY
  dense, keys = raw.dense, raw.cat_keys
  out = {"positive_rate": round(float(np.mean(raw.label)), 4),
         "dense_missing": tuple(round(float(v), 3) for v in np.isnan(dense).mean(axis=0)),
         "cat_missing": tuple(round(float(v), 3) for v in (keys == MISSING_KEY).mean(axis=0))}
  quantiles = []
  for j in range(dense.shape[1]):
    x = dense[~np.isnan(dense[:, j]), j]
    y = np.sign(x) * np.log1p(np.abs(x))
    quantiles.append(tuple(round(float(q), 3) for q in np.quantile(y, _QUANTILE_LEVELS)))
  out["dense_quantiles"] = tuple(quantiles)
  def stats(ids):
    _, c = np.unique(ids, return_counts=True)
    return len(c), c.max() / len(ids)
  exponents = []
  for j, n in enumerate(cardinalities):
    x = keys[keys[:, j] != MISSING_KEY, j]
    distinct, top = stats(x)
    lo, hi = 0.3, 4.0
    for _ in range(30):
      mid = 0.5 * (lo + hi)
      d, t = stats(zipf_ids(np.random.default_rng(0), len(x), n, mid))
      too_flat = d > distinct if n > 1000 else t < top
      lo, hi = (mid, hi) if too_flat else (lo, mid)
    exponents.append(round(0.5 * (lo + hi), 3))
  out["zipf_exponents"] = tuple(exponents)
  return out
