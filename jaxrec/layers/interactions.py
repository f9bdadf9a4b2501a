"""Feature interactions over field vectors: DLRM's dot product and concatenation.

Both take the bottom-MLP output ``x [B, d]`` and field embeddings
``fields [B, F, d]`` and return the top MLP's input. Pairs are vectorised: one
batched matmul and one static gather, no Python loop over the F(F+1)/2 pairs.

With ``kernels=True`` (set by the model builder on a CPU backend where the
kernels are built, see `jaxrec.kernels.cpu.resolve`), float32 inputs go to a
fused C++ kernel (the Gram rows of each example computed in registers instead
of XLA:CPU's batched 27x27 matmuls); otherwise the XLA formulation below runs.

The dot interaction has a hand-written VJP. Autodiff of the static gather is a
scatter-add into a zero-filled ``[B, n*n]`` buffer, which on CPU cost more than
the Gram matmul itself; here the symmetric cotangent of the Gram matrix is one
gather of the pair cotangents and the input cotangent is one batched matmul
``G @ t``. The forward concatenates x and the Gram matrix's
lower-triangle row slices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec.kernels import cpu as cpu_kernels


def pair_indices(num_vectors: int, self_interaction: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(i, j) index arrays in the DLRM reference's order: i ascending, then j < i (j <= i)."""
  offset = 1 if self_interaction else 0
  li = np.array([i for i in range(num_vectors) for j in range(i + offset)], dtype=np.int32)
  lj = np.array([j for i in range(num_vectors) for j in range(i + offset)], dtype=np.int32)
  return li, lj


def _symmetric_map(num_vectors: int, self_interaction: bool) -> np.ndarray:
  """[n*n] int: the pair index of cell (i, j) and of (j, i), P (a zero slot) for unused cells."""
  li, lj = pair_indices(num_vectors, self_interaction)
  cells = np.full((num_vectors, num_vectors), len(li), np.int32)
  cells[li, lj] = cells[lj, li] = np.arange(len(li), dtype=np.int32)
  return cells.reshape(-1)


def dot_interaction(x: jax.Array, fields: jax.Array, self_interaction: bool = False,
                    kernels: bool = False) -> jax.Array:
  """[x, <t_i, t_j> for pairs of t = (x, fields...)] -> [B, d + P].

  With 26 fields and self_interaction False, P = 27 * 26 / 2 = 351. With
  `kernels` (and a supported width) the fused CPU kernel; otherwise one batched
  Gram matmul, then the lower triangle's row slices.
  """
  # Decided here, outside the custom VJP, so that the choice is part of its trace key.
  use_kernel = kernels and cpu_kernels.dot_interaction_supported(x, fields)
  return _dot_interaction(x, fields, self_interaction, use_kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot_interaction(x, fields, self_interaction, use_kernel):
  if use_kernel:
    return cpu_kernels.dot_interaction_forward(x, fields, self_interaction)
  t = jnp.concatenate([x[:, None, :], fields.astype(x.dtype)], axis=1)  # [B, n, d]
  gram = jnp.einsum("bid,bjd->bij", t, t)
  # The lower triangle as row slices (i ascending, j < i): a row-major copy. A gather
  # of the same columns made XLA:CPU write it transposed and feed the top MLP's
  # first matmul through a slow transposed dot.
  offset = 1 if self_interaction else 0
  rows = [gram[:, i, :i + offset] for i in range(t.shape[1]) if i + offset > 0]
  return jnp.concatenate([x, *rows], axis=1)


def _dot_fwd(x, fields, self_interaction, use_kernel):
  return _dot_interaction(x, fields, self_interaction, use_kernel), (x, fields)


def _dot_bwd(self_interaction, use_kernel, residuals, g):
  x, fields = residuals
  if use_kernel:
    return cpu_kernels.dot_interaction_backward(x, fields, g.astype(x.dtype), self_interaction)
  batch, dim = x.shape
  t = jnp.concatenate([x[:, None, :], fields.astype(x.dtype)], axis=1)
  n = t.shape[1]
  pairs = jnp.concatenate([g[:, dim:], jnp.zeros((batch, 1), g.dtype)], axis=1)
  # d<t_i, t_j>/dt_i = g_ij t_j and /dt_j = g_ij t_i: G = L + L^T, gathered at once
  # (building L and adding its transpose would be a second pass over the pairs).
  # <t_i, t_i> has derivative 2 g_ii t_i: the diagonal doubles.
  gram_grad = pairs[:, _symmetric_map(n, self_interaction)].reshape(batch, n, n)
  if self_interaction:
    gram_grad = gram_grad * (1.0 + np.eye(n, dtype=np.float32)).astype(g.dtype)
  dt = jnp.einsum("bij,bjd->bid", gram_grad, t)
  return g[:, :dim] + dt[:, 0], dt[:, 1:].astype(fields.dtype)


_dot_interaction.defvjp(_dot_fwd, _dot_bwd)


def cat_interaction(x: jax.Array, fields: jax.Array) -> jax.Array:
  """[x, fields flattened] -> [B, d + F*d]."""
  return jnp.concatenate([x, fields.reshape(fields.shape[0], -1)], axis=1)


class DotInteraction(nn.Module):
  """DLRM's dot interaction (no parameters); `kernels`: the fused CPU kernel."""

  self_interaction: bool = False
  kernels: bool = False

  def __call__(self, x: jax.Array, fields: jax.Array) -> jax.Array:
    return dot_interaction(x, fields, self.self_interaction, self.kernels)


class CatInteraction(nn.Module):
  """Concatenation interaction (no parameters)."""

  def __call__(self, x: jax.Array, fields: jax.Array) -> jax.Array:
    return cat_interaction(x, fields)
