r"""jaxrec against the PyTorch DLRM reference, side by side: alternating runs, paired ratios.

  python -m experiments.versus_reference --reference_dir=../dlrm \
      --reference_python=../dlrmenv/bin/python --output=docs/performance.md

Runs the reference (a checkout of facebookresearch/dlrm; its code is never part
of jaxrec) and `experiments.benchmark` one after the other on the same
configuration: DLRM bottom 13-512-256-64-16, top 512-256-1, d = 16, dot
interaction, one index per lookup, random data, SGD. --workloads lists
``kind:batch:tables`` (train or inference; 100k = 26 x 100,000 rows, kaggle =
the Criteo Kaggle cardinalities, 33.8M rows); each runs --rounds rounds of the
reference then jaxrec in each of --compute_dtypes (the reference is always
float32). Each round gives one ratio per dtype (jaxrec examples/s over the
reference's): single runs on a shared machine vary by 10% or more, so the
ratio of runs a minute apart is the figure, and the median over rounds the
summary.

The reference runs with its default threads unless --reference_threads sets
OMP_NUM_THREADS.

Load: before each run the CPUs' busy time is sampled for --load_window seconds
while nothing of ours runs (the other processes' load, in CPUs; the 1-minute
load average would count our own previous run). Above --max_load the run waits
up to --max_wait seconds for the machine to calm down, then runs anyway and its
round is flagged; summaries give the median over unflagged rounds (all rounds
when fewer than 3 are clean, marked "loaded").

Rates: the reference's training rate is the batch size over the mean of its
printed per-interval times (`--print-time`), so start-up and data generation
are not counted; its inference rate comes from
`experiments/reference_inference.py` (its `DLRM_Net.forward` under no_grad,
uniform random ids). jaxrec's is the benchmark's ``examples_per_sec`` (compile
excluded, pre-generated batches with Zipf-skewed ids).

Writes --output (a generated page, `jaxrec.provenance.write_report`) and
DIR/versus_reference.json (every round and the summaries; --output_dir).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

from absl import flags

from experiments import cli

from experiments.benchmark import table_sizes
from jaxrec import provenance

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKLOADS = ("train:128:100k", "train:2048:100k", "train:128:kaggle",
                     "train:2048:kaggle", "inference:8192:100k")
MIN_CLEAN_ROUNDS = 3

_INTERVAL = re.compile(r"Finished training it \d+/\d+ of epoch \d+, ([\d.]+) ms/it")


@dataclasses.dataclass(frozen=True)
class VersusConfig:
  """One workload compared.

  Attributes:
    reference_dir: checkout of facebookresearch/dlrm.
    reference_python: a Python with torch (the reference's interpreter).
    workload: "train" or "inference".
    batch_size / tables: the workload's batch and table set ("100k", "kaggle").
    rounds: alternations (reference, then jaxrec in each dtype).
    reference_batches / reference_print_freq: the reference's --num-batches and
      --print-freq (one timed interval per print-freq batches).
    repeats / min_seconds / steps_per_call / cpu_kernels: the benchmark's flags.
    compute_dtypes: jaxrec's MLP matmul dtypes, each timed every round.
    inference_seconds: the reference inference driver's timed window.
    max_load: busy CPUs of other processes above which a run waits, then is flagged.
    max_wait: seconds a run waits for the load to drop.
    load_window: seconds over which the load is sampled.
    reference_threads: OMP_NUM_THREADS for the reference (0: unset, its default).
  """

  reference_dir: str
  reference_python: str = sys.executable
  workload: str = "train"
  batch_size: int = 2048
  tables: str = "100k"
  rounds: int = 5
  reference_batches: int = 100
  reference_print_freq: int = 25
  repeats: int = 3
  min_seconds: float = 3.0
  steps_per_call: int = 1
  cpu_kernels: bool = True
  compute_dtypes: tuple[str, ...] = ("float32",)
  inference_seconds: float = 5.0
  max_load: float = math.inf
  max_wait: float = 0.0
  load_window: float = 1.0
  reference_threads: int = 0

  @property
  def name(self) -> str:
    return f"{self.workload}:{self.batch_size}:{self.tables}"


def parse_workload(text: str) -> tuple[str, int, str]:
  """'train:2048:kaggle' -> ('train', 2048, 'kaggle'); ValueError naming the problem."""
  parts = text.split(":")
  if len(parts) != 3 or parts[0] not in ("train", "inference") or not parts[1].isdigit() \
      or int(parts[1]) < 1 or parts[2] not in ("100k", "kaggle"):
    raise ValueError(f"workload {text!r}: expected train|inference:BATCH:100k|kaggle")
  return parts[0], int(parts[1]), parts[2]


def reference_command(config: VersusConfig) -> list[str]:
  """The reference's command line (run in `reference_dir`) for the workload."""
  sizes = table_sizes(config.tables)
  if config.workload == "inference":
    return [config.reference_python, os.path.join(REPO, "experiments", "reference_inference.py"),
            f"--batch_size={config.batch_size}", "--tables=" + ",".join(map(str, sizes)),
            f"--seconds={config.inference_seconds}"]
  return [config.reference_python, "dlrm_s_pytorch.py",
          "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16",
          "--arch-mlp-top=512-256-1",
          "--arch-embedding-size=" + "-".join(str(n) for n in sizes),
          "--data-generation=random", "--num-indices-per-lookup=1",
          "--num-indices-per-lookup-fixed=True", f"--mini-batch-size={config.batch_size}",
          f"--num-batches={config.reference_batches}",
          f"--print-freq={config.reference_print_freq}", "--print-time",
          "--learning-rate=0.1"]


def benchmark_command(config: VersusConfig, output_dir: str,
                      compute_dtype: str = "float32") -> list[str]:
  """jaxrec's benchmark command for the same workload (dense DLRM)."""
  return [sys.executable, "-m", "experiments.benchmark", f"--output_dir={output_dir}",
          "--models=dlrm", "--rank_fractions=1.0", f"--tables={config.tables}",
          f"--batch_sizes={config.batch_size}", f"--workloads={config.workload}",
          f"--repeats={config.repeats}", f"--min_seconds={config.min_seconds}",
          f"--steps_per_call={config.steps_per_call}", f"--compute_dtype={compute_dtype}",
          f"--cpu_kernels={str(config.cpu_kernels).lower()}"]


def interval_ms(log: str) -> list[float]:
  """The reference's per-interval times (ms per iteration) printed in `log`."""
  return [float(m) for m in _INTERVAL.findall(log)]


def run_reference(config: VersusConfig) -> dict:
  """One reference run: {'examples_per_sec', ...} ('ms_per_it', 'intervals_ms' for training)."""
  script = os.path.join(config.reference_dir, "dlrm_s_pytorch.py")
  if not os.path.isfile(script):
    raise FileNotFoundError(f"--reference_dir={config.reference_dir}: no dlrm_s_pytorch.py there"
                            " (a checkout of facebookresearch/dlrm is expected)")
  command = reference_command(config)
  env = dict(os.environ)
  if config.reference_threads:
    env["OMP_NUM_THREADS"] = str(config.reference_threads)
  done = subprocess.run(command, cwd=config.reference_dir, capture_output=True, text=True,
                        env=env)
  log = done.stdout + done.stderr
  if config.workload == "inference":
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
      raise RuntimeError(f"reference inference failed (exit {done.returncode}) in"
                         f" {config.reference_dir}: {' '.join(command)}\n{log[-2000:]}")
    return json.loads(lines[-1])
  intervals = interval_ms(log)
  if done.returncode != 0 or not intervals:
    raise RuntimeError(f"reference run failed (exit {done.returncode}, {len(intervals)} timed"
                       f" intervals) in {config.reference_dir}: {' '.join(command)}\n"
                       f"{log[-2000:]}")
  ms = statistics.fmean(intervals)
  return {"ms_per_it": ms, "intervals_ms": intervals,
          "examples_per_sec": config.batch_size / ms * 1000.0}


def run_jaxrec(config: VersusConfig, compute_dtype: str = "float32") -> dict:
  """One benchmark run in its own process: {'examples_per_sec'} of the DLRM record."""
  with tempfile.TemporaryDirectory() as output_dir:
    command = benchmark_command(config, output_dir, compute_dtype)
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    path = os.path.join(output_dir, "benchmark.json")
    if done.returncode != 0 or not os.path.exists(path):
      raise RuntimeError(f"benchmark failed (exit {done.returncode}): {' '.join(command)}\n"
                         f"{(done.stdout + done.stderr)[-2000:]}")
    with open(path) as f:
      (record,) = json.load(f)
  return {"examples_per_sec": record["examples_per_sec"]}


def _cpu_times() -> tuple[float, float]:
  """(busy, total) jiffies of all CPUs from /proc/stat."""
  with open("/proc/stat") as f:
    values = [float(v) for v in f.readline().split()[1:]]
  idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
  return sum(values) - idle, sum(values)


def busy_cpus(window: float) -> float:
  """CPUs kept busy by all processes over the next `window` seconds (0 to the CPU count)."""
  busy0, total0 = _cpu_times()
  time.sleep(window)
  busy1, total1 = _cpu_times()
  cpus = os.cpu_count() or 1
  return cpus * (busy1 - busy0) / max(total1 - total0, 1e-9)


def settle(config: VersusConfig, load: Callable[[float], float] = busy_cpus,
           sleep: Callable[[float], None] = time.sleep) -> dict:
  """Waits up to `max_wait` s for the load to fall to `max_load`.

  Returns {'busy_cpus', 'loadavg', 'quiet'}.
  """
  waited = 0.0
  while True:
    busy = load(config.load_window)
    if busy <= config.max_load or waited >= config.max_wait:
      break
    pause = min(5.0, config.max_wait - waited)
    sleep(pause)
    waited += pause + config.load_window
  return {"busy_cpus": busy, "loadavg": os.getloadavg()[0], "quiet": busy <= config.max_load,
          "waited_s": waited}


def summarize(rounds: Sequence[dict], compute_dtype: str = "float32") -> dict:
  """Median and range of one dtype's per-round ratios, over clean rounds when there are enough."""
  clean = [r for r in rounds if not r["flagged"]]
  use = clean if len(clean) >= MIN_CLEAN_ROUNDS else list(rounds)
  ratios = [r["ratio"][compute_dtype] for r in use]
  return {"rounds": len(rounds), "clean_rounds": len(clean), "loaded": use is not clean,
          "ratios": ratios, "median_ratio": statistics.median(ratios),
          "min_ratio": min(ratios), "max_ratio": max(ratios),
          "reference_median": statistics.median(r["reference"]["examples_per_sec"] for r in use),
          "jaxrec_median": statistics.median(r["jaxrec"][compute_dtype]["examples_per_sec"]
                                             for r in use)}


def compare(config: VersusConfig, reference: Callable[[VersusConfig], dict] = run_reference,
            jaxrec: Callable[[VersusConfig, str], dict] = run_jaxrec,
            load: Callable[[VersusConfig], dict] = settle,
            log: Callable[[str], None] = print) -> dict:
  """--rounds alternations of reference then jaxrec per dtype; every round and the summaries."""
  rounds = []
  for i in range(config.rounds):
    loads = [load(config)]
    round_ = {"reference": reference(config), "jaxrec": {}, "ratio": {}}
    for dtype in config.compute_dtypes:
      loads.append(load(config))
      round_["jaxrec"][dtype] = jaxrec(config, dtype)
      round_["ratio"][dtype] = (round_["jaxrec"][dtype]["examples_per_sec"]
                                / round_["reference"]["examples_per_sec"])
    round_["loads"] = loads
    round_["flagged"] = not all(x["quiet"] for x in loads)
    rounds.append(round_)
    log(f"{config.name} round {i + 1}{' (loaded)' if round_['flagged'] else ''}: reference"
        f" {round_['reference']['examples_per_sec']:,.0f} examples/s, jaxrec "
        + ", ".join(f"{d} {round_['jaxrec'][d]['examples_per_sec']:,.0f}"
                    f" ({round_['ratio'][d]:.2f}x)" for d in config.compute_dtypes))
  return {"workload": config.name, "config": dataclasses.asdict(config), "per_round": rounds,
          "summary": {d: summarize(rounds, d) for d in config.compute_dtypes}}


def reference_torch_version(python: str) -> str:
  done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                        capture_output=True, text=True)
  return done.stdout.strip() if done.returncode == 0 else "unknown"


