"""Sparse table updates equal the dense-gradient updates they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.train import sparse


def _problem(seed=0, rows=10, width=3, batch=(6, 4)):
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.normal(size=(rows, width)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, rows // 2, size=batch), jnp.int32)  # many duplicates
  target = jnp.asarray(rng.normal(size=batch + (width,)), jnp.float32)
  return table, ids, target


def _loss_of_rows(rows, target):
  return jnp.sum((rows - target) ** 2 * jnp.arange(1, rows.shape[-1] + 1))


def test_sgd_sparse_equals_dense():
  table, ids, target = _problem()
  dense_grad = jax.grad(lambda t: _loss_of_rows(t[ids], target))(table)
  expected = table - 0.1 * dense_grad
  row_grads = jax.grad(_loss_of_rows)(table[ids], target)
  opt = sparse.sgd(0.1)
  got, _ = opt.update({"t": table}, opt.init({"t": table}), {"t": ids}, {"t": row_grads})
  np.testing.assert_allclose(got["t"], expected, rtol=1e-6, atol=1e-6)


def test_rowwise_adagrad_sparse_equals_dense_over_steps():
  table, ids, target = _problem(seed=1)
  lr, eps = 0.05, 1e-8
  dense_table, acc = table, jnp.zeros(table.shape[0])
  opt = sparse.rowwise_adagrad(lr, eps=eps)
  tables, state = {"t": table}, opt.init({"t": table})
  update = jax.jit(opt.update)
  for step in range(3):
    step_ids = (ids + step) % table.shape[0]
    g = jax.grad(lambda t: _loss_of_rows(t[step_ids], target))(dense_table)
    acc = acc + jnp.mean(g**2, axis=1)
    dense_table = dense_table - lr * g / (jnp.sqrt(acc) + eps)[:, None]
    row_grads = jax.grad(_loss_of_rows)(tables["t"][step_ids], target)
    tables, state = update(tables, state, {"t": step_ids}, {"t": row_grads})
  np.testing.assert_allclose(tables["t"], dense_table, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["t"], acc, rtol=1e-5, atol=1e-7)


def test_untouched_rows_are_bit_identical():
  table, ids, target = _problem(seed=2)
  row_grads = jax.grad(_loss_of_rows)(table[ids], target)
  for opt in (sparse.sgd(0.1), sparse.rowwise_adagrad(0.1)):
    got, _ = opt.update({"t": table}, opt.init({"t": table}), {"t": ids}, {"t": row_grads})
    untouched = np.setdiff1d(np.arange(table.shape[0]), np.asarray(ids))
    assert len(untouched) > 0
    np.testing.assert_array_equal(np.asarray(got["t"])[untouched], np.asarray(table)[untouched])


def test_sum_duplicates_static_shape():
  ids = jnp.array([3, 1, 3, 3, 0])
  grads = jnp.ones((5, 2))
  unique, summed = sparse.sum_duplicates(ids, grads, num_rows=10)
  assert unique.shape == (5,)
  np.testing.assert_array_equal(unique, [0, 1, 3, 10, 10])
  np.testing.assert_array_equal(summed[:3, 0], [1, 1, 3])


def test_unknown_optimizer():
  with pytest.raises(ValueError, match="unknown embedding optimizer"):
    sparse.create("adamw", 0.1)
