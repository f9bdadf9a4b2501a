"""DLRM (Naumov et al. 2019): bottom MLP + embeddings + interaction + top MLP."""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.interactions import CatInteraction, DotInteraction
from jaxrec.layers.mlp import MLP


class DLRM(nn.Module):
  """Click logit from dense features and gathered embedding rows.

  Attributes:
    layout: embedding tables the rows come from.
    bottom_mlp: bottom layer sizes; the last must equal the embedding dim
      for the dot interaction (reference default 512-256-64-16).
    top_mlp: top layer sizes, ending in 1 (reference default 512-256-1).
    interaction: "dot" or "cat".
    self_interaction: include <t_i, t_i> terms (the reference's
      arch-interaction-itself).
    dtype: matmul compute dtype (None = float32).
    kernels: the dot interaction as the fused CPU kernel (`jaxrec.kernels.cpu`).
  """

  layout: EmbeddingLayout
  bottom_mlp: Sequence[int] = (512, 256, 64, 16)
  top_mlp: Sequence[int] = (512, 256, 1)
  interaction: str = "dot"
  self_interaction: bool = False
  dtype: jnp.dtype | None = None
  kernels: bool = False

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    del train  # no dropout in DLRM
    x = MLP(self.bottom_mlp, activate_final=True, dtype=self.dtype, name="bottom")(dense)
    fields = FieldEmbeddings(self.layout, name="embedding")(rows)
    if self.interaction == "dot":
      z = DotInteraction(self.self_interaction, self.kernels, name="interaction")(x, fields)
    else:
      z = CatInteraction(name="interaction")(x, fields)
    return MLP(self.top_mlp, dtype=self.dtype, name="top")(z)[..., 0]
