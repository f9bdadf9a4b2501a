"""deepfm, dcnv2, dlrm_dcn: shapes, known answers against numpy, strategies, low rank, training."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.sources import DataConfig
from jaxrec.layers import embeddings
from jaxrec.layers.cross import CrossNetwork
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models import CTRModel, ModelConfig
from jaxrec.models.deepfm import fm_pair_sum
from jaxrec.train.loop import TrainConfig, train_and_evaluate

from conftest import run_train_cli as _run_cli

VOCAB = (5,) * 26
ZOO = ("deepfm", "dcnv2", "dlrm_dcn")


def _config(name, **kwargs):
  return ModelConfig(name=name, bottom_mlp=(8, 4), top_mlp=(6, 1), deep_mlp=(8, 5),
                     cross_layers=2, **kwargs)


def _model(name, embedding=None, **kwargs):
  return CTRModel.create(_config(name, **kwargs), embedding or EmbeddingConfig(dim=4), VOCAB)


def _inputs(n, seed=0):
  rng = np.random.default_rng(seed)
  dense = rng.exponential(size=(n, 13)).astype(np.float32)
  dense[rng.random((n, 13)) < 0.3] = 0.0
  return jnp.asarray(dense), jnp.asarray(rng.integers(0, 5, size=(n, 26)).astype(np.int32))


def _np(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _relu(x):
  return np.maximum(x, 0.0)


def _np_mlp(p, x, activate_final):
  n = len(p)
  for i in range(n):
    x = x @ p[f"layers_{i}"]["kernel"] + p[f"layers_{i}"]["bias"]
    if i + 1 < n or activate_final:
      x = _relu(x)
  return x


def _np_cross(p, x0):
  """Naive DCN-V2 cross: x_{l+1} = x0 * (W x_l + b) + x_l, one example and unit at a time."""
  x = x0.copy()
  for index in range(len(p)):
    layer = p[f"layers_{index}"]
    w = layer["u"] @ layer["v"] if "u" in layer else layer["kernel"]
    b = layer["bias"]
    nxt = np.empty_like(x)
    for e in range(x.shape[0]):
      for j in range(x.shape[1]):
        nxt[e, j] = x0[e, j] * (sum(x[e, i] * w[i, j] for i in range(x.shape[1])) + b[j]) + x[e, j]
    x = nxt
  return x


@pytest.mark.parametrize("rank", [None, 2])
def test_cross_network_matches_naive_numpy(rank):
  x0 = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32))
  net = CrossNetwork(num_layers=3, rank=rank)
  params = net.init(jax.random.key(0), x0)["params"]
  assert set(params["layers_0"]) == ({"kernel", "bias"} if rank is None else {"u", "v", "bias"})
  # Non-zero biases so the bias term is checked too.
  params = jax.tree_util.tree_map(lambda a: a + 0.1, params)
  got = net.apply({"params": params}, x0)
  np.testing.assert_allclose(got, _np_cross(_np(params), np.asarray(x0)), rtol=1e-5, atol=1e-5)


def test_cross_network_known_answer_by_hand():
  # One layer, W = I, b = 1: x1 = x0 * (x0 + 1) + x0.
  x0 = jnp.array([[1.0, -2.0]])
  params = {"layers_0": {"kernel": jnp.eye(2), "bias": jnp.ones(2)}}
  got = CrossNetwork(num_layers=1).apply({"params": params}, x0)
  np.testing.assert_allclose(got, [[1 * 2 + 1, -2 * -1 - 2]])


def test_fm_pair_sum_matches_double_loop():
  v = np.random.default_rng(2).normal(size=(2, 6, 3)).astype(np.float32)
  naive = [sum(float(v[b, i] @ v[b, j]) for i in range(6) for j in range(i + 1, 6))
           for b in range(2)]
  np.testing.assert_allclose(fm_pair_sum(jnp.asarray(v)), naive, rtol=1e-5)


def test_deepfm_matches_naive_numpy():
  model = _model("deepfm")
  variables = model.init(jax.random.key(0))
  tables = dict(variables["tables"])
  tables["first_order"] = jax.random.normal(jax.random.key(3), tables["first_order"].shape)
  variables = {**variables, "tables": tables}
  params = jax.tree_util.tree_map(lambda a: a + 0.05, variables["params"])  # w0, w non-zero
  dense, cat = _inputs(4)
  got = model.apply({**variables, "params": params}, dense, cat)

  p, t = _np(params), _np(tables)
  d, c = np.asarray(dense), np.asarray(cat)
  ids = c + np.arange(26) * 5
  emb, first = t["embedding"][ids], t["first_order"][ids][..., 0]  # [B, 26, 4], [B, 26]
  vectors = np.concatenate([d[:, :, None] * p["dense_embedding"][None], emb], axis=1)
  want = []
  for b in range(4):
    pairs = sum(vectors[b, i] @ vectors[b, j] for i in range(39) for j in range(i + 1, 39))
    fm = p["w0"] + d[b] @ p["linear"]["kernel"][:, 0] + first[b].sum() + pairs
    deep = _np_mlp(p["deep"], np.concatenate([d[b], emb[b].reshape(-1)])[None], False)[0, 0]
    want.append(fm + deep)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_dcnv2_matches_naive_numpy(structure):
  model = _model("dcnv2", dcn_structure=structure, cross_rank=3)
  variables = model.init(jax.random.key(0))
  dense, cat = _inputs(3)
  got = model.apply(variables, dense, cat)
  p, t = _np(variables["params"]), _np(variables["tables"])
  emb = t["embedding"][np.asarray(cat) + np.arange(26) * 5]
  x0 = np.concatenate([np.asarray(dense), emb.reshape(3, -1)], axis=1)  # [3, 13 + 104]
  cross = _np_cross(p["cross"], x0)
  if structure == "stacked":
    z = _np_mlp(p["deep"], cross, True)
  else:
    z = np.concatenate([cross, _np_mlp(p["deep"], x0, True)], axis=1)
  want = (z @ p["logit"]["kernel"] + p["logit"]["bias"])[:, 0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dlrm_dcn_shapes_and_naive_numpy():
  model = _model("dlrm_dcn")
  variables = model.init(jax.random.key(0))
  p = _np(variables["params"])
  d = 27 * 4  # bottom output and 26 embeddings, flattened
  assert p["interaction"]["layers_1"]["kernel"].shape == (d, d)
  assert p["top"]["layers_0"]["kernel"].shape == (d, 6)
  dense, cat = _inputs(3)
  emb = _np(variables["tables"])["embedding"][np.asarray(cat) + np.arange(26) * 5]
  x = _np_mlp(p["bottom"], np.asarray(dense), True)
  x0 = np.concatenate([x[:, None, :], emb], axis=1).reshape(3, -1)
  want = _np_mlp(p["top"], _np_cross(p["interaction"], x0), False)[:, 0]
  np.testing.assert_allclose(model.apply(variables, dense, cat), want, rtol=1e-4, atol=1e-4)


def test_registry_checks_and_first_order():
  assert "first_order" in _model("deepfm").init(jax.random.key(0))["tables"]
  assert "first_order" not in _model("dcnv2").init(jax.random.key(0))["tables"]
  with pytest.raises(ValueError, match="dcn_structure"):
    _model("dcnv2", dcn_structure="diagonal")
  with pytest.raises(ValueError, match="embedding_dim"):
    CTRModel.create(_config("dlrm_dcn"), EmbeddingConfig(dim=8), VOCAB)
  with pytest.raises(ValueError, match="cross_rank"):
    _model("dlrm_dcn", cross_rank=0)


def _embedding(kind):
  if kind not in embeddings.EMBEDDING_KINDS:
    pytest.skip(f"embedding kind {kind!r} is not registered yet")
  fields = {f.name for f in dataclasses.fields(EmbeddingConfig)}
  # Thresholds of 1 so the 5-row tables are really compressed / narrowed.
  extra = {"hash": {"hash_buckets": 3}, "qr": {"qr_collisions": 2, "qr_threshold": 1},
           "mixed_dim": {"md_threshold": 1, "md_temperature": 0.3}}.get(kind, {})
  return EmbeddingConfig(kind=kind, dim=4, **{k: v for k, v in extra.items() if k in fields})


def _rank_rule(m, n, fraction):
  r = int(np.ceil(fraction * m * n / (m + n))) - 1  # largest integer r < p m n / (m + n)
  return r if r >= 1 and r * (m + n) < m * n else None


def _svd_factorize(params, fraction):
  """Truncated SVD of every Dense kernel (the study's rank rule): a stand-in for factorize."""
  if not isinstance(params, dict):
    return params
  if "kernel" in params and params["kernel"].ndim == 2:
    m, n = params["kernel"].shape
    r = _rank_rule(m, n, fraction)
    if r is None:
      return params
    u, s, vt = np.linalg.svd(np.asarray(params["kernel"]), full_matrices=False)
    out = {k: v for k, v in params.items() if k != "kernel"}
    return {**out, "u": jnp.asarray(u[:, :r] * np.sqrt(s[:r])),
            "v": jnp.asarray(np.sqrt(s[:r])[:, None] * vt[:r])}
  return {k: _svd_factorize(v, fraction) for k, v in params.items()}


def _factorized_leaves(params):
  return [path for path, _ in jax.tree_util.tree_leaves_with_path(params)
          if jax.tree_util.keystr(path).endswith("['u']")]


@pytest.mark.parametrize("kind", ["full", "hash", "qr", "mixed_dim"])
@pytest.mark.parametrize("name", ZOO)
def test_every_strategy_and_rank_fraction(name, kind):
  model = _model(name, embedding=_embedding(kind))
  variables = model.init(jax.random.key(0))
  dense, cat = _inputs(5)
  logits = model.apply(variables, dense, cat)
  assert logits.shape == (5,) and np.all(np.isfinite(logits))
  low = _svd_factorize(variables["params"], 0.5)
  paths = [jax.tree_util.keystr(p) for p in _factorized_leaves(low)]
  if name != "deepfm":  # the cross kernels are Dense layers too, so they are split
    assert any("cross" in p or "interaction" in p for p in paths), paths
  assert paths
  low_logits = model.apply({**variables, "params": low}, dense, cat)
  assert low_logits.shape == (5,) and np.all(np.isfinite(low_logits))
  assert not np.allclose(low_logits, logits)  # the rank-rule truncation changes the output


def test_library_svd_transform_when_present():
  try:
    from jaxrec.factorize import FactorizeConfig, svd
  except ImportError:
    pytest.skip("jaxrec.factorize svd is not on this branch yet")
  for name in ZOO:
    model = _model(name, embedding=_embedding("qr") if "qr" in embeddings.EMBEDDING_KINDS
                   else None)
    variables = model.init(jax.random.key(0))
    low, _ = svd.svd(variables["params"], FactorizeConfig(method="svd", rank_fraction=0.5))
    assert _factorized_leaves(low)
    dense, cat = _inputs(5)
    assert np.all(np.isfinite(model.apply({**variables, "params": low}, dense, cat)))


TINY = TrainConfig(model=_config("dcnv2"), embedding=EmbeddingConfig(dim=4),
                   data=DataConfig(synthetic_rows=1500, synthetic_max_vocab=50),
                   batch_size=100, log_every=1000, optimizer="adam", learning_rate=0.01)


@pytest.mark.parametrize("name", ZOO)
def test_training_smoke_run(tmp_path, name):
  config = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, name=name))
  metrics = train_and_evaluate(config, str(tmp_path))
  assert metrics["model"] == name and np.isfinite(metrics["logloss"])
  assert metrics["logloss"] < metrics["baseline_logloss"] + 0.05
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["model"]["cross_layers"] == 2 and saved["model"]["deep_mlp"] == [8, 5]


@pytest.mark.slow
def test_cli_dcnv2_parallel_low_rank(tmp_path):
  out = tmp_path / "run"
  proc = _run_cli("--model=dcnv2", "--dcn_structure=parallel", "--cross_layers=2",
                  "--cross_rank=8", "--deep_mlp=16", "--synthetic_rows=2000",
                  "--synthetic_max_vocab=100", "--embedding_dim=4", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  model = json.load(open(out / "config.json"))["model"]
  assert (model["name"], model["dcn_structure"], model["cross_rank"]) == ("dcnv2", "parallel", 8)
  assert np.isfinite(json.load(open(out / "metrics.json"))["auc"])


def test_cli_rejects_bad_zoo_flags():
  proc = _run_cli("--model=dlrm_dcn", "--bottom_mlp=64-8")
  assert proc.returncode == 2 and "dlrm_dcn" in proc.stderr and "Traceback" not in proc.stderr
  proc = _run_cli("--model=dcnv2", "--cross_rank=-1")
  assert proc.returncode == 2 and "--cross_rank" in proc.stderr
