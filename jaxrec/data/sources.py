"""From a `DataConfig` to train/validation/test splits: synthetic data or a raw Criteo file."""

from __future__ import annotations

import dataclasses

from jaxrec.data import criteo, synthetic
from jaxrec.data.dataset import Splits, random_split_indices


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the rows come from and how they are split.

  Attributes:
    source: "synthetic" or a path to a raw Criteo TSV / TSV.gz file.
    synthetic_rows: rows of the synthetic dataset.
    synthetic_max_vocab: cap on synthetic table sizes (None: Kaggle's 33.8M rows).
    min_frequency: categorical values seen fewer times in train -> OOV id.
    split: train / validation / test fractions of a seeded permutation.
    seed: seed of the synthetic teacher and of the split.
  """

  source: str = "synthetic"
  synthetic_rows: int = 200_000
  synthetic_max_vocab: int | None = 100_000
  min_frequency: int = 2
  split: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0


def load_splits(config: DataConfig) -> Splits:
  return load_splits_and_vocabulary(config)[0]


def load_splits_and_vocabulary(config: DataConfig) -> tuple[Splits, criteo.Vocabulary | None]:
  """The splits and, for raw Criteo sources, the training vocabulary (None for synthetic)."""
  if config.source == "synthetic":
    data = synthetic.generate(synthetic.SyntheticConfig(
        num_rows=config.synthetic_rows, max_vocab=config.synthetic_max_vocab, seed=config.seed))
    train, val, test = random_split_indices(len(data), config.split, config.seed)
    return Splits(data.take(train), data.take(val), data.take(test)), None
  raw = criteo.read_raw(config.source)
  train, val, test = random_split_indices(len(raw), config.split, config.seed)
  vocab = criteo.Vocabulary.build(raw.cat_keys[train], config.min_frequency)
  def encode(index):
    part = criteo.RawBlock(raw.label[index], raw.dense[index], raw.cat_keys[index], 1)
    return criteo.encode_raw(part, vocab)
  return Splits(encode(train), encode(val), encode(test)), vocab
