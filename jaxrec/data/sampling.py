"""Negative down-sampling of a training split, and the probability correction it needs.

Keeping each negative row with probability w (every positive is kept)
multiplies the odds of a click the model learns by 1/w. The model's
inference logits are shifted by log(w) (`CTRModel.negative_sampling_rate`),
i.e. p' = p / (p + (1 - p) / w), so evaluation, export and serving predict
calibrated probabilities for the full population.
"""

from __future__ import annotations

import numpy as np

from jaxrec.data.dataset import CTRDataset

_STREAM = 0x6E6567  # separates this draw from the other seeded draws of a run


def downsample_negatives(dataset: CTRDataset, rate: float, seed: int) -> CTRDataset:
  """The rows of `dataset` with every positive and each negative kept with probability `rate`.

  A function of (`seed`, the rows) only, so a resumed run trains on the same rows.
  """
  if not 0.0 < rate <= 1.0:
    raise ValueError(f"negative_sampling_rate={rate}: must be in (0, 1]")
  if rate == 1.0:
    return dataset
  draw = np.random.default_rng((seed, _STREAM)).random(len(dataset))
  keep = np.flatnonzero((dataset.label > 0.5) | (draw < rate))
  return dataset.take(keep)


def correct_probability(p: np.ndarray, rate: float) -> np.ndarray:
  """p / (p + (1 - p) / rate): a probability learned on down-sampled negatives, corrected."""
  p = np.asarray(p, np.float64)
  return p / (p + (1.0 - p) / rate)
