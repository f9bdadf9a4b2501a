"""Synthetic rows with a multi-hot (bag) field whose pooled ids carry the click signal.

A hidden logistic teacher: each of `num_categorical` single-id fields adds a weight of
its id, and a bag of 1..`max_length` ids (Zipf-skewed over `bag_vocab`) adds the *mean*
of its ids' weights times `bag_scale`. So the first id of a bag tells only part of
what the whole bag tells: a model that pools the bag can beat one given the first id
alone, and neither can beat the teacher's own probabilities (the Bayes-optimal AUC,
`bayes_auc`).

Rows are written as a CSV with a header (``label,c1..cK,bag``; the bag's ids joined
by ``|``) with the matching `schema` (`jaxrec.data.schema`), so they go through the
same readers, preprocessing and training as any user's data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.schema import Categorical, MultiHot, Schema


@dataclasses.dataclass(frozen=True)
class BagConfig:
  """Size and strength of the synthetic rows (all drawn from `seed`)."""

  num_rows: int = 20_000
  num_categorical: int = 4
  vocab: int = 50
  bag_vocab: int = 200
  max_length: int = 8
  bag_scale: float = 3.0
  field_scale: float = 0.5
  bias: float = -1.0
  seed: int = 0


def schema(config: BagConfig, max_length: int | None = None, pooling: str = "mean") -> Schema:
  """The rows' schema (`max_length` 1: the first id of the bag only)."""
  return Schema(name="synthetic_bags", label="label",
                categorical=tuple(Categorical(f"c{j + 1}") for j in range(config.num_categorical)),
                multi_hot=(MultiHot("bag", "|", max_length or config.max_length, pooling),),
                format="csv", header=True)


def generate(config: BagConfig) -> dict[str, np.ndarray]:
  """Rows as arrays: {"cat": int [n, K], "bag": int [n, L] (-1 padded), "length": [n],
  "prob": [n], "label": [n]}."""
  teacher = np.random.default_rng([config.seed, 0])
  field_weights = teacher.normal(0.0, config.field_scale, (config.num_categorical, config.vocab))
  bag_weights = teacher.normal(0.0, 1.0, config.bag_vocab)
  rng = np.random.default_rng([config.seed, 1])
  n, length_max = config.num_rows, config.max_length
  cat = rng.integers(0, config.vocab, (n, config.num_categorical))
  popularity = 1.0 / np.arange(1, config.bag_vocab + 1) ** 0.8
  bag = rng.choice(config.bag_vocab, (n, length_max), p=popularity / popularity.sum())
  length = rng.integers(1, length_max + 1, n)
  used = np.arange(length_max) < length[:, None]
  bag = np.where(used, bag, -1)
  bag_mean = (np.where(used, bag_weights[np.maximum(bag, 0)], 0.0).sum(1) / length)
  logit = (config.bias + field_weights[np.arange(config.num_categorical), cat].sum(1)
           + config.bag_scale * bag_mean)
  prob = 1.0 / (1.0 + np.exp(-logit))
  label = (rng.random(n) < prob).astype(np.int8)
  return {"cat": cat, "bag": bag, "length": length, "prob": prob, "label": label}


def bayes_auc(rows: dict[str, np.ndarray]) -> float:
  """AUC of the teacher's own probabilities (no model can do better in expectation)."""
  from jaxrec.train import metrics  # pylint: disable=import-outside-toplevel
  return float(metrics.auc(rows["label"].astype(np.float32), rows["prob"].astype(np.float32)))


def write_csv(config: BagConfig, path: str) -> dict:
  """Writes the rows as CSV (header ``label,c1..cK,bag``); returns rows, click rate, Bayes AUC."""
  rows = generate(config)
  with open(path, "w") as f:
    header = ["label", *(f"c{j + 1}" for j in range(config.num_categorical)), "bag"]
    f.write(",".join(header) + "\n")
    for i in range(config.num_rows):
      bag = "|".join(f"b{b}" for b in rows["bag"][i, :rows["length"][i]])
      f.write(",".join([str(rows["label"][i]), *(f"v{c}" for c in rows["cat"][i]), bag]) + "\n")
  return {"rows": config.num_rows, "positive_rate": float(rows["label"].mean()),
          "bayes_auc": bayes_auc(rows)}
