"""Orbax checkpoints of the full train state plus a JSON record of the loop position.

Each save is atomic (orbax writes a temporary directory and renames it), so a
run killed mid-save still has its previous checkpoint. What a resumed run
needs: step, network params, optimizer state, embedding tables and their
sparse-optimizer state (the `TrainState`), and the loop position in `meta`.

Besides the latest `keep` checkpoints, the newest one saved with
``selected=True`` (the model selected on validation) is kept, however old:
orbax's best-N preservation over a tag, the selected step, recorded with each
save (-1 for untagged saves). Data order and dropout keys are functions of
(seed, step), so they need no separate state.

Orbax cannot save arrays with zero elements (a model with no dense features has
a ``[0, n]`` bottom kernel): such leaves are saved as a one-element placeholder
and their shapes listed in the saved meta (`ZERO_SIZE_KEY`), then rebuilt as
zeros on restore.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
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


def _path_names(path) -> tuple[str, ...]:
  """A pytree key path as plain names (dict keys, attributes and indices alike)."""
  names = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
  return tuple(names)


ZERO_SIZE_KEY = "zero_size_leaves"


def _is_zero_size(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype") and int(np.prod(x.shape)) == 0


def _placeholder(x):
  """A one-element stand-in of a zero-size leaf (array or ShapeDtypeStruct)."""
  if isinstance(x, jax.ShapeDtypeStruct):
    sharding = x.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct((1,), x.dtype, sharding=sharding)
  return np.zeros((1,), x.dtype)


def _hide_zero_size(tree) -> tuple[Any, dict]:
  """`tree` with zero-size leaves replaced by placeholders, and {path: [shape, dtype]}."""
  found = {}
  def one(path, x):
    if not _is_zero_size(x):
      return x
    found["/".join(_path_names(path))] = [list(x.shape), np.dtype(x.dtype).name]
    return _placeholder(x)
  return jax.tree_util.tree_map_with_path(one, tree), found


def _restore_zero_size(tree, found: dict):
  """Placeholders listed in `found` back to zero-size arrays."""
  if not found:
    return tree
  def one(path, x):
    entry = found.get("/".join(_path_names(path)))
    return x if entry is None else jnp.zeros(tuple(entry[0]), entry[1])
  return jax.tree_util.tree_map_with_path(one, tree)


_SELECTED = "selected_step"  # the orbax metric that tags the selected checkpoint


def _selected_tag(metrics) -> int:
  return int(metrics[_SELECTED]) if metrics and _SELECTED in metrics else -1


class Checkpointer:
  """Keeps the latest `keep` checkpoints under `directory`, and the newest selected one."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.AnyPreservationPolicy([
            preservation_policy.LatestN(keep),
            preservation_policy.BestN(get_metric_fn=_selected_tag, n=1)]),
        best_fn=_selected_tag, best_mode="max",
        enable_async_checkpointing=False, create=True)
    with _quiet():
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def selected_step(self) -> int | None:
    """The newest checkpoint saved with ``selected=True``, or None."""
    best = self._manager.best_step()
    if best is None or _selected_tag(self._manager.metrics(best)) < 0:
      return None
    return best

  def save(self, step: int, state: Any, meta: dict, *, selected: bool = False) -> None:
    """Saves `state` and `meta` at `step`; `selected` tags it as the model to keep."""
    # No OCDBT data-file size target: with orbax's default (2 GiB) an array above it is
    # cut into chunks that divide its shape, and a Criteo table's row count is often
    # prime (Kaggle: 33,762,577), which left 1-row chunks and exhausted 24 GB of memory.
    state, zero_size = _hide_zero_size(state)
    if zero_size:
      meta = {**meta, ZERO_SIZE_KEY: zero_size}
    with _quiet():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state, ocdbt_target_data_file_size=0),
          meta=ocp.args.JsonSave(meta)), metrics={_SELECTED: step if selected else -1},
          force=True)

  def read_meta(self, step: int | None = None) -> dict:
    """The meta dict saved with checkpoint `step` (None: the latest), without the state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    with _quiet():
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore(self, target_state: Any = None, step: int | None = None, *,
              resizable_rows: tuple[str, ...] = ()) -> tuple[Any, dict]:
    """Restores into the structure, shapes and shardings of `target_state`.

    With no target, returns the saved tree as plain nested dicts of arrays.

    Args:
      target_state: arrays or ShapeDtypeStructs (with shardings) to restore into.
      step: checkpoint step (None: the latest).
      resizable_rows: top-level fields of the state (e.g. "tables") whose
        arrays may differ from the saved ones in their first dimension only:
        they are truncated or zero-padded (row padding of sharded tables, so
        a run saved on N devices restores on M). Any other shape difference
        is an error.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = None if target_state is None else jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, target_state)
    if abstract is not None:
      abstract, _ = _hide_zero_size(abstract)
    strict = True
    if abstract is not None and resizable_rows:
      self._check_shapes(step, abstract, resizable_rows)
      strict = False
    restore_args = None if abstract is None else jax.tree_util.tree_map(
        lambda s: ocp.ArrayRestoreArgs(global_shape=s.shape, dtype=s.dtype,
                                       sharding=s.sharding, strict=strict), abstract)
    with _quiet(), warnings.catch_warnings():
      # Without a target the saved shardings are what we want (one process, plain arrays).
      warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args),
          meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    return _restore_zero_size(restored["state"], meta.pop(ZERO_SIZE_KEY, {})), meta

  def _check_shapes(self, step: int, abstract: Any, resizable_rows: tuple[str, ...]) -> None:
    """Raises unless saved and target shapes agree, up to rows of `resizable_rows` fields."""
    with _quiet():
      saved = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self.directory) / str(step) / "state").tree
    saved_shapes = {_path_names(p): tuple(m.shape) for p, m in
                    jax.tree_util.tree_flatten_with_path(saved)[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
      names = _path_names(path)
      want, have = tuple(leaf.shape), saved_shapes.get(names)
      rows_only = (names[0] in resizable_rows and have is not None and len(have) == len(want)
                   and have[1:] == want[1:])
      if have != want and not rows_only:
        raise ValueError(f"checkpoint step {step} in {self.directory}: {'/'.join(names)} has"
                         f" shape {have}, expected {want}")

  def close(self) -> None:
    with _quiet():
      self._manager.wait_until_finished()
      self._manager.close()
