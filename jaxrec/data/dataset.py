"""In-memory (or memory-mapped) CTR datasets and deterministic splits.

A `CTRDataset` is three aligned host arrays — dense features, encoded
categorical ids and labels — plus the per-column vocabulary sizes that size the
embedding tables. Everything here is numpy: data work stays on the host and is
moved to the device once per batch by the loader.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))


@dataclasses.dataclass(frozen=True)
class CTRDataset:
  """Aligned arrays of one split.

  Attributes:
    dense: float32 [N, num_dense], already transformed (log1p of counts).
    cat: int32 [N, num_slots], contiguous per-column ids in [0, vocab_sizes[j]):
      one slot per field, `bag_lengths[j]` slots for a multi-hot field (unused
      slots hold `schema.PAD_ID`).
    label: float32 [N], 0 or 1.
    vocab_sizes: rows of each categorical column's embedding table.
    dense_names / sparse_names: field names (for reports and heat-maps).
    bag_lengths: slots per field (None: one each, no multi-hot field).
    poolings: "sum" or "mean" per field (None: all "sum").
    oracle_prob: float32 [N] true click probability when known (synthetic
      data), for Bayes-optimal reference metrics; None otherwise.
  """

  dense: np.ndarray
  cat: np.ndarray
  label: np.ndarray
  vocab_sizes: tuple[int, ...]
  dense_names: tuple[str, ...] = DENSE_NAMES
  sparse_names: tuple[str, ...] = SPARSE_NAMES
  oracle_prob: np.ndarray | None = None
  bag_lengths: tuple[int, ...] | None = None
  poolings: tuple[str, ...] | None = None

  def __post_init__(self):
    n = len(self.label)
    if self.dense.shape[0] != n or self.cat.shape[0] != n:
      raise ValueError(
          f"misaligned arrays: dense {self.dense.shape}, cat {self.cat.shape},"
          f" label {self.label.shape}")
    slots = len(self.vocab_sizes) if self.bag_lengths is None else sum(self.bag_lengths)
    if self.cat.shape[1] != slots:
      raise ValueError(f"cat has {self.cat.shape[1]} columns but the {len(self.vocab_sizes)}"
                       f" fields have {slots} slots")

  def __len__(self) -> int:
    return len(self.label)

  @property
  def num_dense(self) -> int:
    return self.dense.shape[1]

  @property
  def num_sparse(self) -> int:
    """Categorical fields (a multi-hot field is one field of several slots)."""
    return len(self.vocab_sizes)

  @property
  def positive_rate(self) -> float:
    return float(np.mean(self.label)) if len(self) else 0.0

  def take(self, index: np.ndarray | slice) -> "CTRDataset":
    """Rows selected by `index`, same vocabularies."""
    oracle = None if self.oracle_prob is None else self.oracle_prob[index]
    return dataclasses.replace(self, dense=self.dense[index], cat=self.cat[index],
                               label=self.label[index], oracle_prob=oracle)


@dataclasses.dataclass(frozen=True)
class Splits:
  """The train, validation and test `CTRDataset`s of one dataset (same vocabularies)."""

  train: CTRDataset
  validation: CTRDataset
  test: CTRDataset


def random_split_indices(num_rows: int, fractions: Sequence[float],
                         seed: int) -> list[np.ndarray]:
  """Disjoint sorted index sets with the given fractions (of a seeded permutation)."""
  if len(fractions) != 3 or any(f < 0 for f in fractions):
    raise ValueError(f"need three non-negative split fractions, got {fractions}")
  total = float(sum(fractions))
  if not np.isclose(total, 1.0):
    raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {total})")
  perm = np.random.default_rng(seed).permutation(num_rows)
  n_train = int(round(fractions[0] * num_rows))
  n_val = int(round(fractions[1] * num_rows))
  parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
  return [np.sort(p) for p in parts]
