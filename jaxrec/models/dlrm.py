"""DLRM (Naumov et al. 2019): bottom MLP + embeddings + interaction + top MLP."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.interactions import CatInteraction, DotInteraction
from jaxrec.layers.mlp import MLP
from jaxrec.models import registry


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


@dataclasses.dataclass(frozen=True)
class DLRMConfig:
  """DLRM's hyperparameters (the reference's defaults).

  Attributes:
    bottom_mlp / top_mlp: MLP layer sizes (the top ends in 1).
    interaction: "dot" or "cat".
    self_interaction: the dot interaction includes <t_i, t_i>.
  """

  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
  top_mlp: tuple[int, ...] = (512, 256, 1)
  interaction: str = "dot"
  self_interaction: bool = False

  def __post_init__(self):
    if self.interaction not in ("dot", "cat"):
      raise ValueError(f"interaction must be dot or cat, got {self.interaction!r}")
    if self.self_interaction and self.interaction != "dot":
      raise ValueError("self_interaction only applies to interaction='dot'")


def _build(config: DLRMConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  registry.check_bottom_top(config.bottom_mlp, config.top_mlp, layout,
                            "dlrm with dot interaction", config.interaction == "dot")
  return DLRM(layout=layout, bottom_mlp=config.bottom_mlp, top_mlp=config.top_mlp,
              interaction=config.interaction, self_interaction=config.self_interaction,
              dtype=options.dtype, kernels=options.kernels)


# Adagrad (row-wise on the tables) with model selection trains DLRM best on the real Kaggle
# sample (docs/recipes.md); the reference's SGD at 0.1 is --optimizer=sgd.
registry.register("dlrm", DLRMConfig, _build, optimizer="adagrad")
