"""Interruption and determinism, through the real CLI in subprocesses.

* SIGKILL right after a train step and in the middle of an evaluation, then
  ``--resume``: final params bit-identical to an uninterrupted run.
* SIGKILL in the middle of a checkpoint save (tmp directory created; all data
  written but not committed): the previous checkpoint stays the latest and
  restores, and ``--resume`` still reaches bit-identical params.
* Same seed and data -> identical metrics, history and params in two processes.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec.train.checkpoint import Checkpointer

from conftest import REPO

# 960 train rows / 64 = 15 steps per epoch, 30 in all; checkpoints every 5, evals every 7.
ARGS = ["--synthetic_rows=1200", "--synthetic_max_vocab=200", "--batch_size=64", "--epochs=2",
        "--embedding_dim=4", "--bottom_mlp=8-4", "--top_mlp=8-1", "--optimizer=adam",
        "--learning_rate=0.01", "--checkpoint_every=5", "--eval_every=7", "--log_every=3",
        "--eval_batch_size=256"]


def _untimed(record: dict) -> dict:
  """A metrics / history record without its wall-clock figures."""
  return {k: v for k, v in record.items() if "seconds" not in k and "per_sec" not in k}


# Runs experiments.train with orbax patched to SIGKILL the process during the save of step
# $KILL_IN_SAVE_STEP: "create" right after its tmp directory is made, "commit" when all
# its files are written but before the atomic rename that commits it.
SAVE_KILLER = r"""
import asyncio, os, signal, sys
from orbax.checkpoint._src.path import atomicity
where, step = os.environ["KILL_IN_SAVE"].split(":")

def die_if(path):
  if os.path.basename(str(path)).split(".")[0] == step:
    os.kill(os.getpid(), signal.SIGKILL)

if where == "create":
  original_create = atomicity.AtomicRenameTemporaryPath.create
  async def create(self):
    out = await original_create(self)
    die_if(self.get_final())
    return out
  atomicity.AtomicRenameTemporaryPath.create = create
else:
  original_rename = atomicity.async_path.rename
  async def rename(src, dst):
    die_if(dst)
    return await original_rename(src, dst)
  atomicity.async_path.rename = rename

from absl import app
from experiments import train
app.run(train.main, argv=[sys.argv[0]] + sys.argv[1:], flags_parser=train.parse_flags)
"""


def _train(out, *extra, kill_at=None, kill_in_save=None):
  env = dict(os.environ)
  env.pop("JAXREC_DEBUG_KILL_AT", None)
  if kill_at:
    env["JAXREC_DEBUG_KILL_AT"] = kill_at
  cmd = [sys.executable, "-m", "experiments.train"]
  if kill_in_save:
    env["KILL_IN_SAVE"] = kill_in_save
    cmd = [sys.executable, "-c", SAVE_KILLER]
  proc = subprocess.run([*cmd, *ARGS, f"--output_dir={out}", *extra], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  if kill_at or kill_in_save:
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  else:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _params(out):
  state, meta = Checkpointer(os.path.join(out, "checkpoints")).restore()
  return meta["step"], jax.tree_util.tree_leaves(state)


def _assert_same_run(a, b):
  step_a, leaves_a = _params(a)
  step_b, leaves_b = _params(b)
  assert step_a == step_b == 30 and len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bit-identical
  metrics = [_untimed(json.load(open(os.path.join(d, "metrics.json")))) for d in (a, b)]
  assert metrics[0] == metrics[1]
  history = [[_untimed(json.loads(line)) for line in open(os.path.join(d, "history.jsonl"))]
             for d in (a, b)]
  assert [h["step"] for h in history[0] if h["split"] == "validation"] == [7, 14, 21, 28, 30]
  assert history[0] == history[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("reference"))
  _train(out)
  return out


@pytest.mark.slow
def test_same_seed_same_metrics_history_and_params(reference, tmp_path):
  again = str(tmp_path / "again")
  _train(again)
  _assert_same_run(reference, again)


@pytest.mark.slow
def test_sigkill_after_a_step_and_during_an_eval_then_resume_is_bit_identical(
    reference, tmp_path):
  out = str(tmp_path / "run")
  _train(out, kill_at="step:12")  # checkpoint 10 on disk
  assert _params(out)[0] == 10
  _train(out, "--resume", kill_at="eval:21")  # mid-evaluation; checkpoint 20 on disk
  assert _params(out)[0] == 20
  steps = [h["step"] for h in map(json.loads, open(os.path.join(out, "history.jsonl")))
           if h["split"] == "validation"]
  assert steps == [7, 14]  # the eval at 21 was cut short before its record
  _train(out, "--resume")
  _assert_same_run(reference, out)


@pytest.mark.slow
def test_sigkill_during_a_save_keeps_the_previous_checkpoint(reference, tmp_path):
  out = str(tmp_path / "run")
  checkpoints = os.path.join(out, "checkpoints")
  # Checkpoints every 5 steps, and at the evaluations (every 7) that improve validation
  # logloss (the selected model): the previous one is the newest committed below `step`.
  for where, step, previous in [("create", 15, (10, 14)), ("commit", 25, (20, 21))]:
    _train(out, *(["--resume"] if step > 15 else []), kill_in_save=f"{where}:{step}")
    leftovers = [d for d in os.listdir(checkpoints) if d.startswith(f"{step}.")]
    assert leftovers, os.listdir(checkpoints)  # killed mid-save: an uncommitted tmp dir
    assert str(step) not in os.listdir(checkpoints)
    latest, leaves = _params(out)  # the previous checkpoint is the latest and restores
    committed = [int(d) for d in os.listdir(checkpoints) if d.isdigit()]
    assert latest == max(committed) and latest in previous
    assert all(np.isfinite(x).all() for x in leaves)
  _train(out, "--resume")
  _assert_same_run(reference, out)
