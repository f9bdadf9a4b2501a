"""Dense layers that may be low-rank, and MLPs built from them.

`Dense` holds either one kernel ``[m, n]`` or two factors ``u [m, r]`` and
``v [r, n]`` (kernel = u @ v). Which one is decided by the parameter tree it is
applied to, so the same module applies to a dense tree and to one rewritten by
a `jaxrec.factorize` transform; `rank` only chooses the structure at init.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn


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
    dtype: compute dtype (e.g. bfloat16); params stay float32.
  """

  features: int
  rank: int | None = None
  use_bias: bool = True
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
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    if "u" in weights:  # (x u) v: cheaper than forming u v when r < m n / (m + n)
      y = (x @ weights["u"].astype(dtype)) @ weights["v"].astype(dtype)
    else:
      y = x @ weights["kernel"].astype(dtype)
    if "bias" in weights:
      y = y + weights["bias"].astype(dtype)
    return y


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
      x = Dense(width, rank=rank, dtype=self.dtype, name=f"layers_{i}")(x)
      if i + 1 < len(self.features) or self.activate_final:
        x = nn.relu(x)
    return x.astype(jnp.float32)
