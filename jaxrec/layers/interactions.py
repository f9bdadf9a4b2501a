"""Feature interactions over field vectors: DLRM's dot product and concatenation.

Both take the bottom-MLP output ``x [B, d]`` and field embeddings
``fields [B, F, d]`` and return the top MLP's input. Pairs are vectorised: one
batched matmul and one static gather, no Python loop over the F(F+1)/2 pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def pair_indices(num_vectors: int, self_interaction: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(i, j) index arrays in the DLRM reference's order: i ascending, then j < i (j <= i)."""
  offset = 1 if self_interaction else 0
  li = np.array([i for i in range(num_vectors) for j in range(i + offset)], dtype=np.int32)
  lj = np.array([j for i in range(num_vectors) for j in range(i + offset)], dtype=np.int32)
  return li, lj


def dot_interaction(x: jax.Array, fields: jax.Array, self_interaction: bool = False) -> jax.Array:
  """[x, <t_i, t_j> for pairs of t = (x, fields...)] -> [B, d + P].

  With 26 fields and self_interaction False, P = 27 * 26 / 2 = 351.
  """
  t = jnp.concatenate([x[:, None, :], fields], axis=1)  # [B, F+1, d]
  n = t.shape[1]
  gram = jnp.einsum("bid,bjd->bij", t, t)
  li, lj = pair_indices(n, self_interaction)
  flat = gram.reshape(gram.shape[0], n * n)[:, li * n + lj]
  return jnp.concatenate([x, flat], axis=1)


def cat_interaction(x: jax.Array, fields: jax.Array) -> jax.Array:
  """[x, fields flattened] -> [B, d + F*d]."""
  return jnp.concatenate([x, fields.reshape(fields.shape[0], -1)], axis=1)


class DotInteraction(nn.Module):
  """DLRM's dot interaction (no parameters)."""

  self_interaction: bool = False

  def __call__(self, x: jax.Array, fields: jax.Array) -> jax.Array:
    return dot_interaction(x, fields, self.self_interaction)


class CatInteraction(nn.Module):
  """Concatenation interaction (no parameters)."""

  def __call__(self, x: jax.Array, fields: jax.Array) -> jax.Array:
    return cat_interaction(x, fields)
