"""Non-finite losses: stop at the step, or skip the batch and count it.

The jitted step (`jaxrec.train.step`) never applies an update whose loss or
gradients are not finite; it reports ``nonfinite`` and
``nonfinite_step`` as device arrays. The loop feeds each step's metrics to
`NonFiniteMonitor.update` (device ops only, no host sync) and calls `check`
where it syncs anyway: at log points and before every evaluation, checkpoint
and the end. With policy "stop", `check` raises `NonFiniteError` naming the
first bad step before anything is saved, so the newest checkpoint is the last
good state; the steps run after the bad one, until the check, are discarded.
With "skip", it adds the skipped batches to `skipped` and training goes on.

A model is also refused where it is used: `require_finite_params` raises
`NonFiniteParamsError` (naming the first array holding NaN or Inf) before
evaluation, prediction or export.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from absl import logging

POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
  """Training stopped at a non-finite loss or gradient."""

  def __init__(self, step: int, last_checkpoint: int | None, directory: str):
    kept = (f"the last good checkpoint is step {last_checkpoint} in {directory} (resume from it,"
            f" e.g. with a lower learning rate)" if last_checkpoint is not None
            else "no checkpoint had been written yet")
    super().__init__(f"non-finite loss or gradient at step {step}; training stopped and {kept}")
    self.step, self.last_checkpoint = step, last_checkpoint


class NonFiniteParamsError(ValueError):
  """A model whose parameters hold NaN or Inf: refused for evaluation, scoring and export."""


@jax.jit
def _nonfinite_counts(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.sum(~jnp.isfinite(x)) for x in leaves])


def require_finite_params(variables: Any, where: str) -> None:
  """Raises NonFiniteParamsError unless every float array of `variables` is finite.

  One device reduction per array and a single host transfer.
  """
  flat = [(path, x) for path, x in jax.tree_util.tree_flatten_with_path(variables)[0]
          if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not flat:
    return
  counts = jax.device_get(_nonfinite_counts([x for _, x in flat]))
  bad = [("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path),
          int(n), x.size)
         for (path, x), n in zip(flat, counts) if n]
  if bad:
    name, count, size = bad[0]
    more = f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else ""
    raise NonFiniteParamsError(f"{where}: the model's parameters are not finite: {name} holds"
                               f" {count:,} NaN/Inf of {size:,} values{more}; refusing to use it")


class NonFiniteMonitor:
  """Accumulates the step's non-finite flags on device; `check` reads them on the host."""

  def __init__(self, policy: str, skipped: int = 0):
    if policy not in POLICIES:
      raise ValueError(f"unknown non-finite policy {policy!r}; choose from {POLICIES}")
    self.policy = policy
    self.skipped = skipped  # batches skipped so far (policy "skip"), across resumes
    self._count = None
    self._first = None

  def update(self, metrics: Mapping[str, jax.Array]) -> None:
    """Adds one step's `nonfinite` / `nonfinite_step` (asynchronous device ops)."""
    if self._count is None:
      self._count, self._first = metrics["nonfinite"], metrics["nonfinite_step"]
    else:
      self._count = self._count + metrics["nonfinite"]
      self._first = jnp.minimum(self._first, metrics["nonfinite_step"])

  def check(self, last_checkpoint: int | None, directory: str) -> None:
    """Host sync: raises NonFiniteError ("stop") or counts the skipped batches ("skip")."""
    if self._count is None:
      return
    count, first = int(self._count), int(self._first)
    self._count = self._first = None
    if not count:
      return
    if self.policy == "stop":
      raise NonFiniteError(first, last_checkpoint, directory)
    self.skipped += count
    logging.warning("skipped %d batch(es) with a non-finite loss or gradient, the first at"
                    " step %d (%d skipped in all)", count, first, self.skipped)
