"""Calibrated synthetic data: fitted constants, determinism, TSV round trip, Bayes reference."""

import numpy as np

from jaxrec.data import criteo, preprocess, synthetic
from jaxrec.train import metrics

SMALL = synthetic.SyntheticConfig(num_rows=3000, max_vocab=500, seed=1)


def test_constants_are_the_fit_of_the_real_sample(criteo_kaggle_path):
  fit = synthetic.fit_calibration(criteo.read_raw(criteo_kaggle_path))
  assert fit["dense_missing"] == synthetic.DENSE_MISSING
  assert fit["cat_missing"] == synthetic.CAT_MISSING
  assert fit["dense_quantiles"] == synthetic.DENSE_QUANTILES
  assert fit["zipf_exponents"] == synthetic.ZIPF_EXPONENTS
  assert fit["positive_rate"] == synthetic.KAGGLE_POSITIVE_RATE


def test_generate_is_deterministic_and_calibrated():
  a, b = synthetic.generate(SMALL), synthetic.generate(SMALL)
  np.testing.assert_array_equal(a.cat, b.cat)
  np.testing.assert_array_equal(a.oracle_prob, b.oracle_prob)
  assert a.vocab_sizes == tuple(min(n, 500) for n in synthetic.KAGGLE_CARDINALITIES)
  assert (a.cat < np.array(a.vocab_sizes)).all()
  # Missing categoricals are id 0 at about the fitted rates (C22: 81.8 %).
  np.testing.assert_allclose((a.cat == 0).mean(axis=0)[21], 0.818, atol=0.03)
  assert abs(a.positive_rate - synthetic.KAGGLE_POSITIVE_RATE) < 0.03
  # The teacher is informative: its own AUC is well above chance.
  assert metrics.ctr_metrics(a.label, a.oracle_prob, a.positive_rate)["auc"] > 0.75


def test_tsv_round_trip_through_preprocessing(tmp_path):
  path = str(tmp_path / "s.tsv.gz")
  stats = synthetic.write_tsv(SMALL, path)
  data = synthetic.generate(SMALL)
  assert stats["rows"] == 3000
  raw = criteo.read_raw(path)
  np.testing.assert_array_equal(raw.label, data.label)
  np.testing.assert_array_equal(criteo.transform_dense(raw.dense), data.dense)
  for j in (0, 2, 21):
    present = data.cat[:, j] != 0
    np.testing.assert_array_equal(raw.cat_keys[present, j],
                                  synthetic.hex_keys(SMALL, j, data.cat[present, j]))
    assert (raw.cat_keys[~present, j] == criteo.MISSING_KEY).all()
  meta = preprocess.preprocess(preprocess.PreprocessConfig(
      inputs=(path,), output_dir=str(tmp_path / "out"), min_frequency=1), report=lambda m: None)
  assert sum(meta["rows"].values()) == 3000
