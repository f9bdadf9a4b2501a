"""Low-rank factorization: rank rule, SVD/NMF/before/auto transforms over any param tree."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxrec import factorize
from jaxrec.factorize import FactorizeConfig, rank_rule
from jaxrec.factorize import auto as auto_lib
from jaxrec.factorize import nmf as nmf_lib
from jaxrec.factorize import svd as svd_lib
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.layers.mlp import MLP, Dense
from jaxrec.models import registry
from jaxrec.models.ctr_model import CTRModel
from jaxrec.models.registry import ModelConfig


@pytest.mark.parametrize("m, n, p, expected", [
    (13, 512, 0.5, 6),      # 0.5 * 6656 / 525 = 6.34
    (512, 256, 0.25, 42),   # 0.25 * 131072 / 768 = 42.67
    (367, 512, 0.75, 160),  # 0.75 * 187904 / 879 = 160.33
    (3, 6, 1.0, 1),         # bound exactly 2: r must be < 2
    (4, 4, 0.75, 1),        # 1.5 -> 1; 1 * 8 < 16 saves
    (4, 4, 0.5, None),      # bound exactly 1: r = 0 -> dense
    (256, 1, 0.75, None),   # r = 0: the last layer of a top MLP stays dense
    (2, 2, 1.0, None),      # bound 1 -> dense
    (5, 5, 1.0, 2),         # bound 2.5 -> 2; 2 * 10 < 25
])
def test_rank_rule_hand_computed(m, n, p, expected):
  assert rank_rule(m, n, p) == expected


def test_rank_rule_never_keeps_a_layer_that_saves_nothing():
  for m in range(1, 12):
    for n in range(1, 12):
      for p in (0.1, 0.25, 0.5, 0.75, 1.0):
        r = rank_rule(m, n, p)
        if r is not None:
          assert 1 <= r < p * m * n / (m + n) and r * (m + n) < m * n


class AttentionLike(nn.Module):
  """A toy AFM-shaped network: jaxrec Dense layers, a raw vector, and a foreign flax Dense."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(Dense(24, name="attention")(x))
    score = h @ self.param("projection", nn.initializers.normal(1.0), (24,))
    y = MLP((20, 6), name="mlp")(x)
    z = nn.Dense(5, name="foreign")(y)
    return score + jnp.sum(z, axis=-1)


def _toy():
  net = AttentionLike()
  x = jax.random.normal(jax.random.key(1), (7, 30))
  params = net.init(jax.random.key(0), x)["params"]
  layers = factorize.dense_layer_paths(lambda: net.init(jax.random.key(0), x))
  return net, x, params, layers


def test_dense_layer_paths_finds_only_jaxrec_dense():
  _, _, params, layers = _toy()
  assert layers == ("attention", "mlp/layers_0", "mlp/layers_1")
  assert "kernel" in params["foreign"]  # a 2-D kernel, but not a jaxrec Dense


@pytest.mark.parametrize("method", ["before", "svd", "nmf", "auto"])
def test_transforms_touch_only_dense_kernels_and_stay_jittable(method):
  net, x, params, layers = _toy()
  config = FactorizeConfig(method=method, rank_fraction=1.0 if method == "auto" else 0.5,
                           layers=layers, auto_energy=0.5, nmf_iterations=20)
  new, out_config = factorize.TRANSFORMS[method](params, config)
  # Rank rule at p = 0.5: 30x24 -> 6.67 -> 6; 30x20 -> exactly 6 -> 5; 20x6 -> 2.31 -> 2.
  expected = {"attention": 6, "mlp/layers_0": 5, "mlp/layers_1": 2}
  if method == "auto":
    expected = dict(out_config.ranks)
    assert set(expected) == set(layers) and 1 <= expected["attention"] <= rank_rule(30, 24, 1.0)
  assert dict(out_config.ranks) == expected
  for path, r in expected.items():
    layer = factorize.rank.get_layer(new, path)
    if r is not None:
      assert "kernel" not in layer and layer["u"].shape[1] == r == layer["v"].shape[0]
  # Every leaf other than the factorized kernels is the very same array.
  old_leaves = {jax.tree_util.keystr(k): v for k, v in
                jax.tree_util.tree_leaves_with_path(params)}
  for key, value in jax.tree_util.tree_leaves_with_path(new):
    name = jax.tree_util.keystr(key)
    if not name.endswith(("['u']", "['v']")):
      assert old_leaves[name] is value, name
  assert new["foreign"] is params["foreign"]
  # The same module applies to the new tree, compiled once per structure.
  apply = jax.jit(lambda p, x: net.apply({"params": p}, x))
  dense_out = apply(params, x)
  factored_out = apply(new, x)
  apply(new, x + 1.0)
  assert apply._cache_size() == 2
  assert factored_out.shape == dense_out.shape and bool(jnp.all(jnp.isfinite(factored_out)))


