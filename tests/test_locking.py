"""File locks between processes: refuse or wait, owners named, stale locks taken over."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxrec import locking

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
