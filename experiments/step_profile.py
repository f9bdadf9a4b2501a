r"""Where a DLRM train step's time goes: a per-op breakdown from a JAX profile.

  python -m experiments.step_profile --output=docs/step_profile.md

Builds the benchmark's DLRM (`experiments.benchmark`: bottom 13-512-256-64-16,
top 512-256-1, d = 16, dot interaction, sparse SGD, Zipf-skewed synthetic ids)
for each --compute_dtypes and --batch_sizes, runs --steps jitted train steps
under `jax.profiler.trace`, and sums the duration of every XLA op (thunk) the
trace records. Ops are named as in the compiled HLO, which also gives each one
a category: matmul (a fusion holding a dot), kernel (a custom call: jaxrec's
fused CPU kernels), gather, scatter, sort, reduce, copy (copies, transposes)
or elementwise. An op's time per step is its median duration times its runs
per step, summed over the CPU threads: CPU time, not wall time; shares are of
the ops' total.

Writes a generated page (`jaxrec.provenance.write_report`) with the share of
each category and the top --top ops of every configuration.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags (only when run as a script, so importing this module is side-effect free)."""
  flags.DEFINE_string("output", "docs/step_profile.md", "Generated page to write.")
  flags.DEFINE_list("compute_dtypes", ["float32", "bfloat16"], "MLP matmul dtypes profiled.")
  flags.DEFINE_list("batch_sizes", ["2048", "128"], "Batch sizes profiled.")
  flags.DEFINE_enum("tables", "100k", ["100k", "kaggle"], "Table set (as experiments.benchmark).")
  flags.DEFINE_integer("steps", 20, "Train steps traced per configuration.")
  flags.DEFINE_integer("top", 12, "Ops listed per configuration.")
  flags.DEFINE_bool("cpu_kernels", True, "Fused CPU kernels (as experiments.benchmark).")


CATEGORIES = ("matmul", "kernel", "gather", "scatter", "sort", "reduce", "copy", "elementwise")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """Compiled HLO text -> ({instruction: (opcode, shape, [called computations])},
  {computation: [opcodes of its instructions and their callees' ...]})."""
  instructions, bodies, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and "=" not in line.split("(")[0]:
      current = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m is None:
      continue
    name, shape, opcode, rest = m.groups()
    calls = _CALLS.findall(rest)
    instructions[name] = (opcode, shape, calls)
    if current is not None:
      bodies[current].append((opcode, calls))
  return instructions, bodies


def _opcodes(computation: str, bodies: dict, seen=None) -> set[str]:
  seen = set() if seen is None else seen
  if computation in seen:
    return set()
  seen.add(computation)
  out = set()
  for opcode, calls in bodies.get(computation, ()):
    out.add(opcode)
    for c in calls:
      out |= _opcodes(c, bodies, seen)
  return out


def categorize(name: str, instructions: dict, bodies: dict) -> str:
  """The category of an HLO instruction of the compiled module (a traced op name)."""
  opcode, _, calls = instructions[name]
  ops = {opcode}
  for c in calls:
    ops |= _opcodes(c, bodies)
  if ops & {"dot", "convolution"} or name.startswith("ynn_"):
    return "matmul"
  for category, members in (("kernel", {"custom-call"}), ("scatter", {"scatter"}),
                            ("gather", {"gather", "dynamic-slice"}), ("sort", {"sort"}),
                            ("reduce", {"reduce", "reduce-window"})):
    if ops & members:
      return category
  if ops <= {"copy", "transpose", "bitcast", "parameter", "tuple", "get-tuple-element",
             "fusion", "reshape"}:
    return "copy"
  return "elementwise"


def op_times(trace_dir: str) -> dict[str, list[float]]:
  """{op name: its durations in microseconds} on the XLA worker threads of a trace."""
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  out = collections.defaultdict(list)
  for e in events:
    if e.get("ph") != "X" or e["name"].startswith("end: "):
      continue
    thread = threads.get((e["pid"], e["tid"]), "")
    if "XLA" in thread or "Xla" in thread:
      out[e["name"]].append(float(e.get("dur", 0.0)))
  return dict(out)


def per_step(durations: list[float], steps: int) -> float:
  """An op's time per step: its median duration times its runs per step (robust to the
  odd run that a busy machine preempted)."""
  return statistics.median(durations) * len(durations) / steps


