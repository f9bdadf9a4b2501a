"""Dense / MLP layers: the bfloat16 compute mode (float32 accumulation, float32 master weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.layers.mlp import MLP, Dense, mixed_precision_dense_relu, mixed_precision_matmul
from jaxrec.models import CTRModel, ModelConfig

_HIGHEST = jax.lax.Precision.HIGHEST


def _bf16(a):
  """a rounded to bfloat16 and back."""
  return a.astype(jnp.bfloat16).astype(jnp.float32)


def _exact(a, b):
  """a @ b of (already rounded) float32 operands, accumulated in float32 at full precision."""
  return jnp.matmul(a, b, precision=_HIGHEST)


def test_mixed_precision_matmul_rounds_operands_and_accumulates_in_float32():
  x = jax.random.normal(jax.random.key(0), (3, 40, 37))  # leading dims are flattened
  w = jax.random.normal(jax.random.key(1), (37, 24))
  g = jax.random.normal(jax.random.key(2), (3, 40, 24))

  def loss(x, w):
    return jnp.sum(mixed_precision_matmul(x, w, jnp.bfloat16) * g)

  y = jax.jit(mixed_precision_matmul, static_argnums=2)(x, w, jnp.bfloat16)
  d_x, d_w = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  assert y.dtype == d_x.dtype == d_w.dtype == jnp.float32
  x2, g2 = x.reshape(-1, 37), g.reshape(-1, 24)
  # Sums of exact bf16 x bf16 products in float32: equal to a float32 reference up to
  # summation order (1e-5), where bfloat16 rounding of a result would be ~4e-3 off.
  np.testing.assert_allclose(y.reshape(-1, 24), _exact(_bf16(x2), _bf16(w)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_w, _exact(_bf16(x2).T, _bf16(g2)), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(d_x.reshape(-1, 37), _exact(_bf16(g2), _bf16(w).T),
                             rtol=1e-5, atol=1e-5)
  # ... and within bfloat16 rounding of the float32 matmul.
  np.testing.assert_allclose(d_w, _exact(x2.T, g2), rtol=0.05, atol=0.3)


def test_mixed_precision_dense_relu_is_the_rounded_activation_and_its_exact_gradients():
  x = jax.random.normal(jax.random.key(10), (2, 30, 37))
  w = jax.random.normal(jax.random.key(11), (37, 24))
  b = jax.random.normal(jax.random.key(12), (24,))
  g = jax.random.normal(jax.random.key(13), (2, 30, 24))

  def loss(x, w, b):
    return jnp.sum(mixed_precision_dense_relu(x, w, b, jnp.bfloat16).astype(jnp.float32) * g)

  h = jax.jit(mixed_precision_dense_relu, static_argnums=3)(x, w, b, jnp.bfloat16)
  d_x, d_w, d_b = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b)
  assert h.dtype == jnp.bfloat16 and d_x.dtype == d_w.dtype == d_b.dtype == jnp.float32
  x2, g2 = x.reshape(-1, 37), g.reshape(-1, 24)
  y = _exact(_bf16(x2), _bf16(w)) + b
  # The activation: ReLU of the float32 product plus bias, rounded once to bfloat16.
  np.testing.assert_allclose(h.reshape(-1, 24).astype(jnp.float32),
                             _bf16(jnp.maximum(y, 0)), rtol=1e-2, atol=1e-5)
  # Gradients: the cotangent masked where the unit is active and rounded to bfloat16,
  # then float32 sums (the bias) and bf16 x bf16 -> float32 matmuls.
  g_low = _bf16(jnp.where(y > 0, g2, 0))
  np.testing.assert_allclose(d_b, g_low.sum(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_w, _exact(_bf16(x2).T, g_low), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(d_x.reshape(-1, 37), _exact(g_low, _bf16(w).T), rtol=1e-5, atol=1e-5)


def test_bfloat16_mlp_hidden_layers_take_the_fused_dense_relu():
  x = jnp.ones((4, 6))
  mlp = MLP((5, 3, 1), dtype=jnp.bfloat16)
  params = mlp.init(jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(lambda v: mlp.apply(params, v))(x).jaxpr
  calls = [str(e.params["call_jaxpr"]) for e in jaxpr.eqns if "custom_vjp" in e.primitive.name]
  # Two hidden layers with bfloat16 outputs (bias and ReLU inside), then the plain last one.
  assert [c.count("max") for c in calls] == [1, 1, 0], calls
  assert [e.outvars[0].aval.dtype for e in jaxpr.eqns
          if "custom_vjp" in e.primitive.name] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]


@pytest.mark.parametrize("rank", [None, 4])
def test_bfloat16_dense_keeps_float32_params_output_and_gradients(rank):
  x = jax.random.normal(jax.random.key(3), (16, 12))
  layer = Dense(8, rank=rank, dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(4), x)
  reference = Dense(8, rank=rank)  # the same params in float32

  def loss(module, p):
    return jnp.sum(jnp.sin(module.apply(p, x)))

  assert jax.tree.all(jax.tree.map(lambda p: p.dtype == jnp.float32, params))
  y = layer.apply(params, x)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, reference.apply(params, x), rtol=0.05, atol=0.05)
  grads = jax.grad(lambda p: loss(layer, p))(params)
  want = jax.grad(lambda p: loss(reference, p))(params)
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=0.05, atol=0.05)


def test_float32_dense_is_a_plain_matmul():
  x = jax.random.normal(jax.random.key(5), (4, 6))
  layer = Dense(3)
  params = layer.init(jax.random.key(6), x)
  p = params["params"]
  np.testing.assert_array_equal(layer.apply(params, x), x @ p["kernel"] + p["bias"])
  assert "custom_vjp" not in str(jax.make_jaxpr(lambda v: layer.apply(params, v))(x))
  bf16 = Dense(3, dtype=jnp.bfloat16)
  assert "custom_vjp" in str(jax.make_jaxpr(lambda v: bf16.apply(params, v))(x))


def test_bfloat16_dlrm_matches_float32_within_rounding():
  config = ModelConfig(bottom_mlp=(32, 16), top_mlp=(32, 1))
  model = CTRModel.create(config, EmbeddingConfig(dim=16), (50,) * 26)
  low = CTRModel.create(ModelConfig(bottom_mlp=(32, 16), top_mlp=(32, 1),
                                    compute_dtype="bfloat16"), EmbeddingConfig(dim=16), (50,) * 26)
  variables = model.init(jax.random.key(7))
  dense = jax.random.normal(jax.random.key(8), (64, 13))
  cat = jax.random.randint(jax.random.key(9), (64, 26), 0, 50)
  want = model.apply(variables, dense, cat)
  got = low.apply(variables, dense, cat)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)
  assert not np.array_equal(got, want)  # the bf16 path really rounds


def test_mlp_output_is_float32():
  x = jnp.ones((2, 5))
  mlp = MLP((4, 3), dtype=jnp.bfloat16)
  assert mlp.apply(mlp.init(jax.random.key(0), x), x).dtype == jnp.float32


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the row-major transposes are CPU-only")
@pytest.mark.parametrize("wrt, gradient, contracting", [
    # xᵀ g: x [batch, m] as laid out contracts over its major dimension.
    (1, "f32[32,8]", "lhs_contracting_dims={1}"),
    # g wᵀ: w [m, n] as laid out contracts over its minor dimension.
    (0, "f32[64,32]", "rhs_contracting_dims={0}"),
])
def test_bfloat16_gradient_matmuls_take_row_major_transposes_on_cpu(wrt, gradient, contracting):
  # XLA:CPU's bf16 matmul runs a transpose folded into the dot on a slow path; the layout
  # constraint writes it out row-major, so both gradient dots are plain [M, K] x [K, N] ones.
  def grad(x, w):
    return jax.grad(lambda *a: jnp.sum(mixed_precision_matmul(*a, jnp.bfloat16)), wrt)(x, w)

  x, w = jnp.ones((64, 32)), jnp.ones((32, 8))
  hlo = jax.jit(grad).lower(x, w).compile().as_text()
  dots = [line for line in hlo.splitlines() if " dot(" in line and gradient in line]
  assert dots and all(contracting in line for line in dots), dots


def test_bfloat16_mlp_takes_a_zero_width_input():
  # A schema without dense features (Avazu) feeds the bottom MLP [batch, 0].
  x = jnp.zeros((4, 0))
  mlp = MLP((8, 4), activate_final=True, dtype=jnp.bfloat16)
  params = mlp.init(jax.random.key(0), x)
  y = mlp.apply(params, x)
  assert y.shape == (4, 4) and y.dtype == jnp.float32
  grads = jax.grad(lambda p: jnp.sum(mlp.apply(p, x)))(params)
  assert grads["params"]["layers_0"]["kernel"].shape == (0, 8)
