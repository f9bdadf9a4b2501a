"""DLRM-DCNv2 (the MLPerf recommendation model): DLRM with DCN-V2 cross layers as interaction.

The bottom-MLP output x [B, d] and the 26 field embeddings form 27 vectors;
flattened to x0 [B, 27 d] they go through the cross network (low-rank in
MLPerf: 3 layers, rank 512 at d = 128) instead of the pairwise dot
products, and the top MLP maps the [B, 27 d] result to the logit.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.cross import CrossNetwork
from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import MLP
from jaxrec.models import registry
from jaxrec.models.dcnv2 import check_cross


class DLRMDCN(nn.Module):
  """Click logit of DLRM-DCNv2.

  Attributes:
    layout: embedding tables the rows come from.
    bottom_mlp: bottom layer sizes; the last must equal the embedding dim.
    top_mlp: top layer sizes, ending in 1.
    cross_layers: number of cross layers.
    cross_rank: init rank of the cross kernels (None = full).
    dtype: matmul compute dtype (None = float32).
  """

  layout: EmbeddingLayout
  bottom_mlp: Sequence[int] = (512, 256, 64, 16)
  top_mlp: Sequence[int] = (512, 256, 1)
  cross_layers: int = 3
  cross_rank: int | None = None
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    del train  # no dropout
    x = MLP(self.bottom_mlp, activate_final=True, dtype=self.dtype, name="bottom")(dense)
    fields = FieldEmbeddings(self.layout, name="embedding")(rows)
    vectors = jnp.concatenate([x[:, None, :], fields.astype(x.dtype)], axis=1)  # [B, 27, d]
    x0 = vectors.reshape(vectors.shape[0], -1)
    z = CrossNetwork(self.cross_layers, self.cross_rank, self.dtype, name="interaction")(x0)
    return MLP(self.top_mlp, dtype=self.dtype, name="top")(z)[..., 0]


@dataclasses.dataclass(frozen=True)
class DLRMDCNConfig:
  """Attributes: DLRM's bottom_mlp / top_mlp and DCN-V2's cross_layers / cross_rank."""

  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
  top_mlp: tuple[int, ...] = (512, 256, 1)
  cross_layers: int = 3
  cross_rank: int | None = None

  def __post_init__(self):
    check_cross(self.cross_layers, self.cross_rank)


def _build(config: DLRMDCNConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  registry.check_bottom_top(config.bottom_mlp, config.top_mlp, layout, "dlrm_dcn")
  return DLRMDCN(layout=layout, bottom_mlp=config.bottom_mlp, top_mlp=config.top_mlp,
                 cross_layers=config.cross_layers, cross_rank=config.cross_rank,
                 dtype=options.dtype)


registry.register("dlrm_dcn", DLRMDCNConfig, _build)
