"""Graceful stops: SIGTERM (preemption) and SIGINT (Ctrl-C) end a run at a checkpoint.

`StopSignals` is installed by the command (`experiments.train`), never by the
library. While the training loop runs its steps (it sets `deferring`) the
first signal only asks it to stop: the loop finishes the current step
group, writes a checkpoint, and raises `Stopped`; the command then prints how
to resume and exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
A second signal exits at once with the same code. Outside the steps (reading
data, compiling, the final test evaluation) there is nothing to finish, so a
signal raises `Interrupted` at once; the newest checkpoint is then the one to
resume from.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
  """The shell's convention: 128 + the signal number."""
  return 128 + signum


class Interrupted(BaseException):
  """A stop signal where no step was running (not an Exception: nothing should swallow it)."""

  def __init__(self, signum: int):
    super().__init__(f"interrupted by {signal.Signals(signum).name}")
    self.signum = signum


class Stopped(Exception):
  """The loop stopped at a signal after a step group and its checkpoint."""

  def __init__(self, signum: int, step: int, checkpoint_step: int | None):
    saved = (f"checkpoint at step {checkpoint_step}" if checkpoint_step is not None
             else "no checkpoint (checkpointing is off)")
    super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {saved}")
    self.signum, self.step, self.checkpoint_step = signum, step, checkpoint_step


class StopSignals:
  """Handlers for SIGINT and SIGTERM; `requested` is the first signal received, or None."""

  def __init__(self, signals: tuple[int, ...] = SIGNALS):
    self.signals = signals
    self.requested: int | None = None
    self.deferring = False  # set by the loop while steps run: the first signal waits for them
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():  # handlers need the main thread
      for signum in self.signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.requested is not None:
      print(f"\n{name} again: exiting now (the newest checkpoint on disk is the one to"
            " resume from)", file=sys.stderr, flush=True)
      os._exit(exit_code(signum))
    self.requested = signum
    if not self.deferring:
      raise Interrupted(signum)
    print(f"\n{name}: stopping after the current step group and a checkpoint (send it again"
          " to exit at once)", file=sys.stderr, flush=True)
