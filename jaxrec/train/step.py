"""Train state, the jitted train step and the evaluation step.

One step: gather the batch's embedding rows, differentiate the masked
binary cross-entropy with respect to the network params *and the gathered
rows*, update params with optax and the touched table rows with a sparse
optimizer. Everything is on device; the step returns loss sums as arrays
(no host sync) and is jitted once per batch shape with the state donated. A
batch whose loss or gradients are not finite changes nothing but the step
counter and is flagged in the returned metrics (see `jaxrec.train.faults`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jaxrec.layers import embeddings
from jaxrec.models.ctr_model import CTRModel
from jaxrec.train import sparse


Regularizer = Callable[[Any], jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. Dropout keys derive from (seed, step)."""

  step: jax.Array
  params: Any
  tables: Any
  opt_state: Any
  table_opt_state: Any


def create_train_state(model: CTRModel, rng: jax.Array, dense_tx: optax.GradientTransformation,
                       table_opt: sparse.SparseOptimizer) -> TrainState:
  """Fresh variables of `model` with the dense and sparse optimizer states, step 0."""
  variables = model.init(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    tables=variables["tables"], opt_state=dense_tx.init(variables["params"]),
                    table_opt_state=table_opt.init(variables["tables"]))


@dataclasses.dataclass(frozen=True)
class LocalTables:
  """Table access of a step on one device holding whole tables (the default strategy).

  `jaxrec.train.sharded_step.ShardedTables` is the mesh counterpart: the step body
  below is the same, only these methods differ.
  """

  num_devices: int = 1

  def lookup(self, tables: dict[str, jax.Array], ids: dict[str, jax.Array]
             ) -> dict[str, jax.Array]:
    """The rows of this device's examples."""
    return embeddings.lookup(tables, ids)

  def update_targets(self, tables: dict[str, jax.Array], ids: dict[str, jax.Array],
                     row_grads: dict[str, jax.Array]) -> tuple[dict, dict]:
    """(local row index, gradient) pairs the sparse optimizer applies here."""
    del tables
    return ids, row_grads

  def total(self, x: jax.Array) -> jax.Array:
    """A per-device sum -> the sum over all devices."""
    return x

  def everywhere(self, ok: jax.Array) -> jax.Array:
    """A per-device condition -> True iff it holds on every device."""
    return ok

  def dropout_key(self, key: jax.Array) -> jax.Array:
    """This device's dropout key."""
    return key


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: CTRModel,
               dense_tx: optax.GradientTransformation, table_opt: sparse.SparseOptimizer,
               dropout_key: jax.Array, regularizer: Regularizer | None = None,
               tables: LocalTables = LocalTables()
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step; returns the new state and {loss_sum, weight_sum, nonfinite, nonfinite_step}.

  `regularizer(params)` is added to the mean loss (e.g. AFM's L2 on the
  attention kernel). `tables` is how rows are gathered and updated: whole
  tables here, row-sharded ones under `shard_map` (`sharded_step.ShardedTables`);
  the loss is normalised by the count of real examples over all devices.
  """
  ids = model.layout.row_ids(batch["cat"])
  rows = tables.lookup(state.tables, ids)
  rngs = {"dropout": tables.dropout_key(jax.random.fold_in(dropout_key, state.step))}
  weight_sum = tables.total(jnp.sum(batch["mask"]))

  def loss_fn(params, rows):
    logits = model.apply_rows(params, batch["dense"], rows, cat=batch["cat"], train=True,
                              rngs=rngs)
    loss_sum = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, batch["label"]) * batch["mask"])
    loss = loss_sum / jnp.maximum(weight_sum, 1.0)
    if regularizer is not None:  # its gradient is summed over devices
      loss = loss + regularizer(params) / tables.num_devices
    return loss, loss_sum

  # On a mesh `params` are replicated (invariant over it): differentiating per-device
  # code with respect to them sums their gradients over all devices.
  (_, loss_sum), (param_grads, row_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.params, rows)
  loss_sum = tables.total(loss_sum)
  # A non-finite loss or gradient (on any device) skips the whole update, on device (no
  # host sync): dense leaves keep their old values and the sparse update goes to
  # out-of-range rows, which scatters drop, so tables and their optimizer state stay
  # bit-identical. The new params are not checked: from finite params and gradients the
  # optimizers give finite ones short of float32 overflow, which the next step's loss
  # reports. Checking them made the update write its result, read it back and select,
  # where now one pass updates or keeps each leaf.
  finite = tables.everywhere(all_finite((loss_sum, param_grads, row_grads)))
  updates, opt_state = dense_tx.update(param_grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params, opt_state = jax.tree_util.tree_map(
      lambda new, old: jnp.where(finite, new, old), (params, opt_state),
      (state.params, state.opt_state))
  ids, row_grads = tables.update_targets(state.tables, ids, row_grads)
  ids = {k: jnp.where(finite, v, state.tables[k].shape[0]) for k, v in ids.items()}
  row_grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0), row_grads)
  new_tables, table_opt_state = table_opt.update(state.tables, state.table_opt_state, ids,
                                                 row_grads, state.step)
  new_state = state.replace(step=state.step + 1, params=params, tables=new_tables,
                            opt_state=opt_state, table_opt_state=table_opt_state)
  return new_state, {
      "loss_sum": jnp.where(finite, loss_sum, 0.0),
      "weight_sum": jnp.where(finite, weight_sum, 0.0),
      "nonfinite": (~finite).astype(jnp.int32),  # 1 when this batch was skipped
      # 1-based number of this step if skipped, else int32 max (min-reduced by the loop).
      "nonfinite_step": jnp.where(finite, jnp.iinfo(jnp.int32).max, state.step + 1),
  }


def all_finite(tree: Any) -> jax.Array:
  """True iff every floating-point leaf of `tree` is finite (a scalar bool array)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(model: CTRModel, dense_tx: optax.GradientTransformation,
                    table_opt: sparse.SparseOptimizer, dropout_key: jax.Array,
                    regularizer: Regularizer | None = None):
  """The jitted step `(state, batch) -> (state, metrics)`, state donated."""
  return jax.jit(bound_step(model, dense_tx, table_opt, dropout_key, regularizer),
                 donate_argnums=0)


