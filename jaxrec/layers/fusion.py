"""Small ops written for XLA:CPU's fusion rules, with the FLOPs they stand for.

XLA:CPU hands every dot to a matmul library and fuses cheap elementwise
producers into all their consumers (it drops `optimization_barrier`). Two
consequences are worked around here:

* `unrolled_matmul`: ``x @ w`` for a small ``[k, t]`` ``w`` (AFM's 16x16
  attention) as k broadcast multiply-adds, one elementwise loop that XLA fuses
  with its producer and consumer; a library matmul with k = t = 16 is far from
  the matmul library's efficient sizes and needs its input and output written
  out.
* `materialized`: a product with a small identity, so a value is computed once
  into its own buffer instead of being recomputed inside every consumer.

Both are named jitted functions, so `jaxrec.train.profiling.matmul_flops`
counts `unrolled_matmul` as the matmul it is and `materialized` as nothing
(`MATMUL_FLOPS`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp


@jax.jit
def unrolled_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w for [N, k] x and a small [k, t] w, as k broadcast multiply-adds."""
  return sum(x[:, i:i + 1] * w[i] for i in range(w.shape[0]))


@jax.jit
def materialized(x: jax.Array) -> jax.Array:
  """x, computed once into its own buffer (a product with an identity of width ≤ 16)."""
  width = next(w for w in (16, 8, 4, 2, 1) if x.size % w == 0)
  return (x.reshape(-1, width) @ jnp.eye(width, dtype=x.dtype)).reshape(x.shape)


def _unrolled_matmul_flops(in_shapes, out_shapes) -> int:
  (x, _), (out,) = in_shapes, out_shapes
  return 2 * math.prod(out) * x[-1]


# Jitted-function name -> FLOPs of one call from its input and output shapes.
MATMUL_FLOPS: dict[str, Callable[[list, list], int]] = {
    "unrolled_matmul": _unrolled_matmul_flops,
    "materialized": lambda in_shapes, out_shapes: 0,
}
