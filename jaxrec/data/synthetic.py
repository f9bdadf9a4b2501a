"""Synthetic Criteo-like data with a known teacher.

Categorical ids are drawn from a Zipf-like power law per column, dense features
are log-normal counts with missing values, and labels come from a hidden
"teacher" logit with first-order effects (per-category biases, dense weights)
and pairwise interactions (dot products of per-category latent vectors on a
fixed set of column pairs), so interaction and attention models have something
to find. Per-category teacher parameters are derived by hashing (column, id),
so any cardinality — up to the real Kaggle 33.8M rows — costs no memory.

Because the teacher's click probability is known for every row, the
Bayes-optimal AUC and logloss of an evaluation split can be reported beside a
model's (`CTRDataset.oracle_prob`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.dataset import CTRDataset, NUM_DENSE, NUM_SPARSE

# Per-column cardinalities of the Criteo Kaggle (DAC) training set, as the DLRM
# reference reports them.
KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3,
                        93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10,
                        5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Shape and difficulty of a synthetic Criteo-like dataset.

  Attributes:
    num_rows: rows to generate.
    vocab_sizes: rows of each categorical table (default: Kaggle's, capped).
    max_vocab: cap applied to every vocab size (None = no cap).
    zipf_exponent: power-law exponent of the category frequencies.
    dense_missing_rate: probability that a dense count is missing.
    latent_dim: teacher latent size for pairwise effects.
    num_pairs: how many column pairs carry a pairwise effect.
    pair_scale / first_order_scale / dense_scale: teacher logit scales.
    positive_rate: target click rate (the intercept is solved to hit it).
    seed: seed of the teacher and of the rows.
  """

  num_rows: int = 200_000
  vocab_sizes: tuple[int, ...] = KAGGLE_CARDINALITIES
  max_vocab: int | None = 100_000
  zipf_exponent: float = 1.1
  dense_missing_rate: float = 0.2
  latent_dim: int = 4
  num_pairs: int = 40
  pair_scale: float = 0.2
  first_order_scale: float = 0.25
  dense_scale: float = 0.3
  positive_rate: float = 0.25
  seed: int = 0

  @property
  def table_sizes(self) -> tuple[int, ...]:
    if self.max_vocab is None:
      return tuple(self.vocab_sizes)
    return tuple(min(n, self.max_vocab) for n in self.vocab_sizes)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """Stateless 64-bit hash (vectorised)."""
  x = x.astype(np.uint64)
  with np.errstate(over="ignore"):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return x


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
  """The hidden teacher's logit (without intercept) for rows (dense, cat)."""
  rng = np.random.default_rng(config.seed + 11)
  dense_w = rng.normal(size=dense.shape[1]) * config.dense_scale
  logit = (dense - dense.mean(axis=0)) @ dense_w
  for j in range(cat.shape[1]):
    logit += config.first_order_scale * _hash_normal(config.seed, j, cat[:, j], slot=0)
  latents = {}
  def latent(j):
    if j not in latents:
      latents[j] = np.stack([_hash_normal(config.seed, j, cat[:, j], slot=1 + s)
                             for s in range(config.latent_dim)], axis=1)
    return latents[j]
  pair_scale = config.pair_scale / np.sqrt(config.latent_dim)
  for i, j in _teacher_pairs(config):
    logit += pair_scale * np.sum(latent(i) * latent(j), axis=1)
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


def generate(config: SyntheticConfig) -> CTRDataset:
  """A synthetic dataset; `oracle_prob` holds the teacher's click probability."""
  rng = np.random.default_rng(config.seed)
  n = config.num_rows
  sizes = config.table_sizes
  cat = np.stack([zipf_ids(rng, n, size, config.zipf_exponent) for size in sizes], axis=1)
  # Scramble which ids are popular so that frequency is not id order.
  for j, size in enumerate(sizes):
    offset = int(_splitmix64(np.array([config.seed * 31 + j]))[0] % np.uint64(size))
    cat[:, j] = (cat[:, j] + offset) % size
  scales = np.exp(rng.normal(1.0, 1.0, size=NUM_DENSE))
  counts = rng.lognormal(mean=np.log(scales), sigma=1.0, size=(n, NUM_DENSE)).round()
  counts[rng.random((n, NUM_DENSE)) < config.dense_missing_rate] = 0.0
  dense = np.log1p(counts).astype(np.float32)
  logit = teacher_logit(config, dense.astype(np.float64), cat)
  logit += _solve_intercept(logit, config.positive_rate)
  prob = 1.0 / (1.0 + np.exp(-logit))
  label = (rng.random(n) < prob).astype(np.float32)
  return CTRDataset(dense=dense, cat=cat.astype(np.int32), label=label,
                    vocab_sizes=tuple(sizes), oracle_prob=prob.astype(np.float32))
