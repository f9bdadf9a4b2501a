"""The AFM pairwise layer: FM identity, softmax, masking, gradients, L2 on W."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers import afm
from jaxrec.models.registry import ModelConfig, build_regularizer


def _fields(shape=(3, 5, 4), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _pairwise_loop_mean(v, mask=None):
  """Independent reference: mean of v_i * v_j over present pairs i < j, by explicit loops."""
  v = np.asarray(v, np.float64)
  out = np.zeros((v.shape[0], v.shape[2]))
  for b in range(v.shape[0]):
    present = [f for f in range(v.shape[1]) if mask is None or mask[b, f]]
    pairs = list(itertools.combinations(present, 2))
    for i, j in pairs:
      out[b] += v[b, i] * v[b, j]
    out[b] /= len(pairs)
  return out


def _pooling_with_h(fields, h_value, mask=None, seed=1):
  module = afm.AFMPooling(attention_factor=6)
  params = module.init(jax.random.key(seed), fields, mask)["params"]
  params = {**params, "h": jnp.full_like(params["h"], h_value) if np.isscalar(h_value)
            else jnp.asarray(h_value)}
  pooled, state = module.apply({"params": params}, fields, mask, mutable=["intermediates"])
  weights = jax.tree_util.tree_leaves(state["intermediates"])[0]
  return pooled, weights, params


def test_zero_h_gives_uniform_attention_equal_to_fm_identity():
  v = _fields()
  pooled, weights, _ = _pooling_with_h(v, 0.0)
  p = 5 * 4 // 2
  vn = np.asarray(v, np.float64)
  identity = 0.5 * (vn.sum(1) ** 2 - (vn ** 2).sum(1)) / p
  np.testing.assert_allclose(pooled, identity, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled, _pairwise_loop_mean(v), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weights, np.full((3, p), 1.0 / p), rtol=1e-6)
  # The FM path (attention=False) computes the same pooling in O(F k).
  np.testing.assert_allclose(afm.fm_pooled(v), identity, rtol=1e-5, atol=1e-6)


def test_learned_attention_softmax_sums_to_one_and_is_not_uniform():
  v = _fields(seed=2)
  pooled, weights, params = _pooling_with_h(v, 0.0)
  h = np.random.default_rng(3).normal(size=params["h"].shape) * 3.0
  pooled, weights, _ = _pooling_with_h(v, h)
  assert weights.shape == (3, 10)
  np.testing.assert_allclose(jnp.sum(weights, axis=1), np.ones(3), rtol=1e-6)
  assert float(jnp.min(weights)) >= 0.0
  assert float(jnp.max(weights) - jnp.min(weights)) > 1e-3  # really attends
  np.testing.assert_allclose(pooled, jnp.einsum("bp,bpk->bk", weights, afm.pair_products(v)),
                             rtol=1e-5, atol=1e-6)


def test_masked_fields_do_not_leak_into_attention():
  v = _fields(shape=(2, 6, 4), seed=4)
  mask = jnp.array([[1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1]], jnp.float32)
  h = np.random.default_rng(5).normal(size=6)
  pooled, weights, _ = _pooling_with_h(v, h, mask)
  # Changing absent fields' vectors changes nothing.
  v2 = jnp.where(mask[..., None] > 0, v, 100.0 * _fields(shape=(2, 6, 4), seed=6))
  pooled2, weights2, _ = _pooling_with_h(v2, h, mask)
  np.testing.assert_array_equal(pooled, pooled2)
  np.testing.assert_array_equal(weights, weights2)
  i, j = afm.upper_pairs(6)
  absent = np.asarray(mask)[:, i] * np.asarray(mask)[:, j] == 0
  assert np.all(np.asarray(weights)[absent] == 0.0)
  np.testing.assert_allclose(jnp.sum(weights, axis=1), [1.0, 1.0], rtol=1e-6)
  # Uniform attention over the present pairs is the FM identity over present fields.
  pooled0, _, _ = _pooling_with_h(v, 0.0, mask)
  reference = _pairwise_loop_mean(v, np.asarray(mask) > 0)
  np.testing.assert_allclose(pooled0, reference, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(afm.fm_pooled(v, mask), reference, rtol=1e-5, atol=1e-6)


def test_gradients_reach_w_b_h_p_and_masked_softmax_is_finite():
  v = _fields(seed=7)
  mask = jnp.array([[1, 1, 1, 0, 1]] * 3, jnp.float32)
  head = afm.AFMHead(attention_factor=6, dropout=0.5)
  params = head.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                     v, mask)["params"]

  def loss(params):
    logits = head.apply({"params": params}, v, mask, train=True,
                        rngs={"dropout": jax.random.key(2)})
    return jnp.sum(jnp.square(logits - 1.0))

  grads = jax.grad(loss)(params)
  named = {"W": grads["pooling"]["attention"]["kernel"], "b": grads["pooling"]["attention"]["bias"],
           "h": grads["pooling"]["h"], "p": grads["p"], "w0": grads["w0"]}
  for name, g in named.items():
    assert np.all(np.isfinite(g)), name
    assert float(jnp.sum(jnp.abs(g))) > 0.0, f"no gradient reaches {name}"


def test_low_rank_attention_kernel_applies_to_the_same_module():
  v = _fields(seed=8)
  module = afm.AFMPooling(attention_factor=6)
  params = module.init(jax.random.key(0), v)["params"]
  kernel = np.asarray(params["attention"]["kernel"])
  u, s, vt = np.linalg.svd(kernel, full_matrices=False)
  factored = {**params, "attention": {"u": jnp.asarray(u * np.sqrt(s)),
                                      "v": jnp.asarray(np.sqrt(s)[:, None] * vt),
                                      "bias": params["attention"]["bias"]}}
  np.testing.assert_allclose(module.apply({"params": factored}, v),
                             module.apply({"params": params}, v), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(afm.attention_l2(factored, 0.5), 0.5 * np.sum(kernel ** 2),
                             rtol=1e-4)
  grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, v)))(factored)
  assert float(jnp.sum(jnp.abs(grads["attention"]["u"]))) > 0


def test_attention_l2_penalises_only_w_and_is_built_for_afm_models():
  params = {"afm": {"pooling": {"attention": {"kernel": jnp.full((2, 3), 2.0),
                                              "bias": jnp.ones(3)}, "h": jnp.ones(3)}},
            "bottom": {"layers_0": {"kernel": jnp.ones((4, 4))}}}
  assert float(afm.attention_l2(params, 0.1)) == pytest.approx(0.1 * 6 * 4.0)
  reg = build_regularizer(ModelConfig(name="afm", attention_l2=0.1))
  assert float(reg(params)) == pytest.approx(2.4)
  assert build_regularizer(ModelConfig(name="afm")) is None
  assert build_regularizer(ModelConfig(name="dlrm", attention_l2=0.1)) is None


def test_head_scaled_by_pairs_with_uniform_weights_is_the_classic_fm_sum():
  v = _fields(shape=(2, 5, 3), seed=9)
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], jnp.float32)
  head = afm.AFMHead(attention=False)
  params = head.init(jax.random.key(0), v, mask)["params"]
  params = {"p": jnp.ones(3), "w0": jnp.zeros(())}
  logits = head.apply({"params": params}, v, mask)
  vn, m = np.asarray(v, np.float64), np.asarray(mask) > 0
  expected = [sum(float(vn[b, i] @ vn[b, j]) for i, j in itertools.combinations(range(5), 2)
                  if m[b, i] and m[b, j]) for b in range(2)]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def _loop_pair_products(v):
  v = np.asarray(v, np.float64)
  return np.stack([v[:, i] * v[:, j] for i, j in itertools.combinations(range(v.shape[1]), 2)], 1)


def test_pair_products_and_weighted_sum_custom_vjps_match_the_loop_definition():
  v = _fields((4, 7, 3), seed=3)
  weights = jax.nn.softmax(_fields((4, 21), seed=4).reshape(4, 21), axis=-1)
  products = _loop_pair_products(v)
  np.testing.assert_allclose(afm.pair_products(v), products, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(afm.weighted_pair_sum(weights, v),
                             np.einsum("bp,bpk->bk", weights, products), rtol=1e-5, atol=1e-6)
  # Gradients against autodiff of the plain gather formulation (no custom VJP).
  i, j = afm.upper_pairs(7)
  plain_products = lambda f: f[:, i] * f[:, j]
  cotangent = _fields((4, 21, 3), seed=5)
  (got,) = jax.vjp(afm.pair_products, v)[1](cotangent)
  (want,) = jax.vjp(plain_products, v)[1](cotangent)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  g = _fields((4, 3), seed=6)
  got = jax.vjp(afm.weighted_pair_sum, weights, v)[1](g)
  want = jax.vjp(lambda a, f: jnp.einsum("bp,bpk->bk", a, plain_products(f)), weights, v)[1](g)
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _plain_scores(products, kernel, bias, h):
  return jax.nn.relu(products @ kernel + bias) @ h


def test_attention_scores_vjp_matches_autodiff_of_the_plain_network():
  rng = np.random.default_rng(11)
  # Rows, kernel and bias drawn so that both ReLU branches occur.
  products = jnp.asarray(rng.normal(size=(40, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=3), jnp.float32)
  h = jnp.asarray(rng.normal(size=3), jnp.float32)
  args = (products, kernel, bias, h)
  np.testing.assert_allclose(afm.attention_scores(*args), _plain_scores(*args),
                             rtol=1e-5, atol=1e-5)
  d_scores = jnp.asarray(rng.normal(size=40), jnp.float32)
  got = jax.vjp(afm.attention_scores, *args)[1](d_scores)
  want = jax.vjp(_plain_scores, *args)[1](d_scores)
  for name, g, w in zip(("products", "kernel", "bias", "h"), got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)
  active = np.asarray(products @ kernel + bias) > 0
  assert 0.2 < active.mean() < 0.8  # the test exercises both branches


def test_pooling_in_slices_equals_the_whole_batch_with_mask_and_gradients():
  v = _fields(shape=(37, 6, 4), seed=12)
  mask = jnp.asarray(np.random.default_rng(13).random((37, 6)) > 0.3, jnp.float32)
  whole = afm.AFMPooling(attention_factor=5, chunk_size=None)
  sliced = afm.AFMPooling(attention_factor=5, chunk_size=8)  # 5 uneven slices
  assert [b - a for a, b in afm.batch_chunks(37, 8)] == [7, 8, 7, 8, 7]
  params = whole.init(jax.random.key(0), v, mask)
  params = jax.tree.map(lambda x: x * 3.0, params)  # sharper attention
  np.testing.assert_allclose(sliced.apply(params, v, mask), whole.apply(params, v, mask),
                             rtol=1e-5, atol=1e-6)
  g = jnp.asarray(np.random.default_rng(14).normal(size=(37, 4)), jnp.float32)

  def grads(module):
    return jax.grad(lambda p, x: jnp.sum(module.apply(p, x, mask) * g), argnums=(0, 1))(
        params, v)

  for got, want in zip(jax.tree.leaves(grads(sliced)), jax.tree.leaves(grads(whole))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Slicing leaves the sown attention weights in batch order.
  _, state = sliced.apply(params, v, mask, mutable=["intermediates"])
  _, whole_state = whole.apply(params, v, mask, mutable=["intermediates"])
  np.testing.assert_allclose(jax.tree.leaves(state)[0], jax.tree.leaves(whole_state)[0],
                             rtol=1e-5, atol=1e-7)
