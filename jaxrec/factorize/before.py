"""Approach 1: factorized structure from the start, factors trained from scratch.

`before(params, config)` replaces every planned kernel with fresh factors
``u [m, r]``, ``v [r, n]`` drawn N(0, s^2) with s chosen so that ``u @ v`` has
the dense init's variance 2 / (m + n) (`jaxrec.layers.mlp.factor_std`), the
same init a `Dense(rank=r)` gets. The trained dense kernel is discarded: apply
it right after init. Biases and every other leaf are returned untouched.
"""

from __future__ import annotations

import jax

from jaxrec.factorize import rank as rank_lib
from jaxrec.factorize.rank import FactorizeConfig, Params
from jaxrec.layers.mlp import factor_std


def before(params: Params, config: FactorizeConfig) -> tuple[dict, FactorizeConfig]:
  """Fresh low-rank factors for every planned layer; returns (params', config with ranks)."""
  layers = rank_lib.plan(params, config)
  key = jax.random.key(config.seed)
  out = dict(params)
  for i, layer in enumerate(layers):
    if layer.rank is None:
      continue
    old = rank_lib.get_layer(out, layer.name)
    dtype = (old["kernel"] if "kernel" in old else old["u"]).dtype
    ku, kv = jax.random.split(jax.random.fold_in(key, i))
    std = factor_std(layer.m, layer.n, layer.rank)
    new = {k: v for k, v in old.items() if k not in ("kernel", "u", "v")}
    new["u"] = (jax.random.normal(ku, (layer.m, layer.rank)) * std).astype(dtype)
    new["v"] = (jax.random.normal(kv, (layer.rank, layer.n)) * std).astype(dtype)
    out = rank_lib.replace_layer(out, layer.name, new)
  return out, rank_lib.with_ranks(config, layers)
