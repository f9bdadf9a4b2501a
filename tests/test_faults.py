"""Non-finite losses: the step skips the update on device; the loop stops or skips and counts."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from jaxrec.data import loader
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models import CTRModel, ModelConfig
from jaxrec.train import faults, loop, sparse
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.step import (create_train_state, dense_optimizer, make_multi_train_step,
                               make_train_step)

MODEL = ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1))
EMBEDDING = EmbeddingConfig(dim=4)


def _batch(rng, n=16, poison=False):
  batch = {"dense": rng.random((n, 13), dtype=np.float32),
           "cat": rng.integers(0, 5, (n, 26)).astype(np.int32),
           "label": rng.integers(0, 2, n).astype(np.float32),
           "mask": np.ones(n, np.float32)}
  if poison:
    batch["dense"][3, 7] = np.inf
  return batch


@pytest.mark.parametrize("sparse_name", sorted(sparse.SPARSE_OPTIMIZERS))  # each must drop ids
def test_nonfinite_batch_changes_nothing_but_the_step(sparse_name):
  model = CTRModel.create(MODEL, EMBEDDING, (5,) * 26)
  dense_tx = dense_optimizer("adam", 0.1)  # has a step count that must not advance
  table_opt = sparse.create(sparse_name, 0.1)
  state = create_train_state(model, jax.random.key(0), dense_tx, table_opt)
  step = make_train_step(model, dense_tx, table_opt, jax.random.key(1))
  rng = np.random.default_rng(0)
  state, metrics = step(state, _batch(rng))  # non-trivial optimizer state first
  assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss_sum"]))
  before = jax.device_get(state)
  state, metrics = step(state, _batch(rng, poison=True))
  after = jax.device_get(state)
  assert int(after.step) == int(before.step) + 1 == 2
  for a, b in zip(jax.tree_util.tree_leaves(after.replace(step=before.step)),
                  jax.tree_util.tree_leaves(before)):
    np.testing.assert_array_equal(a, b)  # bit-identical, tables included
  assert int(metrics["nonfinite"]) == 1 and int(metrics["nonfinite_step"]) == 2
  assert float(metrics["loss_sum"]) == 0.0 and float(metrics["weight_sum"]) == 0.0
  state, metrics = step(state, _batch(rng))  # training goes on from the kept state
  assert int(metrics["nonfinite"]) == 0
  changed = jax.device_get(state.tables)["embedding"]
  assert not np.array_equal(changed, after.tables["embedding"])


def test_multi_step_matches_consecutive_steps_including_a_skipped_batch():
  model = CTRModel.create(MODEL, EMBEDDING, (5,) * 26)
  dense_tx, table_opt = dense_optimizer("adam", 0.1), sparse.create("rowwise_adagrad", 0.1)
  rng = np.random.default_rng(0)
  batches = [_batch(rng), _batch(rng, poison=True), _batch(rng)]
  single = make_train_step(model, dense_tx, table_opt, jax.random.key(1))
  state = create_train_state(model, jax.random.key(0), dense_tx, table_opt)
  singles = []
  for batch in batches:
    state, metrics = single(state, batch)
    singles.append(jax.device_get(metrics))
  want = jax.device_get(state)
  multi = make_multi_train_step(model, dense_tx, table_opt, jax.random.key(1))
  stacked = jax.tree_util.tree_map(lambda *x: np.stack(x), *batches)
  got, metrics = multi(create_train_state(model, jax.random.key(0), dense_tx, table_opt), stacked)
  got, metrics = jax.device_get((got, metrics))
  assert int(got.step) == 3
  assert list(metrics["nonfinite"]) == [0, 1, 0] and int(metrics["nonfinite_step"][1]) == 2
  np.testing.assert_allclose(metrics["loss_sum"], [m["loss_sum"] for m in singles], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.array_equal(got.tables["embedding"],
                            create_train_state(model, jax.random.key(0), dense_tx,
                                               table_opt).tables["embedding"])


def test_monitor_names_the_first_bad_step_and_counts():
  def metrics(bad, step):
    return {"nonfinite": np.int32(bad), "nonfinite_step": np.int32(step if bad else 2**31 - 1)}

  stop = faults.NonFiniteMonitor("stop")
  for s, bad in [(1, 0), (2, 0), (3, 1), (4, 1)]:
    stop.update(metrics(bad, s))
  with pytest.raises(faults.NonFiniteError, match="at step 3;.*checkpoint is step 2 in /ck") as e:
    stop.check(2, "/ck")
  assert e.value.step == 3
  skip = faults.NonFiniteMonitor("skip", skipped=5)
  for s, bad in [(1, 1), (2, 0), (3, 1)]:
    skip.update(metrics(bad, s))
  skip.check(None, "/ck")
  skip.check(None, "/ck")  # drained: nothing counted twice
  assert skip.skipped == 7


# Loop level: one training row has a non-finite dense value.
CONFIG = loop.TrainConfig(
    model=MODEL, embedding=EMBEDDING,
    data=loop.DataConfig(synthetic_rows=1000, synthetic_max_vocab=200),
    batch_size=50, epochs=2, checkpoint_every=5, log_every=100)
POISONED_ROW = 123


@pytest.fixture
def poisoned_data(monkeypatch):
  original = loop.load_splits_and_vocabulary

  def load(config):
    splits, vocabulary = original(config)
    dense = splits.train.dense.copy()
    dense[POISONED_ROW, 2] = np.nan
    train = dataclasses.replace(splits.train, dense=dense)
    return dataclasses.replace(splits, train=train), vocabulary

  monkeypatch.setattr(loop, "load_splits_and_vocabulary", load)
  spe = loader.num_batches(800, CONFIG.batch_size)
  # The step (1-based) whose batch holds the row, in each epoch.
  return [e * spe + int(np.flatnonzero(loader.epoch_permutation(800, CONFIG.seed, e)
                                       == POISONED_ROW)[0]) // CONFIG.batch_size + 1
          for e in range(CONFIG.epochs)]


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, poisoned_data):
  bad_step = poisoned_data[0]
  last_good = (bad_step - 1) // 5 * 5
  with pytest.raises(faults.NonFiniteError, match=f"at step {bad_step};") as err:
    loop.train_and_evaluate(CONFIG, str(tmp_path))
  assert err.value.last_checkpoint == (last_good or None)
  checkpoints = Checkpointer(str(tmp_path / "checkpoints"))
  if last_good:
    assert checkpoints.latest_step() == last_good
    state, meta = checkpoints.restore()
    assert meta["step"] == last_good
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state))
  assert not (tmp_path / "metrics.json").exists()


def test_skip_counts_the_batches_and_survives_resume(tmp_path, poisoned_data):
  config = dataclasses.replace(CONFIG, on_nonfinite="skip")
  full = loop.train_and_evaluate(config, str(tmp_path / "full"))
  assert full["skipped_nonfinite_batches"] == len(poisoned_data) == 2
  assert full["steps"] == 32 and np.isfinite(full["logloss"])
  # Interrupted after the first bad batch, then resumed: same count, same numbers.
  part = str(tmp_path / "part")
  loop.train_and_evaluate(dataclasses.replace(config, max_steps=poisoned_data[0] + 1), part)
  resumed = loop.train_and_evaluate(config, part, resume=True)
  assert resumed["skipped_nonfinite_batches"] == 2
  assert resumed["logloss"] == full["logloss"] and resumed["auc"] == full["auc"]
  with open(os.path.join(part, "metrics.json")) as f:
    assert json.load(f)["skipped_nonfinite_batches"] == 2


def test_resume_drops_history_lines_after_the_checkpoint_and_a_torn_last_line(tmp_path):
  path = tmp_path / "history.jsonl"
  records = [{"step": s, "auc": 0.5} for s in (7, 14, 21)]
  path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 28, "au')  # killed
  loop._truncate_history(str(path), 20)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [7, 14]