def test_full_rank_factors_reproduce_the_dense_layer():
  layer = Dense(9)
  x = jax.random.normal(jax.random.key(2), (16, 12))
  params = layer.init(jax.random.key(3), x)["params"]
  u, v = svd_lib.svd_factors(params["kernel"], 9)
  factored = {"u": u, "v": v, "bias": params["bias"]}
  np.testing.assert_allclose(layer.apply({"params": factored}, x),
                             layer.apply({"params": params}, x), rtol=1e-5, atol=1e-5)


def test_svd_error_is_the_norm_of_the_discarded_singular_values():
  w = jax.random.normal(jax.random.key(4), (40, 25))
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  for r in (1, 5, 17):
    u, v = svd_lib.svd_factors(w, r)
    assert u.shape == (40, r) and v.shape == (r, 25)
    error = float(jnp.linalg.norm(w - u @ v))
    np.testing.assert_allclose(error, np.sqrt(np.sum(s[r:] ** 2)), rtol=1e-4)
    np.testing.assert_allclose(svd_lib.svd_error(w, r), np.sqrt(np.sum(s[r:] ** 2)), rtol=1e-5)


def test_nmf_is_nonnegative_and_its_objective_never_increases():
  x = jnp.abs(jax.random.normal(jax.random.key(5), (30, 20)))
  a, b, objective = nmf_lib.multiplicative_updates(x, 4, 150)
  assert bool(jnp.all(a >= 0)) and bool(jnp.all(b >= 0))
  objective = np.asarray(objective)
  assert objective.shape == (151,)
  assert np.all(np.diff(objective) <= 1e-5 * objective[:-1])
  assert objective[-1] < 0.5 * objective[0]
  np.testing.assert_allclose(objective[-1], float(jnp.sum((x - a @ b) ** 2)), rtol=1e-3)
  # SVD is optimal at the same rank; NMF cannot beat it.
  assert np.sqrt(objective[-1]) >= svd_lib.svd_error(x, 4) * (1 - 1e-4)


def test_signed_nmf_factors():
  w = jax.random.normal(jax.random.key(6), (24, 16))
  u, v = nmf_lib.signed_nmf_factors(w, 6, iterations=200)
  assert u.shape == (24, 6) and v.shape == (6, 16) and bool(jnp.all(u >= 0))
  pos_sq = float(jnp.sum(jnp.maximum(w, 0) ** 2))
  neg_sq = float(jnp.sum(jnp.maximum(-w, 0) ** 2))
  r_pos, r_neg = nmf_lib.split_rank(pos_sq, neg_sq, 6)
  assert r_pos + r_neg == 6 and r_pos >= 1 and r_neg >= 1
  assert bool(jnp.all(v[:r_pos] >= 0)) and bool(jnp.all(v[r_pos:] <= 0))
  error = float(jnp.linalg.norm(w - u @ v))
  assert svd_lib.svd_error(w, 6) <= error < float(jnp.linalg.norm(w))
  # A non-negative kernel is all W+: rank goes to one part and the fit is much closer.
  assert nmf_lib.split_rank(1.0, 0.0, 5) == (5, 0)


