"""Attention CTR: DLRM's embeddings and bottom MLP feeding an AFM layer instead of dot + top MLP.

The bottom-MLP output x [B, d] and the 26 field embeddings form 27 vectors;
the AFM layer pools their 351 pair products with learned attention and
projects the result with pᵀ. First-order terms (a learned scalar per category
id, from the sparse "first_order" table, and a linear term on the dense
features) and a bias are added:

    logit = w0 + wᵀ dense + Σ_i w_{c_i} + pᵀ Σ_{i<j} a_ij (t_i ⊙ t_j),  t = (x, e_1..e_26)
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.afm import AFMHead, first_order_sum
from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import MLP, Dense
from jaxrec.models import registry
from jaxrec.models.afm_classic import AFMClassicConfig, attention_regularizer


class AFM(nn.Module):
  """Click logit of the Attention CTR model.

  Attributes:
    layout: embedding tables the rows come from (with a first-order table).
    bottom_mlp: bottom layer sizes; the last must equal the embedding dim.
    attention_factor: hidden size t of the attention network.
    dropout: dropout rate on the pooled pairwise layer.
    dtype: matmul compute dtype (None = float32).
    kernels: the attention as the fused CPU kernels (`jaxrec.kernels.cpu`).
  """

  layout: EmbeddingLayout
  bottom_mlp: Sequence[int] = (512, 256, 64, 16)
  attention_factor: int = 16
  dropout: float = 0.5
  dtype: jnp.dtype | None = None
  kernels: bool = False

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    x = MLP(self.bottom_mlp, activate_final=True, dtype=self.dtype, name="bottom")(dense)
    fields = FieldEmbeddings(self.layout, name="embedding")(rows)
    vectors = jnp.concatenate([x[:, None, :], fields.astype(x.dtype)], axis=1)  # [B, 27, d]
    pairwise = AFMHead(self.attention_factor, True, self.dropout, self.dtype,
                       kernels=self.kernels, name="afm")(vectors, train=train)
    linear = Dense(1, use_bias=False, kernel_init=nn.initializers.zeros,
                   name="linear")(dense)[..., 0]
    return pairwise + linear + first_order_sum(rows)

  @staticmethod
  def field_names(dense_names: Sequence[str], sparse_names: Sequence[str]) -> tuple[str, ...]:
    """Names of the vectors the attention pairs, in order."""
    del dense_names
    return ("bottom_mlp", *sparse_names)


@dataclasses.dataclass(frozen=True)
class AFMConfig(AFMClassicConfig):
  """AFM's layer hyperparameters and DLRM's bottom MLP (which ends in the embedding dim)."""

  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)


def _build(config: AFMConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  registry.check_bottom_top(config.bottom_mlp, None, layout, "afm")
  return AFM(layout=layout, bottom_mlp=config.bottom_mlp, attention_factor=config.attention_factor,
             dropout=config.dropout, dtype=options.dtype, kernels=options.kernels)


registry.register("afm", AFMConfig, _build, first_order=True, regularizer=attention_regularizer)
