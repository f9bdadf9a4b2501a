"""Xiao et al.'s AFM over all 39 Criteo fields, without a bottom MLP.

Each dense feature i has a field embedding e_i scaled by its value (v_i = x_i e_i,
as in an FM over real-valued features); each categorical field contributes its
embedding row. Zero-valued dense features are absent, as in the sparse
formulation: they are masked out of the pairs. First-order terms are a linear
term on the dense values and a learned scalar per category id:

    logit = w0 + wᵀ dense + Σ_i w_{c_i} + pᵀ Σ_{i<j} a_ij (v_i ⊙ v_j)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.afm import AFMHead, attention_l2, first_order_sum
from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import Dense
from jaxrec.models import registry


def dense_field_embeddings(dense: jax.Array, table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Value-scaled field vectors x_i e_i [B, D, k] and their presence mask (x_i != 0) [B, D]."""
  return dense[:, :, None] * table[None], (dense != 0).astype(jnp.float32)


class AFMClassic(nn.Module):
  """Click logit of an AFM (or, with attention=False, an FM) over dense and categorical fields.

  Attributes:
    layout: embedding tables the rows come from (with a first-order table).
    attention_factor: hidden size t of the attention network.
    dropout: dropout rate on the pooled pairwise layer.
    attention: learned pair weights (AFM) or uniform ones (FM).
    dtype: attention matmul compute dtype (None = float32).
    kernels: the attention as the fused CPU kernels (`jaxrec.kernels.cpu`).
  """

  layout: EmbeddingLayout
  attention_factor: int = 16
  dropout: float = 0.5
  attention: bool = True
  dtype: jnp.dtype | None = None
  kernels: bool = False

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    fields = FieldEmbeddings(self.layout, name="embedding")(rows)  # [B, 26, k]
    k = fields.shape[-1]
    table = self.param("dense_embedding", nn.initializers.normal(1.0 / jnp.sqrt(k)),
                       (dense.shape[1], k))
    dense_fields, dense_mask = dense_field_embeddings(dense, table)
    vectors = jnp.concatenate([dense_fields, fields], axis=1)  # [B, 39, k]
    mask = jnp.concatenate([dense_mask, jnp.ones(fields.shape[:2], jnp.float32)], axis=1)
    pairwise = AFMHead(self.attention_factor, self.attention, self.dropout, self.dtype,
                       kernels=self.kernels, name="afm")(vectors, mask, train=train)
    linear = Dense(1, use_bias=False, kernel_init=nn.initializers.zeros,
                   name="linear")(dense)[..., 0]
    return pairwise + linear + first_order_sum(rows)

  @staticmethod
  def field_names(dense_names: Sequence[str], sparse_names: Sequence[str]) -> tuple[str, ...]:
    """Names of the vectors the attention pairs, in order."""
    return (*dense_names, *sparse_names)


@dataclasses.dataclass(frozen=True)
class AFMClassicConfig:
  """The AFM layer's hyperparameters (Xiao et al.'s defaults).

  Attributes:
    attention_factor: attention network size t.
    dropout: dropout on the pooled pairwise layer.
    attention_l2: L2 weight on the attention kernel W (0 = off).
  """

  attention_factor: int = 16
  dropout: float = 0.5
  attention_l2: float = 0.0

  def __post_init__(self):
    if self.attention_factor < 1:
      raise ValueError(f"attention_factor must be >= 1, got {self.attention_factor}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.attention_l2 < 0:
      raise ValueError(f"attention_l2 must be >= 0, got {self.attention_l2}")


def attention_regularizer(config: AFMClassicConfig):
  """Xiao et al.'s L2 on the attention W, or None when `attention_l2` is 0."""
  if config.attention_l2 > 0:
    return functools.partial(attention_l2, weight=config.attention_l2)
  return None


def _build(config: AFMClassicConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  return AFMClassic(layout=layout, attention_factor=config.attention_factor,
                    dropout=config.dropout, dtype=options.dtype, kernels=options.kernels)


registry.register("afm_classic", AFMClassicConfig, _build, first_order=True,
                  regularizer=attention_regularizer)
