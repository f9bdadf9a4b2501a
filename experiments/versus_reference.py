r"""jaxrec against the PyTorch DLRM reference, side by side: alternating runs, paired ratios.

Runs the reference (a checkout of facebookresearch/dlrm; its code is never part
of jaxrec) and `experiments.benchmark` one after the other, --rounds times, on
the same configuration: DLRM bottom 13-512-256-64-16, top 512-256-1, d = 16, dot
interaction, one index per lookup, random data, SGD, 26 x 100k or Kaggle-size
tables. Each round gives one ratio (jaxrec examples/s over the reference's);
single runs on a shared machine vary by 10% or more, so the ratio of two runs a
minute apart is the figure, and the median over rounds is the summary.

  python -m experiments.versus_reference --reference_dir=../dlrm \
      --reference_python=../dlrmenv/bin/python --batch_size=2048 --rounds=3

The reference's rate is the batch size over the mean of its printed per-interval
times (`--print-time`, `--num-batches` / `--print-freq` intervals), so its
start-up and data generation before the first batch are not counted; jaxrec's is
the benchmark's `examples_per_sec` (compile excluded, pre-generated batches).
Writes DIR/versus_reference.json (every round and the summary).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Callable, Sequence

from absl import app, flags

from experiments.benchmark import host_cpu, table_sizes

FLAGS = flags.FLAGS

_INTERVAL = re.compile(r"Finished training it \d+/\d+ of epoch \d+, ([\d.]+) ms/it")


@dataclasses.dataclass(frozen=True)
class VersusConfig:
  reference_dir: str
  reference_python: str = sys.executable
  batch_size: int = 2048
  tables: str = "100k"
  rounds: int = 3
  reference_batches: int = 100
  reference_print_freq: int = 25
  repeats: int = 3
  min_seconds: float = 3.0
  steps_per_call: int = 1
  cpu_kernels: bool = True
  compute_dtype: str = "float32"  # jaxrec's MLP matmuls; the reference always runs float32


def reference_command(config: VersusConfig) -> list[str]:
  """The reference's command line for the benchmark's DLRM configuration."""
  return [config.reference_python, "dlrm_s_pytorch.py",
          "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16",
          "--arch-mlp-top=512-256-1",
          "--arch-embedding-size=" + "-".join(str(n) for n in table_sizes(config.tables)),
          "--data-generation=random", "--num-indices-per-lookup=1",
          "--num-indices-per-lookup-fixed=True", f"--mini-batch-size={config.batch_size}",
          f"--num-batches={config.reference_batches}",
          f"--print-freq={config.reference_print_freq}", "--print-time",
          "--learning-rate=0.1"]


def benchmark_command(config: VersusConfig, output_dir: str) -> list[str]:
  """jaxrec's benchmark command for the same configuration (training, dense DLRM)."""
  return [sys.executable, "-m", "experiments.benchmark", f"--output_dir={output_dir}",
          "--models=dlrm", "--rank_fractions=1.0", f"--tables={config.tables}",
          f"--batch_sizes={config.batch_size}", "--workloads=train",
          f"--repeats={config.repeats}", f"--min_seconds={config.min_seconds}",
          f"--steps_per_call={config.steps_per_call}", f"--compute_dtype={config.compute_dtype}",
          f"--cpu_kernels={str(config.cpu_kernels).lower()}"]


def interval_ms(log: str) -> list[float]:
  """The reference's per-interval times (ms per iteration) printed in `log`."""
  return [float(m) for m in _INTERVAL.findall(log)]


def run_reference(config: VersusConfig) -> dict:
  """One reference run: {'ms_per_it', 'intervals_ms', 'examples_per_sec'}."""
  script = os.path.join(config.reference_dir, "dlrm_s_pytorch.py")
  if not os.path.isfile(script):
    raise FileNotFoundError(f"--reference_dir={config.reference_dir}: no dlrm_s_pytorch.py there"
                            " (a checkout of facebookresearch/dlrm is expected)")
  command = reference_command(config)
  done = subprocess.run(command, cwd=config.reference_dir, capture_output=True, text=True)
  intervals = interval_ms(done.stdout + done.stderr)
  if done.returncode != 0 or not intervals:
    tail = (done.stdout + done.stderr)[-2000:]
    raise RuntimeError(f"reference run failed (exit {done.returncode}, {len(intervals)} timed"
                       f" intervals) in {config.reference_dir}: {' '.join(command)}\n{tail}")
  ms = statistics.fmean(intervals)
  return {"ms_per_it": ms, "intervals_ms": intervals,
          "examples_per_sec": config.batch_size / ms * 1000.0}