def test_reconstruction_report_puts_nmf_beside_svd():
  _, _, params, layers = _toy()
  config = FactorizeConfig(method="nmf", rank_fraction=0.5, layers=layers, nmf_iterations=50)
  rows = factorize.reconstruction_report(params, nmf_lib.nmf(params, config)[0])
  assert [r["name"] for r in rows] == list(layers)
  for row in rows:
    assert row["svd_relative_error"] <= row["relative_error"] < 1.0
  svd_rows = factorize.reconstruction_report(params, svd_lib.svd(params, config)[0])
  for row in svd_rows:
    np.testing.assert_allclose(row["relative_error"], row["svd_relative_error"], rtol=1e-3)


def test_energy_rank():
  s = np.array([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
  assert auto_lib.energy_rank(s, 9 / 14) == 1
  assert auto_lib.energy_rank(s, 0.65) == 2
  assert auto_lib.energy_rank(s, 13 / 14) == 2
  assert auto_lib.energy_rank(s, 1.0) == 3


def test_auto_by_loss_finds_the_true_rank_and_keeps_the_tolerance():
  key_a, key_b, key_c = jax.random.split(jax.random.key(7), 3)
  low = jax.random.normal(key_a, (40, 3)) @ jax.random.normal(key_b, (3, 30))
  w = low + 1e-3 * jax.random.normal(key_c, (40, 30))
  params = {"net": {"kernel": w, "bias": jnp.zeros(30)}, "other": {"scale": jnp.ones(3)}}

  def evaluate(p):  # a stand-in validation loss: relative reconstruction error
    return float(jnp.linalg.norm(factorize.rank.kernel_of(p["net"]) - w) / jnp.linalg.norm(w))

  config = FactorizeConfig(method="auto", rank_fraction=1.0, auto_tolerance=0.01)
  ranks, log = factorize.choose_ranks(params, config, evaluate)
  assert ranks == {"net": 3}
  assert [entry["rank"] for entry in log][:2] == [9, 4]  # binary search over [1, 17]
  new, out_config = auto_lib.auto(params, config, evaluate)
  assert dict(out_config.ranks) == {"net": 3}
  assert evaluate(new) <= evaluate(params) + 0.01
  assert new["other"] is params["other"] and new["net"]["bias"] is params["net"]["bias"]
  with pytest.raises(ValueError, match="evaluate"):
    auto_lib.auto(params, config)


def test_explicit_ranks_reproduce_a_plan():
  _, _, params, layers = _toy()
  config = FactorizeConfig(method="svd", layers=layers,
                           ranks=(("attention", 2), ("mlp/layers_0", None), ("mlp/layers_1", 1)))
  new, out = svd_lib.svd(params, config)
  assert factorize.layer_ranks(new) == {"attention": 2, "mlp/layers_0": None,
                                        "mlp/layers_1": 1, "foreign": None}
  assert out.ranks == config.ranks
  with pytest.raises(ValueError, match="outside"):
    svd_lib.svd(params, dataclasses.replace(config, ranks=(("attention", 99),)))


def test_dense_layer_paths_include_afm_attention_applied_through_its_own_op():
  # AFMPooling reads its attention Dense through `Dense.weights`, not `__call__`.
  model = CTRModel.create(ModelConfig(name="afm"),
                          registry.embedding_config_for(ModelConfig(name="afm"),
                                                        EmbeddingConfig(dim=16)), (50,) * 26)
  layers = factorize.dense_layer_paths(lambda: model.init(jax.random.key(0)))
  assert "afm/pooling/attention" in layers
  assert set(layers) >= {"bottom/layers_0", "bottom/layers_3", "linear"}
  params = model.init(jax.random.key(0))["params"]
  new, config = factorize.TRANSFORMS["before"](
      params, FactorizeConfig(method="before", rank_fraction=0.5, layers=layers))
  assert dict(config.ranks)["afm/pooling/attention"] == 3  # 16x16 at p = 0.5
  assert new["afm"]["pooling"]["attention"]["u"].shape == (16, 3)
