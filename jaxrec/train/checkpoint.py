"""Orbax checkpoints of the full train state plus a JSON record of the loop position.

Each save is atomic (orbax writes a temporary directory and renames it), so a
run killed mid-save still has its previous checkpoint. What a resumed run
needs: step, network params, optimizer state, embedding tables and their
sparse-optimizer state (the `TrainState`), and the loop position in `meta`.
Data order and dropout keys are functions of (seed, step), so they need no
separate state.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
from absl import logging
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy


@contextlib.contextmanager
def _quiet():
  """Orbax logs every save at INFO through absl; keep the run's log readable."""
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


class Checkpointer:
  """Keeps the latest `keep` checkpoints under `directory`."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.LatestN(keep),
        enable_async_checkpointing=False, create=True)
    with _quiet():
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    with _quiet():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, target_state: Any = None, step: int | None = None) -> tuple[Any, dict]:
    """Restores into the structure, shapes and shardings of `target_state`.

    With no target, returns the saved tree as plain nested dicts of arrays.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = None if target_state is None else jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, target_state)
    with _quiet():
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def close(self) -> None:
    with _quiet():
      self._manager.wait_until_finished()
      self._manager.close()
