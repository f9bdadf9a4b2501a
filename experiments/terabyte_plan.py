r"""Measured per-row costs and the derived plan for Criteo Terabyte (docs/terabyte_plan.md).

  python -m experiments.terabyte_plan --workdir=/tmp/terabyte_plan --output=docs/terabyte_plan.md

Runs, on this machine:

1. counting one column at 1M and 10M distinct values, with jaxrec's counter
   (sorted runs merged like a binary counter) beside the sorted-insert counter
   it replaced, whose per-block cost grows with the vocabulary;
2. a simulated 24-day Terabyte at ``--scale`` (1/1000: the 40M-capped table
   sizes scaled, 24 day files from `experiments.make_synthetic`), through the
   full path: `experiments.preprocess --split=days` with the local engine
   (counted and ``hash:N`` vocabularies) and the Dask engine with 1 and 2
   workers (same bytes), the loader on the result (whole batches, and one
   process's half as with 2 processes), and `experiments.train` for a few
   steps with the Kaggle and the MLPerf architectures;
3. from those, the hours, disk and memory of the real 4.37B rows on 1, 8 and 32
   hosts (the assumptions are flags and are printed with the table).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", "/tmp/jaxrec_terabyte_plan", "Scratch directory (day files,"
                    " preprocessed arrays, runs).")
flags.DEFINE_string("output", "docs/terabyte_plan.md", "The generated figures page.")
flags.DEFINE_float("scale", 0.001, "Fraction of Terabyte's rows and table sizes simulated.")
flags.DEFINE_integer("count_blocks", 160, "Blocks of 65,536 keys timed per counting figure.")
flags.DEFINE_integer("kaggle_steps", 150, "Train steps timed with the Kaggle architecture.")
flags.DEFINE_integer("mlperf_steps", 40, "Train steps timed with the MLPerf architecture.")
flags.DEFINE_integer("batch_size", 2048, "Train and loader batch.")
flags.DEFINE_integer("host_cores", 32, "Cores of one CPU host in the derived plan.")
flags.DEFINE_integer("gpus_per_host", 8, "GPUs of one GPU host in the derived plan.")

TERABYTE_LINES = 4_373_472_329  # lines of day_0 .. day_23
TERABYTE_TRAIN = 4_195_197_692  # day_0 .. day_22
BLOCK = 1 << 16


class SortedInsertCounter:
  """The counter jaxrec used before: every block is merged into one sorted array
  with `np.insert` (for comparison only: its block cost grows with the vocabulary)."""

  def __init__(self):
    self.keys = np.zeros(0, np.int64)
    self.counts = np.zeros(0, np.int64)

  def update_column(self, column):
    values, counts = np.unique(column, return_counts=True)
    pos = np.searchsorted(self.keys, values)
    found = pos < len(self.keys)
    found[found] = self.keys[pos[found]] == values[found]
    self.counts[pos[found]] += counts[found]
    if not found.all():
      new = ~found
      self.keys = np.insert(self.keys, pos[new], values[new])
      self.counts = np.insert(self.counts, pos[new], counts[new])


def counting_rates(distinct: int, blocks: int) -> dict[str, float]:
  """Rows/s of counting one column holding `distinct` values (steady state, a long pass)."""
  from jaxrec.data import criteo
  rng = np.random.default_rng(0)
  universe = rng.permutation(distinct).astype(np.int64) * 7919  # unsorted keys
  out = {}
  for name in ("runs", "sorted_insert"):
    if name == "runs":
      counter = criteo.FrequencyCounter(1)
      update = lambda column: counter.update_column(0, column)
    else:
      counter = SortedInsertCounter()
      update = counter.update_column
    for start in range(0, distinct, 1 << 20):  # the vocabulary already seen
      update(universe[start:start + (1 << 20)])
    keys = universe[rng.integers(0, distinct, size=(blocks, BLOCK))]
    start = time.perf_counter()
    for block in keys:
      update(block)
    if name == "runs":
      counter.column(0)  # the final merge is part of the cost
    out[name] = blocks * BLOCK / (time.perf_counter() - start)
  return out


def _run(args: list[str], log: str) -> None:
  with open(log, "w") as f:
    proc = subprocess.run([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise SystemExit(f"error: {' '.join(args)} failed (exit {proc.returncode}); see {log}")


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def preprocess(days: str, out: str, log: str, *extra: str) -> dict:
  if os.path.exists(out):
    shutil.rmtree(out)
  _run(["experiments.preprocess", f"--input={days}", f"--output_dir={out}", "--split=days",
        *extra], log)
  with open(os.path.join(out, "meta.json")) as f:
    return json.load(f)


def loader_rate(path: str, batch_size: int, positions=None, batches: int = 150) -> float:
  from jaxrec.data import loader, preprocess as prep
  train = prep.load_preprocessed(path).train
  it = loader.iterate_batches(train, batch_size, shuffle=True, seed=0, positions=positions)
  next(it)
  start = time.perf_counter()
  rows = 0
  for _, batch in zip(range(batches), it):
    rows += len(batch["label"])
  return rows / (time.perf_counter() - start)


def train_rate(data: str, run: str, steps: int, batch_size: int, *arch: str) -> dict:
  if os.path.exists(run):
    shutil.rmtree(run)
  _run(["experiments.train", f"--data={data}", f"--output_dir={run}", f"--max_steps={steps}",
        f"--batch_size={batch_size}", "--eval_batch_size=8192",
        "--log_every=1000", *arch], run + ".log")
  with open(os.path.join(run, "metrics.json")) as f:
    return json.load(f)


def _gib(x: float) -> str:
  return f"{x / 2**30:,.1f} GiB" if x < 2**40 else f"{x / 2**40:,.2f} TiB"


def main(argv):
  del argv
  from jaxrec import provenance
  from jaxrec.models.size import TERABYTE_40M_CARDINALITIES, PRESETS
  work = FLAGS.workdir
  os.makedirs(work, exist_ok=True)
  lines = []
  say = lambda text="": (lines.append(text), print(text, flush=True))

  # 1. Counting at 1M and 10M distinct values per column.
  rates = {v: counting_rates(v, FLAGS.count_blocks) for v in (1_000_000, 10_000_000)}
  say("## Counting one column: rows/s at 1M and 10M distinct values")
  say()
  say(f"{FLAGS.count_blocks} blocks of {BLOCK:,} keys drawn from the values already seen, after"
      " the whole vocabulary has been counted once (the steady state of a long pass).")
  say()
  say("| distinct values | jaxrec (sorted runs) rows/s | sorted insert (before) rows/s |")
  say("|---:|---:|---:|")
  for v, r in rates.items():
    say(f"| {v:,} | {r['runs']:,.0f} | {r['sorted_insert']:,.0f} |")
  say()
  keep = rates[10_000_000]["runs"] / rates[1_000_000]["runs"]
  say(f"At 10M distinct values jaxrec's counter keeps {keep:.0%} of its 1M-value rate; the"
      " sorted insert keeps"
      f" {rates[10_000_000]['sorted_insert'] / rates[1_000_000]['sorted_insert']:.0%}.")
  say()

  # 2. The simulated run.
  rows = int(round(TERABYTE_LINES * FLAGS.scale))
  days = os.path.join(work, "days")
  if not os.path.exists(os.path.join(days, "day_23")):
    _run(["experiments.make_synthetic", f"--rows={rows}", "--cardinalities=terabyte",
          f"--cardinality_scale={FLAGS.scale}", "--days=24", f"--output={days}"],
         os.path.join(work, "make_synthetic.log"))
  raw_bytes = _dir_bytes(days)
  metas = {}
  metas["local"] = preprocess(days, os.path.join(work, "pre"), os.path.join(work, "pre.log"))
  metas["hash"] = preprocess(days, os.path.join(work, "pre_hash"),
                             os.path.join(work, "pre_hash.log"),
                             f"--vocabulary=hash:{max(2, int(40_000_000 * FLAGS.scale))}")
  for workers in (1, 2):
    metas[f"dask{workers}"] = preprocess(days, os.path.join(work, f"pre_dask{workers}"),
                                         os.path.join(work, f"pre_dask{workers}.log"),
                                         "--engine=dask", f"--dask_workers={workers}")
  same = all(
      open(os.path.join(work, "pre", s, f"{n}.npy"), "rb").read()
      == open(os.path.join(work, f"pre_dask{w}", s, f"{n}.npy"), "rb").read()
      for w in (1, 2) for s in ("train", "validation", "test") for n in ("dense", "cat", "label"))
  total = sum(metas["local"]["rows"].values())
  out_bytes = _dir_bytes(os.path.join(work, "pre")) - os.path.getsize(
      os.path.join(work, "pre", "vocab.npz"))
  say(f"## A simulated Terabyte at {FLAGS.scale:g} scale, through the full path")
  say()
  say(f"{rows:,} rows in 24 day files ({raw_bytes / rows:.0f} bytes/row of TSV), the 40M-capped"
      f" table sizes times {FLAGS.scale:g} (vocabulary sizes after min_frequency 2:"
      f" {sum(metas['local']['vocab_sizes']):,} rows in all); day_23 halved into test and"
      f" validation: {metas['local']['rows']}.")
  say()
  say("| preprocessing | parse s | count s | encode s | rows/s (passes) | rows/s (wall, with"
      " start-up) |")
  say("|---|---:|---:|---:|---:|---:|")
  names = {"local": "local engine, counted vocabulary",
           "hash": "local engine, --vocabulary=hash:N (no counting pass)",
           "dask1": "--engine=dask, 1 worker", "dask2": "--engine=dask, 2 workers"}
  for key, meta in metas.items():
    p = meta["pass_seconds"]
    passes = sum(p.values())
    say(f"| {names[key]} | {p['parse']:.1f} | {p.get('count', 0):.1f} | {p['encode']:.1f} |"
        f" {total / passes:,.0f} | {meta['rows_per_sec']:,.0f} |")
  say()
  say(f"The Dask engine's arrays are byte-identical to the local engine's: {same}. Output"
      f" {out_bytes / total:.0f} bytes/row; pass-1 temporary arrays 161 bytes/row"
      " (label 1, dense 52, keys 104, missing bits 4).")
  say()
  half = np.arange(FLAGS.batch_size // 2)
  load = {"whole": loader_rate(os.path.join(work, "pre"), FLAGS.batch_size),
          "half": loader_rate(os.path.join(work, "pre"), FLAGS.batch_size, positions=half)}
  say("| loader (shuffled, memory-mapped) | global rows/s |")
  say("|---|---:|")
  say(f"| one process reads every row | {load['whole']:,.0f} |")
  say(f"| one of 2 processes (reads half of each batch) | {load['half'] * 2:,.0f} |")
  say()
  kaggle, mlperf = PRESETS["kaggle"], PRESETS["terabyte_mlperf"]
  arch = lambda p: [f"--embedding_dim={p.dim}", "--bottom_mlp=" + "-".join(map(str, p.bottom_mlp)),
                    "--top_mlp=" + "-".join(map(str, p.top_mlp))]
  pre = os.path.join(work, "pre")
  runs = {"Kaggle (dim 16, 512-256-64-16 / 512-256-1)":
              train_rate(pre, os.path.join(work, "run_kaggle"), FLAGS.kaggle_steps,
                         FLAGS.batch_size, *arch(kaggle)),
          "MLPerf (dim 128, 512-256-128 / 1024-1024-512-256-1)":
              train_rate(pre, os.path.join(work, "run_mlperf"), FLAGS.mlperf_steps,
                         FLAGS.batch_size, *arch(mlperf))}
  say(f"| training on one CPU device, batch {FLAGS.batch_size} | steps | examples/s |"
      " test AUC |")
  say("|---|---:|---:|---:|")
  for name, m in runs.items():
    say(f"| {name} | {m['steps']} | {m['train_examples_per_sec']:,.0f} | {m['auc']:.4f} |")
  say()

  # 3. The derived plan.
  per_worker = {p: total / metas["dask1"]["pass_seconds"][p] for p in ("parse", "count", "encode")}
  speedup = sum(metas["dask1"]["pass_seconds"].values()) / sum(
      metas["dask2"]["pass_seconds"].values())
  tables = sum(TERABYTE_40M_CARDINALITIES)
  say("## Derived: the real Terabyte (4.37B rows) on 1, 8 and 32 hosts")
  say()
  say(f"Assumptions: a CPU host has {FLAGS.host_cores} cores = {FLAGS.host_cores} Dask workers"
      f" running at the measured 1-worker rates (parse {per_worker['parse']:,.0f}, count"
      f" {per_worker['count']:,.0f}, encode {per_worker['encode']:,.0f} rows/s; 2 workers here ran"
      f" the passes {speedup:.2f}x as fast as 1 on a shared 2-core machine); parsing is one task"
      " per"
      " file, so at most 24 workers parse at once; counting and encoding are one task per"
      " 262,144-row chunk (16,700 tasks). The tree-reduce of the counters and file I/O on a"
      " shared file system are not measured here.")
  say()
  say("| hosts | workers | preprocess h (counted) | preprocess h (hash:N) | CPU training h/epoch"
      " (measured CPU rate x cores/2) |")
  say("|---:|---:|---:|---:|---:|")
  cpu_rate = runs["MLPerf (dim 128, 512-256-128 / 1024-1024-512-256-1)"]["train_examples_per_sec"]
  cores_here = os.cpu_count() or 1
  for hosts in (1, 8, 32):
    workers = hosts * FLAGS.host_cores
    parse = TERABYTE_LINES / (min(workers, 24) * per_worker["parse"])
    count = TERABYTE_LINES / (workers * per_worker["count"])
    encode = TERABYTE_LINES / (workers * per_worker["encode"])
    train_h = TERABYTE_TRAIN / (cpu_rate * FLAGS.host_cores / cores_here * hosts) / 3600
    say(f"| {hosts} | {workers} | {(parse + count + encode) / 3600:,.1f} |"
        f" {(parse + encode) / 3600:,.1f} | {train_h:,.0f} |")
  say()
  row_bytes = mlperf.dim * 4 + 4  # float32 row plus its row-wise Adagrad accumulator
  say("| disk and memory (4.37B rows, MLPerf tables) | |")
  say("|---|---:|")
  say(f"| raw TSV at this file's bytes/row | {_gib(raw_bytes / rows * TERABYTE_LINES)} |")
  say(f"| pass-1 temporary arrays (deleted at the end) | {_gib(161 * TERABYTE_LINES)} |")
  say(f"| output arrays (float32 dense) | {_gib(out_bytes / total * TERABYTE_LINES)} |")
  output_bytes = (out_bytes / total - 26) * TERABYTE_LINES
  say(f"| output arrays (--dense_dtype=float16) | {_gib(output_bytes)} |")
  say(f"| vocabulary counter at most (16 bytes per kept key, up to 3 runs: 40M-capped tables) |"
      f" {_gib(3 * 16 * tables)} |")
  say(f"| embedding tables + row-wise Adagrad, dim {mlperf.dim}, {tables:,} rows |"
      f" {_gib(tables * row_bytes)} |")
  for gpus in (FLAGS.gpus_per_host, 8 * FLAGS.gpus_per_host, 32 * FLAGS.gpus_per_host):
    say(f"| per device with --mesh=data:1,model:{gpus} | {_gib(tables * row_bytes / gpus)} |")
  say()
  say("GPU training hours are not derived: no GPU was measured for this page (run the MLPerf"
      " architecture with `python -m experiments.benchmark --tables=... --mesh=...` on the GPU"
      " host and divide 4.2B rows by its examples/s).")
  provenance.write_report(FLAGS.output, "Criteo Terabyte: measured per-row costs and the plan",
                          "\n".join(lines))
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