def profile_config(compute_dtype: str, batch_size: int, tables: str, steps: int,
                   cpu_kernels: bool) -> dict:
  """One configuration: {'ops': [(name, category, shape, us/step)], 'wall_ms', ...}."""
  import jax
  from experiments import benchmark
  from jaxrec.train import sparse
  from jaxrec.train.step import TrainState, dense_optimizer, make_train_step

  vocab = benchmark.table_sizes(tables)
  variant = benchmark.build_variant("dlrm", 1.0, vocab, compute_dtype, 0,
                                    None if cpu_kernels else False)
  batches = jax.device_put(benchmark.synthetic_batches(vocab, batch_size, 4, 1.1, 0))
  dense_tx, table_opt = dense_optimizer("sgd", 0.01), sparse.sgd(0.01)
  state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32),
                     params=variant.variables["params"], tables=variant.variables["tables"],
                     opt_state=dense_tx.init(variant.variables["params"]),
                     table_opt_state=table_opt.init(variant.variables["tables"]))
  step = make_train_step(variant.model, dense_tx, table_opt, jax.random.key(1))
  instructions, bodies = parse_hlo(step.lower(state, batches[0]).compile().as_text())
  for i in range(3):  # compile and warm up
    state, metrics = step(state, batches[i % len(batches)])
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      tic = time.perf_counter()
      for i in range(steps):
        state, metrics = step(state, batches[i % len(batches)])
      jax.block_until_ready((state, metrics))
      wall = time.perf_counter() - tic
    times = op_times(trace_dir)
  # Events that are not HLO instructions are the runtime's own spans (the thunk
  # executor around the ops, waits): left out of the op times.
  ops = sorted(((name, categorize(name, instructions, bodies), instructions[name][1],
                 per_step(us, steps)) for name, us in times.items() if name in instructions),
               key=lambda o: -o[3])
  return {"compute_dtype": compute_dtype, "batch_size": batch_size, "tables": tables,
          "steps": steps, "wall_ms": wall / steps * 1e3, "ops": ops,
          "loadavg": os.getloadavg()[0]}


def render(results: list[dict], top: int) -> str:
  lines = ["Per-op CPU time of the DLRM train step (the benchmark's configuration:"
           " bottom 13-512-256-64-16, top 512-256-1, d = 16, dot interaction, sparse SGD)"
           " from a JAX profiler trace; op names are the compiled HLO's. `wall` is the"
           " traced steps' wall time per step (profiler overhead included); an op's time is"
           " its median duration over the traced steps times its runs per step, summed over"
           " threads (CPU time). `load` is the 1-minute load average after the trace: above"
           " the CPU count, other processes shared the cores and every figure is stretched"
           " (shares less so).", "",
           "## Share of op time by category", "",
           "| dtype | batch | load | wall ms/step | op ms/step | "
           + " | ".join(CATEGORIES) + " |",
           "|---|---:|---:|---:|---:|" + "---:|" * len(CATEGORIES)]
  for r in results:
    total = sum(o[3] for o in r["ops"]) or 1.0
    by = collections.Counter()
    for o in r["ops"]:
      by[o[1]] += o[3]
    lines.append(f"| {r['compute_dtype']} | {r['batch_size']} | {r['loadavg']:.1f} |"
                 f" {r['wall_ms']:.2f} |"
                 f" {total / 1e3:.2f} | "
                 + " | ".join(f"{100 * by[c] / total:.0f}%" for c in CATEGORIES) + " |")
  for r in results:
    total = sum(o[3] for o in r["ops"]) or 1.0
    lines += ["", f"## {r['compute_dtype']}, batch {r['batch_size']}: the top {top} ops", "",
              "| op | category | output | ms/step | share |", "|---|---|---|---:|---:|"]
    for name, category, shape, us in r["ops"][:top]:
      shape = shape if len(shape) <= 60 else shape[:57] + "..."
      lines.append(f"| `{name}` | {category} | `{shape}` | {us / 1e3:.3f} |"
                   f" {100 * us / total:.1f}% |")
  return "\n".join(lines)


def main(argv):
  cli.check_no_arguments(argv)
  batch_sizes = cli.int_list("batch_sizes", FLAGS.batch_sizes)
  bad = [d for d in FLAGS.compute_dtypes if d not in ("float32", "bfloat16")]
  if bad:
    print(f"error: --compute_dtypes: unknown {bad} (float32, bfloat16)", file=sys.stderr)
    sys.exit(2)
  results = []
  for dtype in FLAGS.compute_dtypes:
    for batch in batch_sizes:
      r = profile_config(dtype, batch, FLAGS.tables, FLAGS.steps, FLAGS.cpu_kernels)
      results.append(r)
      print(f"{dtype} batch {batch}: {r['wall_ms']:.2f} ms/step wall; top ops: "
            + ", ".join(f"{o[0]} ({o[1]}) {o[3] / 1e3:.2f} ms" for o in r["ops"][:4]))
  from jaxrec import provenance
  provenance.write_report(FLAGS.output, "Where the DLRM train step's time goes",
                          render(results, FLAGS.top))
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
