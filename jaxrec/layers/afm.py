"""The attentional factorization machine's pairwise layer (Xiao et al. 2017).

Over field vectors v_1..v_F ([B, F, k]) the layer forms every pair product
v_i ⊙ v_j (i < j; P = F(F-1)/2 pairs, one static gather per side), scores each
with the attention network a'_ij = hᵀ ReLU(W (v_i ⊙ v_j) + b), normalises the
scores with a softmax over pairs and pools the products with those weights:

    pooled = Σ_ij a_ij (v_i ⊙ v_j)   ->   [B, k]

The caller projects `pooled` with pᵀ (`AFMHead`). The attention W is a
`jaxrec.layers.mlp.Dense`, so low-rank transforms of the parameter tree apply
to it. With ``attention=False`` the weights are uniform (1 / number of present
pairs) and the layer is a factorization machine, computed in O(F k) with the
identity Σ_{i<j} v_i ⊙ v_j = ½[(Σ v)² − Σ v²].

An optional ``mask`` [B, F] (1 = present) removes fields from the pairs: a pair
with an absent field gets weight exactly 0 (Xiao et al. sum over the non-zero
features of a sparse input; `afm_classic` masks zero-valued dense fields).
The attention weights are sown as ``intermediates/.../attention_weights`` [B, P] for
`jaxrec.models.attention_map`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec.kernels import cpu as cpu_kernels
from jaxrec.layers.fusion import materialized, unrolled_matmul
from jaxrec.layers.mlp import Dense, effective_kernel
from jaxrec.layers.varying import vary_like


def upper_pairs(num_fields: int) -> tuple[np.ndarray, np.ndarray]:
  """(i, j) index arrays of all pairs i < j, row-major (0,1), (0,2), ..., (F-2,F-1)."""
  i, j = np.triu_indices(num_fields, k=1)
  return i.astype(np.int32), j.astype(np.int32)


def _pair_maps(num_fields: int) -> tuple[np.ndarray, np.ndarray]:
  """[F, F] pair index of each cell: `symmetric` (both triangles) and `upper` (i < j only);
  P (a zero slot appended after the P pairs) elsewhere."""
  i, j = upper_pairs(num_fields)
  p = len(i)
  symmetric = np.full((num_fields, num_fields), p, np.int32)
  symmetric[i, j] = symmetric[j, i] = np.arange(p, dtype=np.int32)
  upper = np.full((num_fields, num_fields), p, np.int32)
  upper[i, j] = np.arange(p, dtype=np.int32)
  return symmetric, upper


def _with_zero_slot(pairs: jax.Array) -> jax.Array:
  """[B, P, ...] -> [B, P + 1, ...] with a zero last slot (the target of unused cells)."""
  zero = jnp.zeros((pairs.shape[0], 1) + pairs.shape[2:], pairs.dtype)
  return jnp.concatenate([pairs, zero], axis=1)


@jax.custom_vjp
def pair_products(fields: jax.Array) -> jax.Array:
  """All v_i ⊙ v_j for i < j: [B, F, k] -> [B, P, k] (two static gathers).

  The VJP is hand-written: autodiff of the gathers is a scatter-add into
  [B, F, k], which XLA:CPU runs as a serial scatter; dv_i = Σ_j D_ij ⊙ v_j is
  computed instead as F fused static gathers of the symmetric pair cotangent D.
  """
  i, j = upper_pairs(fields.shape[1])
  return fields[:, i, :] * fields[:, j, :]


def _pair_products_fwd(fields):
  return pair_products(fields), fields


def _pair_products_bwd(fields, d_products):
  num_fields = fields.shape[1]
  symmetric, _ = _pair_maps(num_fields)
  # dv_i = Σ_{j != i} D_ij ⊙ v_j, one static gather of D's column j per term; the
  # diagonal cell reads pair 0 and is zeroed by a constant mask (no padded copy of D).
  off_diagonal = 1.0 - np.eye(num_fields, dtype=np.float32)
  column = np.where(symmetric == len(upper_pairs(num_fields)[0]), 0, symmetric)
  d_fields = None
  for j in range(num_fields):  # unrolled: XLA fuses the F terms into one loop
    term = (d_products[:, column[:, j], :] * fields[:, j:j + 1, :]
            * off_diagonal[:, j, None].astype(d_products.dtype))
    d_fields = term if d_fields is None else d_fields + term
  # Computed once: XLA would otherwise recompute this fusion in every consumer
  # of the row gradients (the sparse update and the finiteness check).
  d_fields = materialized(d_fields)
  return (d_fields.astype(fields.dtype),)


pair_products.defvjp(_pair_products_fwd, _pair_products_bwd)


def attention_scores(products: jax.Array, kernel: jax.Array, bias: jax.Array,
                     h: jax.Array) -> jax.Array:
  """The attention network's scores hᵀ ReLU(Wᵀ x + b) for rows x: [N, k] -> [N] (float32)."""
  # Inside shard_map a custom VJP must return cotangents that vary over the same
  # mesh axes as its inputs: the (replicated) weights are cast to vary like the
  # rows, and JAX sums their gradients over the devices. A no-op elsewhere.
  kernel, bias, h = (vary_like(w, products) for w in (kernel, bias, h))
  return _attention_scores(products, kernel, bias, h)


