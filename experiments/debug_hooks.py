"""Test-only fault injection for `experiments.train`, read from the environment.

``JAXREC_DEBUG_KILL_AT=KIND:STEP`` (KIND one of step, eval, save) makes the
training process SIGKILL itself at that loop event, as a preempted Colab VM
would: ``step:23`` right after train step 23, ``eval:38`` in the middle of the
validation evaluation at step 38 (predictions made, nothing written), and
``save:30`` just after the step-30 checkpoint. The reliability tests use it to
check that ``--resume`` reaches bit-identical params.

``JAXREC_DEBUG_SIGNAL_AT=SIGNAL:KIND:STEP[:COUNT]`` sends SIGNAL (TERM or INT)
to the process COUNT times (default 1) at that event instead: a graceful stop,
or with COUNT 2 an immediate exit. ``JAXREC_DEBUG_PAUSE_AT=KIND:STEP:SECONDS``
prints ``paused at KIND STEP`` to stderr and sleeps, so that a test can signal
the process from outside while a step group is under way.

The library never reads the environment; the hook is passed to
`train_and_evaluate(on_event=...)`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Callable

KILL_ENV = "JAXREC_DEBUG_KILL_AT"
SIGNAL_ENV = "JAXREC_DEBUG_SIGNAL_AT"
PAUSE_ENV = "JAXREC_DEBUG_PAUSE_AT"
KINDS = ("step", "eval", "save")


def _event(env: str, spec: str) -> tuple[str, int]:
  kind, _, step = spec.partition(":")
  if kind not in KINDS or not step.isdigit():
    raise ValueError(f"{env}={spec!r}: expected KIND:STEP with KIND in {KINDS}")
  return kind, int(step)


def debug_hook_from_env() -> Callable[[str, int], None] | None:
  """The on_event hook described above, or None when no variable is set."""
  actions = {}
  if spec := os.environ.get(KILL_ENV):
    actions[_event(KILL_ENV, spec)] = lambda: os.kill(os.getpid(), signal.SIGKILL)
  if spec := os.environ.get(SIGNAL_ENV):
    name, _, rest = spec.partition(":")
    parts = rest.split(":")
    count = int(parts.pop()) if len(parts) == 3 else 1
    signum = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}[name]

    def send(signum=signum, count=count):
      for _ in range(count):
        os.kill(os.getpid(), signum)

    actions[_event(SIGNAL_ENV, ":".join(parts))] = send
  if spec := os.environ.get(PAUSE_ENV):
    event, _, seconds = spec.rpartition(":")
    target = _event(PAUSE_ENV, event)

    def pause(target=target, seconds=float(seconds)):
      print(f"paused at {target[0]} {target[1]}", file=sys.stderr, flush=True)
      time.sleep(seconds)

    actions[target] = pause
  if not actions:
    return None

  def hook(event: str, at_step: int) -> None:
    action = actions.get((event, at_step))
    if action is not None:
      action()

  return hook
