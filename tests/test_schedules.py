"""Learning-rate schedules: the reference's warm-up/decay values, and no recompilation per step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.train import schedules, sparse
from jaxrec.train.schedules import ScheduleConfig


def reference_policy(base, warmup, decay_start, decay_steps, num_updates):
  """The DLRM reference's LRPolicyScheduler, transcribed: the rate of each update.

  The scheduler steps once at construction, so update k (0-based) reads
  `_step_count` = k + 1. Between warm-up and decay it keeps its last warm-up
  rate; jaxrec uses the peak there, so the tests below compare outside it.
  """
  rates, last = [], base
  for k in range(num_updates):
    count = k + 1
    if count < warmup:
      last = base * (1.0 - (warmup - count) / warmup)
      rates.append(last)
    elif decay_start <= count < decay_start + decay_steps:
      last = max(1e-7, base * ((decay_steps - (count - decay_start)) / decay_steps) ** 2)
      rates.append(last)
    else:
      rates.append(last if decay_steps > 0 else base)
  return np.array(rates)


def test_warmup_decay_matches_the_reference_policy():
  config = ScheduleConfig("warmup_decay", warmup_steps=4, decay_start_step=4, decay_steps=5)
  schedule = schedules.build(config, 0.5, total_steps=20)
  got = np.array([schedule(jnp.asarray(k)) for k in range(14)])
  want = reference_policy(0.5, 4, 4, 5, 14)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Literal values: warm-up 1/4, 2/4, 3/4 of the peak; decay ((5 - t) / 5)^2; then frozen.
  np.testing.assert_allclose(got[:5], [0.125, 0.25, 0.375, 0.5, 0.32], rtol=1e-6)
  np.testing.assert_allclose(got[-1], 0.5 / 25, rtol=1e-6)


def test_warmup_decay_plateau_is_the_peak_rate():
  schedule = schedules.build(ScheduleConfig("warmup_decay", 2, 6, 3), 1.0, total_steps=10)
  np.testing.assert_allclose([schedule(k) for k in range(9)],
                             [0.5, 1, 1, 1, 1, 1, 4 / 9, 1 / 9, 1 / 9], rtol=1e-6)


def test_warmup_cosine_reaches_zero_at_the_end():
  schedule = schedules.build(ScheduleConfig("warmup_cosine", warmup_steps=2), 1.0,
                             total_steps=10)
  rates = np.array([schedule(k) for k in range(10)])
  np.testing.assert_allclose(rates[:2], [0.5, 1.0], rtol=1e-6)
  assert np.all(np.diff(rates[1:]) < 0) and abs(rates[-1]) < 1e-6


def test_constant_is_a_float_and_bad_configs_name_the_field():
  assert schedules.build(ScheduleConfig(), 0.1, 100) == 0.1
  with pytest.raises(ValueError, match="decay_start_step=1 must be >= warmup_steps=5"):
    schedules.build(ScheduleConfig("warmup_decay", 5, 1, 10), 0.1, 100)
  with pytest.raises(ValueError, match="lr_schedule='step'"):
    ScheduleConfig("step").validate()


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad"])
def test_sparse_optimizer_follows_the_schedule_in_one_compilation(name):
  schedule = schedules.build(ScheduleConfig("warmup_decay", 3, 3, 4), 1.0, total_steps=10)
  opt = sparse.create(name, schedule)
  tables = {"t": jnp.zeros((4, 2), jnp.float32)}
  ids, grads = {"t": jnp.array([1])}, {"t": jnp.ones((1, 2), jnp.float32)}
  update = jax.jit(opt.update)
  state = opt.init(tables)
  moved = []
  for step in range(8):
    new_tables, state = update(tables, state, ids, grads, jnp.asarray(step, jnp.int32))
    moved.append(float(tables["t"][1, 0] - new_tables["t"][1, 0]))
    tables = new_tables
  assert update._cache_size() == 1  # the step is traced: one compilation for all steps
  if name == "sgd":  # the row moves by exactly the scheduled rate times its gradient
    np.testing.assert_allclose(moved, [schedule(k) for k in range(8)], rtol=1e-6)
  else:  # Adagrad's step k: rate_k / sqrt(k + 1)
    np.testing.assert_allclose(moved, [schedule(k) / np.sqrt(k + 1) for k in range(8)],
                               rtol=1e-5)


def test_train_step_compiles_once_under_a_schedule():
  from jaxrec.models.ctr_model import CTRModel
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train.step import create_train_state, dense_optimizer, make_train_step

  model = CTRModel.create(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)), EmbeddingConfig(dim=4),
                          (5,) * 26, 13)
  rate = schedules.build(ScheduleConfig("warmup_cosine", 2, 0, 0), 0.1, total_steps=6)
  tx, table_opt = dense_optimizer("sgd", rate), sparse.create("sgd", rate)
  state = create_train_state(model, jax.random.key(0), tx, table_opt)
  step = make_train_step(model, tx, table_opt, jax.random.key(1))
  rng = np.random.default_rng(0)
  batch = {"dense": jnp.asarray(rng.normal(size=(8, 13)), jnp.float32),
           "cat": jnp.asarray(rng.integers(0, 5, size=(8, 26)), jnp.int32),
           "label": jnp.asarray(rng.integers(0, 2, size=8), jnp.float32),
           "mask": jnp.ones(8, jnp.float32)}
  for _ in range(6):
    state, _ = step(state, batch)
  assert step._cache_size() == 1
  assert int(state.step) == 6