@jax.custom_vjp
def _attention_scores(products: jax.Array, kernel: jax.Array, bias: jax.Array,
                      h: jax.Array) -> jax.Array:
  """`attention_scores` with a hand-written VJP.

  With E = ds ⊗ 1[Wᵀx + b > 0] (so dHidden = E diag(h)), the Gram matrix
  G = Xᵀ E and e = Σ_n E_n:

      dW = G diag(h),   db = e ⊙ h,   dX = E (W diag(h))ᵀ,
      dh_t = Σ_n E_nt (Wᵀ x_n + b)_t = Σ_k W_kt G_kt + b_t e_t,

  so the backward makes one [N, t] array (E) and dh costs no pass over it.
  """
  return _attention_scores_fwd(products, kernel, bias, h)[0]


def _attention_scores_fwd(products, kernel, bias, h):
  # Accumulated in float32 also when the rows are stored in a narrower dtype.
  hidden = jnp.maximum(unrolled_matmul(products.astype(jnp.float32), kernel) + bias, 0.0)
  # A matrix-vector product, not a reduction: XLA:CPU hands reductions to a
  # library fusion that would materialise every operand of the ReLU.
  return hidden @ h, (products, kernel, bias, h, hidden)


def _attention_scores_bwd(residuals, d_scores):
  products, kernel, bias, h, hidden = residuals
  d_scores = materialized(d_scores)
  e_rows = jnp.where(hidden > 0, d_scores[:, None], 0.0)  # [N, t]
  gram = jnp.matmul(products.T, e_rows.astype(products.dtype),
                    preferred_element_type=jnp.float32)  # [k, t]
  e_sum = jnp.sum(e_rows, axis=0)  # [t]
  d_kernel = gram * h
  d_bias = e_sum * h
  d_h = jnp.sum(kernel * gram, axis=0) + bias * e_sum
  d_products = e_rows.astype(products.dtype) @ (kernel * h).T.astype(products.dtype)
  return (d_products, d_kernel.astype(kernel.dtype), d_bias.astype(bias.dtype),
          d_h.astype(h.dtype))


_attention_scores.defvjp(_attention_scores_fwd, _attention_scores_bwd)


