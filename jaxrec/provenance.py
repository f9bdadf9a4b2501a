"""Where a figure came from: the machine, the library versions, the date and the command.

Every table of figures that jaxrec writes into `docs/` (or prints as a report) starts
with `report_header(...)`, so a reader can tell which CPU, accelerator and versions
produced it and how to regenerate it. `write_report` writes such a page whole.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

# CPU features that decide matmul speed (and whether bfloat16 pays), as /proc/cpuinfo names them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def host_cpu(cpuinfo: str | None = None) -> dict:
  """The host CPU: model name, usable logical CPUs and the `CPU_FEATURES` it has.

  JAX names every CPU "cpu", while machines of one kind may differ in exactly what
  decides matmul speed (AVX-512, bfloat16 units), so records carry this.
  `cpuinfo` is the text of /proc/cpuinfo (read when None; absent off Linux).
  """
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if not sep:
      if fields:  # a blank line ends the first processor's block
        break
      continue
    fields.setdefault(key.strip(), value.strip())
  flags_present = set(fields.get("flags", "").split())
  try:
    count = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    count = os.cpu_count() or 0
  return {"model": fields.get("model name") or platform.processor() or "unknown",
          "logical_cpus": count,
          "features": [f for f in CPU_FEATURES if f in flags_present]}


def library_versions() -> dict[str, str]:
  """Versions of Python and of the numerical libraries a figure depends on."""
  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "orbax.checkpoint", "torch"):
    module = sys.modules.get(name)
    if module is None and name != "torch":  # torch only when the caller already imported it
      try:
        module = __import__(name, fromlist=["__version__"])
      except ImportError:
        module = None
    if module is not None and hasattr(module, "__version__"):
      versions[name] = module.__version__
  return versions


def accelerator() -> str:
  """The default JAX device, e.g. 'cpu' or 'gpu:NVIDIA H100 80GB HBM3 x1'."""
  try:
    import jax
    devices = jax.devices()
  except Exception:  # no usable backend: the figure is still a CPU figure
    return "unknown"
  d = devices[0]
  if d.platform == "cpu":
    return "none (cpu)"
  return f"{d.platform}:{d.device_kind} x{len(devices)}"


def command_line(argv: list[str] | None = None) -> str:
  """The command that ran, as `python -m <module> <args>` when run as a module."""
  argv = list(sys.argv if argv is None else argv)
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", argv[0]]
  return " ".join(shlex.quote(a) for a in head + argv[1:])


def machine_record() -> dict:
  """The machine and versions as one JSON-ready dict (for results files)."""
  return {"host_cpu": host_cpu(), "accelerator": accelerator(),
          "versions": library_versions(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def report_header(title: str, command: str | None = None, record: dict | None = None) -> str:
  """Markdown heading plus the provenance block every generated docs page starts with.

  `record` is a `machine_record()` saved when the figures were measured (a page
  re-rendered later from saved results names the machine that measured them);
  None: this machine, now. Keys missing from `record` read "not recorded".
  """
  record = machine_record() if record is None else record
  cpu = record.get("host_cpu") or {}
  versions = ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items())
  machine = (f"{cpu['model']}, {cpu.get('logical_cpus', '?')} logical CPUs, features"
             f" {' '.join(cpu.get('features', [])) or 'none listed'}" if cpu else "not recorded")
  lines = [f"# {title}", "",
           "<!-- Generated file: edit the script that writes it, not this page. -->", "",
           f"- Command: `{command or command_line()}`",
           f"- Machine: {machine}; accelerator: {record.get('accelerator', 'not recorded')}",
           f"- Versions: {versions or 'not recorded'}",
           f"- Date: {record.get('date', 'not recorded')}", ""]
  return "\n".join(lines)


def write_report(path: str, title: str, body: str, command: str | None = None,
                 record: dict | None = None) -> None:
  """Writes a generated markdown page: `report_header` then `body` (atomically)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(report_header(title, command, record) + "\n" + body.rstrip("\n") + "\n")
  os.replace(tmp, path)
