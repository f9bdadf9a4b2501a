import itertools

import numpy as np

from jaxrec.train import metrics


def brute_force_auc(labels, scores):
  pos = [s for s, y in zip(scores, labels) if y == 1]
  neg = [s for s, y in zip(scores, labels) if y == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auc_with_ties_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(20):
    labels = rng.integers(0, 2, size=50)
    scores = rng.integers(0, 5, size=50) / 4.0  # many ties
    np.testing.assert_allclose(metrics.auc(labels, scores), brute_force_auc(labels, scores))


def test_auc_known_values_and_padding_mask():
  assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
  assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5
  # Padding rows (weight 0) would flip the answer if they leaked in.
  labels = np.array([0, 1, 1, 0])
  scores = np.array([0.1, 0.9, 0.0, 1.0])
  assert metrics.auc(labels, scores, weights=np.array([1, 1, 0, 0])) == 1.0


def test_logloss_accuracy_and_constant_baseline():
  labels = np.array([1, 0, 0, 0])
  probs = np.array([0.9, 0.2, 0.4, 0.6])
  expected = -np.mean(np.log([0.9, 0.8, 0.6, 0.4]))
  np.testing.assert_allclose(metrics.logloss(labels, probs), expected)
  assert metrics.accuracy(labels, probs) == 0.75
  report = metrics.ctr_metrics(labels, probs, train_positive_rate=0.25)
  np.testing.assert_allclose(report["baseline_logloss"], -np.mean(np.log([0.25, 0.75, 0.75, 0.75])))
  assert report["baseline_accuracy"] == 0.75
  np.testing.assert_allclose(report["normalized_entropy"], expected / report["baseline_logloss"])


def test_calibration_and_auc_over_bayes():
  labels = np.array([1, 0, 0, 0])
  probs = np.array([0.9, 0.2, 0.4, 0.6])
  report = metrics.ctr_metrics(labels, probs, train_positive_rate=0.25,
                               oracle_probs=np.array([0.8, 0.1, 0.3, 0.2]))
  np.testing.assert_allclose(report["calibration"], 0.525 / 0.25)
  assert report["bayes_auc"] == 1.0 and report["auc"] == 1.0
  assert report["auc_over_bayes"] == 1.0
  assert np.isnan(metrics.calibration(np.zeros(3), np.full(3, 0.1)))