def pair_scores(fields: jax.Array, kernel: jax.Array, bias: jax.Array, h: jax.Array,
                dtype: jnp.dtype | None = None, kernels: bool = False) -> jax.Array:
  """Attention scores hᵀ ReLU(Wᵀ(v_i ⊙ v_j) + b) of all pairs i < j: [B, F, k] -> [B, P].

  With `kernels` and float32 inputs this is one fused C++ kernel per direction
  (`jaxrec.kernels.cpu`: each example's pair products and hidden layer stay in
  registers; the backward recomputes them); otherwise the [B·P, k] pair products
  are materialised and scored by `attention_scores`.
  """
  if (kernels and jnp.dtype(dtype or fields.dtype) == jnp.float32
      and bias.dtype == h.dtype == jnp.float32
      and cpu_kernels.afm_scores_supported(fields, kernel)):
    kernel, bias, h = (vary_like(w, fields) for w in (kernel, bias, h))
    return _fused_pair_scores(fields, kernel, bias, h)
  products = pair_products(fields)  # [B, P, k]
  b, p, k = products.shape
  # One 2-D op over all (example, pair) rows.
  return attention_scores(products.reshape(b * p, k).astype(dtype or products.dtype),
                          kernel, bias, h).reshape(b, p)


@jax.custom_vjp
def _fused_pair_scores(fields, kernel, bias, h):
  return cpu_kernels.afm_scores_forward(fields, kernel, bias, h)


def _fused_pair_scores_fwd(fields, kernel, bias, h):
  return cpu_kernels.afm_scores_forward(fields, kernel, bias, h), (fields, kernel, bias, h)


def _fused_pair_scores_bwd(residuals, d_scores):
  return cpu_kernels.afm_scores_backward(*residuals, d_scores.astype(jnp.float32))


_fused_pair_scores.defvjp(_fused_pair_scores_fwd, _fused_pair_scores_bwd)


def _weight_matrix(weights: jax.Array, num_fields: int, symmetric: bool = False) -> jax.Array:
  """[B, P] pair weights -> [B, F, F]: A_ij = a_ij for i < j and 0 elsewhere, or A + Aᵀ."""
  cells = _pair_maps(num_fields)[0 if symmetric else 1]
  return _with_zero_slot(weights)[:, cells.reshape(-1)].reshape(-1, num_fields, num_fields)


