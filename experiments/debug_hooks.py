"""Test-only fault injection for `experiments.train`, read from the environment.

``JAXREC_DEBUG_KILL_AT=KIND:STEP`` (KIND one of step, eval, save) makes the
training process SIGKILL itself at that loop event, as a preempted Colab VM
would: ``step:23`` right after train step 23, ``eval:38`` in the middle of the
validation evaluation at step 38 (predictions made, nothing written), and
``save:30`` just after the step-30 checkpoint. The reliability tests use it to
check that ``--resume`` reaches bit-identical params. The library never reads
the environment; this hook is passed to `train_and_evaluate(on_event=...)`.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

ENV = "JAXREC_DEBUG_KILL_AT"
KINDS = ("step", "eval", "save")


def kill_hook_from_env() -> Callable[[str, int], None] | None:
  """The on_event hook that SIGKILLs this process at $JAXREC_DEBUG_KILL_AT, or None."""
  spec = os.environ.get(ENV)
  if not spec:
    return None
  kind, _, step = spec.partition(":")
  if kind not in KINDS or not step.isdigit():
    raise ValueError(f"{ENV}={spec!r}: expected KIND:STEP with KIND in {KINDS}")
  target = (kind, int(step))

  def hook(event: str, at_step: int) -> None:
    if (event, at_step) == target:
      os.kill(os.getpid(), signal.SIGKILL)

  return hook
