"""The train and predict steps on a (data, model) device mesh, written with `jax.shard_map`.

The step body is `jaxrec.train.step.train_step` itself (one step over the whole
global batch, with its non-finite guard), run per device under `shard_map`
with `ShardedTables` as its table access, laid out over devices as
`jaxrec.train.sharding` describes. Per device, a step:

1. all-gathers the ids of its model group's examples over ``model`` and
   gathers the rows it owns, zeros elsewhere (a masked local lookup);
2. reduce-scatters those partial rows over ``model`` (`psum_scatter`): each
   device receives the full rows of its own examples — each row has exactly
   one owner, so the sum is exact;
3. runs the network forward and backward on its own examples with the
   replicated params; the param gradients are summed over all devices (the
   transpose of broadcasting replicated params into per-device code) and
   every device applies the same optax update;
4. all-gathers ids and row gradients of the global batch and applies the
   sparse optimizer to the rows it owns only: rows it does not own get an
   out-of-range index, which scatters drop. The update stays sparse and local.

The loss is normalised by the global count of real examples, so the result
equals the single-device step up to float32 summation order. Dropout keys are
folded with the device index (dropout masks differ from a single-device run).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.models.ctr_model import CTRModel
from jaxrec.train import sparse
from jaxrec.train.sharding import (BATCH_SPEC, DATA, MODEL, REPLICATED, ROW_SPEC, MeshConfig,
                                   check_batch_size, make_mesh, memory_report, named,
                                   padded_rows, put_global, state_specs)
from jaxrec.train.step import (LocalTables, Regularizer, TrainState, bound_step,
                               create_train_state, predict_probs, scan_steps, stack_batches)

ALL = (DATA, MODEL)


def _owned_index(ids: jax.Array, rows_per_shard: int) -> jax.Array:
  """Local row of each global id on this shard; `rows_per_shard` (out of range) if not owned."""
  local = ids - jax.lax.axis_index(MODEL) * rows_per_shard
  owned = (local >= 0) & (local < rows_per_shard)
  return jnp.where(owned, local, rows_per_shard)


def sharded_lookup(local_tables: dict[str, jax.Array], ids: dict[str, jax.Array]
                   ) -> dict[str, jax.Array]:
  """Rows of this device's examples from row-sharded tables (inside shard_map).

  Args:
    local_tables: this device's shard of every stacked table, [R/M, width].
    ids: global row ids of this device's examples, {table: [b, L]}.

  Returns:
    {table: [b, L, width]}, the same rows `embeddings.lookup` gathers from
    whole tables.
  """
  rows = {}
  for name, local_ids in ids.items():  # one entry per stacked table
    table = local_tables[name]
    group_ids = jax.lax.all_gather(local_ids, MODEL, tiled=True)  # the model group's examples
    index = _owned_index(group_ids, table.shape[0])
    partial = jnp.take(table, index, axis=0, mode="fill", fill_value=0)
    rows[name] = jax.lax.psum_scatter(partial, MODEL, scatter_dimension=0, tiled=True)
  return rows


def _gather_batch(x: jax.Array) -> jax.Array:
  """This device's slice of a batch -> the global batch, in `BATCH_SPEC` order."""
  return jax.lax.all_gather(jax.lax.all_gather(x, MODEL, tiled=True), DATA, tiled=True,
                            to="invarying")


@dataclasses.dataclass(frozen=True)
class ShardedTables(LocalTables):
  """`train_step`'s table access on row-sharded tables, inside shard_map over (data, model)."""

  def lookup(self, tables, ids):
    return sharded_lookup(tables, ids)

  def update_targets(self, tables, ids, row_grads):
    """The global batch's ids (as this shard's local rows; others out of range) and grads."""
    local_ids = {name: _owned_index(_gather_batch(i), tables[name].shape[0])
                 for name, i in ids.items()}
    return local_ids, {name: _gather_batch(g) for name, g in row_grads.items()}

  def total(self, x):
    return jax.lax.psum(x, ALL)

  def everywhere(self, ok):
    return jax.lax.pmin(ok.astype(jnp.int32), ALL) > 0

  def dropout_key(self, key):
    return jax.random.fold_in(key, jax.lax.axis_index(ALL))


def _pad_tables(tables: dict[str, jax.Array], model_size: int) -> dict[str, jax.Array]:
  out = {}
  for name, t in tables.items():
    extra = padded_rows(t.shape[0], model_size) - t.shape[0]
    out[name] = jnp.pad(t, ((0, extra),) + ((0, 0),) * (t.ndim - 1))
  return out


