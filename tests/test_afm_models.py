"""afm, afm_classic and fm models: structure, first-order terms, attention maps, training, CLI."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.dataset import CTRDataset
from jaxrec.data.sources import DataConfig
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models import CTRModel, ModelConfig
from jaxrec.models.attention_map import mean_attention
from jaxrec.train.loop import TrainConfig, train_and_evaluate

from conftest import run_train_cli as _run_cli

VOCAB = (5,) * 26


def _model(name, **kwargs):
  config = ModelConfig(name=name, bottom_mlp=(8, 4), attention_factor=3, **kwargs)
  return CTRModel.create(config, EmbeddingConfig(dim=4), VOCAB)


def _dataset(n, seed=0):
  rng = np.random.default_rng(seed)
  dense = rng.exponential(size=(n, 13)).astype(np.float32)
  dense[rng.random((n, 13)) < 0.3] = 0.0
  return CTRDataset(dense=dense, cat=rng.integers(0, 5, size=(n, 26)).astype(np.int32),
                    label=(rng.random(n) < 0.3).astype(np.float32), vocab_sizes=VOCAB)


@pytest.mark.parametrize("name, num_fields", [("afm", 27), ("afm_classic", 39), ("fm", 39)])
def test_models_turn_on_first_order_and_use_it(name, num_fields):
  model = _model(name)
  variables = model.init(jax.random.key(0))
  assert variables["tables"]["first_order"].shape == (5 * 26, 1)
  assert variables["tables"]["embedding"].shape == (5 * 26, 4)
  assert ("pooling" in variables["params"]["afm"]) == (name != "fm")
  assert len(model.network.field_names(tuple("I" * 13), tuple("C" * 26))) == num_fields
  data = _dataset(6)
  logits = model.apply(variables, data.dense, data.cat)
  assert logits.shape == (6,)
  # Σ_i w_{c_i}: setting every first-order scalar to 0.5 adds 26 * 0.5 to each logit.
  shifted = {**variables, "tables": {**variables["tables"],
                                     "first_order": jnp.full((130, 1), 0.5)}}
  np.testing.assert_allclose(model.apply(shifted, data.dense, data.cat), logits + 13.0,
                             rtol=1e-5, atol=1e-5)


def test_afm_works_with_hashed_embeddings():
  config = ModelConfig(name="afm", bottom_mlp=(8, 4), attention_factor=3)
  model = CTRModel.create(config, EmbeddingConfig(kind="hash", dim=4, hash_buckets=3), VOCAB)
  variables = model.init(jax.random.key(0))
  assert variables["tables"]["first_order"].shape == (3 * 26, 1)
  assert model.apply(variables, jnp.ones((2, 13)), jnp.full((2, 26), 4, jnp.int32)).shape == (2,)


def test_classic_zero_dense_values_get_no_attention():
  model = _model("afm_classic")
  variables = model.init(jax.random.key(1))
  data = _dataset(7)
  data = dataclasses.replace(data, dense=np.where(np.arange(13) == 2, 0.0, data.dense + 1.0)
                             .astype(np.float32))
  attention = mean_attention(model, variables, data)
  assert np.all(attention.matrix[2, np.arange(39) != 2] == 0.0)
  assert np.all(attention.matrix[0, 1:][np.arange(1, 39) != 2] > 0.0)


def test_mean_attention_ignores_batch_padding():
  model = _model("afm")
  variables = model.init(jax.random.key(2))
  variables["params"]["afm"]["pooling"]["h"] = jnp.arange(3.0) - 1.0  # non-uniform weights
  data = _dataset(10, seed=3)
  whole = mean_attention(model, variables, data, batch_size=10)
  padded = mean_attention(model, variables, data, batch_size=4)  # 2 padded rows (copies of row 0)
  np.testing.assert_allclose(padded.pair_weights, whole.pair_weights, rtol=1e-5)
  assert whole.pair_weights.shape == (351,)
  assert whole.pair_weights.sum() == pytest.approx(1.0, abs=1e-5)
  assert whole.names[0] == "bottom_mlp" and whole.names[1] == "C1"
  np.testing.assert_array_equal(whole.matrix, whole.matrix.T)
  a, b, w = whole.top_pairs(1)[0]
  assert w == pytest.approx(np.nanmax(whole.matrix))
  assert whole.pair_weights.max() - whole.pair_weights.min() > 1e-4
  with pytest.raises(ValueError, match="attention"):
    fm = _model("fm")
    mean_attention(fm, fm.init(jax.random.key(0)), data)


TINY = TrainConfig(model=ModelConfig(name="afm", bottom_mlp=(8, 4), attention_factor=4),
                   embedding=EmbeddingConfig(dim=4),
                   data=DataConfig(synthetic_rows=1500, synthetic_max_vocab=50),
                   batch_size=100, log_every=1000, learning_rate=0.5)


def test_attention_l2_is_wired_into_training(tmp_path):
  kernels = {}

  def capture(name):
    def on_end(model, variables, splits):
      kernels[name] = np.asarray(variables["params"]["afm"]["pooling"]["attention"]["kernel"])
    return on_end

  plain = train_and_evaluate(TINY, str(tmp_path / "plain"), on_end=capture("plain"))
  strong = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, attention_l2=0.5))
  train_and_evaluate(strong, str(tmp_path / "l2"), on_end=capture("l2"))
  assert np.isfinite(plain["logloss"])
  # 12 SGD steps of lr 0.5 on 0.5 ΣW² (gradient W) halve W each time, up to the data term.
  assert np.linalg.norm(kernels["l2"]) < 0.05 * np.linalg.norm(kernels["plain"])
  config = json.load(open(tmp_path / "l2" / "config.json"))
  assert config["embedding"]["first_order"] is False  # library users get it from the model
  assert config["model"]["attention_l2"] == 0.5


@pytest.mark.slow
def test_cli_afm_on_real_sample_writes_metrics_and_heatmap(tmp_path, criteo_kaggle_path):
  out = tmp_path / "run"
  proc = _run_cli("--model=afm", f"--data={criteo_kaggle_path}", "--bottom_mlp=64-16",
                  "--attention_heatmap", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.load(open(out / "metrics.json"))
  assert metrics["model"] == "afm" and metrics["num_eval_examples"] == 1000
  assert metrics["logloss"] < metrics["baseline_logloss"]
  assert (out / "attention_heatmap.png").stat().st_size > 10_000
  attention = json.load(open(out / "attention.json"))
  assert len(attention["names"]) == 27 and len(attention["pair_weights"]) == 351
  assert json.load(open(out / "config.json"))["embedding"]["first_order"] is True


@pytest.mark.parametrize("flags, message", [
    (("--model=afm", "--dropout=1.0"), "--dropout: dropout must be in [0, 1)"),
    (("--attention_heatmap",), "no learned attention"),
])
def test_cli_rejects_bad_afm_flags(flags, message):
  proc = _run_cli(*flags)
  assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
