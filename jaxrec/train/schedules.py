"""Learning-rate schedules shared by the dense optimizer and the sparse table optimizers.

A schedule is an optax schedule of the train step (`TrainState.step`, 0-based:
the number of updates already applied). Step k uses the value at k + 1, as the
DLRM reference does (its scheduler has already stepped once when the first
update runs, so a warm-up starts at 1/W of the peak, not at 0):

* ``constant``: the peak rate throughout.
* ``warmup_decay``: the DLRM reference's ``LRPolicyScheduler``
  (``--lr-num-warmup-steps``, ``--lr-decay-start-step``, ``--lr-num-decay-steps``):
  linear warm-up over ``warmup_steps`` steps, the peak rate until
  ``decay_start_step``, then a polynomial (power 2) decay over ``decay_steps``
  steps down to ``peak / decay_steps**2``, where it stays (the reference
  freezes its last decayed rate; floor 1e-7). One difference: between warm-up
  and decay the reference keeps the last warm-up rate ``(W-1)/W * peak``; this
  uses the peak.
* ``warmup_cosine``: linear warm-up, then a cosine decay to 0 over
  ``decay_steps`` steps (0: to the end of training).

Schedules are jnp functions of a traced step, so they live inside the jitted
train step and never recompile it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_decay", "warmup_cosine")
_MIN_DECAYED_RATE = 1e-7  # the reference's floor


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """Which schedule, and its phase lengths in train steps."""

  kind: str = "constant"
  warmup_steps: int = 0
  decay_start_step: int = 0
  decay_steps: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the offending field."""
    if self.kind not in SCHEDULES:
      raise ValueError(f"lr_schedule={self.kind!r}: choose from {', '.join(SCHEDULES)}")
    for name in ("warmup_steps", "decay_start_step", "decay_steps"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
    if self.kind == "warmup_decay" and self.decay_steps and \
        self.decay_start_step < self.warmup_steps:
      raise ValueError(f"decay_start_step={self.decay_start_step} must be >= warmup_steps="
                       f"{self.warmup_steps} (warm-up ends before the decay starts)")


def build(config: ScheduleConfig, peak: float, total_steps: int) -> float | optax.Schedule:
  """The schedule of the train step; a plain float for ``constant``.

  Args:
    config: the schedule.
    peak: the peak (base) learning rate.
    total_steps: steps of the whole run (the cosine decay's default length).
  """
  config.validate()
  if config.kind == "constant":
    return float(peak)
  warmup = config.warmup_steps
  if config.kind == "warmup_cosine":
    decay = config.decay_steps or max(total_steps - warmup, 1)
    cosine = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, warmup + decay, 0.0)
    return lambda step: cosine(step + 1)
  ramp = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  if not config.decay_steps:
    return lambda step: ramp(step + 1)
  decay = optax.polynomial_schedule(peak, 0.0, power=2, transition_steps=config.decay_steps)
  joined = optax.join_schedules([ramp, decay], [config.decay_start_step])
  floor = max(_MIN_DECAYED_RATE, peak / config.decay_steps**2)

  def warmup_decay(step):
    count = step + 1
    rate = joined(count)
    return jnp.where(count >= config.decay_start_step, jnp.maximum(rate, floor), rate)

  return warmup_decay


def value(schedule: float | optax.Schedule, step: int) -> float:
  """The rate at `step` as a Python float (for logs; a host computation)."""
  return float(schedule(step)) if callable(schedule) else float(schedule)
