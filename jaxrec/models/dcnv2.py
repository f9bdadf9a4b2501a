"""DCN-V2 (Wang et al. 2021): a cross network and a deep MLP over the same input.

The input x0 [B, 13 + 26 d] is the dense features beside the flattened field
embeddings. ``stacked``: logit = wᵀ deep(cross(x0)) + b; ``parallel``:
logit = wᵀ [cross(x0), deep(x0)] + b. The cross kernels, the deep layers and
w are `jaxrec.layers.mlp.Dense`, so low-rank transforms apply to all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.cross import CrossNetwork
from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import MLP, Dense
from jaxrec.models import registry

DCN_STRUCTURES = ("stacked", "parallel")


def dense_and_fields(dense: jax.Array, fields: jax.Array) -> jax.Array:
  """[dense, fields flattened]: [B, 13] and [B, F, d] -> [B, 13 + F d]."""
  return jnp.concatenate([dense, fields.reshape(fields.shape[0], -1).astype(dense.dtype)], axis=1)


class DCNv2(nn.Module):
  """Click logit of DCN-V2.

  Attributes:
    layout: embedding tables the rows come from.
    cross_layers: number of cross layers.
    cross_rank: init rank of the cross kernels (None = full).
    structure: "stacked" (cross then deep) or "parallel" (side by side).
    deep_mlp: hidden sizes of the deep network (ReLU after each; may be empty).
    dtype: matmul compute dtype (None = float32).
  """

  layout: EmbeddingLayout
  cross_layers: int = 3
  cross_rank: int | None = None
  structure: str = "stacked"
  deep_mlp: Sequence[int] = (512, 256, 64)
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    del train  # no dropout
    fields = FieldEmbeddings(self.layout, name="embedding")(rows)
    x0 = dense_and_fields(dense, fields)
    cross = CrossNetwork(self.cross_layers, self.cross_rank, self.dtype, name="cross")(x0)
    deep = MLP(self.deep_mlp, activate_final=True, dtype=self.dtype, name="deep")
    if self.structure == "stacked":
      z = deep(cross) if self.deep_mlp else cross
    else:
      z = jnp.concatenate([cross, deep(x0)], axis=1) if self.deep_mlp else cross
    return Dense(1, dtype=self.dtype, name="logit")(z)[..., 0].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class DCNv2Config:
  """DCN-V2's hyperparameters.

  Attributes:
    cross_layers: number of cross layers (>= 0).
    cross_rank: init rank of the cross kernels (None = full).
    dcn_structure: "stacked" or "parallel" cross and deep networks.
    deep_mlp: hidden sizes of the deep network.
  """

  cross_layers: int = 3
  cross_rank: int | None = None
  dcn_structure: str = "stacked"
  deep_mlp: tuple[int, ...] = (512, 256, 64)

  def __post_init__(self):
    check_cross(self.cross_layers, self.cross_rank)
    if self.dcn_structure not in DCN_STRUCTURES:
      raise ValueError(f"dcn_structure must be one of {DCN_STRUCTURES},"
                       f" got {self.dcn_structure!r}")


def check_cross(cross_layers: int, cross_rank: int | None) -> None:
  if cross_layers < 0:
    raise ValueError(f"cross_layers must be >= 0, got {cross_layers}")
  if cross_rank is not None and cross_rank < 1:
    raise ValueError(f"cross_rank must be >= 1 or None, got {cross_rank}")


def _build(config: DCNv2Config, layout: EmbeddingLayout, options: registry.NetworkOptions):
  return DCNv2(layout=layout, cross_layers=config.cross_layers, cross_rank=config.cross_rank,
               structure=config.dcn_structure, deep_mlp=config.deep_mlp, dtype=options.dtype)


# Adam, as in the paper: the multiplicative cross layers diverge under SGD at lr 0.1.
registry.register("dcnv2", DCNv2Config, _build, optimizer="adam")
