"""Scalar logs of a run: ``history.jsonl`` and TensorBoard event files, written together.

Each record is one line of ``history.jsonl`` — ``{"step", "epoch", "split", ...}``
with split "train" (loss over the steps since the previous record, learning
rates, examples/s) or "validation" (the evaluation report) — and the same
numbers as TensorBoard scalars ``<split>/<name>`` at that step (tensorboardX:
no TensorFlow needed). A resumed run purges the events written after its
checkpoint, as it truncates ``history.jsonl``.
"""

from __future__ import annotations

import json
import math
import numbers

import jax


class ScalarLog:
  """Appends records to `history_path` and, when `tensorboard_dir` is set, to event files.

  Args:
    history_path: the JSON-lines file.
    tensorboard_dir: directory of the event files (None: none written).
    start_step: the step the run starts (or resumes) from; TensorBoard hides
      events of an earlier attempt at or after it.
  """

  def __init__(self, history_path: str, tensorboard_dir: str | None, start_step: int = 0):
    self.history_path = history_path
    self._writer = None
    self._enabled = jax.process_index() == 0  # multi-host: process 0 writes
    if self._enabled and tensorboard_dir:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(logdir=tensorboard_dir, purge_step=start_step or None,
                                   flush_secs=30)

  def write(self, step: int, split: str, values: dict) -> None:
    """One record: `values` (name -> number) of `split` at `step`."""
    if not self._enabled:
      return
    with open(self.history_path, "a") as f:
      f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    if self._writer is not None:
      for name, value in values.items():
        if isinstance(value, numbers.Real) and math.isfinite(value) and name != "epoch":
          self._writer.add_scalar(f"{split}/{name}", value, global_step=step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
