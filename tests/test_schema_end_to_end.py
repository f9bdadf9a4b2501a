"""A user's JSON schema (5 categorical, 1 multi-hot, no dense column) end to end: raw CSV
-> training -> bit-identical resume -> serving export -> raw-row prediction."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from jaxrec.data import schema as schema_lib
from jaxrec.data.sources import DataConfig
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.serving import predict as predict_lib
from jaxrec.serving.artifact import ServingModel
from jaxrec.serving.export import export_run
from jaxrec.train import run_dir
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.loop import TrainConfig, train_and_evaluate

SCHEMA = {"name": "shop", "label": "clicked", "format": "csv", "header": True,
          "categorical": ["user", "item", "shop", "device", "slot"],
          "multi_hot": [{"name": "history", "separator": " ", "max_length": 4,
                         "pooling": "mean"}]}


def write_rows(path, rows, seed, with_label=True):
  """Clicks depend on whether the history bag holds one of five "hot" items."""
  rng = np.random.default_rng(seed)
  lines = [("clicked," if with_label else "") + "user,item,shop,device,slot,history"]
  for _ in range(rows):
    item = int(rng.integers(0, 30))
    history = rng.integers(0, 30, int(rng.integers(0, 7)))
    logit = -2.0 + 3.0 * bool((history < 5).any())
    label = int(rng.random() < 1 / (1 + np.exp(-logit)))
    fields = [f"u{rng.integers(0, 50)}", f"i{item}", f"s{item % 7}", rng.choice(["ios", "web"]),
              str(rng.integers(0, 3)), " ".join(f"i{h}" for h in history)]
    lines.append(",".join(([str(label)] if with_label else []) + fields))
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _arrays(workdir):
  state, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore()
  return jax.tree_util.tree_leaves(state)


@pytest.mark.slow
def test_json_schema_with_a_bag_trains_resumes_exports_predicts(tmp_path):
  schema_path = tmp_path / "shop.json"
  schema_path.write_text(json.dumps(SCHEMA))
  schema = schema_lib.load(str(schema_path))
  assert (schema.num_dense, len(schema.categorical), len(schema.multi_hot)) == (0, 5, 1)
  data = write_rows(tmp_path / "shop.csv", 3000, seed=0)
  config = TrainConfig(
      model=ModelConfig(name="dlrm", bottom_mlp=(8, 4), top_mlp=(16, 1)),
      embedding=EmbeddingConfig(dim=4),
      data=DataConfig(source=data, schema=schema, min_frequency=1,
                      cache_dir=str(tmp_path / "cache")),
      batch_size=64, epochs=2, checkpoint_every=10, log_every=1000, learning_rate=0.5,
      embedding_optimizer="rowwise_adagrad", embedding_learning_rate=0.5)
  full = train_and_evaluate(config, str(tmp_path / "full"))
  part = str(tmp_path / "part")
  train_and_evaluate(dataclasses.replace(config, max_steps=33), part)  # "killed" at 33
  resumed = train_and_evaluate(config, part, resume=True)
  assert resumed["steps"] == full["steps"]
  for a, b in zip(_arrays(str(tmp_path / "full")), _arrays(part)):
    np.testing.assert_array_equal(a, b)
  assert full["auc"] > 0.75  # the bag carries the signal

  run = run_dir.load_run(str(tmp_path / "full"))
  assert run.schema == schema and run.spec.bag_lengths == (1, 1, 1, 1, 1, 4)
  artifact = str(tmp_path / "shop.serving.npz")
  export_run(run, artifact, platforms=("cpu",))
  served = ServingModel.load(artifact)
  assert served.schema == schema
  fresh = write_rows(tmp_path / "new.csv", 500, seed=1, with_label=False)
  by_run = predict_lib.predict_file(predict_lib.scorer_from_run(run), fresh,
                                    str(tmp_path / "a.txt"), batch_size=128)
  by_artifact = predict_lib.predict_file(predict_lib.scorer_from_artifact(served), fresh,
                                         str(tmp_path / "b.txt"), batch_size=128)
  assert by_run.rows == by_artifact.rows == 500 and not by_run.has_label
  np.testing.assert_allclose(by_run.probs, by_artifact.probs, rtol=1e-5, atol=1e-6)
  labelled = write_rows(tmp_path / "lab.csv", 500, seed=2)
  scored = predict_lib.predict_file(predict_lib.scorer_from_run(run), labelled,
                                    str(tmp_path / "c.txt"))
  assert scored.has_label and scored.metrics["auc"] > 0.75
