"""Interruption and determinism, through the real CLI in subprocesses.

* SIGKILL right after a train step and in the middle of an evaluation, then
  ``--resume``: final params bit-identical to an uninterrupted run.
* SIGKILL in the middle of a checkpoint save (tmp directory created; all data
  written but not committed): the previous checkpoint stays the latest and
  restores, and ``--resume`` still reaches bit-identical params.
* Same seed and data -> identical metrics, history and params in two processes.
* SIGTERM / Ctrl-C: the run stops after the current step with a checkpoint
  there, prints the command that resumes it (which reaches bit-identical
  params) and exits 143 / 130; a second signal exits at once.
* One run per output directory: a second is refused in one line; the lock of
  a killed run is taken over.
"""

import json
import os
import shlex
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


def _popen(out, *extra, **env):
  """experiments.train in the background; `env` sets JAXREC_DEBUG_* variables."""
  full = {k: v for k, v in os.environ.items() if not k.startswith("JAXREC_DEBUG_")}
  full.update({f"JAXREC_DEBUG_{k}": v for k, v in env.items()})
  return subprocess.Popen([sys.executable, "-m", "experiments.train", *ARGS,
                           f"--output_dir={out}", *extra], cwd=REPO, env=full, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_line(proc, text):
  """Reads the process's stderr up to a line containing `text`."""
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if text in line:
      return
  raise AssertionError(f"{text!r} never came: {''.join(seen)[-3000:]}")


def _no_traceback(stderr):
  assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_the_printed_command_resumes_bit_identically(
    reference, tmp_path):
  out = str(tmp_path / "run")
  proc = _popen(out, SIGNAL_AT="TERM:step:12")
  _, stderr = proc.communicate(timeout=600)
  _no_traceback(stderr)
  assert proc.returncode == 143, stderr[-3000:]
  assert "stopped by SIGTERM after step 12; checkpoint at step 12; resume with:" in stderr
  assert _params(out)[0] == 12
  steps = [h["step"] for h in map(json.loads, open(os.path.join(out, "history.jsonl")))
           if h["split"] == "validation"]
  assert steps == [7]
  command = shlex.split(stderr.strip().splitlines()[-1])
  assert command[:3] == ["python", "-m", "experiments.train"] and command[-1] == "--resume"
  resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_same_run(reference, out)


@pytest.mark.slow
def test_ctrl_c_from_outside_stops_after_the_step_with_a_checkpoint(tmp_path):
  out = str(tmp_path / "run")
  proc = _popen(out, PAUSE_AT="step:17:5")
  _wait_for_line(proc, "paused at step 17")
  proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C does
  _, stderr = proc.communicate(timeout=600)
  _no_traceback(stderr)
  assert proc.returncode == 130, stderr[-3000:]
  assert "stopped by SIGINT after step 17; checkpoint at step 17" in stderr
  step, leaves = _params(out)
  assert step == 17 and all(np.isfinite(x).all() for x in leaves)


@pytest.mark.slow
def test_a_second_signal_exits_at_once(tmp_path):
  out = str(tmp_path / "run")
  proc = _popen(out, SIGNAL_AT="TERM:step:17:2")
  _, stderr = proc.communicate(timeout=600)
  _no_traceback(stderr)
  assert proc.returncode == 143 and "SIGTERM again: exiting now" in stderr, stderr[-3000:]
  assert _params(out)[0] == 15  # no checkpoint at the stop


@pytest.mark.slow
def test_one_run_per_output_dir_and_a_killed_runs_lock_is_taken_over(tmp_path):
  out = str(tmp_path / "run")
  first = _popen(out, PAUSE_AT="step:6:60")
  _wait_for_line(first, "paused at step 6")
  second = _popen(out, "--resume")
  _, stderr = second.communicate(timeout=600)
  _no_traceback(stderr)
  assert second.returncode == 2, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith(
      f"error: --output_dir={out} is in use by another run (pid {first.pid} on ")
  first.kill()
  first.communicate()
  third = _popen(out, "--resume")
  _, stderr = third.communicate(timeout=600)
  assert third.returncode == 0, stderr[-3000:]
  assert f"took over a stale lock of pid {first.pid}" in stderr
  assert _params(out)[0] == 30
