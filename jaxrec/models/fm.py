"""Factorization machine: `afm_classic` with uniform pair weights (the AFM paper's ablation).

The pooled interaction is the FM sum Σ_{i<j} v_i ⊙ v_j divided by the number of
present pairs, computed in O(F k) with ½[(Σv)² − Σv²]; pᵀ (learned) projects it.
There is no attention network.
"""

from __future__ import annotations

import dataclasses
from jaxrec.models.afm_classic import AFMClassic
from jaxrec.layers.embeddings import EmbeddingLayout
from jaxrec.models import registry


class FM(AFMClassic):
  """Click logit of a factorization machine over the 39 Criteo fields (see AFMClassic)."""

  attention: bool = False


@dataclasses.dataclass(frozen=True)
class FMConfig:
  """Attributes: dropout: dropout on the pooled pairwise layer."""

  dropout: float = 0.5

  def __post_init__(self):
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _build(config: FMConfig, layout: EmbeddingLayout, options: registry.NetworkOptions):
  return FM(layout=layout, dropout=config.dropout, dtype=options.dtype)


registry.register("fm", FMConfig, _build, first_order=True)