class ShardedTraining:
  """`jaxrec.train.step.Training` on a mesh: the same step body and predict function under
  shard_map, the state padded and placed as `sharding.state_specs` says.

  Args:
    mesh: a ``(data, model)`` mesh from `sharding.make_mesh`.
    model, dense_tx, table_opt, dropout_key, regularizer: as for
      `jaxrec.train.step.make_train_step`.
  """

  def __init__(self, mesh: Mesh, model: CTRModel, dense_tx: optax.GradientTransformation,
               table_opt: sparse.SparseOptimizer, dropout_key: jax.Array,
               regularizer: Regularizer | None = None):
    self.mesh = mesh
    self.model = model
    self.dense_tx = dense_tx
    self.table_opt = table_opt
    self.model_size = mesh.shape[MODEL]
    self.num_devices = mesh.devices.size
    self.batch_sharding = NamedSharding(mesh, BATCH_SPEC)
    self._replicated = NamedSharding(mesh, REPLICATED)
    self.logical_rows = {name: shape[0] for name, shape in model.layout.table_shapes().items()}
    self._init = self._make_init()
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    self.state_shardings = named(mesh, state_specs(abstract))
    local = bound_step(model, dense_tx, table_opt, dropout_key, regularizer,
                       ShardedTables(self.num_devices))
    specs = state_specs(abstract)
    # K batches stacked on a leading axis (`multi_train_step`), each split like one batch.
    stacked = P(None, *BATCH_SPEC)

    def jitted(fn, batch_spec):
      fn = jax.shard_map(fn, mesh=mesh, in_specs=(specs, batch_spec),
                         out_specs=(specs, REPLICATED))
      return jax.jit(fn, in_shardings=(self.state_shardings, NamedSharding(mesh, batch_spec)),
                     out_shardings=(self.state_shardings, self._replicated), donate_argnums=0)

    self.stack_batches = jax.jit(stack_batches, out_shardings=NamedSharding(mesh, stacked))
    self.train_step = jitted(local, BATCH_SPEC)
    self.multi_train_step = jitted(scan_steps(local), stacked)
    self.predict = self._make_predict()

  @classmethod
  def for_mesh(cls, mesh_config: MeshConfig, model: CTRModel,
               dense_tx: optax.GradientTransformation, table_opt: sparse.SparseOptimizer,
               dropout_key: jax.Array, *, batch_size: int,
               regularizer: Regularizer | None = None) -> "ShardedTraining":
    """Builds the mesh from `mesh_config` and checks that `batch_size` splits evenly."""
    mesh = make_mesh(mesh_config)
    check_batch_size(batch_size, mesh)
    return cls(mesh, model, dense_tx, table_opt, dropout_key, regularizer)

  def memory_report(self) -> str:
    """Rows and bytes per device (see `sharding.memory_report`), computed without allocating."""
    return memory_report(self.abstract_state(), self.mesh, self.logical_rows)

  def _make_init(self):
    def init(rng):
      state = create_train_state(self.model, rng, self.dense_tx, self.table_opt)
      tables = _pad_tables(state.tables, self.model_size)
      return state.replace(tables=tables, table_opt_state=self.table_opt.init(tables))
    return init

  def init_state(self, rng: jax.Array) -> TrainState:
    """A fresh state created in place (no device ever holds a whole table)."""
    return jax.jit(self._init, out_shardings=self.state_shardings)(rng)

  def place_state(self, state: TrainState) -> TrainState:
    """A state whose params were rewritten on the host side (a factorization) -> on the mesh."""
    return jax.device_put(state, self.state_shardings)

  def place_params(self, params):
    """Params (e.g. transformed ones to evaluate) -> replicated on the mesh."""
    return jax.device_put(params, self._replicated)

  def shard_state(self, state: TrainState) -> TrainState:
    """An unsharded state (e.g. built on one device) -> padded and placed on the mesh."""
    def pad(state):
      return state.replace(tables=_pad_tables(state.tables, self.model_size),
                           table_opt_state=_pad_tables(state.table_opt_state, self.model_size))
    return jax.jit(pad, out_shardings=self.state_shardings)(state)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, without allocating it."""
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    return jax.tree_util.tree_map(
        lambda sharding, part: jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), part),
        self.state_shardings, abstract, is_leaf=lambda x: isinstance(x, NamedSharding))

  def _make_predict(self):
    local_predict = functools.partial(predict_probs, model=self.model, lookup=sharded_lookup)
    predict = jax.shard_map(local_predict, mesh=self.mesh,
                            in_specs=(REPLICATED, ROW_SPEC, BATCH_SPEC, BATCH_SPEC),
                            out_specs=BATCH_SPEC)
    # Probabilities come back replicated, so every process can read them.
    predict = jax.jit(predict, out_shardings=self._replicated)
    if self.mesh.devices.flat[0].platform != "cpu":
      return predict

    def serialized(*args):
      # Independent predict calls dispatched back to back can deadlock XLA:CPU's
      # in-process collectives (every pool thread waits in a different call's
      # rendezvous), so on CPU each call finishes before the next starts. Train
      # steps are serialized already by their data dependence.
      return jax.block_until_ready(predict(*args))
    return serialized

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch (the same global batch on every process) -> batch-sharded arrays."""
    return put_global(batch, self.batch_sharding)

  def round_batch(self, batch_size: int) -> int:
    """The smallest multiple of the device count >= batch_size (for evaluation)."""
    return -(-batch_size // self.num_devices) * self.num_devices

  def unpadded_tables(self, tables: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Host copies of the real rows of every table (for tests and export)."""
    return {name: np.asarray(jax.device_get(t))[:self.logical_rows[name]]
            for name, t in tables.items()}
