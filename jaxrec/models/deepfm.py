"""DeepFM (Guo et al. 2017): an FM and a deep MLP sharing the field embeddings, logits summed.

FM part, over 39 fields (as `afm_classic`: dense feature i is the value-scaled
field vector x_i e_i, categorical fields their embedding rows):

    fm = w0 + wᵀ dense + Σ_i w_{c_i} + Σ_{i<j} <v_i, v_j>

with the pair sum in O(F k) as ½ Σ_k [(Σ_i v_ik)² − Σ_i v_ik²] and the
first-order scalars from the sparse "first_order" table. Deep part: an MLP
over [dense, the 26 categorical embeddings flattened] ending in one logit.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.afm import first_order_sum
from jaxrec.layers.embeddings import EmbeddingLayout, FieldEmbeddings
from jaxrec.layers.mlp import MLP, Dense
from jaxrec.models.afm_classic import dense_field_embeddings
from jaxrec.models.dcnv2 import dense_and_fields
from jaxrec.models import registry


def fm_pair_sum(vectors: jax.Array) -> jax.Array:
  """Σ_{i<j} <v_i, v_j> for [B, F, k] -> [B], via ½[(Σv)² − Σv²]."""
  s = jnp.sum(vectors, axis=1)
  return 0.5 * jnp.sum(s * s - jnp.sum(vectors * vectors, axis=1), axis=-1)


class DeepFM(nn.Module):
  """Click logit of DeepFM.

  Attributes:
    layout: embedding tables the rows come from (with a first-order table).
    deep_mlp: hidden sizes of the deep network; a final Dense gives its logit.
    dtype: MLP matmul compute dtype (None = float32).
  """

  layout: EmbeddingLayout
  deep_mlp: Sequence[int] = (512, 256, 64)
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, dense: jax.Array, rows: Mapping[str, jax.Array], *,
               train: bool = False) -> jax.Array:
    del train  # no dropout
    fields = FieldEmbeddings(self.layout, name="embedding")(rows).astype(jnp.float32)
    # Small init: 78 value-scaled dense pairs would otherwise dominate the first logits.
    table = self.param("dense_embedding", nn.initializers.normal(0.01),
                       (dense.shape[1], fields.shape[-1]))
    dense_fields, _ = dense_field_embeddings(dense, table)  # zero value -> zero vector
    w0 = self.param("w0", nn.initializers.zeros, ())
    linear = Dense(1, use_bias=False, kernel_init=nn.initializers.zeros, name="linear")(dense)
    fm = (w0 + linear[..., 0] + first_order_sum(rows)
          + fm_pair_sum(jnp.concatenate([dense_fields, fields], axis=1)))
    deep = MLP((*self.deep_mlp, 1), dtype=self.dtype, name="deep")(dense_and_fields(dense, fields))
    return fm + deep[..., 0]


@dataclasses.dataclass(frozen=True)
class DeepFMConfig:
  """Attributes: deep_mlp: hidden sizes of the deep network (each >= 1; may be empty)."""

  deep_mlp: tuple[int, ...] = (512, 256, 64)

  def __post_init__(self):
    if any(n < 1 for n in self.deep_mlp):
      raise ValueError(f"deep_mlp sizes must be >= 1, got {self.deep_mlp}")


def _build(config: DeepFMConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  return DeepFM(layout=layout, deep_mlp=config.deep_mlp, dtype=options.dtype)


# Adam, as in the paper: the unnormalised FM sum diverges under SGD at lr 0.1.
registry.register("deepfm", DeepFMConfig, _build, first_order=True, optimizer="adam")
