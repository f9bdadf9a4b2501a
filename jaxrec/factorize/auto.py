"""Automatic per-layer rank choice (the study's future work), then truncated SVD.

Two criteria:

* validation logloss (default): layers are visited in tree order; for each,
  a binary search over r in [1, r_max] finds the smallest rank whose SVD
  truncation keeps ``evaluate(params) <= dense logloss + tolerance``, with the
  layers already visited at their chosen ranks. Every accepted rank was
  evaluated with all earlier choices in place, so the final model is itself
  within the tolerance (a layer with no acceptable rank stays dense). The
  search assumes logloss falls as r grows; where it does not, the rank found
  is acceptable but may not be the smallest. Candidates are evaluated as
  dense kernels ``U_r S_r V_r^T`` of unchanged shape, so the evaluation
  function compiles once for the whole search.
* spectral energy (``config.auto_energy > 0``, cheap): the smallest r with
  sum_{i<=r} s_i^2 >= energy * sum_i s_i^2; no evaluation.

r_max is the rank rule at ``config.rank_fraction`` (1.0: any rank that saves
parameters); a rank that saves nothing leaves the layer dense.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxrec.factorize import rank as rank_lib
from jaxrec.factorize.rank import FactorizeConfig, Params
from jaxrec.factorize.svd import singular_values, svd

Evaluate = Callable[[Params], float]


def energy_rank(singular: np.ndarray, energy: float) -> int:
  """Smallest r whose leading singular values hold `energy` of sum s_i^2."""
  sq = np.asarray(singular, np.float64) ** 2
  share = np.cumsum(sq) / max(np.sum(sq), 1e-300)
  return int(min(np.searchsorted(share, energy - 1e-12) + 1, len(sq)))


def _truncated(kernel: jnp.ndarray, rank: int) -> jnp.ndarray:
  u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
  return (u[:, :rank] * s[:rank]) @ vt[:rank]


def _with_kernel(params: Params, path: str, kernel) -> dict:
  old = rank_lib.get_layer(params, path)
  layer = {k: v for k, v in old.items() if k not in ("kernel", "u", "v")}
  layer["kernel"] = kernel
  return rank_lib.replace_layer(params, path, layer)


def choose_ranks(params: Params, config: FactorizeConfig,
                 evaluate: Evaluate | None = None) -> tuple[dict[str, int | None], list[dict]]:
  """Per-layer ranks and the search log [{name, rank, logloss}] of the logloss criterion."""
  layers = rank_lib.plan(params, dataclasses.replace(config, ranks=()))
  ranks, log = {}, []
  if config.auto_energy > 0:
    for layer in layers:
      r = energy_rank(singular_values(rank_lib.kernel_of(rank_lib.get_layer(params, layer.name))),
                      config.auto_energy)
      r_max = layer.rank
      ranks[layer.name] = r if r_max is not None and r <= r_max else None
    return ranks, log
  if evaluate is None:
    raise ValueError("auto rank by validation logloss needs an `evaluate(params)` function"
                     " (or set auto_energy > 0)")
  threshold = evaluate(params) + config.auto_tolerance
  current = params
  for layer in layers:
    ranks[layer.name] = None
    if layer.rank is None:
      continue
    kernel = rank_lib.kernel_of(rank_lib.get_layer(params, layer.name)).astype(jnp.float32)
    lo, hi, best = 1, layer.rank, None
    while lo <= hi:
      mid = (lo + hi) // 2
      loss = float(evaluate(_with_kernel(current, layer.name, _truncated(kernel, mid))))
      log.append({"name": layer.name, "rank": mid, "logloss": loss})
      if loss <= threshold:
        best, hi = mid, mid - 1
      else:
        lo = mid + 1
    if best is not None:
      ranks[layer.name] = best
      current = _with_kernel(current, layer.name, _truncated(kernel, best))
  return ranks, log


def auto(params: Params, config: FactorizeConfig,
         evaluate: Evaluate | None = None) -> tuple[dict, FactorizeConfig]:
  """Chooses per-layer ranks, then applies truncated SVD at those ranks.

  Args:
    params: trained dense network params.
    config: `auto_tolerance` / `auto_energy` / `rank_fraction` (upper bound).
    evaluate: params -> validation logloss (unused with `auto_energy`).

  Returns:
    (params', config') with config'.ranks the chosen ranks.
  """
  ranks, _ = choose_ranks(params, config, evaluate)
  return svd(params, dataclasses.replace(config, ranks=tuple(ranks.items())))