def weighted_pair_sum(weights: jax.Array, fields: jax.Array, kernels: bool = False) -> jax.Array:
  """Σ_{i<j} a_ij (v_i ⊙ v_j): [B, P] weights, [B, F, k] fields -> [B, k].

  With `kernels` and float32 inputs, a fused kernel per direction
  (`jaxrec.kernels.cpu`). Otherwise computed as Σ_i v_i ⊙ (A v)_i with the
  upper-triangular weight matrix A, one small batched matmul, so the [B, P, k]
  products are never read; the VJP likewise: da_ij = gᵀ(v_i ⊙ v_j) from the Gram
  matrix of (g ⊙ v) and v, and dv = g ⊙ (A + Aᵀ) v.
  """
  # Decided outside the custom VJP, so that the choice is part of its trace key.
  use_kernel = kernels and cpu_kernels.weighted_sum_supported(weights, fields)
  return _weighted_pair_sum(weights, fields, use_kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _weighted_pair_sum(weights, fields, use_kernel):
  if use_kernel:
    return cpu_kernels.afm_weighted_sum_forward(weights, fields)
  a = _weight_matrix(weights, fields.shape[1])
  return jnp.sum(fields * jnp.einsum("bij,bjk->bik", a, fields), axis=1)


def _weighted_pair_sum_fwd(weights, fields, use_kernel):
  return _weighted_pair_sum(weights, fields, use_kernel), (weights, fields)


def _weighted_pair_sum_bwd(use_kernel, residuals, g):
  weights, fields = residuals
  if use_kernel:
    return cpu_kernels.afm_weighted_sum_backward(weights, fields, g.astype(jnp.float32))
  batch, num_fields, _ = fields.shape
  i, j = upper_pairs(num_fields)
  gram = jnp.einsum("bik,bjk->bij", fields * g[:, None, :], fields)
  d_weights = gram.reshape(batch, -1)[:, i * num_fields + j]
  a_sym = _weight_matrix(weights, num_fields, symmetric=True)
  d_fields = g[:, None, :] * jnp.einsum("bij,bjk->bik", a_sym, fields)
  return d_weights.astype(weights.dtype), d_fields.astype(fields.dtype)


_weighted_pair_sum.defvjp(_weighted_pair_sum_fwd, _weighted_pair_sum_bwd)


def fm_pooled(fields: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """FM pooling with uniform weights: ½[(Σv)² − Σv²] / (number of present pairs), [B, k]."""
  if mask is not None:
    fields = fields * mask[..., None].astype(fields.dtype)
    n = jnp.sum(mask.astype(fields.dtype), axis=1)
  else:
    n = jnp.full(fields.shape[:1], fields.shape[1], fields.dtype)
  s = jnp.sum(fields, axis=1)
  pair_sum = 0.5 * (s * s - jnp.sum(fields * fields, axis=1))
  num_pairs = jnp.maximum(0.5 * n * (n - 1.0), 1.0)
  return pair_sum / num_pairs[:, None]


def masked_softmax(scores: jax.Array, pair_mask: jax.Array | None) -> jax.Array:
  """Softmax over the last axis that gives masked entries weight exactly 0."""
  if pair_mask is None:
    return jax.nn.softmax(scores, axis=-1)
  present = pair_mask > 0
  top = jnp.max(jnp.where(present, scores, -jnp.inf), axis=-1, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  # The inner where keeps exp's argument finite, so masked entries get zero gradient.
  e = jnp.where(present, jnp.exp(jnp.where(present, scores, top) - top), 0.0)
  return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)


def _vector_init(key: jax.Array, shape: tuple[int], dtype=jnp.float32) -> jax.Array:
  """N(0, 1/n) for the projection vectors h and p."""
  return jax.random.normal(key, shape, dtype) / jnp.sqrt(shape[0]).astype(dtype)


def batch_chunks(batch: int, chunk_size: int) -> list[tuple[int, int]]:
  """(start, stop) of ceil(batch / chunk_size) near-equal, contiguous slices of a batch."""
  count = max(1, -(-batch // max(chunk_size, 1)))
  bounds = np.linspace(0, batch, count + 1).round().astype(int)
  return [(int(a), int(z)) for a, z in zip(bounds[:-1], bounds[1:])]


def attention_pool(fields: jax.Array, kernel: jax.Array, bias: jax.Array, h: jax.Array,
                   pair_mask: jax.Array | None = None, dtype: jnp.dtype | None = None,
                   kernels: bool = False) -> tuple[jax.Array, jax.Array]:
  """AFM pooling of [B, F, k] fields with attention W = `kernel`, b = `bias`, h.

  Returns the pooled vectors [B, k] and the attention weights [B, P]. `kernels`:
  the fused CPU kernels where they support the shapes.
  """
  scores = pair_scores(fields, kernel, bias, h, dtype, kernels)
  weights = masked_softmax(scores, pair_mask)
  return weighted_pair_sum(weights, fields.astype(jnp.float32), kernels), weights


class AFMPooling(nn.Module):
  """Attention-pooled pair products [B, F, k] -> [B, k].

  The batch is pooled in independent slices of `chunk_size` examples, written
  out as separate ops: each slice's [chunk · P, k] pair tensors stay in cache,
  and XLA runs the slices concurrently on the CPU's cores.

  Attributes:
    attention_factor: hidden size t of the attention network.
    attention: learn the weights (AFM); False = uniform weights (FM).
    dtype: compute dtype of the attention matmul.
    chunk_size: examples per slice (None = the whole batch at once).
    kernels: the fused CPU kernels (`jaxrec.kernels.cpu`).
  """

  attention_factor: int = 16
  attention: bool = True
  dtype: jnp.dtype | None = None
  chunk_size: int | None = 256
  kernels: bool = False

  @nn.compact
  def __call__(self, fields: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if not self.attention:
      return fm_pooled(fields, mask)
    attention = Dense(self.attention_factor, dtype=self.dtype, name="attention").weights(
        fields.shape[-1])
    h = self.param("h", _vector_init, (self.attention_factor,))
    kernel = effective_kernel(attention)
    pair_mask = None
    if mask is not None:
      i, j = upper_pairs(fields.shape[1])
      pair_mask = mask[:, i] * mask[:, j]
    pooled, weights = [], []
    for start, stop in batch_chunks(fields.shape[0], self.chunk_size or fields.shape[0]):
      chunk_pooled, chunk_weights = attention_pool(
          fields[start:stop], kernel, attention["bias"], h,
          None if pair_mask is None else pair_mask[start:stop], self.dtype, self.kernels)
      pooled.append(chunk_pooled)
      weights.append(chunk_weights)
    self.sow("intermediates", "attention_weights", jnp.concatenate(weights))
    return jnp.concatenate(pooled)


def present_pair_count(fields: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Number of pairs of present fields per example, [B] (F(F-1)/2 without a mask)."""
  if mask is None:
    f = fields.shape[1]
    return jnp.full(fields.shape[:1], f * (f - 1) / 2, jnp.float32)
  n = jnp.sum(mask.astype(jnp.float32), axis=1)
  return 0.5 * n * (n - 1.0)


class AFMHead(nn.Module):
  """Logit = pᵀ dropout(pooled pair products) + w0 (first-order terms are added by the model).

  Attributes:
    attention_factor: hidden size t of the attention network.
    attention: learned (AFM) or uniform (FM) pair weights.
    dropout: dropout rate on the pooled pairwise layer (Xiao et al.: 0.5).
    scale_by_pairs: multiply the pooled vector by the number of present
      pairs P, i.e. use weights P·a_ij that average 1, so that uniform
      attention is exactly the FM sum Σ_{i<j} v_i ⊙ v_j (not its mean) and the
      pairwise term starts on the FM's scale rather than 1/P of it.
    dtype: compute dtype of the attention matmul.
    kernels: the fused CPU kernels (`jaxrec.kernels.cpu`).
  """

  attention_factor: int = 16
  attention: bool = True
  dropout: float = 0.0
  scale_by_pairs: bool = True
  dtype: jnp.dtype | None = None
  kernels: bool = False

  @nn.compact
  def __call__(self, fields: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    pooled = AFMPooling(self.attention_factor, self.attention, self.dtype,
                        kernels=self.kernels, name="pooling")(fields, mask)
    if self.scale_by_pairs:
      pooled = pooled * present_pair_count(fields, mask)[:, None]
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    p = self.param("p", _vector_init, (fields.shape[-1],))
    w0 = self.param("w0", nn.initializers.zeros, ())
    return pooled @ p + w0


def first_order_sum(rows: Mapping[str, jax.Array]) -> jax.Array:
  """Σ_i w_{x_i}: the per-category scalars of the "first_order" table, summed -> [B]."""
  if "first_order" not in rows:
    raise ValueError("this model needs first-order rows: build its embedding layout with"
                     " EmbeddingConfig(first_order=True)")
  w = rows["first_order"]
  return jnp.sum(w.reshape(w.shape[0], -1), axis=1)


def attention_kernels(params: Any) -> list[jax.Array]:
  """Every attention W in a param tree (a dense kernel, or u @ v when factorized)."""
  found = []

  def visit(tree):
    if not isinstance(tree, Mapping):
      return
    for name, sub in tree.items():
      if name == "attention" and isinstance(sub, Mapping) and ("kernel" in sub or "u" in sub):
        found.append(effective_kernel(sub))
      else:
        visit(sub)

  visit(params)
  return found


def attention_l2(params: Any, weight: float) -> jax.Array:
  """weight · Σ W² over the attention kernels of `params` (Xiao et al.'s L2 on W)."""
  return weight * sum((jnp.sum(jnp.square(w)) for w in attention_kernels(params)),
                      jnp.zeros((), jnp.float32))