def stack_batches(batches: list[dict]) -> dict:
  """K batches -> one batch with a leading K axis (the input of a multi-step call)."""
  return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batches)


def bound_step(model, dense_tx, table_opt, dropout_key, regularizer, tables=LocalTables()):
  """`train_step` with everything but (state, batch) bound."""
  return functools.partial(train_step, model=model, dense_tx=dense_tx, table_opt=table_opt,
                           dropout_key=dropout_key, regularizer=regularizer, tables=tables)


def scan_steps(step):
  """`(state, batches) -> (state, stacked metrics)`: `step` over the leading axis of batches."""
  return lambda state, batches: jax.lax.scan(step, state, batches)


def make_multi_train_step(model: CTRModel, dense_tx: optax.GradientTransformation,
                          table_opt: sparse.SparseOptimizer, dropout_key: jax.Array,
                          regularizer: Regularizer | None = None):
  """The jitted `(state, batches) -> (state, metrics)` that runs one train step per
  leading-axis slice of `batches` (a `lax.scan`; metrics come back stacked), state donated.

  Same updates as that many calls of `make_train_step`'s step, with one dispatch: at
  small batches the per-call cost is a visible part of a step.
  """
  step = bound_step(model, dense_tx, table_opt, dropout_key, regularizer)
  return jax.jit(scan_steps(step), donate_argnums=0)


def predict_probs(params, tables, dense: jax.Array, cat: jax.Array, *, model: CTRModel,
                  lookup=embeddings.lookup) -> jax.Array:
  """Click probabilities [B]; `lookup` gathers the rows (whole or row-sharded tables)."""
  rows = lookup(tables, model.layout.row_ids(cat))
  return jax.nn.sigmoid(model.apply_rows(params, dense, rows, cat=cat, train=False))


def make_predict(model: CTRModel):
  """Jitted `(params, tables, dense, cat) -> probabilities [B]`."""
  return jax.jit(functools.partial(predict_probs, model=model))


class Training:
  """A run's state, steps and predict function on one device.

  `jaxrec.train.sharded_step.ShardedTraining` has the same interface on a mesh;
  the training loop uses either.

  Attributes:
    train_step: jitted `(state, batch) -> (state, metrics)`, state donated.
    multi_train_step: jitted `(state, batches) -> (state, stacked metrics)`
      (one step per leading-axis slice).
    predict: jitted `(params, tables, dense, cat) -> probabilities`.
    batch_sharding: where batches go (None: the default device).
    logical_rows: real rows of each stacked table (a mesh pads them).
    stack_batches: jitted `stack_batches`, placed for `multi_train_step`.
  """

  def __init__(self, model: CTRModel, dense_tx: optax.GradientTransformation,
               table_opt: sparse.SparseOptimizer, dropout_key: jax.Array,
               regularizer: Regularizer | None = None):
    self.model, self.dense_tx, self.table_opt = model, dense_tx, table_opt
    self.logical_rows = {name: shape[0] for name, shape in model.layout.table_shapes().items()}
    self.train_step = make_train_step(model, dense_tx, table_opt, dropout_key, regularizer)
    self.multi_train_step = make_multi_train_step(model, dense_tx, table_opt, dropout_key,
                                                  regularizer)
    self.predict = make_predict(model)
    self.batch_sharding = None
    self.stack_batches = jax.jit(stack_batches)

  def init_state(self, rng: jax.Array) -> TrainState:
    return create_train_state(self.model, rng, self.dense_tx, self.table_opt)

  def place_state(self, state: TrainState) -> TrainState:
    return state

  def place_params(self, params):
    return params

  def round_batch(self, batch_size: int) -> int:
    return batch_size

  def memory_report(self) -> str | None:
    return None


DENSE_OPTIMIZERS = ("sgd", "adam", "adagrad")


def dense_optimizer(name: str, learning_rate: sparse.LearningRate) -> optax.GradientTransformation:
  """The optax optimizer `name` (one of DENSE_OPTIMIZERS) for the non-table params; a float
  rate or a schedule (`jaxrec.train.schedules`)."""
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "adam":
    return optax.adam(learning_rate)
  if name == "adagrad":
    return optax.adagrad(learning_rate, initial_accumulator_value=0.0, eps=1e-8)
  raise ValueError(f"unknown optimizer {name!r}; choose from {DENSE_OPTIMIZERS}")
