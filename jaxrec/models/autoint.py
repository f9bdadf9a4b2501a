"""AutoInt (Song et al. 2019): field interactions learned by multi-head self-attention.

Every field is a vector: each categorical field its embedding row, each dense
feature i its field embedding scaled by its value (x_i e_i, as in
`afm_classic`). An interacting layer lets every field attend to all fields,
per head h with query, key and value maps W_Q^h, W_K^h, W_V^h [d, d']:

    a_mk^h = softmax_k(<W_Q^h e_m, W_K^h e_k>),   ẽ_m^h = Σ_k a_mk^h W_V^h e_k
    e_m' = ReLU([ẽ_m^1, ..., ẽ_m^H] + W_res e_m)

`attention_layers` such layers are stacked and the logit is a linear map of
all final field vectors: logit = wᵀ [e_1', ..., e_F'] + b. The maps are
`jaxrec.layers.mlp.Dense` layers, so the low-rank transforms apply to them.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import Dense
from jaxrec.models import registry
from jaxrec.models.afm_classic import dense_field_embeddings


def self_attention(query: jax.Array, key: jax.Array, value: jax.Array, heads: int) -> jax.Array:
  """Multi-head attention of fields over fields: [B, F, H d'] projections -> [B, F, H d']."""
  b, f, width = query.shape
  split = lambda x: x.reshape(b, f, heads, width // heads)
  scores = jnp.einsum("bmhd,bkhd->bhmk", split(query), split(key))
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bhmk,bkhd->bmhd", weights, split(value)).reshape(b, f, width)


class InteractingLayer(nn.Module):
  """One AutoInt interacting layer: [B, F, d] -> [B, F, heads * head_dim]."""

  heads: int = 2
  head_dim: int = 32
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, fields: jax.Array) -> jax.Array:
    b, f, d = fields.shape
    width = self.heads * self.head_dim
    flat = fields.reshape(b * f, d)

    def project(name):
      return Dense(width, use_bias=False, dtype=self.dtype, name=name)(flat).reshape(b, f, width)

    attended = self_attention(project("query"), project("key"), project("value"), self.heads)
    return nn.relu(attended + project("residual"))


class AutoInt(nn.Module):
  """Click logit of AutoInt over the dense and categorical fields.

  Attributes:
    layout: embedding tables the rows come from.
    attention_layers / attention_heads / attention_head_dim: see `AutoIntConfig`.
    dtype: matmul compute dtype (None = float32).
  """

  layout: EmbeddingLayout
  attention_layers: int = 3
  attention_heads: int = 2
  attention_head_dim: int = 32
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    del train  # no dropout
    fields = FieldEmbeddings(self.layout, name="embedding")(rows).astype(jnp.float32)
    k = fields.shape[-1]
    table = self.param("dense_embedding", nn.initializers.normal(1.0 / jnp.sqrt(k)),
                       (dense.shape[1], k))
    x = jnp.concatenate([dense_field_embeddings(dense, table)[0], fields], axis=1)  # [B, F, d]
    for i in range(self.attention_layers):
      x = InteractingLayer(self.attention_heads, self.attention_head_dim, self.dtype,
                           name=f"interacting_{i}")(x)
    return Dense(1, dtype=self.dtype, name="output")(x.reshape(x.shape[0], -1))[..., 0]


@dataclasses.dataclass(frozen=True)
class AutoIntConfig:
  """AutoInt's hyperparameters (the paper's: 3 layers of 2 heads of size 32).

  Attributes:
    attention_layers: interacting layers stacked (>= 1).
    attention_heads: heads per layer (>= 1).
    attention_head_dim: size d' of each head's query, key and value.
  """

  attention_layers: int = 3
  attention_heads: int = 2
  attention_head_dim: int = 32

  def __post_init__(self):
    for name in ("attention_layers", "attention_heads", "attention_head_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _build(config: AutoIntConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  return AutoInt(layout=layout, attention_layers=config.attention_layers,
                 attention_heads=config.attention_heads,
                 attention_head_dim=config.attention_head_dim, dtype=options.dtype)


# Adam, as in the paper.
registry.register("autoint", AutoIntConfig, _build, optimizer="adam")
