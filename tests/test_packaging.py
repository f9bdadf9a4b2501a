"""The wheel and sdist install in a fresh virtual environment and work outside the checkout."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

# Smoke subset of the suite run against the installed wheel (no checkout on the path): every
# public name imports and is documented, and `fit` trains and reloads a run.
SMOKE_TESTS = ("conftest.py", "test_public_api.py")


def _run(args, cwd, env=None, timeout=600):
  proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
  pytest.importorskip("build")
  dist = tmp_path / "dist"
  # The wheel is built from the sdist, so both are checked (an isolated build: pip fetches
  # the build backend the pyproject names).
  _run([sys.executable, "-m", "build", f"--outdir={dist}", REPO], cwd=tmp_path)
  wheel, = glob.glob(str(dist / "jaxrec-*.whl"))
  assert glob.glob(str(dist / "jaxrec-*.tar.gz"))
  names = zipfile.ZipFile(wheel).namelist()
  assert "jaxrec/__init__.py" in names and "experiments/train.py" in names
  assert "jaxrec/kernels/interactions.cc" in names

  venv = tmp_path / "venv"
  # The venv sees this environment's packages (jax, flax, ...), so nothing is downloaded,
  # but jaxrec itself comes from the wheel installed into it.
  _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
  python = str(venv / "bin" / "python")
  _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path)

  outside = tmp_path / "outside"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = _run([python, "-c", "import jaxrec; print(jaxrec.__version__); jaxrec.CTRModel;"
               " print(jaxrec.__file__)"], cwd=outside, env=env)
  version, location = proc.stdout.split()
  assert version != "0.0.0+unknown" and location.startswith(str(venv)), proc.stdout

  _run([python, "-m", "experiments.train", "--synthetic_rows=2000", "--synthetic_max_vocab=100",
        "--epochs=1", "--batch_size=128", f"--output_dir={outside / 'run'}"], cwd=outside, env=env)
  assert (outside / "run" / "metrics.json").exists()

  tests = outside / "tests"
  tests.mkdir()
  for name in SMOKE_TESTS:
    shutil.copy(os.path.join(REPO, "tests", name), tests / name)
  _run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(tests)],
       cwd=outside, env=env)
