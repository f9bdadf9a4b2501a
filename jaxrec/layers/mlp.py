"""Dense layers that may be low-rank, and MLPs built from them.

`Dense` holds either one kernel ``[m, n]`` or two factors ``u [m, r]`` and
``v [r, n]`` (kernel = u @ v). Which one is decided by the parameter tree it is
applied to, so the same module applies to a dense tree and to one rewritten by
a `jaxrec.factorize` transform; `rank` only chooses the structure at init.

With a narrower compute ``dtype`` (bfloat16) a layer multiplies with
`mixed_precision_matmul`: operands rounded to bfloat16, products accumulated and
returned in float32, forward and backward, with float32 master weights.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec.layers.varying import vary_like

try:  # jax >= 0.7 (earlier releases name their layout classes differently)
  from jax.experimental.layout import Layout, with_layout_constraint
  _ROW_MAJOR_2D = Layout(major_to_minor=(0, 1))
except (ImportError, TypeError):  # pragma: no cover - the transpose stays a dot operand
  with_layout_constraint = _ROW_MAJOR_2D = None


def _row_major_transpose(x: jax.Array) -> jax.Array:
  """xᵀ of a 2-D x, written out row-major on CPU.

  XLA:CPU's fast bfloat16 matmul kernels take neither a left operand that contracts
  over its major dimension (``xᵀ g``, a weight gradient) nor a right one that
  contracts over its minor dimension (``g wᵀ``, an input gradient); layout
  assignment would otherwise fold the transpose into the dot and take a slow path.
  On other backends (and in float32, where the copy costs more than it saves) it is
  a plain transpose.
  """
  if _ROW_MAJOR_2D is None or jax.default_backend() != "cpu":
    return x.T
  return with_layout_constraint(x.T, _ROW_MAJOR_2D)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_matmul(x: jax.Array, w: jax.Array, dtype: np.dtype) -> jax.Array:
  return _mixed_matmul_fwd(x, w, dtype)[0]


def _mixed_matmul_fwd(x, w, dtype):
  x_low, w_low = x.astype(dtype), w.astype(dtype)
  y = jnp.matmul(x_low, w_low, preferred_element_type=jnp.float32)
  # The dtypes ride along as empty arrays (residuals must be arrays).
  return y, (x_low, w_low, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mixed_matmul_bwd(dtype, residuals, g):
  x_low, w_low, x_like, w_like = residuals
  g_low = g.astype(dtype)
  d_x = jnp.matmul(g_low, _row_major_transpose(w_low), preferred_element_type=jnp.float32)
  d_w = jnp.matmul(_row_major_transpose(x_low), g_low, preferred_element_type=jnp.float32)
  return d_x.astype(x_like.dtype), d_w.astype(w_like.dtype)


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _rows(x: jax.Array) -> jax.Array:
  """[..., m] -> [rows, m]; explicit sizes, so a zero-width x (no dense features) reshapes too."""
  return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def mixed_precision_matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
  """``x @ w`` ([..., m] @ [m, n]) with operands rounded to `dtype` and float32 accumulation.

  Returns float32, and so do its gradients' accumulations (dx in x's dtype, dw in
  w's): the products of the forward and of both backward matmuls are summed in
  float32, only the operands are narrow. On a CPU with AMX, XLA runs these matmuls
  on its bfloat16 units, while a bfloat16 dot with a bfloat16 result takes a slow
  path.
  """
  lead = x.shape[:-1]
  y = _mixed_matmul(_rows(x), vary_like(w, x), np.dtype(dtype))
  return y.reshape(*lead, w.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _mixed_dense_relu(x: jax.Array, w: jax.Array, b: jax.Array, dtype: np.dtype) -> jax.Array:
  return _mixed_dense_relu_fwd(x, w, b, dtype)[0]


def _mixed_dense_relu_fwd(x, w, b, dtype):
  x_low, w_low = x.astype(dtype), w.astype(dtype)
  y = jnp.matmul(x_low, w_low, preferred_element_type=jnp.float32) + b
  h = jax.nn.relu(y).astype(dtype)  # bias, ReLU and rounding: one pass over y
  return h, (x_low, w_low, h, jnp.zeros((0,), x.dtype))


def _mixed_dense_relu_bwd(dtype, residuals, g):
  x_low, w_low, h, x_like = residuals
  # g is h's cotangent (narrow, as h is); where h > 0 it is the pre-activation's.
  g_low = jnp.where(h > 0, g, jnp.zeros((), g.dtype)).astype(dtype)
  d_b = jnp.sum(g_low, axis=0, dtype=jnp.float32)
  d_w = jnp.matmul(_row_major_transpose(x_low), g_low, preferred_element_type=jnp.float32)
  d_x = jnp.matmul(g_low, _row_major_transpose(w_low), preferred_element_type=jnp.float32)
  return d_x.astype(x_like.dtype), d_w, d_b


_mixed_dense_relu.defvjp(_mixed_dense_relu_fwd, _mixed_dense_relu_bwd)


def mixed_precision_dense_relu(x: jax.Array, w: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """``relu(x @ w + b)`` ([..., m] @ [m, n]) in `dtype`, from float32 products.

  As `mixed_precision_matmul`, with the bias and ReLU fused into the rounding of
  the product, so the activation leaves the layer in `dtype` (the next layer's
  operand as is) and its backward is one masked rounding of the incoming
  cotangent, feeding the bias sum and both gradient matmuls. Separately, the
  float32 ReLU mask, the bias reduction and the rounding were three passes over
  [batch, n] float32 arrays per layer and direction.
  """
  lead = x.shape[:-1]
  y = _mixed_dense_relu(_rows(x), vary_like(w, x), vary_like(b, x),
                        np.dtype(dtype))
  return y.reshape(*lead, w.shape[-1])


def dlrm_kernel_init(key, shape, dtype=jnp.float32):
  """N(0, 2 / (fan_in + fan_out)), the DLRM reference's Linear init."""
  fan_in, fan_out = shape
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (fan_in + fan_out)).astype(dtype)