def _command_text(command: Sequence[str]) -> str:
  return " ".join(shlex.quote(a) for a in command)


def render(results: Sequence[dict], torch_version: str, default_dtype: str | None = None) -> str:
  """The body of docs/performance.md from `compare`'s results; `default_dtype` (this
  machine's `--compute_dtype=auto`) is marked in the summary."""
  first = results[0]["config"]
  lines = [f"jaxrec's `experiments.benchmark` against the PyTorch DLRM reference"
           f" (facebookresearch/dlrm, torch {torch_version}) on the reference's configuration:"
           " DLRM bottom 13-512-256-64-16, top 512-256-1, d = 16, dot interaction, one index"
           " per lookup, random data, SGD. Each round runs the reference, then jaxrec; the"
           " ratio is jaxrec's examples/s over the reference's in the same round.",
           "",
           f"Rounds wait up to {first['max_wait']:.0f} s for other processes to use at most"
           f" {first['max_load']:g} CPUs (sampled over {first['load_window']:g} s before each"
           " run) and are flagged when they do not; medians are over unflagged rounds, or over"
           f" all rounds (marked *loaded*) when fewer than {MIN_CLEAN_ROUNDS} are clean. A"
           " loaded machine shifts both sides, but not equally (the reference's OpenMP threads"
           " wait on each other when a neighbour takes their core): read *loaded* rows as"
           " rough."
           + (f" The reference ran with OMP_NUM_THREADS={first['reference_threads']}."
              if first.get("reference_threads") else ""),
           "",
           (f"On this machine jaxrec's default compute dtype (`--compute_dtype=auto`) is"
            f" {default_dtype}, marked *default* below; float32 compares like with like (the"
            " reference's matmuls are float32). Where a step's time goes, per XLA op:"
            " [step_profile.md](step_profile.md) (`python -m experiments.step_profile`)."
            if default_dtype else ""),
           "",
           "| workload | jaxrec dtype | rounds (clean) | reference ex/s | jaxrec ex/s |"
           " jaxrec / reference, median | range |",
           "|---|---|---:|---:|---:|---:|---|"]
  for result in results:
    for dtype, s in result["summary"].items():
      marked = f"{dtype} *default*" if dtype == default_dtype else dtype
      lines.append(f"| {result['workload']} | {marked} | {s['rounds']} ({s['clean_rounds']}) |"
                   f" {s['reference_median']:,.0f} | {s['jaxrec_median']:,.0f} |"
                   f" **{s['median_ratio']:.2f}x**{' *loaded*' if s['loaded'] else ''} |"
                   f" {s['min_ratio']:.2f}-{s['max_ratio']:.2f}x |")
  lines += ["", "## Every round", "",
            "Ratios per round; `busy` = CPUs used by other processes before each run (the"
            " reference's, then jaxrec's per dtype), 1-minute load average in brackets.", "",
            "| workload | round | reference ex/s | jaxrec ratios | busy CPUs (load avg) |"
            " flagged |",
            "|---|---:|---:|---|---|---|"]
  for result in results:
    for i, r in enumerate(result["per_round"]):
      ratios = ", ".join(f"{d} {x:.2f}x" for d, x in r["ratio"].items())
      loads = ", ".join(f"{x['busy_cpus']:.2f} ({x['loadavg']:.1f})" for x in r["loads"])
      lines.append(f"| {result['workload']} | {i + 1} |"
                   f" {r['reference']['examples_per_sec']:,.0f} | {ratios} | {loads} |"
                   f" {'yes' if r['flagged'] else ''} |")
  lines += ["", "## Commands", "",
            "Each workload's runs as executed: the reference's in its checkout (`$DLRM`, a clone"
            " of facebookresearch/dlrm) with its Python (`$DLRM_PYTHON`, torch installed;"
            " `$JAXREC` = this repository), jaxrec's in this repository (`$OUT`, a temporary"
            " directory):", ""]
  for result in results:
    config = VersusConfig(**{**result["config"],
                             "compute_dtypes": tuple(result["config"]["compute_dtypes"])})
    reference = "$DLRM_PYTHON " + _command_text(reference_command(config)[1:])
    lines += [f"- {result['workload']}:", "  ```", "  " + reference.replace(REPO, "$JAXREC")]
    lines += ["  python " + _command_text(benchmark_command(config, "OUT", d)[1:]).replace(
        "=OUT", "=$OUT") for d in config.compute_dtypes]
    lines += ["  ```"]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"versus_reference: unexpected arguments {argv[1:]}")
  names = list(FLAGS.workloads)
  if FLAGS.batch_size is not None or FLAGS.tables is not None:  # the older one-workload flags
    names = [f"train:{FLAGS.batch_size or 2048}:{FLAGS.tables or '100k'}"]
  dtypes = [FLAGS.compute_dtype] if FLAGS.compute_dtype else list(FLAGS.compute_dtypes)
  bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
  if bad:
    print(f"error: --compute_dtypes: unknown {bad} (float32, bfloat16)", file=sys.stderr)
    sys.exit(2)
  try:
    workloads = [parse_workload(w) for w in names]
  except ValueError as e:
    print(f"error: --workloads: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.rounds < 1:
    print(f"error: --rounds={FLAGS.rounds}: must be >= 1", file=sys.stderr)
    sys.exit(2)
  base = VersusConfig(
      reference_dir=FLAGS.reference_dir, reference_python=FLAGS.reference_python,
      rounds=FLAGS.rounds, reference_batches=FLAGS.reference_batches,
      reference_print_freq=FLAGS.reference_print_freq, repeats=FLAGS.repeats,
      min_seconds=FLAGS.min_seconds, steps_per_call=FLAGS.steps_per_call,
      compute_dtypes=tuple(dtypes), cpu_kernels=FLAGS.cpu_kernels,
      inference_seconds=FLAGS.inference_seconds, max_load=FLAGS.max_load,
      max_wait=FLAGS.max_wait, load_window=FLAGS.load_window,
      reference_threads=FLAGS.reference_threads)
  torch_version = reference_torch_version(FLAGS.reference_python)
  results = []
  try:
    for workload, batch_size, tables in workloads:
      config = dataclasses.replace(base, workload=workload, batch_size=batch_size, tables=tables)
      results.append(compare(config))
      for dtype, s in results[-1]["summary"].items():
        print(f"{config.name} jaxrec {dtype} / reference: median {s['median_ratio']:.2f}x over"
              f" {s['rounds']} rounds ({s['clean_rounds']} clean; range"
              f" {s['min_ratio']:.2f}-{s['max_ratio']:.2f}x)")
      write_results(results, torch_version)  # after each workload: a stopped run keeps them
  except (FileNotFoundError, RuntimeError) as e:  # a bad checkout or a failed run: one message
    sys.exit(f"versus_reference: {e}")


def write_results(results: list[dict], torch_version: str) -> None:
  """versus_reference.json in --output_dir, and the --output page."""
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  path = os.path.join(FLAGS.output_dir, "versus_reference.json")
  with open(path, "w") as f:
    json.dump({"results": results, "machine": provenance.machine_record(),
               "reference_torch": torch_version}, f, indent=1)
  print(f"wrote {path}")
  if FLAGS.output:
    # The checkout and its interpreter live outside the repository: named, not spelled out.
    command = provenance.command_line().replace(  # the interpreter first: it may lie inside
        FLAGS.reference_python, "$DLRM_PYTHON").replace(FLAGS.reference_dir, "$DLRM")
    if os.path.isabs(FLAGS.output_dir) and not FLAGS.output_dir.startswith(REPO + os.sep):
      command = command.replace(FLAGS.output_dir, "$OUT_DIR")  # a scratch folder, not named
    from jaxrec.models.registry import default_compute_dtype
    provenance.write_report(FLAGS.output, "jaxrec against the PyTorch DLRM reference",
                            render(results, torch_version, default_compute_dtype()),
                            command=command)
    print(f"wrote {FLAGS.output}")


def define_flags():
  flags.DEFINE_string("reference_dir", None,
                      "Checkout of facebookresearch/dlrm (the folder with dlrm_s_pytorch.py).")
  flags.DEFINE_string("reference_python", sys.executable,
                      "Python with torch for the reference (e.g. a scratch venv's bin/python).")
  flags.DEFINE_list("workloads", list(DEFAULT_WORKLOADS),
                    "kind:batch:tables items; kind train|inference, tables 100k|kaggle.")
  flags.DEFINE_integer("batch_size", None, "Alias: one training workload at this batch"
                       " (with --tables, default 100k), in place of --workloads.")
  flags.DEFINE_enum("tables", None, ["100k", "kaggle"], "Alias: one training workload with"
                    " these tables (with --batch_size, default 2048), in place of --workloads.")
  flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16"],
                    "Alias: --compute_dtypes with one dtype.")
  flags.DEFINE_integer("rounds", 5, "Alternations per workload (reference, then jaxrec).")
  flags.DEFINE_list("compute_dtypes", ["float32", "bfloat16"],
                    "jaxrec's --compute_dtype values, each timed every round (the reference's"
                    " matmuls are float32, so only float32 compares like with like).")
  flags.DEFINE_integer("reference_batches", 100, "The reference's --num-batches.")
  flags.DEFINE_integer("reference_print_freq", 25,
                       "The reference's --print-freq: one timed interval per this many batches.")
  flags.DEFINE_float("inference_seconds", 5.0, "Timed window of the reference's inference.")
  flags.DEFINE_integer("repeats", 3, "The benchmark's --repeats.")
  flags.DEFINE_float("min_seconds", 3.0, "The benchmark's --min_seconds.")
  flags.DEFINE_integer("steps_per_call", 1, "The benchmark's --steps_per_call.")
  flags.DEFINE_bool("cpu_kernels", True, "The benchmark's --cpu_kernels.")
  flags.DEFINE_float("max_load", 0.3, "CPUs other processes may keep busy before a run"
                     " without its round being flagged.")
  flags.DEFINE_float("max_wait", 60.0, "Seconds a run waits for the load to fall below"
                     " --max_load before it runs anyway (flagged).")
  flags.DEFINE_float("load_window", 1.0, "Seconds over which the load is sampled.")
  flags.DEFINE_integer("reference_threads", 0, "OMP_NUM_THREADS for the reference (0: unset)."
                       " On a loaded machine its OpenMP threads wait on each other: at batch"
                       " 128, 2 threads ran 30x slower than 1 with 7 busy neighbours.")
  flags.DEFINE_string("output", "docs/performance.md", "Generated page ('' for none).")
  flags.DEFINE_string("output_dir", "runs/versus_reference", "Where versus_reference.json goes.")
  flags.mark_flag_as_required("reference_dir")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
