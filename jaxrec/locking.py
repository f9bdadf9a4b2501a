"""Inter-process locks on files, recording their owner; waiting for another process's output.

`hold(path)` takes an exclusive ``flock`` on `path` for the duration of a
block and writes the owner (pid, host, start time) into the file. The kernel
drops the lock when its process dies however it dies, so a lock is never
stuck: a file that still names an owner when the lock is free was left by a
process that did not finish (a *stale* lock) and is taken over, saying so.
On a filesystem without ``flock`` (some network filesystems) the owner's pid
is checked instead (alive on this host: held).

Used for a run's output directory (one training run at a time) and for
preprocessing (one job writes, the others wait, then reuse its output).
`wait_for_file` is the other half of "one process writes, the others wait".
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from typing import Callable, Iterator

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockedError(RuntimeError):
  """The lock is held by another live process (and we did not wait, or waited too long)."""

  def __init__(self, path: str, owner: dict | None, waited: float = 0.0):
    holder = describe(owner) if owner else "another process"
    after = f" after waiting {waited:.0f} s" if waited else ""
    super().__init__(f"{path} is locked by {holder}{after}")
    self.path, self.owner = path, owner


def describe(owner: dict) -> str:
  return (f"pid {owner.get('pid')} on {owner.get('host')}"
          + (f" (since {owner['since']})" if owner.get("since") else ""))


def _read_owner(path: str) -> dict | None:
  try:
    with open(path) as f:
      text = f.read()
    owner = json.loads(text) if text.strip() else None
    return owner if isinstance(owner, dict) else None
  except (OSError, ValueError):
    return None


def _alive_here(owner: dict | None) -> bool:
  """Whether `owner` is a running process on this host (unknown hosts count as alive)."""
  if not owner or not isinstance(owner.get("pid"), int):
    return False
  if owner.get("host") != socket.gethostname():
    return True
  try:
    os.kill(owner["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _try_flock(fd: int) -> bool | None:
  """True: locked; False: held elsewhere; None: this filesystem has no flock."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in _NO_FLOCK:
      return None
    raise


@contextlib.contextmanager
def hold(path: str, *, wait: float | None = 0.0, poll: float = 0.5,
         report: Callable[[str], None] | None = None) -> Iterator[dict]:
  """Holds an exclusive lock on `path` (created with its directory) during the block.

  Args:
    path: the lock file.
    wait: seconds to wait for a held lock (0: refuse at once; None: no limit).
    poll: seconds between attempts while waiting.
    report: told once when waiting starts and when a stale lock is taken over.

  Yields:
    The owner record written into the file.

  Raises:
    LockedError: held by a live process beyond `wait`.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  start, told, locked = time.monotonic(), False, False
  try:
    while True:
      got = _try_flock(fd)
      if got is None:  # no flock here: the recorded owner's pid decides
        got = not _alive_here(_read_owner(path))
      if got:
        locked = True
        break
      owner, waited = _read_owner(path), time.monotonic() - start
      if wait is not None and waited >= wait:
        raise LockedError(path, owner, waited)
      if report is not None and not told:
        report(f"waiting for {path}, held by {describe(owner) if owner else 'another process'}")
        told = True
      time.sleep(poll if wait is None else max(0.0, min(poll, wait - waited)))
    stale = _read_owner(path)  # a holder that died: it never cleared its record
    if stale and report is not None:
      report(f"{path}: took over a stale lock of {describe(stale)}, which is no longer running")
    now = datetime.datetime.now(datetime.timezone.utc)
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "since": now.strftime("%Y-%m-%d %H:%M:%S UTC")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    yield owner
  finally:
    if locked:
      os.ftruncate(fd, 0)  # released cleanly: no owner left behind
      with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def wait_for_file(path: str, timeout: float, *, poll: float = 0.5, what: str = "") -> None:
  """Returns once `path` exists; raises TimeoutError (one line) after `timeout` seconds."""
  start = time.monotonic()
  while not os.path.exists(path):
    waited = time.monotonic() - start
    if waited >= timeout:
      raise TimeoutError(f"{path} did not appear within {timeout:.0f} s"
                         + (f" ({what})" if what else ""))
    time.sleep(min(poll, timeout - waited))
