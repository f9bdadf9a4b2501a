"""The memory check before allocation: per-device bytes of the abstract state, host RSS,
and a one-line refusal of a layout whose tables do not fit the devices."""

import os
import subprocess
import sys

import jax
import pytest

from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.ctr_model import CTRModel
from jaxrec.models.registry import ModelConfig
from jaxrec.train import sharding, sparse
from jaxrec.train.step import create_train_state, dense_optimizer

from conftest import REPO


def _abstract_state(vocab_sizes=(1000, 3000)):
  model = CTRModel.create(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)), EmbeddingConfig(dim=4),
                          vocab_sizes)
  tx, table_opt = dense_optimizer("sgd", 0.1), sparse.create("rowwise_adagrad", 0.1)
  return jax.eval_shape(lambda k: create_train_state(model, k, tx, table_opt), jax.random.key(0))


def test_state_bytes_and_refusal():
  state = _abstract_state()
  total, rows = sharding.state_bytes_per_device(state)
  assert rows == 4000 * 4 * 4 + 4000 * 4  # float32 rows of width 4 plus one accumulator per row
  assert total > rows
  sharding.check_fits(state, None, "one device")  # unknown capacity: nothing checked
  sharding.check_fits(state, total, "one device")
  with pytest.raises(sharding.MeshError, match=r"^one device: the train state needs .* per device,"
                     r" more than the .* of each device; the tables need --mesh model:2 or more"):
    sharding.check_fits(state, total - rows // 2, "one device")
  assert sharding.device_memory_bytes(jax.devices()[0], 1.5) == int(1.5 * 2**30)
  assert sharding.host_rss_bytes() > 10 * 2**20


@pytest.mark.slow
def test_train_refuses_a_mesh_that_does_not_fit_in_one_line(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  args = [sys.executable, "-m", "experiments.train", "--synthetic_rows=2000",
          "--synthetic_max_vocab=5000", "--embedding_dim=16", "--device_memory_gb=0.0005",
          "--bottom_mlp=16-16", "--top_mlp=16-1", "--optimizer=sgd",
          "--embedding_optimizer=sgd",
          f"--output_dir={tmp_path}/run"]
  for extra, where in (([], "one device (no --mesh)"),
                       (["--mesh=model:2"], "--mesh=data:1,model:2")):
    proc = subprocess.run(args + extra, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "per device, more than the 524.29 KiB" in error, error
    assert error.startswith(f"error: {where}: the train state needs")
    assert "need --mesh model:9 or more" in error
  assert "host RSS" in proc.stderr  # the memory report came first
