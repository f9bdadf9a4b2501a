"""Device meshes for training on several devices, and where each part of the state lives.

A mesh has two axes:

* ``data``: data parallelism. Every group of devices along ``data`` holds a
  full copy of the embedding tables and trains on its own slice of the batch.
* ``model``: the embedding tables are split by rows across the ``model`` axis
  (device ``m`` owns rows ``[m * R/M, (m + 1) * R/M)`` of every stacked table),
  so M devices together hold tables that do not fit one.

Placement (`state_specs`, `BATCH_SPEC`): the network params and their optax
state are replicated; the stacked tables and their sparse-optimizer state are
row-sharded over ``model`` (and replicated over ``data``); each batch is split
over all ``data * model`` devices, so the dense MLPs are data parallel on every
device. Tables are padded with zero rows to a multiple of M
(`padded_rows`); the padding is never looked up.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.data import loader

DATA, MODEL = "data", "model"
# The batch dimension is split over every device of the mesh.
BATCH_SPEC = P((DATA, MODEL))
# Per-row arrays (tables [R, w], row accumulators [R]) are split by rows over `model`.
ROW_SPEC = P(MODEL)
REPLICATED = P()


class MeshError(ValueError):
  """A mesh that cannot be parsed or built on the available devices."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape: `data` x `model` devices."""

  data: int = 1
  model: int = 1

  def __post_init__(self):
    if self.data < 1 or self.model < 1:
      raise MeshError(f"mesh axes must be >= 1, got data:{self.data},model:{self.model}")

  @property
  def num_devices(self) -> int:
    return self.data * self.model

  def __str__(self) -> str:
    return f"data:{self.data},model:{self.model}"

  @classmethod
  def parse(cls, text: str) -> "MeshConfig":
    """Parses ``"data:N,model:M"`` (either axis may be omitted: it is then 1)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
      match = re.fullmatch(r"(data|model):(\d+)", part)
      if not match or match.group(1) in sizes:
        raise MeshError(f"mesh {text!r}: expected 'data:N,model:M' with positive integers")
      sizes[match.group(1)] = int(match.group(2))
    if not sizes:
      raise MeshError(f"mesh {text!r}: expected 'data:N,model:M' with positive integers")
    return cls(**sizes)


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
  """A ``(data, model)`` mesh over the first ``data * model`` devices (all processes')."""
  devices = list(jax.devices() if devices is None else devices)
  if config.num_devices > len(devices):
    hint = ("; on CPU start Python with XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{config.num_devices} to test with virtual devices"
            if devices[0].platform == "cpu" else "")
    raise MeshError(f"mesh {config} needs {config.num_devices} devices, found {len(devices)}"
                    f" ({devices[0].platform}){hint}")
  if jax.process_count() > 1 and config.num_devices != len(devices):
    raise MeshError(f"multi-host mesh {config} must use all {len(devices)} devices")
  return jax.make_mesh((config.data, config.model), (DATA, MODEL),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices[:config.num_devices])


def padded_rows(rows: int, model_size: int) -> int:
  """Rows rounded up to a multiple of `model_size` (each shard holds the same count)."""
  return -(-rows // model_size) * model_size


def state_specs(state: Any) -> Any:
  """PartitionSpec prefix tree for a `TrainState`: tables and their row state sharded."""
  return state.replace(step=REPLICATED, params=REPLICATED, opt_state=REPLICATED,
                       tables=ROW_SPEC, table_opt_state=ROW_SPEC)


def named(mesh: Mesh, specs: Any) -> Any:
  """PartitionSpec tree -> NamedSharding tree."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda x: isinstance(x, P))


def _bytes(tree: Any, per_device: bool) -> int:
  """Bytes of a tree of arrays or sharded ShapeDtypeStructs (one device's share if per_device)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if per_device else leaf.shape
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def _row_bytes(tree: Any) -> int:
  """Bytes of one row across per-row arrays (a table row plus its optimizer state)."""
  return sum(int(np.prod(leaf.shape[1:])) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree_util.tree_leaves(tree))


def _human(nbytes: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if nbytes >= size:
      return f"{nbytes / size:.2f} {unit}"
  return f"{nbytes} B"


def host_rss_bytes() -> int:
  """This process's resident memory now (Linux /proc; peak RSS elsewhere)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_memory_bytes(device, given_gb: float | None = None) -> int | None:
  """Memory of one device: `given_gb` GiB if set, else what the platform reports (None on CPU)."""
  if given_gb:
    return int(given_gb * 2**30)
  try:
    stats = device.memory_stats() or {}
  except Exception:  # platforms without memory stats
    stats = {}
  return stats.get("bytes_limit")


def state_bytes_per_device(state: Any) -> tuple[int, int]:
  """(bytes per device of the whole state, of its per-row part) for arrays or ShapeDtypeStructs.

  Leaves without a sharding count whole (one device).
  """
  def size(leaf):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    return int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  rows = sum(size(x) for x in jax.tree_util.tree_leaves((state.tables, state.table_opt_state)))
  dense = sum(size(x) for x in jax.tree_util.tree_leaves((state.params, state.opt_state)))
  return rows + dense, rows


def check_fits(state: Any, capacity: int | None, mesh_text: str, model_size: int = 1) -> None:
  """Raises a one-line MeshError when the state's per-device bytes exceed `capacity`.

  Args:
    state: the abstract state (`jax.eval_shape`, with shardings on a mesh).
    capacity: bytes of one device (None: unknown, nothing is checked).
    mesh_text: how the user named the layout ("--mesh=data:1,model:2" or "one device").
    model_size: devices the tables are split over now.
  """
  if capacity is None:
    return
  total, rows = state_bytes_per_device(state)
  if total <= capacity:
    return
  room = capacity - (total - rows)
  hint = (f"; the tables need --mesh model:{-(-rows * model_size // room)} or more devices"
          if room > 0 else "; the replicated dense part alone does not fit")
  raise MeshError(f"{mesh_text}: the train state needs {_human(total)} per device, more than the"
                  f" {_human(capacity)} of each device{hint}")


def memory_report(state: Any, mesh: Mesh, logical_rows: dict[str, int]) -> str:
  """Per-device bytes of each part of a sharded `TrainState` (arrays or abstract).

  Args:
    state: a sharded state, or its `jax.eval_shape` with shardings (so the
      report can be printed before anything is allocated).
    mesh: the mesh it lives on.
    logical_rows: real rows of each stacked table (before padding).

  Returns:
    A table a user reads at start: rows and bytes of every stacked table on
    each device (with its sparse-optimizer rows), beside what one device
    would need without sharding.
  """
  model_size = mesh.shape[MODEL]
  lines = [f"mesh data:{mesh.shape[DATA]},model:{model_size} over {mesh.devices.size}"
           f" {mesh.devices.flat[0].platform} device(s); per-device memory of the train state:"]
  total_device = total_single = 0
  row_state = state.table_opt_state if isinstance(state.table_opt_state, dict) else {}
  for name, table in state.tables.items():
    rows_here = table.sharding.shard_shape(table.shape)[0]
    row_bytes = _row_bytes([table, row_state.get(name, [])])
    device_bytes, single_bytes = rows_here * row_bytes, logical_rows[name] * row_bytes
    lines.append(f"  table {name:<14} {logical_rows[name]:>13,} rows -> {rows_here:>13,} rows"
                 f" per device (1/{model_size}), {_human(device_bytes):>10} per device"
                 f" incl. optimizer rows (unsharded: {_human(single_bytes)})")
    total_device += device_bytes
    total_single += single_bytes
  for label, part in (("dense params", state.params), ("dense optimizer", state.opt_state)):
    nbytes = _bytes(part, per_device=True)
    lines.append(f"  {label:<20} replicated {_human(nbytes):>10} per device")
    total_device += nbytes
    total_single += nbytes
  lines.append(f"  total {_human(total_device)} per device (unsharded: {_human(total_single)}"
               " on one device)")
  lines.append(f"  host RSS of this process before allocating: {_human(host_rss_bytes())}"
               " (training rows are memory-mapped, not counted)")
  return "\n".join(lines)


def process_positions(sharding: NamedSharding, batch_size: int) -> np.ndarray | None:
  """Sorted positions of a global batch that this process's devices hold (None: all of them).

  What the loader reads on this process (`loader.iterate_batches(positions=)`).
  """
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  every = np.arange(batch_size)
  positions = np.unique(np.concatenate([every[index[0]] for index in index_map.values()]))
  return None if len(positions) == batch_size else positions


def put_global(batch: dict[str, np.ndarray], sharding: NamedSharding,
               positions: np.ndarray | None = None, batch_size: int | None = None
               ) -> dict[str, jax.Array]:
  """A host batch -> global arrays with `sharding`.

  The batch holds the whole global batch (`positions` None) or only the rows
  at `positions` of a global batch of `batch_size` rows (this process's part,
  `process_positions`). Each process copies only its own devices' slices,
  with no cross-process check (`jax.device_put` of host data onto a
  multi-process sharding first compares it across processes — a collective
  that, run from a prefetch thread, can interleave with a train step's
  collectives and deadlock).
  """
  if positions is None:
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batch.items()}
  every = np.arange(batch_size)
  def local(index, v):  # global rows of a device -> their rows in this process's part
    return v[(np.searchsorted(positions, every[index[0]]),) + tuple(index[1:])]
  return {k: jax.make_array_from_callback((batch_size,) + v.shape[1:], sharding,
                                          lambda index, v=v: local(index, v))
          for k, v in batch.items()}


def place_batches(batches: Iterable[dict[str, np.ndarray]], sharding: NamedSharding | None,
                  positions: np.ndarray | None = None, batch_size: int | None = None
                  ) -> Iterator[dict[str, Any]]:
  """`put_global` over an iterator of host batches (unchanged when `sharding` is None)."""
  for batch in batches:
    yield batch if sharding is None else put_global(batch, sharding, positions, batch_size)


def host_batches(dataset, batch_size: int, sharding: NamedSharding | None, **order
                 ) -> Iterator[dict[str, Any]]:
  """Per-host input: this process reads only its devices' rows of every global batch
  (`loader.iterate_batches` with `order`: shuffle, seed, epoch, start_batch) and
  places them as global arrays; one process (or `sharding` None) reads them all."""
  positions = None if sharding is None else process_positions(sharding, batch_size)
  return place_batches(loader.iterate_batches(dataset, batch_size, positions=positions, **order),
                       sharding, positions, batch_size)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  if batch_size % mesh.devices.size:
    raise MeshError(f"{what}={batch_size} must be a multiple of the {mesh.devices.size} mesh"
                    f" devices (data x model)")
