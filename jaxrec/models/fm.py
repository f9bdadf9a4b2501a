"""Factorization machine: `afm_classic` with uniform pair weights (the AFM paper's ablation).

The pooled interaction is the FM sum Σ_{i<j} v_i ⊙ v_j divided by the number of
present pairs, computed in O(F k) with ½[(Σv)² − Σv²]; pᵀ (learned) projects it.
There is no attention network.
"""

from __future__ import annotations

from jaxrec.models.afm_classic import AFMClassic


class FM(AFMClassic):
  """Click logit of a factorization machine over the 39 Criteo fields (see AFMClassic)."""

  attention: bool = False
