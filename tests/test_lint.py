"""The code base is clean under the `[tool.ruff]` configuration in pyproject.toml."""

import shutil
import subprocess

import pytest

from conftest import REPO


def test_ruff_check_passes():
  ruff = shutil.which("ruff")
  if ruff is None:
    pytest.skip("ruff not installed (it is in the test extra)")
  proc = subprocess.run([ruff, "check", "--output-format=concise", "."], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
