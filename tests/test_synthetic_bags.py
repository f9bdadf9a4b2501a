"""Synthetic multi-hot rows: the teacher's signal sits in a pooled bag, so pooling the bag
beats the first id alone, and no model beats the teacher (Bayes AUC)."""

import numpy as np
import pytest

from jaxrec.data import synthetic_bags, tabular


def test_rows_schema_and_bayes_auc(tmp_path):
  config = synthetic_bags.BagConfig(num_rows=2000, max_length=5, seed=3)
  stats = synthetic_bags.write_csv(config, str(tmp_path / "b.csv"))
  rows = synthetic_bags.generate(config)
  assert stats["bayes_auc"] == pytest.approx(synthetic_bags.bayes_auc(rows))
  assert 0.75 < stats["bayes_auc"] < 0.95
  raw = tabular.read_raw(str(tmp_path / "b.csv"), synthetic_bags.schema(config))
  np.testing.assert_array_equal(raw.label, rows["label"])
  bag_slots = raw.cat_keys[:, config.num_categorical:]
  np.testing.assert_array_equal((bag_slots != tabular.PAD_KEY).sum(1), rows["length"])
  first_only = tabular.read_raw(str(tmp_path / "b.csv"), synthetic_bags.schema(config, 1))
  np.testing.assert_array_equal(first_only.cat_keys[:, -1], bag_slots[:, 0])


@pytest.mark.slow
def test_pooling_the_bag_beats_its_first_id(tmp_path):
  from jaxrec.data.sources import DataConfig
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train.loop import TrainConfig, train_and_evaluate
  config = synthetic_bags.BagConfig(num_rows=6000)
  path = str(tmp_path / "bags.csv")
  bayes = synthetic_bags.write_csv(config, path)["bayes_auc"]
  auc = {}
  for length in (config.max_length, 1):
    train = TrainConfig(
        model=ModelConfig(name="dlrm", bottom_mlp=(8, 4), top_mlp=(16, 1)),
        embedding=EmbeddingConfig(dim=4),
        data=DataConfig(source=path, schema=synthetic_bags.schema(config, length),
                        min_frequency=1, cache_dir=str(tmp_path / "cache")),
        batch_size=64, epochs=2, log_every=1000, learning_rate=0.5,
        embedding_optimizer="rowwise_adagrad", embedding_learning_rate=0.5)
    auc[length] = train_and_evaluate(train, str(tmp_path / f"run{length}"))["auc"]
  assert auc[config.max_length] > auc[1] + 0.08
  assert auc[config.max_length] < bayes + 0.03  # test-split noise around the teacher's AUC
