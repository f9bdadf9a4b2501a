"""Allocator choice for experiment commands: the environment they re-execute with."""

import os
import subprocess
import sys

import pytest

from jaxrec import allocator

TC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_preloads_tcmalloc_once_and_keeps_other_preloads():
  env = allocator.allocator_environment({"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}, TC, "linux")
  assert env["LD_PRELOAD"] == f"{TC}:libfoo.so"
  assert env[allocator.APPLIED_ENV] == "1" and env["PATH"] == "/bin"
  assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
  assert allocator.allocator_environment(env, TC, "linux") is None  # no second re-exec


def test_falls_back_to_glibc_huge_pages_without_tcmalloc():
  env = allocator.allocator_environment({"GLIBC_TUNABLES": "glibc.malloc.check=0"}, None, "linux")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.check=0:glibc.malloc.hugetlb=1"
  assert "LD_PRELOAD" not in env


@pytest.mark.parametrize("environ, platform", [
    ({"JAXREC_ALLOCATOR": "system"}, "linux"),                    # switched off
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux"),       # Colab preloads it already
    ({"LD_PRELOAD": "libjemalloc.so.2"}, "linux"),
    ({}, "darwin"),
])
def test_keeps_the_process_when_off_preloaded_or_not_linux(environ, platform):
  assert allocator.allocator_environment(environ, TC, platform) is None


def test_rejects_an_unknown_choice():
  with pytest.raises(ValueError, match="JAXREC_ALLOCATOR"):
    allocator.allocator_environment({"JAXREC_ALLOCATOR": "tcmallocc"}, TC, "linux")


def test_find_tcmalloc_in_given_directories(tmp_path):
  assert allocator.find_tcmalloc([str(tmp_path)]) is None
  (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
  assert allocator.find_tcmalloc([str(tmp_path)]) == str(tmp_path / "libtcmalloc.so.4")


def test_experiment_command_reexecutes_with_the_chosen_environment(tmp_path):
  probe = ("import os; print(os.environ.get('JAXREC_ALLOCATOR_APPLIED'),"
           " os.environ.get('LD_PRELOAD', ''), os.environ.get('GLIBC_TUNABLES', ''))")
  pkg = os.path.join(os.path.dirname(__file__), "..", "experiments")
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", allocator.APPLIED_ENV, allocator.CHOICE_ENV)}
  # Run `python -m experiments.probe_entry` from a copy of the package holding the probe.
  copy = tmp_path / "root" / "experiments"
  copy.mkdir(parents=True)
  (copy / "__init__.py").write_text(open(os.path.join(pkg, "__init__.py")).read())
  (copy / "probe_entry.py").write_text(probe)
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "root"), os.path.join(pkg, "..")])
  out = subprocess.run([sys.executable, "-m", "experiments.probe_entry"], env=env,
                       cwd=tmp_path / "root", capture_output=True, text=True, check=True).stdout
  applied, preload, tunables = (out.strip().split(" ") + ["", ""])[:3]
  assert applied == "1"
  assert ("tcmalloc" in preload) == (allocator.find_tcmalloc() is not None)
  if not preload:
    assert "glibc.malloc.hugetlb=1" in tunables
  env[allocator.CHOICE_ENV] = "system"
  out = subprocess.run([sys.executable, "-m", "experiments.probe_entry"], env=env,
                       cwd=tmp_path / "root", capture_output=True, text=True, check=True).stdout
  assert out.split(" ")[0] == "None"
