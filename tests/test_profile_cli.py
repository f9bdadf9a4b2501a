"""`--profile_dir` on experiments.train writes a JAX profiler trace."""

import glob
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_train_profile_dir_writes_a_trace(tmp_path):
  profile = tmp_path / "profile"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--synthetic_rows=1000", "--batch_size=128",
       "--bottom_mlp=16-8", "--embedding_dim=8", "--top_mlp=16-1", "--max_steps=3",
       f"--output_dir={tmp_path / 'run'}", f"--profile_dir={profile}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert glob.glob(str(profile / "plugins/profile/*/*.xplane.pb"))
  assert glob.glob(str(profile / "plugins/profile/*/perfetto_trace.json.gz"))
