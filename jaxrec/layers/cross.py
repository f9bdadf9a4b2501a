"""DCN-V2 cross network (Wang et al. 2021): explicit bounded-degree feature crosses.

Each layer maps x_l [B, D] to

    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l

so L layers model polynomial crosses of x_0 up to degree L + 1. W_l is a
`jaxrec.layers.mlp.Dense` (D -> D): with ``rank`` set it is stored as factors
u [D, r] v [r, D] — DCN-V2's low-rank cross (U_l (V_lᵀ x_l)) — and the
`jaxrec.factorize` transforms split a dense W_l like any other Dense. The loop
is over the few layers only; every layer is one [B, D] @ [D, D] matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.mlp import Dense


def cross_layer(x0: jax.Array, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """One cross layer from explicit weights: x0 ⊙ (x @ kernel + bias) + x."""
  return x0 * (x @ kernel + bias) + x


class CrossNetwork(nn.Module):
  """`num_layers` DCN-V2 cross layers, [B, D] -> [B, D].

  Attributes:
    num_layers: number of cross layers L (0 = identity).
    rank: init rank of each W_l (None = full D x D kernel).
    dtype: matmul compute dtype (None = float32); the output is float32.
  """

  num_layers: int = 3
  rank: int | None = None
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x0: jax.Array) -> jax.Array:
    x = x0
    for i in range(self.num_layers):
      # Zero bias (as in DCN-V2); the kernel keeps Dense's Glorot-normal init.
      y = Dense(x0.shape[-1], rank=self.rank, dtype=self.dtype,
                bias_init=nn.initializers.zeros, name=f"layers_{i}")(x)
      x = x0 * y.astype(x0.dtype) + x
    return x.astype(jnp.float32)
