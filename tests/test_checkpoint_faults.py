"""Damaged checkpoints through the real CLI: `--resume` and `experiments.predict`.

One small run on the real Criteo sample (checkpoints at steps 10 and 20) is
trained once; each case copies it, damages step 20 (or the run directory) one
way, and runs both commands. Each must either use a verified checkpoint
(falling back to step 10 and saying so) or exit 2 with a one-line error:
never a traceback, never rc 0 with a non-finite probability. A resumed run
that fell back reaches the uninterrupted run's final parameters bit for bit.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec.train.checkpoint import Checkpointer

from conftest import CRITEO_KAGGLE_10K, REPO

pytestmark = pytest.mark.slow

TRAIN = ["--batch_size=256", "--embedding_dim=4", "--bottom_mlp=8-4", "--top_mlp=8-1",
         "--optimizer=adam", "--learning_rate=0.01", "--checkpoint_every=10", "--log_every=10",
         "--eval_every=1000", "--eval_batch_size=1024"]


_ENV = {}  # the module's persistent compilation cache: each command compiles little


def _cli(module, *args):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**os.environ, **_ENV})
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  if proc.returncode != 0:  # an error is one line, the last one, exit code 2
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: "), proc.stderr[-3000:]
  return proc


def _train(out, cache, *extra):
  return _cli("experiments.train", f"--data={CRITEO_KAGGLE_10K}", f"--cache_dir={cache}",
              f"--output_dir={out}", *TRAIN, *extra)


def _leaves(run):
  state, meta = Checkpointer(os.path.join(run, "checkpoints")).restore()
  return meta["step"], jax.tree_util.tree_leaves(state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(a run with checkpoints 10 and 20, the same run resumed to 30, cache, rows to score)."""
  if not os.path.exists(CRITEO_KAGGLE_10K):
    pytest.skip("real Criteo sample not present (../shared/data/criteo)")
  root = tmp_path_factory.mktemp("faults")
  _ENV.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cache, base, reference = str(root / "cache"), str(root / "base"), str(root / "reference")
  assert _train(base, cache, "--max_steps=20").returncode == 0
  assert sorted(os.listdir(os.path.join(base, "checkpoints"))) == ["10", "20"]
  shutil.copytree(base, reference)
  assert _train(reference, cache, "--max_steps=30", "--resume").returncode == 0
  rows = str(root / "rows.tsv")
  with open(CRITEO_KAGGLE_10K) as f, open(rows, "w") as out:
    out.writelines(line for _, line in zip(range(300), f))
  return base, reference, cache, rows


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def _flip(path, offset_fraction=0.3, count=1, bit_only=False):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    at = int(len(data) * offset_fraction)
    for i in range(at, min(at + count, len(data))):
      data[i] ^= 0x01 if bit_only else 0xFF
    f.seek(0)
    f.write(data)


def _truncate(path, keep_fraction=0.5):
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * keep_fraction))


def _zero(path):
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(bytes(size))


def _empty_dir(path):
  shutil.rmtree(path)
  os.makedirs(path)