def dlrm_bias_init(key, shape, dtype=jnp.float32):
  """N(0, 1 / fan_out), the DLRM reference's bias init."""
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[0]).astype(dtype)


def factor_std(m: int, n: int, rank: int) -> float:
  """Std of u and v entries so that u @ v has the dense init's variance 2 / (m + n).

  Each entry of u @ v sums `rank` products of two N(0, s^2) draws, so its
  variance is rank * s^4; solving rank * s^4 = 2 / (m + n) gives s.
  """
  return float((2.0 / (m + n)) ** 0.25 / rank ** 0.25)


class Dense(nn.Module):
  """y = x @ kernel + bias, with kernel optionally stored as factors u @ v.

  Attributes:
    features: output size n.
    rank: factor rank used at init (None = full kernel). At apply time the
      structure follows the parameters given.
    use_bias: add a bias.
    relu: apply ReLU to the output (with a narrow `dtype`, a full kernel and a
      bias: fused, `mixed_precision_dense_relu`, and the output is in `dtype`).
    dtype: compute dtype (e.g. bfloat16): the matmul operands are rounded to it
      and accumulated in float32 (`mixed_precision_matmul`); params stay
      float32, and so does the output unless `relu` fuses it (above).
  """

  features: int
  rank: int | None = None
  use_bias: bool = True
  relu: bool = False
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = dlrm_kernel_init
  bias_init: nn.initializers.Initializer = dlrm_bias_init

  @nn.compact
  def weights(self, in_features: int) -> dict[str, jax.Array]:
    """This layer's float32 parameters for input size `in_features`: ``kernel`` or
    ``u`` and ``v``, plus ``bias`` when used (creating them at init)."""
    m = in_features
    factorized = (self.has_variable("params", "u") if not self.is_initializing()
                  else self.rank is not None)
    found = {}
    if factorized:
      rank = self.rank
      if not self.is_initializing():
        rank = self.get_variable("params", "u").shape[1]
      std = factor_std(m, self.features, rank)
      found["u"] = self.param("u", lambda k, s: jax.random.normal(k, s) * std, (m, rank))
      found["v"] = self.param("v", lambda k, s: jax.random.normal(k, s) * std,
                              (rank, self.features))
    else:
      found["kernel"] = self.param("kernel", self.kernel_init, (m, self.features))
    if self.use_bias:
      found["bias"] = self.param("bias", self.bias_init, (self.features,))
    return found

  def __call__(self, x: jax.Array) -> jax.Array:
    weights = self.weights(x.shape[-1])
    narrow = self.dtype is not None and jnp.dtype(self.dtype) != jnp.float32
    if narrow and self.relu and "kernel" in weights and "bias" in weights:
      return mixed_precision_dense_relu(x, weights["kernel"], weights["bias"], self.dtype)
    if narrow:
      matmul = functools.partial(mixed_precision_matmul, dtype=self.dtype)
    else:
      matmul = jnp.matmul
    if "u" in weights:  # (x u) v: cheaper than forming u v when r < m n / (m + n)
      y = matmul(matmul(x, weights["u"]), weights["v"])
    else:
      y = matmul(x, weights["kernel"])
    if "bias" in weights:
      y = y + weights["bias"].astype(y.dtype)
    return nn.relu(y) if self.relu else y


def effective_kernel(weights: Mapping[str, jax.Array]) -> jax.Array:
  """The [m, n] kernel of a `Dense` parameter dict: ``kernel``, or ``u @ v`` when factorized."""
  if "kernel" in weights:
    return weights["kernel"]
  return weights["u"] @ weights["v"]


class MLP(nn.Module):
  """Stack of `Dense` layers with ReLU between them.

  Attributes:
    features: output size of each layer.
    activate_final: ReLU after the last layer too (DLRM's bottom MLP).
    ranks: optional init rank per layer (None entries stay dense).
    dtype: compute dtype of the matmuls.
  """

  features: Sequence[int]
  activate_final: bool = False
  ranks: Sequence[int | None] | None = None
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ranks = self.ranks or (None,) * len(self.features)
    for i, (width, rank) in enumerate(zip(self.features, ranks)):
      relu = i + 1 < len(self.features) or self.activate_final
      x = Dense(width, rank=rank, relu=relu, dtype=self.dtype, name=f"layers_{i}")(x)
    return x.astype(jnp.float32)
