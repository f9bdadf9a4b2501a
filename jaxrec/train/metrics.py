"""Whole-split CTR metrics: exact AUC with ties, logloss, accuracy, normalized entropy, calibration.

All host-side numpy over the complete evaluation split (never one batch), with
the constant predictor at the training positive rate reported beside them.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
  """Exact ROC AUC (Mann-Whitney U); tied scores count one half.

  Args:
    labels: 0/1 array [n].
    scores: predictions [n]; only their order matters.
    weights: optional 0/1 mask [n] (padding rows are 0).
  """
  labels = np.asarray(labels, dtype=np.float64)
  scores = np.asarray(scores, dtype=np.float64)
  if weights is not None:
    keep = np.asarray(weights) > 0
    labels, scores = labels[keep], scores[keep]
  n_pos = labels.sum()
  n_neg = len(labels) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  # Average rank (1-based) of each tie group.
  boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
  starts = np.concatenate([[0], boundaries])
  ends = np.concatenate([boundaries, [len(scores)]])
  avg_rank = (starts + ends + 1) / 2.0
  ranks = np.repeat(avg_rank, ends - starts)
  pos_rank_sum = ranks[labels[order] == 1].sum()
  return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
  """Mean binary cross-entropy of probabilities `probs` (clipped away from 0 and 1)."""
  p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
  y = np.asarray(labels, dtype=np.float64)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
  """Mean predicted probability / observed click rate (1.0: calibrated on average)."""
  rate = float(np.mean(labels)) if len(labels) else float("nan")
  return float(np.mean(probs)) / rate if rate > 0 else float("nan")


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
  """Share of rows whose prediction `probs > threshold` matches the label."""
  return float(np.mean((np.asarray(probs) > threshold) == (np.asarray(labels) > 0.5)))


def ctr_metrics(labels: np.ndarray, probs: np.ndarray, train_positive_rate: float,
                oracle_probs: np.ndarray | None = None) -> dict[str, float]:
  """The evaluation report of one split.

  Returns auc, logloss, accuracy, normalized_entropy (logloss / the constant
  predictor's logloss), calibration (mean prediction / observed click rate),
  baseline_logloss, baseline_accuracy (the constant predictor at the training
  positive rate), positive_rate, and, when the true probabilities are known,
  bayes_auc, bayes_logloss and auc_over_bayes (auc / bayes_auc).
  """
  labels = np.asarray(labels, dtype=np.float64)
  constant = np.full_like(labels, train_positive_rate)
  out = {
      "auc": auc(labels, probs),
      "logloss": logloss(labels, probs),
      "accuracy": accuracy(labels, probs),
      "calibration": calibration(labels, probs),
      "baseline_logloss": logloss(labels, constant),
      "baseline_accuracy": accuracy(labels, constant),
      "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
  }
  out["normalized_entropy"] = out["logloss"] / out["baseline_logloss"]
  if oracle_probs is not None:
    out["bayes_auc"] = auc(labels, oracle_probs)
    out["bayes_logloss"] = logloss(labels, oracle_probs)
    out["auc_over_bayes"] = out["auc"] / out["bayes_auc"]
  return out