def _lie_about_step(step_dir):
  path = os.path.join(step_dir, "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta["step"] = 30
  with open(path, "w") as f:
    json.dump(meta, f)


# Each case damages the run directory `run` (whose newest checkpoint is `run/checkpoints/20`).
def _step20(run):
  return os.path.join(run, "checkpoints", "20")


CASES = {
    "flip_1_bit_in_array": lambda run: _flip(_largest_array_file(_step20(run)), bit_only=True),
    "flip_64_bytes_in_array": lambda run: _flip(_largest_array_file(_step20(run)), count=64),
    "truncate_array": lambda run: _truncate(_largest_array_file(_step20(run))),
    "zero_array": lambda run: _zero(_largest_array_file(_step20(run))),
    "delete_array": lambda run: os.remove(_largest_array_file(_step20(run))),
    "delete_state": lambda run: shutil.rmtree(os.path.join(_step20(run), "state")),
    "empty_step_dir": lambda run: _empty_dir(_step20(run)),
    "truncate_json_metadata": lambda run: _truncate(
        os.path.join(_step20(run), "state", "_METADATA")),
    "lie_about_step": lambda run: _lie_about_step(_step20(run)),
    "delete_commit_marker": lambda run: os.remove(
        os.path.join(_step20(run), "commit_success.txt")),
    "flip_manifest": lambda run: _flip(os.path.join(_step20(run), "state", "manifest.ocdbt"),
                                       offset_fraction=0.5, count=8),
    "truncate_config_json": lambda run: _truncate(os.path.join(run, "config.json")),
}
# The damage that leaves step 20 intact (the run's config, not a checkpoint).
RUN_DIR_CASES = {"truncate_config_json"}


def _copy_run(base, tmp_path, damage=None):
  """A copy of the trained run under tmp_path, with `damage` (a CASES key) applied."""
  run = str(tmp_path / "run")
  shutil.copytree(base, run)
  if damage is not None:
    CASES[damage](run)
  return run


def _probabilities(path):
  with open(path) as f:
    return np.array([float(line) for line in f])


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_scores_with_a_verified_checkpoint_or_exits_2(runs, case, tmp_path):
  base, _, _, rows = runs
  run = _copy_run(base, tmp_path, case)
  out = str(tmp_path / "probs.txt")
  proc = _cli("experiments.predict", f"--checkpoint={run}", f"--input={rows}", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]  # step 10 verifies: it is used
  probs = _probabilities(out)
  assert len(probs) == 300 and np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
  if case not in RUN_DIR_CASES:
    assert "checkpoint step 20" in proc.stderr and "using step 10" in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_falls_back_to_the_newest_verified_step_or_exits_2(runs, case, tmp_path):
  base, reference, cache, _ = runs
  run = _copy_run(base, tmp_path, case)
  proc = _train(run, cache, "--max_steps=30", "--resume")
  if case in RUN_DIR_CASES:
    assert proc.returncode == 2 and "config.json" in proc.stderr.strip().splitlines()[-1]
    return
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "checkpoint step 20" in proc.stderr and "using step 10" in proc.stderr, proc.stderr
  step, leaves = _leaves(run)
  want_step, want = _leaves(reference)
  assert step == want_step == 30
  for x, y in zip(leaves, want):
    np.testing.assert_array_equal(x, y)  # the fallback changes nothing but the time spent
  assert os.listdir(os.path.join(run, "checkpoints.damaged")) == ["20"]


def test_no_verified_checkpoint_is_one_line_and_exit_2(runs, tmp_path):
  base, _, cache, rows = runs
  run = _copy_run(base, tmp_path)
  for step in ("10", "20"):
    _zero(_largest_array_file(os.path.join(run, "checkpoints", step)))
  proc = _train(run, cache, "--max_steps=30", "--resume")
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and "no checkpoint verifies" in last
  assert "step 20:" in last and "step 10:" in last and "SHA-256 mismatch" in last
  proc = _cli("experiments.predict", f"--checkpoint={run}", f"--input={rows}",
              f"--output={tmp_path / 'probs.txt'}")
  assert proc.returncode == 2 and "no checkpoint verifies" in proc.stderr


def test_export_uses_the_newest_verified_step_and_refuses_a_damaged_one(runs, tmp_path):
  base = runs[0]
  run = _copy_run(base, tmp_path, "flip_64_bytes_in_array")
  artifact = str(tmp_path / "m.npz")
  args = [f"--checkpoint={run}", f"--output={artifact}", "--platforms=cpu"]
  proc = _cli("experiments.export", *args, "--step=20")
  assert proc.returncode == 2 and "checkpoint step 20" in proc.stderr.strip().splitlines()[-1]
  assert not os.path.exists(artifact)
  proc = _cli("experiments.export", *args)
  assert proc.returncode == 0 and f"exported step 10 of {run}" in proc.stdout, proc.stderr[-2000:]
