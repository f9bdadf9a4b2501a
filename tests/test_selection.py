"""Model selection on validation: the best-so-far rule, early stopping, the kept checkpoint."""

import json
import os

import pytest

from jaxrec.data.sources import DataConfig, load_splits
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.train import metrics as metrics_lib
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.loop import TrainConfig, predict_dataset, train_and_evaluate
from jaxrec.train.run_dir import load_run
from jaxrec.train.selection import Selection
from jaxrec.train.step import make_predict


def test_logloss_must_fall_and_auc_must_rise_strictly():
  s = Selection("logloss", patience=2)
  assert s.update(10, {"logloss": 0.5, "auc": 0.7})
  assert not s.update(20, {"logloss": 0.5, "auc": 0.8})  # equal is no improvement
  assert s.update(30, {"logloss": 0.4, "auc": 0.6})
  assert (s.best_step, s.best_value, s.evals_since_best) == (30, 0.4, 0)
  assert not s.update(40, {"logloss": float("nan"), "auc": 0.9})
  assert not s.should_stop
  assert not s.update(50, {"logloss": 0.41, "auc": 0.9})
  assert s.should_stop
  auc = Selection("auc")
  assert auc.update(1, {"auc": 0.6}) and not auc.update(2, {"auc": 0.6})
  assert auc.update(3, {"auc": 0.61}) and not auc.should_stop  # patience 0 never stops


def test_selection_state_round_trips_through_json():
  s = Selection("logloss", patience=3)
  s.update(7, {"logloss": 0.1 + 0.2, "auc": 2 / 3})
  s.update(9, {"logloss": 0.5, "auc": 0.1})
  again = Selection("logloss", patience=3)
  again.restore(json.loads(json.dumps(s.to_meta())))
  assert again == s
  assert s.report() == {"select_metric": "logloss", "best_step": 7,
                        "best_validation_auc": 2 / 3, "best_validation_logloss": 0.1 + 0.2}
  with pytest.raises(ValueError, match="select_metric='ne'"):
    Selection("ne")


# Adam at 0.01 over-fits 2,400 synthetic rows after the first epoch (38 steps).
OVERFIT = TrainConfig(
    model=ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)), embedding=EmbeddingConfig(dim=8),
    data=DataConfig(synthetic_rows=3000, synthetic_max_vocab=500), optimizer="adam",
    learning_rate=0.01, batch_size=64, epochs=30, log_every=1000, early_stopping_patience=2)


class Killed(Exception):
  pass


@pytest.mark.slow
def test_early_stopping_tests_the_kept_best_checkpoint_and_resumes_exactly(tmp_path):
  full_dir = str(tmp_path / "full")
  full = train_and_evaluate(OVERFIT, full_dir)
  history = [json.loads(line) for line in open(os.path.join(full_dir, "history.jsonl"))]
  validation = [h for h in history if h["split"] == "validation"]
  best = min(validation, key=lambda h: h["logloss"])
  assert full["stopped_early"] and full["steps"] == validation[-1]["step"] < 30 * 38
  assert len(validation) == [h["step"] for h in validation].index(best["step"]) + 3
  assert full["best_step"] == full["tested_step"] == best["step"] != full["steps"]
  assert full["best_validation_logloss"] == best["logloss"]
  # The selected checkpoint is kept beside the latest two, and metrics.json's test
  # numbers are a re-evaluation of it.
  checkpoints = Checkpointer(os.path.join(full_dir, "checkpoints"))
  assert checkpoints.selected_step() == best["step"]
  assert best["step"] in checkpoints._manager.all_steps()
  checkpoints.close()
  run = load_run(full_dir)
  assert run.step == best["step"]
  test = load_splits(OVERFIT.data).test
  probs = predict_dataset(make_predict(run.model), run.variables["params"],
                          run.variables["tables"], test, 8192)
  again = metrics_lib.ctr_metrics(test.label, probs, 0.0)
  assert again["auc"] == full["auc"] and again["logloss"] == full["logloss"]

  # Killed right after the first checkpoint past the best, then resumed: same selection,
  # same stop, same test numbers.
  part_dir = str(tmp_path / "part")
  kill_at = validation[validation.index(best) + 1]["step"]

  def kill(kind, step):
    if (kind, step) == ("save", kill_at):
      raise Killed
  with pytest.raises(Killed):
    train_and_evaluate(OVERFIT, part_dir, on_event=kill)
  resumed = train_and_evaluate(OVERFIT, part_dir, resume=True)
  for key in ("steps", "best_step", "best_validation_logloss", "auc", "logloss",
              "stopped_early"):
    assert resumed[key] == full[key], key
  # A finished (stopped) run resumed again trains nothing more.
  assert train_and_evaluate(OVERFIT, part_dir, resume=True)["steps"] == full["steps"]


def test_cli_rejects_a_negative_patience_in_one_line():
  from conftest import run_train_cli
  bad = run_train_cli("--early_stopping_patience=-1")
  assert bad.returncode == 2 and "early_stopping_patience=-1" in bad.stderr


def test_summary_names_the_selected_step():
  from experiments.train import summary
  metrics = {"model": "dlrm", "num_train_examples": 10, "num_eval_examples": 5, "auc": 0.7,
             "logloss": 0.5, "baseline_logloss": 0.6, "normalized_entropy": 0.8,
             "accuracy": 0.7, "baseline_accuracy": 0.7, "calibration": 1.0,
             "param_count": 1, "param_bytes": 4, "embedding_param_count": 0,
             "train_seconds": 1.0, "train_examples_per_sec": 1.0, "eval_examples_per_sec": 1.0,
             "inference_examples_per_sec": 1.0, "best_step": 38, "steps": 114,
             "select_metric": "logloss", "stopped_early": True}
  assert "selected  step 38 of 114 (best validation logloss, stopped early)" in summary(
      metrics, "/tmp/run")


def test_last_selects_nothing_and_cannot_stop_early():
  s = Selection("last")
  assert not s.update(1, {"logloss": 0.5}) and s.best_step is None and not s.should_stop
  with pytest.raises(ValueError, match="needs select_metric logloss or auc"):
    Selection("last", patience=2)
