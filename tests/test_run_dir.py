"""Run directories: model_spec.json round trip and load_run reproducing the run's test metrics."""

import os

import pytest

from jaxrec.data.sources import DataConfig, load_splits
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.train import metrics as metrics_lib
from jaxrec.train import run_dir
from jaxrec.train.loop import TrainConfig, predict_dataset, train_and_evaluate
from jaxrec.train.step import make_predict

TINY = TrainConfig(
    model=ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)),
    embedding=EmbeddingConfig(dim=4),
    data=DataConfig(synthetic_rows=1500, synthetic_max_vocab=200),
    batch_size=128, epochs=1, log_every=1000)


def test_model_spec_json_round_trip():
  spec = run_dir.ModelSpec(ModelConfig(bottom_mlp=(8, 4), self_interaction=True),
                           EmbeddingConfig(kind="hash", dim=4, hash_buckets=9), (3, 20), 5)
  again = run_dir.ModelSpec.from_json(spec.to_json())
  assert again == spec
  hash(again.model), hash(again.embedding)  # hashable: usable as static jit arguments


def test_model_spec_rejects_unknown_fields():
  data = run_dir.ModelSpec(ModelConfig(), EmbeddingConfig(), (3,)).to_json()
  data["model"]["warp_drive"] = 1
  with pytest.raises(ValueError, match="warp_drive"):
    run_dir.ModelSpec.from_json(data, where="x/model_spec.json")


def test_load_run_reproduces_test_metrics(tmp_path):
  workdir = str(tmp_path / "run")
  report = train_and_evaluate(TINY, workdir)
  assert os.path.exists(os.path.join(workdir, run_dir.MODEL_SPEC_FILE))
  assert not os.path.exists(os.path.join(workdir, run_dir.VOCAB_FILE))  # synthetic: no vocab
  run = run_dir.load_run(workdir)
  assert run.step == report["steps"] and run.vocabulary is None
  test = load_splits(TINY.data).test
  probs = predict_dataset(make_predict(run.model), run.variables["params"],
                          run.variables["tables"], test, TINY.eval_batch_size)
  assert metrics_lib.auc(test.label, probs) == report["auc"]
  assert metrics_lib.logloss(test.label, probs) == report["logloss"]


def test_load_run_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="model_spec.json"):
    run_dir.load_run(str(tmp_path))
