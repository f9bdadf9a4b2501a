"""Shared fixtures: paths to the real Criteo samples (tests skip when absent)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real samples live in ../shared/data beside the checkout (JAXREC_SHARED_DATA overrides).
SHARED_DATA = os.environ.get("JAXREC_SHARED_DATA",
                             os.path.join(os.path.dirname(REPO), "shared", "data"))
CRITEO_KAGGLE_10K = os.path.join(SHARED_DATA, "criteo", "criteo_kaggle_train_first10k.tsv")
CRITEO_1TB_1K = os.path.join(SHARED_DATA, "criteo", "criteo_1tb_day0_first1k.tsv")
AVAZU_10K = os.path.join(SHARED_DATA, "avazu", "avazu_train_first9999.csv")


def run_train_cli(*args: str) -> subprocess.CompletedProcess:
  """`python -m experiments.train ARGS` from the repository root; output captured."""
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture
def criteo_kaggle_path():
  if not os.path.exists(CRITEO_KAGGLE_10K):
    pytest.skip("real Criteo sample not present (../shared/data/criteo)")
  return CRITEO_KAGGLE_10K


@pytest.fixture
def criteo_1tb_path():
  if not os.path.exists(CRITEO_1TB_1K):
    pytest.skip("real Criteo Terabyte sample not present (../shared/data/criteo)")
  return CRITEO_1TB_1K


@pytest.fixture
def avazu_path():
  if not os.path.exists(AVAZU_10K):
    pytest.skip("real Avazu sample not present (../shared/data/avazu)")
  return AVAZU_10K
