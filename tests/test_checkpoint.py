"""Checkpoints verify themselves; models with NaN/Inf are refused where they are used."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.serving import predict as predict_lib
from jaxrec.train import checkpoint, faults, run_dir
from jaxrec.train.checkpoint import Checkpointer, CheckpointError, NoVerifiedCheckpointError

from conftest import CRITEO_KAGGLE_10K


def _state(value):
  return {"params": {"w": jnp.full((64, 8), value, jnp.float32)},
          "tables": {"t": jnp.arange(400, dtype=jnp.float32).reshape(100, 4) * value}}


@pytest.fixture
def saved(tmp_path):
  """A checkpoint directory with steps 1 and 2 (values 1.0 and 2.0)."""
  directory = str(tmp_path / "checkpoints")
  ckpt = Checkpointer(directory)
  for step in (1, 2):
    ckpt.save(step, _state(float(step)), {"step": step})
  ckpt.close()
  return directory


def _data_file(step_dir):
  files = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(step_dir, "state"))
           for n in names if os.sep + "d" + os.sep in os.path.join(d, n) + os.sep]
  return max(files, key=os.path.getsize)


def test_every_file_is_recorded_and_verifies(saved):
  record = json.load(open(os.path.join(saved, "2", checkpoint.CHECKSUMS_FILE)))
  assert record["step"] == 2 and "commit_success.txt" in record["files"]
  assert any(name.startswith("state/") for name in record["files"])
  assert any(name.startswith("meta/") for name in record["files"])
  ckpt = Checkpointer(saved)
  ckpt.verify(1), ckpt.verify(2)
  assert ckpt.latest_verified_step() == (2, [])
  state, meta = ckpt.restore()
  assert meta == {"step": 2} and float(state["params"]["w"][0, 0]) == 2.0


def test_one_flipped_bit_is_named_and_the_latest_falls_back(saved, caplog):
  path = _data_file(os.path.join(saved, "2"))
  data = bytearray(open(path, "rb").read())
  data[len(data) // 3] ^= 0x04
  open(path, "wb").write(data)
  ckpt = Checkpointer(saved)
  with pytest.raises(CheckpointError, match=r"checkpoint step 2 \(.*/d/\w+\): contents changed"):
    ckpt.restore(step=2)
  state, meta = ckpt.restore(set_aside_damaged=True)
  assert meta["step"] == 1 and float(state["params"]["w"][0, 0]) == 1.0
  assert "using step 1, the newest checkpoint that verifies" in caplog.text
  assert ckpt.steps() == [1] and os.listdir(saved + ".damaged") == ["2"]
  ckpt.save(2, _state(3.0), {"step": 2})  # the step can be written again
  assert ckpt.restore()[1]["step"] == 2


@pytest.mark.parametrize("damage, message", [
    (lambda d: open(_data_file(d), "r+b").truncate(10), "10 bytes, .* written \\(truncated\\)"),
    (lambda d: os.remove(os.path.join(d, "meta", "metadata")), "meta/metadata\\): missing"),
    (lambda d: os.remove(os.path.join(d, checkpoint.CHECKSUMS_FILE)), "no checksums.json"),
    (lambda d: open(os.path.join(d, checkpoint.CHECKSUMS_FILE), "a").write(" "), None),
    (lambda d: open(os.path.join(d, checkpoint.CHECKSUMS_FILE), "r+").truncate(50),
     "unreadable checksum record"),
])
def test_damage_is_one_line_naming_step_and_file(saved, damage, message):
  damage(os.path.join(saved, "2"))
  ckpt = Checkpointer(saved)
  if message is None:  # whitespace appended to the record: still the same record
    ckpt.verify(2)
    return
  with pytest.raises(CheckpointError, match=message) as e:
    ckpt.verify(2)
  assert e.value.step == 2 and "\n" not in str(e.value)


def test_a_record_that_names_another_step_is_refused(saved):
  path = os.path.join(saved, "2", checkpoint.CHECKSUMS_FILE)
  record = json.load(open(path))
  body = {k: record[k] for k in ("format", "step", "files")}
  body["step"] = 7
  json.dump({**body, "sha256": checkpoint._json_sha256(body)}, open(path, "w"))
  with pytest.raises(CheckpointError, match="records step 7, not 2"):
    Checkpointer(saved).verify(2)


def test_no_step_verifies(saved):
  for step in ("1", "2"):
    os.remove(os.path.join(saved, step, "commit_success.txt"))
  with pytest.raises(NoVerifiedCheckpointError,
                     match="no checkpoint verifies: step 2: .*missing; step 1: .*missing"):
    Checkpointer(saved).restore()


def test_require_finite_params_names_the_array():
  faults.require_finite_params({"a": jnp.ones(3), "ids": jnp.arange(3)}, "here")
  bad = {"params": {"dense": {"kernel": jnp.array([1.0, jnp.inf, jnp.nan])}}, "b": jnp.ones(2)}
  with pytest.raises(faults.NonFiniteParamsError,
                     match="here: .* params/dense/kernel holds 2 NaN/Inf of 3 values"):
    faults.require_finite_params(bad, "here")


def test_load_run_refuses_non_finite_params(tmp_path):
  spec = run_dir.ModelSpec(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)),
                           EmbeddingConfig(dim=4), (5,) * 26)
  model = spec.build()
  variables = model.init(jax.random.key(0))
  workdir = str(tmp_path)
  run_dir.write_model_files(workdir, spec)
  poisoned = jax.tree_util.tree_map(lambda x: x, variables)
  poisoned["tables"] = {k: v.at[3, 0].set(jnp.nan) for k, v in variables["tables"].items()}
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(4, poisoned, {"step": 4})
  ckpt.close()
  with pytest.raises(faults.NonFiniteParamsError, match=r"checkpoint step 4\).*tables/"):
    run_dir.load_run(workdir)


def test_predict_refuses_non_finite_probabilities_and_writes_nothing(tmp_path):
  if not os.path.exists(CRITEO_KAGGLE_10K):
    pytest.skip("real Criteo sample not present")
  rows = tmp_path / "rows.tsv"
  rows.write_text("".join(open(CRITEO_KAGGLE_10K).readlines()[:50]))

  def encode(raw):
    n = len(raw.label)
    return np.zeros((n, 13), np.float32), np.zeros((n, 26), np.int32)

  def score(dense, cat):  # every 8th row NaN
    return jnp.where(jnp.arange(len(dense)) % 8 == 0, jnp.nan, 0.5)

  scorer = predict_lib.Scorer(encode=encode, score=score, num_dense=13, num_fields=26,
                              source="model")
  out = tmp_path / "probs.txt"
  with pytest.raises(predict_lib.NonFiniteOutputError,
                     match=f"7 of 50 rows of {rows} scored a non-finite probability;"
                           " nothing written"):
    predict_lib.predict_file(scorer, str(rows), str(out), batch_size=16)
  assert os.listdir(tmp_path) == ["rows.tsv"]


def test_evaluation_refuses_non_finite_parameters():
  from jaxrec.train import loop
  params = {"dense": {"kernel": jnp.array([[1.0, jnp.nan]])}}
  with pytest.raises(faults.NonFiniteParamsError, match="evaluation: .*dense/kernel holds 1"):
    loop.evaluate(None, params, {"t": jnp.zeros((3, 2))}, None, 8, 0.5)


def test_load_run_falls_back_when_the_selected_model_is_damaged(tmp_path, caplog):
  spec = run_dir.ModelSpec(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)),
                           EmbeddingConfig(dim=4), (5,) * 26)
  variables = spec.build().init(jax.random.key(0))
  workdir = str(tmp_path)
  run_dir.write_model_files(workdir, spec)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  for step in (1, 2, 3):
    ckpt.save(step, variables, {"step": step}, selected=step == 1)
  ckpt.close()
  assert run_dir.load_run(workdir).step == 1  # the selected model
  os.remove(os.path.join(workdir, "checkpoints", "1", "meta", "metadata"))
  assert run_dir.load_run(workdir).step == 3
  assert "checkpoint step 1" in caplog.text and "selected on validation is damaged" in caplog.text
