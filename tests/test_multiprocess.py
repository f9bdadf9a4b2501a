"""Per-host input under jax.distributed: 2 processes x 2 virtual CPU devices (over
loopback) train the same parameters as 1 process x 4 devices (also across a
resume), and each process's loader reads only its half of every global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, process_id, num_processes, devices, port):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen([sys.executable, WORKER, workdir, str(process_id), str(num_processes),
                           str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _result(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-4000:]
  line = [s for s in out.splitlines() if s.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_processes_read_half_the_rows_each_and_train_as_one(tmp_path):
  one_dir, two_dir = str(tmp_path / "one"), str(tmp_path / "two")
  os.makedirs(one_dir)
  os.makedirs(two_dir)
  port = _free_port()
  procs = [_start(two_dir, p, 2, 2, port) for p in range(2)]
  reference = _result(_start(one_dir, 0, 1, 4, 0))
  parts = [_result(p) for p in procs]
  train_rows, steps = 512, 512 // 64
  assert reference["processes"] == 1 and reference["local_devices"] == 4
  assert reference["rows_read"] == train_rows and reference["steps"] == steps
  assert reference["distinct_rows"] == list(range(train_rows))
  assert [p["process"] for p in parts] == [0, 1]
  for p in parts:
    assert p["processes"] == 2 and p["local_devices"] == 2 and p["steps"] == steps
    assert p["rows_read"] == train_rows // 2  # half of every global batch, counted
  halves = [set(p["distinct_rows"]) for p in parts]
  assert not halves[0] & halves[1] and halves[0] | halves[1] == set(range(train_rows))
  with np.load(os.path.join(one_dir, "final.npz")) as a, \
      np.load(os.path.join(two_dir, "final.npz")) as b:
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 4
    assert any(k.startswith("['tables']") for k in a.files)
    for k in a.files:  # equal up to float32 summation order
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_positions_read_only_that_part_of_every_global_batch():
  from jaxrec.data import loader, synthetic
  data = synthetic.generate(synthetic.SyntheticConfig(num_rows=300, max_vocab=20, seed=1))
  order = dict(shuffle=True, seed=3, epoch=2, block_rows=16, window_blocks=4)
  positions = np.arange(32, 64)
  whole = list(loader.iterate_batches(data, 64, **order))
  part = list(loader.iterate_batches(data, 64, positions=positions, **order))
  resumed = list(loader.iterate_batches(data, 64, positions=positions, start_batch=3, **order))
  assert len(whole) == len(part) == 5 and len(resumed) == 2
  for full, mine in zip(whole, part):
    for key in full:
      np.testing.assert_array_equal(mine[key], full[key][positions])
  assert part[-1]["mask"].sum() == 300 - 4 * 64 - 32  # the padded last batch keeps its mask
  for a, b in zip(part[3:], resumed):
    np.testing.assert_array_equal(a["cat"], b["cat"])


def test_only_process_0_preprocesses_the_others_wait(tmp_path, criteo_kaggle_path):
  import threading
  from jaxrec.data import preprocess, sources
  config = sources.DataConfig(source=criteo_kaggle_path, cache_dir=str(tmp_path / "cache"))
  with pytest.raises(sources.PreprocessWaitError,
                     match=r"^process 1: waited 0 s for process 0 to preprocess .*criteo_kaggle"
                           r".* \(meta.json not written\); is process 0 running\?"):
    sources.preprocessed_dir(config, process_index=1, wait_s=0.2, poll=0.05)
  assert not (tmp_path / "cache").exists()  # a waiting process writes nothing
  waited = {}
  thread = threading.Thread(target=lambda: waited.update(out=sources.preprocessed_dir(
      config, process_index=1, wait_s=120, poll=0.05)))
  thread.start()
  out = sources.preprocessed_dir(config, process_index=0)
  thread.join()
  assert waited["out"] == out and preprocess.is_current(
      preprocess.PreprocessConfig(inputs=(criteo_kaggle_path,), output_dir=out,
                                  split=config.split_spec, seed=config.seed))
