"""Factorization inside training runs and from the CLI: metrics, resume, flags."""

import dataclasses
import json

import numpy as np
import pytest

from jaxrec.data.sources import DataConfig
from jaxrec.factorize import FactorizeConfig, rank_rule
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.train.loop import ResumeError, TrainConfig, train_and_evaluate

from conftest import run_train_cli as _run_cli

TINY = TrainConfig(
    model=ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)),
    embedding=EmbeddingConfig(dim=8),
    data=DataConfig(synthetic_rows=1500, synthetic_max_vocab=200),
    batch_size=100, epochs=1, log_every=1000)
# DLRM kernels: bottom 13x16, 16x8; top (8 + 26 * 27 / 2 = 359)x16, 16x1.
SHAPES = {"bottom/layers_0": (13, 16), "bottom/layers_1": (16, 8), "top/layers_0": (359, 16),
          "top/layers_1": (16, 1)}
BIASES = 16 + 8 + 16 + 1


def _expected(fraction):
  ranks = {name: rank_rule(m, n, fraction) for name, (m, n) in SHAPES.items()}
  count = sum(m * n if ranks[k] is None else ranks[k] * (m + n) for k, (m, n) in SHAPES.items())
  return ranks, count + BIASES


def test_svd_after_training_with_finetune_reports_ranks_and_errors(tmp_path):
  config = dataclasses.replace(TINY, factorize=FactorizeConfig(method="svd", rank_fraction=0.5,
                                                               finetune_epochs=1))
  metrics = train_and_evaluate(config, str(tmp_path))
  ranks, count = _expected(0.5)
  # 0.5*13*16/29 = 3.59; 0.5*16*8/24 = 2.67; 0.5*359*16/375 = 7.66; 0.5*16/17 < 1.
  assert ranks == {"bottom/layers_0": 3, "bottom/layers_1": 2, "top/layers_0": 7,
                   "top/layers_1": None}
  assert metrics["layer_ranks"] == ranks
  assert metrics["dense_param_count"] == count
  dense = sum(m * n for m, n in SHAPES.values()) + BIASES
  assert metrics["prefactorize_dense_param_count"] == dense
  assert metrics["factorize"] == "svd" and metrics["rank_fraction"] == 0.5
  assert [r["name"] for r in metrics["reconstruction"]] == [k for k, r in ranks.items() if r]
  for row in metrics["reconstruction"]:
    np.testing.assert_allclose(row["relative_error"], row["svd_relative_error"], rtol=1e-3)
  # Fine-tuning moved the factorized model: the final metrics differ from the pre-fine-tune ones.
  assert metrics["prefinetune_logloss"] != metrics["logloss"]
  # 12 training steps, then 12 fine-tuning steps through the same loop (validated at both ends).
  assert metrics["steps"] == 24 and metrics["inference_examples_per_sec"] > 0
  assert metrics["finetune_seconds"] > 0
  on_disk = json.load(open(tmp_path / "metrics.json"))
  assert on_disk["layer_ranks"] == ranks
  history = [json.loads(line) for line in open(tmp_path / "history.jsonl")]
  assert [r["step"] for r in history if r["split"] == "validation"] == [12, 24]


class _Killed(Exception):
  pass


def test_a_run_killed_while_finetuning_resumes_exactly(tmp_path):
  config = dataclasses.replace(TINY, checkpoint_every=6, factorize=FactorizeConfig(
      method="svd", rank_fraction=0.5, finetune_epochs=1))
  full = train_and_evaluate(config, str(tmp_path / "full"))

  def kill_at_18(kind, step):
    if kind == "save" and step == 18:
      raise _Killed

  part = str(tmp_path / "part")
  with pytest.raises(_Killed):
    train_and_evaluate(config, part, on_event=kill_at_18)
  resumed = train_and_evaluate(config, part, resume=True)
  for key in ("logloss", "auc", "steps", "layer_ranks", "prefactorize_auc", "prefinetune_auc"):
    assert resumed[key] == full[key], key


def test_before_trains_factors_and_resumes(tmp_path):
  config = dataclasses.replace(TINY, factorize=FactorizeConfig(method="before",
                                                               rank_fraction=0.25))
  full = train_and_evaluate(config, str(tmp_path / "full"))
  ranks, count = _expected(0.25)
  assert full["layer_ranks"] == ranks and full["dense_param_count"] == count
  part = str(tmp_path / "part")
  train_and_evaluate(dataclasses.replace(config, max_steps=5), part)
  resumed = train_and_evaluate(config, part, resume=True)
  assert resumed["logloss"] == full["logloss"] and resumed["auc"] == full["auc"]
  # A different factorized structure cannot continue this checkpoint; a dense one neither.
  other = dataclasses.replace(config, factorize=FactorizeConfig(method="before", rank_fraction=0.5))
  with pytest.raises(ResumeError, match="factorize"):
    train_and_evaluate(other, part, resume=True)
  with pytest.raises(ResumeError, match="factorize"):
    train_and_evaluate(dataclasses.replace(config, factorize=None), part, resume=True)


@pytest.mark.slow
def test_cli_auto_energy_with_finetune(tmp_path):
  out = tmp_path / "run"
  proc = _run_cli("--synthetic_rows=1500", "--synthetic_max_vocab=200", "--batch_size=100",
                  "--bottom_mlp=16-8", "--top_mlp=16-1", "--embedding_dim=8",
                  "--factorize=auto", "--auto_energy=0.6", "--finetune_epochs=1",
                  f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.load(open(out / "metrics.json"))
  assert metrics["factorize"] == "auto" and metrics["rank_fraction"] == 1.0
  assert set(metrics["layer_ranks"]) == set(SHAPES)
  assert metrics["layer_ranks"]["top/layers_1"] is None
  # 60% of the spectral energy: each factorized layer loses at most sqrt(0.4) of its norm.
  assert metrics["reconstruction"]
  for row in metrics["reconstruction"]:
    assert row["relative_error"] <= np.sqrt(0.4) + 1e-4
  assert "factorize auto" in proc.stdout and "prefactorize_auc" in metrics


@pytest.mark.parametrize("flags, message", [
    (("--factorize=svd",), "needs --rank_fraction"),
    (("--rank_fraction=0.5", "--finetune_epochs=1"), "--finetune_epochs applies after"),
    (("--rank_fraction=1.5",), "--rank_fraction=1.5"),
])
def test_cli_rejects_bad_factorize_flags(flags, message):
  proc = _run_cli(*flags)
  assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
