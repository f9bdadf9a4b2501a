"""Sparse optimizers for stacked embedding tables, in optax's (init, update) style.

Training differentiates with respect to the gathered rows ``[B, L, width]``,
never the tables, so a step touches only the rows in the batch — the cost is
independent of table size (33.8M rows for Criteo Kaggle). Updates are
scattered into the touched rows:

* `sgd`: ``table[ids] -= lr * g``; scatter-add sums duplicate ids, which is
  exactly the dense-gradient update, so no deduplication is needed.
* `rowwise_adagrad`: one accumulator per row (FBGEMM/TorchRec's row-wise
  Adagrad). Duplicate ids are summed first (`jnp.unique` with a static
  ``size``), then ``acc += mean(g**2)`` and ``row -= lr * g / (sqrt(acc) + eps)``
  for each touched row — identical to dense row-wise Adagrad, where untouched
  rows see a zero gradient.

The learning rate is a float or a schedule of the train step (see
`jaxrec.train.schedules`): `update` takes the step as a traced array, so a
schedule costs no recompilation.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

Tables = Mapping[str, jax.Array]
SparseState = Any


class SparseOptimizer(NamedTuple):
  """init(tables) -> state; update(tables, state, ids, row_grads, step) -> (tables, state).

  ids: {table: int [...]} global rows; row_grads: {table: [..., width]}, the
  loss gradient with respect to each gathered row (same leading shape as ids);
  step: the train step (0-based) at which the learning-rate schedule is read.
  """

  init: Callable[[Tables], SparseState]
  update: Callable[..., tuple[dict[str, jax.Array], SparseState]]


LearningRate = float | optax.Schedule


def _rate(learning_rate: LearningRate, step) -> jax.Array | float:
  return learning_rate(step) if callable(learning_rate) else learning_rate


def _flatten(ids: jax.Array, grads: jax.Array) -> tuple[jax.Array, jax.Array]:
  return ids.reshape(-1), grads.reshape(-1, grads.shape[-1])


def sum_duplicates(ids: jax.Array, grads: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Unique ids (padded with `num_rows`, an out-of-range id) and their summed gradients.

  Static shapes: both outputs have len(ids) entries, so this jits once.
  """
  unique, inverse = jnp.unique(ids, size=ids.shape[0], fill_value=num_rows,
                               return_inverse=True)
  summed = jax.ops.segment_sum(grads, inverse.reshape(-1), num_segments=ids.shape[0])
  return unique, summed


def sgd(learning_rate: LearningRate) -> SparseOptimizer:
  """Plain SGD on touched rows (the DLRM reference's sparse update)."""

  def init(tables):
    del tables
    return {}

  def update(tables, state, ids, row_grads, step=0):
    new = dict(tables)
    rate = _rate(learning_rate, step)
    for name in ids:  # one entry per stacked table, not per column
      flat_ids, flat_grads = _flatten(ids[name], row_grads[name])
      new[name] = tables[name].at[flat_ids].add(
          (-rate * flat_grads).astype(tables[name].dtype), mode="drop")
    return new, state

  return SparseOptimizer(init, update)


def rowwise_adagrad(learning_rate: LearningRate, initial_accumulator: float = 0.0,
                    eps: float = 1e-8) -> SparseOptimizer:
  """Lazy row-wise Adagrad: one float32 accumulator per table row."""

  def init(tables):
    return {name: jnp.full((t.shape[0],), initial_accumulator, jnp.float32)
            for name, t in tables.items()}

  def update(tables, state, ids, row_grads, step=0):
    new_tables, new_state = dict(tables), dict(state)
    rate = _rate(learning_rate, step)
    for name in ids:
      table, acc = tables[name], state[name]
      flat_ids, flat_grads = _flatten(ids[name], row_grads[name])
      unique, summed = sum_duplicates(flat_ids, flat_grads, table.shape[0])
      row_acc = acc.at[unique].get(mode="fill", fill_value=0.0) + jnp.mean(summed**2, axis=1)
      delta = -rate * summed / (jnp.sqrt(row_acc) + eps)[:, None]
      new_state[name] = acc.at[unique].set(row_acc, mode="drop")
      new_tables[name] = table.at[unique].add(delta.astype(table.dtype), mode="drop")
    return new_tables, new_state

  return SparseOptimizer(init, update)


SPARSE_OPTIMIZERS = {"sgd": sgd, "rowwise_adagrad": rowwise_adagrad}


def create(name: str, learning_rate: LearningRate) -> SparseOptimizer:
  """The sparse table optimizer `name` ("sgd" or "rowwise_adagrad"); a float rate or a schedule."""
  if name not in SPARSE_OPTIMIZERS:
    raise ValueError(f"unknown embedding optimizer {name!r}; choose from"
                     f" {sorted(SPARSE_OPTIMIZERS)}")
  return SPARSE_OPTIMIZERS[name](learning_rate)
