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


def masked_bce(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean loss over real examples, sum of per-example losses)."""
  per_example = optax.sigmoid_binary_cross_entropy(logits, labels) * mask
  total = jnp.sum(per_example)
  return total / jnp.maximum(jnp.sum(mask), 1.0), total


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: CTRModel,
               dense_tx: optax.GradientTransformation, table_opt: sparse.SparseOptimizer,
               dropout_key: jax.Array, regularizer: Regularizer | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step; returns the new state and {loss_sum, weight_sum, nonfinite, nonfinite_step}.

  `regularizer(params)` is added to the mean loss (e.g. AFM's L2 on the
  attention kernel).
  """
  ids = model.layout.row_ids(batch["cat"])
  rows = embeddings.lookup(state.tables, ids)
  rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}

  def loss_fn(params, rows):
    logits = model.apply_rows(params, batch["dense"], rows, train=True, rngs=rngs)
    loss, loss_sum = masked_bce(logits, batch["label"], batch["mask"])
    if regularizer is not None:
      loss = loss + regularizer(params)
    return loss, loss_sum

  (_, loss_sum), (param_grads, row_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.params, rows)
  updates, opt_state = dense_tx.update(param_grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # A non-finite loss, gradient or new param skips the whole update, on device (no host
  # sync): dense leaves keep their old values and the sparse update goes to out-of-range
  # rows, which scatters drop, so tables and their optimizer state stay bit-identical.
  finite = all_finite((loss_sum, param_grads, row_grads, params))
  params, opt_state = jax.tree_util.tree_map(
      lambda new, old: jnp.where(finite, new, old), (params, opt_state),
      (state.params, state.opt_state))
  ids = {k: jnp.where(finite, v, state.tables[k].shape[0]) for k, v in ids.items()}
  row_grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0), row_grads)
  tables, table_opt_state = table_opt.update(state.tables, state.table_opt_state, ids, row_grads,
                                             state.step)
  new_state = state.replace(step=state.step + 1, params=params, tables=tables,
                            opt_state=opt_state, table_opt_state=table_opt_state)
  weight_sum = jnp.sum(batch["mask"])
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
  return jax.jit(_bound_step(model, dense_tx, table_opt, dropout_key, regularizer),
                 donate_argnums=0)


def _bound_step(model, dense_tx, table_opt, dropout_key, regularizer):
  """`train_step` with everything but (state, batch) bound."""
  return functools.partial(train_step, model=model, dense_tx=dense_tx, table_opt=table_opt,
                           dropout_key=dropout_key, regularizer=regularizer)


def make_multi_train_step(model: CTRModel, dense_tx: optax.GradientTransformation,
                          table_opt: sparse.SparseOptimizer, dropout_key: jax.Array,
                          regularizer: Regularizer | None = None):
  """The jitted `(state, batches) -> (state, metrics)` that runs one train step per
  leading-axis slice of `batches` (a `lax.scan`; metrics come back stacked), state donated.

  Same updates as that many calls of `make_train_step`'s step, with one dispatch: at
  small batches the per-call cost is a visible part of a step.
  """
  step = _bound_step(model, dense_tx, table_opt, dropout_key, regularizer)
  return jax.jit(lambda state, batches: jax.lax.scan(step, state, batches), donate_argnums=0)


def make_predict(model: CTRModel):
  """Jitted `(params, tables, dense, cat) -> probabilities [B]`."""

  @jax.jit
  def predict(params, tables, dense, cat):
    logits = model.apply({"params": params, "tables": tables}, dense, cat, train=False)
    return jax.nn.sigmoid(logits)

  return predict


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
