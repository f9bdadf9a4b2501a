"""Custom VJPs inside `shard_map`: weights marked as varying like the rows they meet.

Inside shard_map a `jax.custom_vjp` must return cotangents that vary over the same
mesh axes as its inputs. A replicated weight's gradient computed from per-device
rows varies over the data axes, so the weight is cast to vary like the rows before
the call, and JAX sums its gradient over the devices. Outside shard_map this is a
no-op.
"""

from __future__ import annotations

import jax


def varying_axes(x: jax.Array) -> tuple:
  """Mesh axes over which x varies inside shard_map (() outside it)."""
  aval = jax.typeof(x)
  if hasattr(aval, "mat"):  # jax >= 0.10
    return tuple(aval.mat.varying)
  return tuple(getattr(aval, "vma", ()))  # jax 0.6 - 0.9


def vary_like(w: jax.Array, x: jax.Array) -> jax.Array:
  """w, marked as varying over the shard_map axes that x varies over and w does not."""
  axes = tuple(a for a in varying_axes(x) if a not in varying_axes(w))
  if not axes:
    return w
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(w, axes, to="varying")
  return jax.lax.pvary(w, axes)
