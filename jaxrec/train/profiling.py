"""Performance bookkeeping: compilations counted, and matmul FLOPs of a traced function.

* `count_compiles()`: a context manager counting XLA backend compilations, to
  prove "one compile per shape" in tests and benchmarks.
* `matmul_flops(fn, *args)`: 2·M·N·K summed over every ``dot_general`` in the
  jaxpr of ``fn(*args)`` (sub-jaxprs included). For a train step this counts
  the forward and backward matmuls actually traced; elementwise work is not
  counted, as in the usual "model FLOPs" figures. The CPU-shaped ops of
  `jaxrec.layers.fusion` and the fused kernels of `jaxrec.kernels.cpu` count as
  the matmuls they stand for (or none).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import jax
from jax.extend import core as jex_core

from jaxrec.kernels import cpu as cpu_kernels
from jaxrec.layers import fusion

# Recorded by JAX once per XLA compilation (not on cache hits).
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCount:
  """Number of XLA compilations seen inside a `count_compiles()` block."""

  def __init__(self):
    self.count = 0

  def __int__(self) -> int:
    return self.count

  def __repr__(self) -> str:
    return f"CompileCount({self.count})"


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
  """Counts backend compilations while the block runs (all threads)."""
  counter = CompileCount()

  def listener(event: str, duration: float, **kwargs):
    del duration, kwargs
    if event == _COMPILE_EVENT:
      counter.count += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def _dot_flops(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  k = math.prod(lhs[d] for d in lhs_contract)
  return 2 * math.prod(eqn.outvars[0].aval.shape) * k


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      total += _dot_flops(eqn)
    if eqn.primitive.name == "ffi_call" and eqn.params["target_name"] in cpu_kernels.MATMUL_FLOPS:
      total += cpu_kernels.MATMUL_FLOPS[eqn.params["target_name"]](
          [v.aval.shape for v in eqn.invars], [v.aval.shape for v in eqn.outvars])
      continue
    rule = (fusion.MATMUL_FLOPS.get(eqn.params.get("name"))
            if eqn.primitive.name in ("jit", "pjit") else None)
    if rule is not None:
      total += rule([v.aval.shape for v in eqn.invars], [v.aval.shape for v in eqn.outvars])
      continue
    for sub in jex_core.jaxprs_in_params(eqn.params):
      total += _jaxpr_flops(sub)
  return total


def matmul_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
  """Matmul FLOPs of one call ``fn(*args, **kwargs)``, counted from its jaxpr (no execution)."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return _jaxpr_flops(closed.jaxpr)
