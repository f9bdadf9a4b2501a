"""DCN-V2 (Wang et al. 2021): a cross network and a deep MLP over the same input.

The input x0 [B, 13 + 26 d] is the dense features beside the flattened field
embeddings. ``stacked``: logit = wᵀ deep(cross(x0)) + b; ``parallel``:
logit = wᵀ [cross(x0), deep(x0)] + b. The cross kernels, the deep layers and
w are `jaxrec.layers.mlp.Dense`, so low-rank transforms apply to all of them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.cross import CrossNetwork
from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import MLP, Dense

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
