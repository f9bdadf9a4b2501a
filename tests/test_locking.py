"""File locks between processes: refuse or wait, owners named, stale locks taken over;
preprocessing jobs on one directory or cache entry work one at a time and reuse."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxrec import locking
from jaxrec.data import preprocess, sources

from conftest import REPO

# Takes the lock, says so, then sleeps (or kills itself at once: a stale lock).
HOLDER = """
import os, signal, sys, time
from jaxrec import locking
with locking.hold(sys.argv[1]):
  print("held", flush=True)
  if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
  time.sleep(float(sys.argv[2]))
"""


def _holder(path, how):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, how], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_held_lock_is_refused_naming_its_owner(tmp_path):
  path = str(tmp_path / "sub" / "x.lock")
  proc = _holder(path, "30")
  try:
    with pytest.raises(locking.LockedError, match=f"x.lock is locked by pid {proc.pid} on "):
      with locking.hold(path):
        pass
    with pytest.raises(locking.LockedError, match="after waiting 0 s"):
      with locking.hold(path, wait=0.3, poll=0.1):
        pass
  finally:
    proc.kill()
    proc.wait()


def test_waiting_gets_the_lock_when_the_owner_ends(tmp_path):
  path = str(tmp_path / "x.lock")
  proc = _holder(path, "1.5")
  said = []
  start = time.monotonic()
  with locking.hold(path, wait=None, poll=0.05, report=said.append) as owner:
    assert time.monotonic() - start > 0.5  # the holder slept 1.5 s with it
    assert owner["pid"] == os.getpid() and json.load(open(path))["pid"] == os.getpid()
  assert len(said) == 1 and said[0].startswith(f"waiting for {path}, held by pid {proc.pid} on")
  assert open(path).read() == ""  # released cleanly: no owner left
  proc.wait()


def test_a_dead_owner_is_a_stale_lock_taken_over(tmp_path):
  path = str(tmp_path / "x.lock")
  proc = _holder(path, "die")
  assert proc.wait() == -signal.SIGKILL
  assert json.load(open(path))["pid"] == proc.pid  # its record outlived it
  said = []
  with locking.hold(path, report=said.append):
    pass
  assert len(said) == 1 and said[0].startswith(f"{path}: took over a stale lock of pid {proc.pid}")
  assert said[0].endswith("which is no longer running")


def test_wait_for_file(tmp_path):
  path = tmp_path / "meta.json"
  with pytest.raises(TimeoutError, match="meta.json did not appear within 0 s \\(process 0\\)"):
    locking.wait_for_file(str(path), 0.2, poll=0.05, what="process 0")
  path.write_text("{}")
  locking.wait_for_file(str(path), 0.2)


def test_a_second_preprocessing_job_waits_then_reuses(criteo_kaggle_path, tmp_path):
  out = str(tmp_path / "data")
  cmd = [sys.executable, "-m", "experiments.preprocess", f"--input={criteo_kaggle_path}",
         f"--output_dir={out}"]
  with locking.hold(os.path.join(out, preprocess.LOCK)):  # a first job, still at work
    waiting = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    first = waiting.stdout.readline()
    assert first.startswith(f"waiting for {out}/{preprocess.LOCK}, held by pid {os.getpid()}")
    assert not preprocess.is_preprocessed(out)
  stdout, stderr = waiting.communicate(timeout=600)
  assert waiting.returncode == 0 and preprocess.is_preprocessed(out), stderr[-2000:]
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "reusing it" in again.stdout, again.stderr[-2000:]


def test_training_jobs_share_a_cache_entry_one_at_a_time(criteo_kaggle_path, tmp_path):
  config = sources.DataConfig(source=criteo_kaggle_path, cache_dir=str(tmp_path))
  entry = sources.preprocessed_dir(config, report=lambda msg: None)
  said, done = [], []
  worker = threading.Thread(target=lambda: done.append(sources.preprocessed_dir(
      config, report=said.append)))
  with locking.hold(entry + ".lock"):  # another job at work on the entry
    worker.start()
    time.sleep(1.0)
    assert not done and len(said) == 1 and said[0].startswith(f"waiting for {entry}.lock")
  worker.join(timeout=600)
  assert done == [entry] and "reusing it" in said[-1]
