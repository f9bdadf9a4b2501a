"""Negative down-sampling: seeded row choice, and calibrated predictions after correction."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import sampling
from jaxrec.data.sources import DataConfig, load_splits
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.ctr_model import CTRModel
from jaxrec.models.registry import ModelConfig
from jaxrec.train.loop import TrainConfig, train_and_evaluate
from jaxrec.train.run_dir import load_run


def test_keeps_every_positive_and_a_seeded_share_of_negatives():
  train = load_splits(DataConfig(synthetic_rows=20_000, synthetic_max_vocab=100)).train
  kept = sampling.downsample_negatives(train, 0.25, seed=3)
  again = sampling.downsample_negatives(train, 0.25, seed=3)
  other = sampling.downsample_negatives(train, 0.25, seed=4)
  np.testing.assert_array_equal(kept.label, again.label)
  np.testing.assert_array_equal(kept.cat, again.cat)
  assert not np.array_equal(kept.cat[:100], other.cat[:100])
  positives, negatives = train.label.sum(), (1 - train.label).sum()
  assert kept.label.sum() == positives
  assert abs((1 - kept.label).sum() / negatives - 0.25) < 0.01
  assert sampling.downsample_negatives(train, 1.0, seed=3) is train
  with pytest.raises(ValueError, match="negative_sampling_rate=0"):
    sampling.downsample_negatives(train, 0.0, seed=3)


def test_inference_logits_carry_the_correction():
  np.testing.assert_allclose(sampling.correct_probability([0.5, 0.2], 0.25), [0.2, 1 / 17])
  config = ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1))
  plain = CTRModel.create(config, EmbeddingConfig(dim=4), (7,) * 26)
  sampled = CTRModel.create(config, EmbeddingConfig(dim=4), (7,) * 26, negative_sampling_rate=0.25)
  variables = plain.init(jax.random.key(0))
  dense = jnp.ones((3, 13))
  cat = jnp.arange(78).reshape(3, 26) % 7
  p = jax.nn.sigmoid(plain.apply(variables, dense, cat))
  corrected = jax.nn.sigmoid(sampled.apply(variables, dense, cat))
  np.testing.assert_allclose(corrected, sampling.correct_probability(p, 0.25), rtol=1e-5)
  # Training sees the uncorrected logits.
  np.testing.assert_array_equal(sampled.apply(variables, dense, cat, train=True),
                                plain.apply(variables, dense, cat, train=True))


@pytest.mark.slow
def test_training_on_a_quarter_of_the_negatives_stays_calibrated(tmp_path):
  config = TrainConfig(
      model=ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)), embedding=EmbeddingConfig(dim=8),
      data=DataConfig(synthetic_rows=60_000, synthetic_max_vocab=1000), optimizer="adam",
      learning_rate=0.003, batch_size=256, epochs=1, log_every=1000,
      negative_sampling_rate=0.25)
  run = str(tmp_path / "run")
  report = train_and_evaluate(config, run)
  assert abs(report["calibration"] - 1.0) < 0.02, report["calibration"]
  # Against the known click rate (the teacher's mean probability over the test rows); the
  # same model without down-sampling is within 3.5% of it too (1.033).
  test = load_splits(config.data).test
  probs = np.load(os.path.join(run, "test_predictions.npz"))["prob"]
  assert abs(probs.mean() / test.oracle_prob.mean() - 1.0) < 0.03
  # Uncorrected, the model would predict 2-3x too many clicks.
  uncorrected = 1.0 / (1.0 + (1.0 - probs) / probs * 0.25)
  assert uncorrected.mean() / test.label.mean() > 2.0
  loaded = load_run(run)
  assert loaded.model.negative_sampling_rate == 0.25
  assert json.load(open(os.path.join(run, "model_spec.json")))["negative_sampling_rate"] == 0.25
  assert report["num_train_examples"] < 0.5 * 0.8 * 60_000
