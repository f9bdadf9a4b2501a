"""Choosing the process's memory allocator for XLA:CPU (tcmalloc when installed).

XLA:CPU allocates each step's temporaries with malloc: at batch 2048 these are
tens of MB (AFM's pair products alone are 46 MB). glibc serves every
allocation above 32 MB with a fresh ``mmap`` and unmaps it on free, so each
step page-faults and zero-fills its buffers again, while tcmalloc keeps them
(docs/performance.md has the measured effect). The PyTorch CPU performance
guides give the same advice (preload tcmalloc or jemalloc).

An allocator can only be chosen before the process starts, so the experiment
entry points (``python -m experiments.X``) re-execute themselves once with
``LD_PRELOAD`` set to tcmalloc when it is installed (Debian/Ubuntu:
``apt-get install libtcmalloc-minimal4``; Colab preloads it already), or else
with glibc's transparent-huge-page tunable. ``JAXREC_ALLOCATOR=system`` turns
this off. Library code never re-executes anything.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

CHOICE_ENV = "JAXREC_ALLOCATOR"  # "auto" (default) or "system"
APPLIED_ENV = "JAXREC_ALLOCATOR_APPLIED"  # set in the re-executed process
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                "/usr/lib", "/usr/local/lib")
_FAST_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
_HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
# tcmalloc reports every allocation above 1 GB on stderr; Kaggle-size tables are 2+ GB.
_TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc(library_dirs: Sequence[str] = LIBRARY_DIRS) -> str | None:
  """Path of an installed tcmalloc shared library, or None."""
  for directory in library_dirs:
    for name in TCMALLOC_NAMES:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return path
  return None


def allocator_environment(environ: Mapping[str, str], tcmalloc: str | None,
                          platform: str = sys.platform) -> dict[str, str] | None:
  """The environment to re-execute with, or None to keep the current process.

  None when: not Linux, switched off (``JAXREC_ALLOCATOR=system``), already
  re-executed, or a fast allocator is already preloaded (e.g. on Colab).
  """
  choice = environ.get(CHOICE_ENV, "auto")
  if choice not in ("auto", "system"):
    raise ValueError(f"{CHOICE_ENV} must be 'auto' or 'system', got {choice!r}")
  preload = environ.get("LD_PRELOAD", "")
  if (not platform.startswith("linux") or choice == "system" or environ.get(APPLIED_ENV)
      or any(name in preload for name in _FAST_ALLOCATORS)):
    return None
  env = dict(environ)
  env[APPLIED_ENV] = "1"
  if tcmalloc:
    env["LD_PRELOAD"] = f"{tcmalloc}:{preload}" if preload else tcmalloc
    env.update({k: v for k, v in _TCMALLOC_QUIET.items() if k not in environ})
  else:
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
      return None
    env["GLIBC_TUNABLES"] = f"{tunables}:{_HUGEPAGE_TUNABLE}" if tunables else _HUGEPAGE_TUNABLE
  return env


def reexec_with_fast_allocator() -> None:
  """Re-executes this ``python -m`` command under a faster allocator (once; see module doc).

  Call before importing jax. Does nothing when `allocator_environment` says so
  or when the command line is not known (``sys.orig_argv``, Python >= 3.10).
  """
  env = allocator_environment(os.environ, find_tcmalloc())
  argv = getattr(sys, "orig_argv", None)
  if env is None or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def current_allocator(environ: Mapping[str, str] = os.environ) -> str:
  """The allocator this process runs with: tcmalloc, jemalloc, mimalloc, glibc+hugetlb or glibc."""
  preload = environ.get("LD_PRELOAD", "")
  for name in _FAST_ALLOCATORS:
    if name in preload:
      return name
  return "glibc+hugetlb" if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", "") else "glibc"
