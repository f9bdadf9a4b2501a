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

Every checkpoint verifies itself: once orbax has committed a step, its size
and SHA-256 of every file it is made of (array data, manifests, JSON parts)
go into ``<step>/checksums.json``, and a restore re-hashes them first. A step
that is missing a file, truncated, changed by a single bit, without its
checksums (a save cut short) or whose record names another step raises
`CheckpointError` in one line (step, file, what is wrong); restoring "the
latest" falls back to the newest step that verifies and logs why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy


CHECKSUMS_FILE = "checksums.json"
_CHECKSUMS_FORMAT = 1


class CheckpointError(ValueError):
  """A checkpoint step that is incomplete, damaged or unreadable (a one-line message)."""

  def __init__(self, step: int | None, where: str, what: str):
    prefix = f"checkpoint step {step}" if step is not None else "checkpoints"
    super().__init__(f"{prefix} ({where}): {what}")
    self.step, self.where, self.what = step, where, what


class NoVerifiedCheckpointError(CheckpointError):
  """Checkpoints exist but none of them verifies."""


def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _json_sha256(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _files_under(root: str) -> list[str]:
  """Relative paths of the regular files under `root`, sorted."""
  out = []
  for dirpath, _, names in os.walk(root):
    out += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
  return sorted(p for p in out if p != CHECKSUMS_FILE)


def write_checksums(step_dir: str, step: int) -> None:
  """Records size and SHA-256 of every file of a committed step in ``checksums.json``.

  The record carries its own digest, so a damaged record is told apart from a
  damaged file. Written with a rename: a step has a whole record or none.
  """
  files = {rel: {"bytes": os.path.getsize(os.path.join(step_dir, rel)),
                 "sha256": _file_sha256(os.path.join(step_dir, rel))}
           for rel in _files_under(step_dir)}
  body = {"format": _CHECKSUMS_FORMAT, "step": step, "files": files}
  path = os.path.join(step_dir, CHECKSUMS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({**body, "sha256": _json_sha256(body)}, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)


def verify_checksums(step_dir: str, step: int) -> None:
  """Raises CheckpointError unless every file recorded for `step` is there, whole and unchanged."""
  if not os.path.isdir(step_dir):
    raise CheckpointError(step, step_dir, "no such directory")
  path = os.path.join(step_dir, CHECKSUMS_FILE)
  if not os.path.exists(path):
    what = ("empty directory" if not os.listdir(step_dir) else
            f"no {CHECKSUMS_FILE} (the save was cut short, or an older jaxrec wrote it): it"
            " cannot be verified")
    raise CheckpointError(step, step_dir, what)
  try:
    with open(path) as f:
      record = json.load(f)
    body = {k: record[k] for k in ("format", "step", "files")}
    intact = record["sha256"] == _json_sha256(body)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(step, path, f"unreadable checksum record ({type(e).__name__})") from None
  if not intact:
    raise CheckpointError(step, path, "the checksum record itself is damaged")
  if body["step"] != step:
    raise CheckpointError(step, path, f"records step {body['step']}, not {step}")
  if not body["files"]:
    raise CheckpointError(step, path, "records no files")
  for rel, want in sorted(body["files"].items()):
    file_path = os.path.join(step_dir, rel)
    if not os.path.isfile(file_path):
      raise CheckpointError(step, file_path, "missing")
    size = os.path.getsize(file_path)
    if size != want["bytes"]:
      raise CheckpointError(step, file_path, f"{size} bytes, {want['bytes']} were written"
                            f" ({'truncated' if size < want['bytes'] else 'grown'})")
    if _file_sha256(file_path) != want["sha256"]:
      raise CheckpointError(step, file_path, "contents changed since it was written"
                            " (SHA-256 mismatch)")


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
  """Keeps the latest `keep` checkpoints under `directory`, and the newest selected one;
  each is verified on restore."""

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
    """The newest step on disk (verified or not); see `latest_verified_step`."""
    steps = self.steps()
    return steps[-1] if steps else None

  def steps(self) -> list[int]:
    """Every committed step on disk, oldest first (damaged ones included)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def verify(self, step: int) -> None:
    """Raises CheckpointError unless `step`'s files are all there and unchanged."""
    verify_checksums(self.step_dir(step), step)

  def latest_verified_step(self) -> tuple[int | None, list[CheckpointError]]:
    """(the newest step that verifies or None, the errors of the newer ones that did not)."""
    failures = []
    for step in reversed(self.steps()):
      try:
        self.verify(step)
        return step, failures
      except CheckpointError as e:
        failures.append(e)
    return None, failures

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
    if jax.process_index() == 0:  # the files of every process are committed by now
      write_checksums(self.step_dir(step), step)

  def read_meta(self, step: int | None = None) -> dict:
    """The meta dict saved with checkpoint `step` (None: the newest that verifies, the one
    `restore` picks), without the state; verified as `restore` verifies."""
    if step is None:
      if not self.steps():
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
      step = self.latest_verified_step()[0]
      if step is None:  # restore() names every fault
        return {}
    else:
      self.verify(step)
    with _quiet():
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore(self, target_state: Any = None, step: int | None = None, *,
              resizable_rows: tuple[str, ...] = (), set_aside_damaged: bool = False
              ) -> tuple[Any, dict]:
    """Verifies, then restores into the structure, shapes and shardings of `target_state`.

    With no target, returns the saved tree as plain nested dicts of arrays.

    Args:
      target_state: arrays or ShapeDtypeStructs (with shardings) to restore into.
      step: checkpoint step (None: the newest that verifies; each newer one that
        does not is logged in one line).
      resizable_rows: top-level fields of the state (e.g. "tables") whose
        arrays may differ from the saved ones in their first dimension only:
        they are truncated or zero-padded (row padding of sharded tables, so
        a run saved on N devices restores on M). Any other shape difference
        is an error.
      set_aside_damaged: move the steps newer than the restored one (they did
        not verify) to ``<directory>.damaged/``, so that training can write
        those steps again (resuming).

    Raises:
      FileNotFoundError: no checkpoint at all.
      CheckpointError: `step` does not verify or cannot be read;
        NoVerifiedCheckpointError: no step verifies.
    """
    if step is None:
      if not self.steps():
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
      step, failures = self.latest_verified_step()
      if step is None:
        faults = "; ".join(f"step {e.step}: {os.path.relpath(e.where, self.directory)} {e.what}"
                           for e in failures)
        raise NoVerifiedCheckpointError(None, self.directory, f"no checkpoint verifies: {faults}")
      for e in failures:
        logging.warning("%s; using step %d, the newest checkpoint that verifies", e, step)
      if failures and set_aside_damaged:
        self._set_aside([e.step for e in failures])
    else:
      self.verify(step)
    state, meta = self._restore_verified(target_state, step, resizable_rows)
    if not isinstance(meta, dict) or meta.get("step") != step:
      raise CheckpointError(step, self.step_dir(step), "its record names step"
                            f" {meta.get('step') if isinstance(meta, dict) else meta!r}")
    return state, meta

  def _restore_verified(self, target_state: Any, step: int, resizable_rows: tuple[str, ...]
                        ) -> tuple[Any, dict]:
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
    try:
      with _quiet(), warnings.catch_warnings():
        # Without a target the saved shardings are what we want (one process, plain arrays).
        warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args),
            meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # verified, yet unreadable
      first_line = (str(e).strip().splitlines() or [""])[0][:200]
      raise CheckpointError(step, self.step_dir(step),
                            f"unreadable ({type(e).__name__}: {first_line})") from None
    meta = dict(restored["meta"])
    return _restore_zero_size(restored["state"], meta.pop(ZERO_SIZE_KEY, {})), meta

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged steps out of orbax's way (kept for inspection, never restored)."""
    aside = self.directory + ".damaged"
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      target = os.path.join(aside, str(step))
      suffix = 1
      while os.path.exists(target):
        target, suffix = os.path.join(aside, f"{step}-{suffix}"), suffix + 1
      shutil.move(self.step_dir(step), target)
      logging.warning("moved the damaged checkpoint step %d to %s", step, target)
    with _quiet():
      self._manager.reload()

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
