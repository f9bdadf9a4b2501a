"""From a `DataConfig` to train/validation/test splits.

Sources: ``"synthetic"`` (generated in memory, with the teacher's click
probability for Bayes-optimal reference metrics); a preprocessed directory
(``meta.json`` present: memory-mapped, see `jaxrec.data.preprocess`); or raw
Criteo TSV / TSV.gz files or a directory of them, which are preprocessed once
into a cache directory keyed by the inputs and options, then memory-mapped —
so ``--data=FILE`` and preprocess-then-``--data=DIR`` give identical rows.

`vocabulary_for(config)` returns the training vocabulary that encodes new raw
rows exactly like the training rows (for prediction on new data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from absl import logging

from jaxrec import locking
from jaxrec.data import criteo, preprocess, synthetic
from jaxrec.data import schema as schema_lib
from jaxrec.data.dataset import Splits, random_split_indices

SPLIT_MODES = ("random", "kaggle", "days")


def default_cache_dir() -> str:
  """$JAXREC_CACHE_DIR, else ~/.cache/jaxrec (where raw inputs are preprocessed)."""
  return os.environ.get("JAXREC_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxrec")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the rows come from and how they are split.

  Attributes:
    source: "synthetic", a preprocessed directory, or raw Criteo TSV / TSV.gz
      paths (comma-separated; or a directory of day files).
    synthetic_rows: rows of the synthetic dataset.
    synthetic_max_vocab: cap on synthetic table sizes (None: Kaggle's 33.8M rows).
    min_frequency: categorical values seen fewer times in train -> OOV id.
    split: train / validation / test fractions of a seeded random split
      (split_mode "random").
    seed: seed of the synthetic teacher and of the split.
    split_mode: "random" (fractions `split`), "kaggle" (7 consecutive chunks,
      the last halved into test and validation) or "days" (the last input
      file halved into test and validation). Raw inputs only.
    max_rows_per_table: cap on table rows for raw inputs (hashing); None: none.
    on_bad_row: "error" or "skip" malformed lines of raw inputs.
    cache_dir: where raw inputs are preprocessed (None: `default_cache_dir()`).
    schema: columns of raw inputs and their encoding (`jaxrec.data.schema`; a
      preprocessed directory carries its own).
  """

  source: str = "synthetic"
  synthetic_rows: int = 200_000
  synthetic_max_vocab: int | None = 100_000
  min_frequency: int = 2
  split: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0
  split_mode: str = "random"
  max_rows_per_table: int | None = None
  on_bad_row: str = "error"
  cache_dir: str | None = None
  schema: schema_lib.Schema = schema_lib.criteo()

  @property
  def split_spec(self) -> str:
    """The `preprocess` split string of this config."""
    if self.split_mode == "random":
      return "random:" + ",".join(repr(float(f)) for f in self.split)
    return self.split_mode


def _raw_inputs(config: DataConfig) -> tuple[str, ...]:
  return tuple(p for p in config.source.split(",") if p)


PREPROCESS_WAIT_S = 24 * 3600.0  # how long other processes wait for process 0's preprocessing


class PreprocessWaitError(RuntimeError):
  """Another process did not finish preprocessing in time (multi-process runs)."""


def _wait_for_meta(out: str, pconfig, process_index: int, wait_s: float, poll: float) -> None:
  """Waits until `out` holds a finished preprocessing of `pconfig`'s inputs and options."""
  start = time.monotonic()
  while True:
    if preprocess.is_current(dataclasses.replace(pconfig, output_dir=out)):
      return
    waited = time.monotonic() - start
    if waited >= wait_s:
      raise PreprocessWaitError(
          f"process {process_index}: waited {waited:.0f} s for process 0 to preprocess"
          f" {','.join(pconfig.inputs)} into {out} ({preprocess.META} not written); is process 0"
          " running? Preprocess first (python -m experiments.preprocess) and pass --data=DIR")
    time.sleep(min(poll, wait_s - waited))


def preprocessed_dir(config: DataConfig, report=None, *, process_index: int | None = None,
                     wait_s: float = PREPROCESS_WAIT_S, poll: float = 2.0) -> str:
  """The preprocessed directory behind a non-synthetic config (preprocessing raw inputs
  into the cache first when needed).

  In a multi-process run only process 0 preprocesses (`process_index`, None:
  `jax.process_index()`); the others wait up to `wait_s` seconds for its
  finished ``meta.json`` (the cache directory must be on a shared file system),
  then raise `PreprocessWaitError`.
  """
  if config.source == "synthetic":
    raise ValueError("synthetic data has no preprocessed directory")
  if os.path.isdir(config.source) and preprocess.is_preprocessed(config.source):
    return config.source
  pconfig = preprocess.PreprocessConfig(
      inputs=_raw_inputs(config), output_dir="", split=config.split_spec, seed=config.seed,
      min_frequency=config.min_frequency, max_rows_per_table=config.max_rows_per_table,
      on_bad_row=config.on_bad_row, schema=config.schema)
  inputs = preprocess.expand_inputs(pconfig.inputs)
  key = json.dumps({"inputs": [os.path.abspath(p) for p in inputs],
                    "options": pconfig.options()}, sort_keys=True)
  name = hashlib.sha256(key.encode()).hexdigest()[:16]
  out = os.path.join(config.cache_dir or default_cache_dir(), "preprocessed", name)
  if process_index is None:
    import jax
    process_index = jax.process_index()
  if process_index > 0:
    _wait_for_meta(out, pconfig, process_index, wait_s, poll)
    return out
  kwargs = {} if report is None else {"report": report}
  # One job per cache entry: others wait, then reuse it (or redo a stale one, alone).
  with locking.hold(out + ".lock", wait=None, report=report or logging.info):
    try:
      preprocess.preprocess(dataclasses.replace(pconfig, output_dir=out), **kwargs)
    except ValueError as e:
      if "other inputs or options" not in str(e):
        raise
      # A stale cache entry (an input changed since): redo it.
      import shutil
      shutil.rmtree(out)
      preprocess.preprocess(dataclasses.replace(pconfig, output_dir=out), **kwargs)
  return out


def vocabulary_for(config: DataConfig) -> criteo.Vocabulary:
  """The training vocabulary of a non-synthetic config: encode new raw rows with
  ``criteo.encode_raw(criteo.read_raw(path), vocabulary_for(config))``."""
  return preprocess.load_vocabulary(preprocessed_dir(config))


def schema_for(config: DataConfig) -> schema_lib.Schema:
  """The raw-row schema of a non-synthetic config (a preprocessed directory's own)."""
  return preprocess.load_schema(preprocessed_dir(config))


def load_splits(config: DataConfig) -> Splits:
  """The train / validation / test splits `config` describes (see the module docstring)."""
  return load_splits_and_vocabulary(config)[0]


def load_splits_and_vocabulary(config: DataConfig) -> tuple[Splits, criteo.Vocabulary | None]:
  """The splits and, for Criteo sources, the training vocabulary (None for synthetic)."""
  if config.split_mode not in SPLIT_MODES:
    raise ValueError(f"split_mode must be one of {SPLIT_MODES}, got {config.split_mode!r}")
  if config.source == "synthetic":
    data = synthetic.generate(synthetic.SyntheticConfig(
        num_rows=config.synthetic_rows, max_vocab=config.synthetic_max_vocab, seed=config.seed))
    train, val, test = random_split_indices(len(data), config.split, config.seed)
    return Splits(data.take(train), data.take(val), data.take(test)), None
  path = preprocessed_dir(config)
  return preprocess.load_preprocessed(path), preprocess.load_vocabulary(path)