def run_jaxrec(config: VersusConfig) -> dict:
  """One benchmark run in its own process: {'examples_per_sec'} of the DLRM training record."""
  with tempfile.TemporaryDirectory() as output_dir:
    command = benchmark_command(config, output_dir)
    done = subprocess.run(command, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(output_dir, "benchmark.json")
    if done.returncode != 0 or not os.path.exists(path):
      raise RuntimeError(f"benchmark failed (exit {done.returncode}): {' '.join(command)}\n"
                         f"{(done.stdout + done.stderr)[-2000:]}")
    with open(path) as f:
      (record,) = json.load(f)
  return {"examples_per_sec": record["examples_per_sec"]}


def summarize(rounds: Sequence[dict]) -> dict:
  """Median and range of the per-round ratios jaxrec / reference."""
  ratios = [r["ratio"] for r in rounds]
  return {"rounds": len(ratios), "ratios": ratios, "median_ratio": statistics.median(ratios),
          "min_ratio": min(ratios), "max_ratio": max(ratios)}


def compare(config: VersusConfig, reference: Callable[[VersusConfig], dict] = run_reference,
            jaxrec: Callable[[VersusConfig], dict] = run_jaxrec,
            log: Callable[[str], None] = print) -> dict:
  """--rounds alternations of reference then jaxrec; returns every round and the summary."""
  rounds = []
  for i in range(config.rounds):
    round_ = {"reference": reference(config), "jaxrec": jaxrec(config)}
    round_["ratio"] = (round_["jaxrec"]["examples_per_sec"]
                       / round_["reference"]["examples_per_sec"])
    rounds.append(round_)
    log(f"round {i + 1}: reference {round_['reference']['examples_per_sec']:,.0f} examples/s"
        f" ({round_['reference']['ms_per_it']:.1f} ms/it), jaxrec"
        f" {round_['jaxrec']['examples_per_sec']:,.0f}: {round_['ratio']:.2f}x")
  return {"config": dataclasses.asdict(config), "host_cpu": host_cpu(), "per_round": rounds,
          "summary": summarize(rounds)}


def main(argv):
  del argv
  config = VersusConfig(
      reference_dir=FLAGS.reference_dir, reference_python=FLAGS.reference_python,
      batch_size=FLAGS.batch_size, tables=FLAGS.tables, rounds=FLAGS.rounds,
      reference_batches=FLAGS.reference_batches,
      reference_print_freq=FLAGS.reference_print_freq, repeats=FLAGS.repeats,
      min_seconds=FLAGS.min_seconds, steps_per_call=FLAGS.steps_per_call,
      compute_dtype=FLAGS.compute_dtype, cpu_kernels=FLAGS.cpu_kernels)
  try:
    result = compare(config)
  except (FileNotFoundError, RuntimeError) as e:  # a bad checkout or a failed run: one message
    sys.exit(f"versus_reference: {e}")
  s = result["summary"]
  dtype_note = ("" if config.compute_dtype == "float32" else
                f" (jaxrec's MLPs in {config.compute_dtype}: not the reference's configuration)")
  print(f"jaxrec / reference at batch {config.batch_size}, {config.tables} tables{dtype_note}:"
        f" median {s['median_ratio']:.2f}x over {s['rounds']} rounds"
        f" (range {s['min_ratio']:.2f}-{s['max_ratio']:.2f}x)")
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  path = os.path.join(FLAGS.output_dir, "versus_reference.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")


def define_flags():
  flags.DEFINE_string("reference_dir", None,
                      "Checkout of facebookresearch/dlrm (the folder with dlrm_s_pytorch.py).")
  flags.DEFINE_string("reference_python", sys.executable,
                      "Python with torch for the reference (e.g. a scratch venv's bin/python).")
  flags.DEFINE_integer("batch_size", 2048, "Mini-batch size of both.")
  flags.DEFINE_enum("tables", "100k", ["100k", "kaggle"],
                    "26 x 100,000 rows, or the Criteo Kaggle cardinalities.")
  flags.DEFINE_integer("rounds", 3, "Alternations (reference, then jaxrec).")
  flags.DEFINE_integer("reference_batches", 100, "The reference's --num-batches.")
  flags.DEFINE_integer("reference_print_freq", 25,
                       "The reference's --print-freq: one timed interval per this many batches.")
  flags.DEFINE_integer("repeats", 3, "The benchmark's --repeats.")
  flags.DEFINE_float("min_seconds", 3.0, "The benchmark's --min_seconds.")
  flags.DEFINE_integer("steps_per_call", 1, "The benchmark's --steps_per_call.")
  flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                    "The benchmark's --compute_dtype (the reference's matmuls are float32, so"
                    " only float32 compares like with like).")
  flags.DEFINE_bool("cpu_kernels", True, "The benchmark's --cpu_kernels.")
  flags.DEFINE_string("output_dir", "runs/versus_reference", "Where versus_reference.json goes.")
  flags.mark_flag_as_required("reference_dir")


if __name__ == "__main__":
  define_flags()
  app.run(main)
