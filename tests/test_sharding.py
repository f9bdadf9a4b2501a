"""Sharded training on a (data, model) mesh: parsing, placement, equality, re-sharding.

The multi-device checks need 8 devices, which XLA only creates if
``--xla_force_host_platform_device_count`` is set before jax is imported, so
they run `tests/sharded_worker.py` in a subprocess and assert on its JSON.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.train import sharding
from jaxrec.train.checkpoint import Checkpointer

from conftest import REPO


def _worker(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharded_worker.py"), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("text, data, model", [
    ("data:2,model:4", 2, 4), ("model:8", 1, 8), ("data:3", 3, 1), (" data:1 , model:2 ", 1, 2)])
def test_mesh_config_parses(text, data, model):
  config = sharding.MeshConfig.parse(text)
  assert (config.data, config.model, config.num_devices) == (data, model, data * model)
  assert sharding.MeshConfig.parse(str(config)) == config


@pytest.mark.parametrize("text", ["", "data:0,model:2", "data:2,data:2", "rows:4", "data:x",
                                  "data:-1"])
def test_mesh_config_rejects(text):
  with pytest.raises(sharding.MeshError):
    sharding.MeshConfig.parse(text)


def test_make_mesh_names_missing_devices_and_the_cpu_flag():
  with pytest.raises(sharding.MeshError, match="needs 64 devices.*xla_force_host_platform"):
    sharding.make_mesh(sharding.MeshConfig(data=8, model=8))


def test_padded_rows():
  assert [sharding.padded_rows(r, 4) for r in (1, 4, 5, 1241)] == [4, 4, 8, 1244]
  assert sharding.padded_rows(7, 1) == 7


def test_restore_resizes_rows_only(tmp_path):
  state = {"params": {"w": jnp.ones((3, 2))}, "tables": {"t": jnp.arange(10.0)}}
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, state, {"step": 1})
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path))
  padded = {"params": {"w": jnp.zeros((3, 2))}, "tables": {"t": jnp.zeros(12)}}
  restored, _ = ckpt.restore(padded, resizable_rows=("tables",))
  np.testing.assert_array_equal(restored["tables"]["t"], list(range(10)) + [0, 0])
  truncated, _ = ckpt.restore({**padded, "tables": {"t": jnp.zeros(8)}}, resizable_rows=("tables",))
  np.testing.assert_array_equal(truncated["tables"]["t"], range(8))
  with pytest.raises(ValueError, match="params/w has shape"):
    ckpt.restore({**padded, "params": {"w": jnp.zeros((4, 2))}},
                 resizable_rows=("tables",))


def test_sharded_steps_match_single_device_and_split_rows():
  results = _worker("equality")
  names = {(r["model"], r["embedding"]) for r in results}
  assert ("dlrm", "full") in names
  assert ("afm", "full") in names and any(r["regularized"] for r in results)
  assert any(r["compute_dtype"] == "bfloat16" for r in results)  # mixed-precision custom VJP
  assert any(r["bags"] for r in results)  # a multi-hot field
  for r in results:
    case = f"{r['model']}/{r['embedding']} on {r['mesh']} with {r['optimizer']}"
    single, sharded = np.array(r["losses"]).T
    np.testing.assert_allclose(sharded, single, rtol=1e-5, err_msg=case)
    assert r["param_diff"] < 2e-5 * max(r["param_scale"], 1.0), case
    assert r["table_diff"] < 2e-6, case
    assert r["table_moved"] > 1e-3, case  # the tables did train
    assert r["param_shards_replicated"], case
    model_size = int(r["mesh"].split("model:")[1])
    for name, t in r["tables"].items():
      # Each of the 8 devices holds 1/M of the (padded) rows.
      assert t["global_rows"] == sharding.padded_rows(t["rows"], model_size), (case, name)
      assert t["shard_rows"] == [t["global_rows"] // model_size], (case, name)
      assert t["num_shards"] == 8 and t["spec"] == "P('model',)", (case, name)
      assert f"{t['shard_rows'][0]:,} rows per device (1/{model_size})" in r["memory_report"]
  first = results[0]["tables"]["embedding"]
  assert first["global_rows"] > first["rows"]  # padding exercised: 1241 rows over 4 shards


def test_checkpoint_saved_on_4_devices_resumes_on_2_and_1(tmp_path):
  r = _worker("reshard", str(tmp_path))
  assert r["num_devices"] == 8
  assert r["steps"] == [10, 20, 25] and r["full_steps"] == 25
  assert r["history_steps"] == [10, 20, 25]
  assert r["shapes_equal"]  # the last save (one device) holds the real rows only
  assert r["max_diff"] < 1e-4  # same params as training on one device throughout
  assert abs(r["auc"][0] - r["auc"][1]) < 1e-3


def test_mesh_runs_skip_steps_per_call_and_factorize_with_finetuning(tmp_path):
  """--mesh=data:2,model:2 --on_nonfinite=skip --steps_per_call=4 --factorize=svd
  --rank_fraction=0.5 --finetune_epochs=1 equals the one-device run up to float32
  summation order."""
  r = _worker("features", str(tmp_path))
  one, mesh = r["reports"]
  assert one["num_devices"] == 1 and mesh["num_devices"] == 4
  for key in ("steps", "skipped_nonfinite_batches", "layer_ranks"):
    assert one[key] == mesh[key], key
  assert one["steps"] == 32 and one["skipped_nonfinite_batches"] == 2  # the NaN row, each epoch
  for key in ("auc", "logloss", "prefactorize_auc", "prefinetune_auc"):
    assert abs(one[key] - mesh[key]) < 1e-4, (key, one[key], mesh[key])
  assert r["factorized"] == ["bias", "u", "v"]  # the checkpoint holds the fine-tuned factors
  assert r["param_diff"] < 1e-4 * max(r["param_scale"], 1.0)
  assert r["table_diff"] < 1e-5
  # Fine-tuning runs through the loop: validated at the end of training and of fine-tuning.
  assert r["history"][0] == r["history"][1] == [16, 32]
