"""Truncated SVD of trained kernels (optimal in Frobenius norm, Eckart–Young).

A kernel W = U S V^T becomes ``u = U_r sqrt(S_r)`` and ``v = sqrt(S_r) V_r^T``:
the square root of the singular values is split between the factors so that
both have comparable scale (which keeps fine-tuning well conditioned).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.factorize import rank as rank_lib
from jaxrec.factorize.rank import FactorizeConfig, Params

Factorizer = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def svd_factors(kernel: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """(u [m, r], v [r, n]) of the best rank-r approximation of `kernel`."""
  u, s, vt = jnp.linalg.svd(jnp.asarray(kernel, jnp.float32), full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return u[:, :rank] * root[None, :], root[:, None] * vt[:rank]


def singular_values(kernel: jax.Array) -> np.ndarray:
  return np.asarray(jnp.linalg.svd(jnp.asarray(kernel, jnp.float32), compute_uv=False))


def svd_error(kernel: jax.Array, rank: int) -> float:
  """Frobenius error of the best rank-r approximation: sqrt(sum of discarded s_i^2)."""
  s = singular_values(kernel).astype(np.float64)
  return float(np.sqrt(np.sum(s[rank:] ** 2)))


def factorize_layers(params: Params, config: FactorizeConfig,
                     factorizer: Factorizer) -> tuple[dict, FactorizeConfig]:
  """Replaces each planned layer's kernel by `factorizer(kernel, rank)`; other leaves untouched.

  Layers already factorized are reconstructed (u @ v) first, so transforms compose.
  """
  layers = rank_lib.plan(params, config)
  out = dict(params)
  for layer in layers:
    if layer.rank is None:
      continue
    old = rank_lib.get_layer(out, layer.name)
    kernel = rank_lib.kernel_of(old)
    u, v = factorizer(kernel, layer.rank)
    new = {k: val for k, val in old.items() if k not in ("kernel", "u", "v")}
    new["u"], new["v"] = u.astype(kernel.dtype), v.astype(kernel.dtype)
    out = rank_lib.replace_layer(out, layer.name, new)
  return out, rank_lib.with_ranks(config, layers)


def svd(params: Params, config: FactorizeConfig) -> tuple[dict, FactorizeConfig]:
  """Truncated SVD of every planned kernel; returns (params', config with ranks)."""
  return factorize_layers(params, config, svd_factors)


def reconstruction_report(dense_params: Params, factored_params: Params) -> list[dict]:
  """Per factorized layer: relative Frobenius error of u @ v and of the SVD at the same rank."""
  rows = []
  for path, layer in rank_lib.iter_layers(factored_params):
    if "u" not in layer:
      continue
    kernel = rank_lib.kernel_of(rank_lib.get_layer(dense_params, path))
    r = rank_lib.layer_rank(layer)
    norm = float(jnp.linalg.norm(kernel))
    error = float(jnp.linalg.norm(kernel - rank_lib.kernel_of(layer)))
    rows.append({"name": path, "rank": r,
                 "relative_error": error / max(norm, 1e-30),
                 "svd_relative_error": svd_error(kernel, r) / max(norm, 1e-30)})
  return rows

