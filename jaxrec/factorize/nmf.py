"""Approach 2: non-negative matrix factorization of trained (signed) kernels.

NMF needs a non-negative matrix, and trained kernels are signed. The
construction used here splits the sign:

  W = W+ - W-,   W+ = max(W, 0),   W- = max(-W, 0)   (both >= 0, disjoint supports)
  W+ ~= A+ B+  (rank r+),   W- ~= A- B-  (rank r- = r - r+),   A, B >= 0

  W ~= [A+ | A-] @ [B+ ; -B-] = u @ v,   u = [A+ | A-] >= 0 (m x r),  v (r x n)

so the layer keeps the plain low-rank form (`Dense` with ``u``, ``v``) at total
rank r. The rank is split in proportion to the squared Frobenius norms of W+
and W- (at least one each when r >= 2 and both parts are non-zero). Each part
is factorized with Lee & Seung's multiplicative updates for the Frobenius
objective ||X - AB||^2 (which never increases), jitted as one `lax.scan`, from
an NNDSVDa start (Boutsidis & Gallopoulos 2008: non-negative parts of the
leading singular vectors, zeros filled with mean(X)). SVD stays optimal at the
same rank; `jaxrec.factorize.svd.reconstruction_report` shows by how much.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrec.factorize.rank import FactorizeConfig, Params
from jaxrec.factorize.svd import factorize_layers

_EPS = 1e-12


def nndsvda_init(x: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """Deterministic non-negative start (A [m, r], B [r, n]) for NMF of x >= 0."""
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
  u, s, v = u[:, :rank], s[:rank], vt[:rank].T  # [m, r], [r], [n, r]
  up, un, vp, vn = jnp.maximum(u, 0), jnp.maximum(-u, 0), jnp.maximum(v, 0), jnp.maximum(-v, 0)
  norm = lambda a: jnp.linalg.norm(a, axis=0)
  pos, neg = norm(up) * norm(vp), norm(un) * norm(vn)
  use_pos = pos >= neg
  a = jnp.where(use_pos, up, un)
  b = jnp.where(use_pos, vp, vn)
  scale = jnp.sqrt(s * jnp.where(use_pos, pos, neg))
  a = a / jnp.maximum(norm(a), _EPS) * scale
  b = b / jnp.maximum(norm(b), _EPS) * scale
  fill = jnp.mean(x)
  a = jnp.where(a > 0, a, fill)
  b = jnp.where(b > 0, b, fill)
  return a, b.T


@functools.partial(jax.jit, static_argnames=("rank", "iterations"))
def multiplicative_updates(x: jax.Array, rank: int,
                           iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Rank-r NMF of x >= 0 by multiplicative updates.

  Args:
    x: non-negative [m, n] matrix.
    rank: r >= 1.
    iterations: update rounds (each updates B, then A).

  Returns:
    (A [m, r] >= 0, B [r, n] >= 0, objective [iterations + 1]): the squared
    Frobenius error ||x - AB||^2 at the start and after every round.
  """
  x = jnp.asarray(x, jnp.float32)
  a, b = nndsvda_init(x, rank)
  x_sq = jnp.sum(x * x)

  def objective(a, xbt, bbt):  # ||x - ab||^2 from products the update already has
    return x_sq - 2.0 * jnp.sum(a * xbt) + jnp.sum((a.T @ a) * bbt)

  def round_(carry, _):
    a, b = carry
    b = b * (a.T @ x) / jnp.maximum((a.T @ a) @ b, _EPS)
    xbt, bbt = x @ b.T, b @ b.T
    a = a * xbt / jnp.maximum(a @ bbt, _EPS)
    return (a, b), objective(a, xbt, bbt)

  start = objective(a, x @ b.T, b @ b.T)
  (a, b), trace = jax.lax.scan(round_, (a, b), None, length=iterations)
  return a, b, jnp.concatenate([start[None], trace])


def split_rank(pos_sq: float, neg_sq: float, rank: int) -> tuple[int, int]:
  """(r+, r-) with r+ + r- = rank, in proportion to the parts' squared norms."""
  if neg_sq <= 0:
    return rank, 0
  if pos_sq <= 0:
    return 0, rank
  r_pos = round(rank * pos_sq / (pos_sq + neg_sq))
  if rank >= 2:
    r_pos = min(max(r_pos, 1), rank - 1)
  return r_pos, rank - r_pos


def signed_nmf_factors(kernel: jax.Array, rank: int,
                       iterations: int = 300) -> tuple[jax.Array, jax.Array]:
  """(u [m, r] >= 0, v [r, n]) with kernel ~= u @ v, by NMF of the kernel's sign parts."""
  w = jnp.asarray(kernel, jnp.float32)
  pos, neg = jnp.maximum(w, 0.0), jnp.maximum(-w, 0.0)
  r_pos, r_neg = split_rank(float(jnp.sum(pos * pos)), float(jnp.sum(neg * neg)), rank)
  us, vs = [], []
  for part, r, sign in ((pos, r_pos, 1.0), (neg, r_neg, -1.0)):
    if r:
      a, b, _ = multiplicative_updates(part, r, iterations)
      us.append(a)
      vs.append(sign * b)
  return jnp.concatenate(us, axis=1), jnp.concatenate(vs, axis=0)


def nmf(params: Params, config: FactorizeConfig) -> tuple[dict, FactorizeConfig]:
  """Signed NMF of every planned kernel; returns (params', config with ranks)."""
  return factorize_layers(
      params, config,
      lambda kernel, r: signed_nmf_factors(kernel, r, config.nmf_iterations))
