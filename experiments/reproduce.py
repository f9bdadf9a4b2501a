r"""Reproduces the study's experiment grid with whole-split metrics, in one command.

  python -m experiments.reproduce --output_dir=runs/reproduce           # full grid
  python -m experiments.reproduce --output_dir=/tmp/repro --quick       # a few minutes

Approaches (the study's four, plus SVD and compositional embeddings): Baseline
DLRM; MF approach 1 (low-rank factors trained from scratch); MF approach 2 (NMF
after training); SVD after training; Attention with MF (AFM, rank fraction 0.5);
compositional (quotient-remainder) embeddings. Datasets: the real Criteo Kaggle
sample when present, and synthetic Criteo-like sets of 100K and 500K rows (the
study's sizes). Each cell is trained for several seeds and evaluated on the
whole test split; validation logloss is recorded after every epoch.

Writes DIR/report.md, DIR/results.json and PNG plots; finished runs under
DIR/runs/ are reused, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where the report, plots and runs go.", required=True)
flags.DEFINE_bool("quick", False, "A small grid (one seed, small data, few epochs) in minutes.")
flags.DEFINE_integer("seeds", 3, "Seeds per cell (full grid).")
flags.DEFINE_list("datasets", ["criteo10k", "synthetic100k", "synthetic500k"],
                  "Datasets to run (criteo10k is skipped when the sample is absent).")
flags.DEFINE_list("approaches", [], "Subset of approaches (default: all).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITEO_SAMPLE = os.environ.get(
    "JAXREC_CRITEO_SAMPLE",
    os.path.join(os.path.dirname(REPO), "shared", "data", "criteo",
                 "criteo_kaggle_train_first10k.tsv"))


def override(config, **changes):
  """dataclasses.replace on nested frozen configs: override(c, **{"model.name": "afm"})."""
  nested: dict[str, dict[str, Any]] = {}
  flat = {}
  for key, value in changes.items():
    head, _, rest = key.partition(".")
    if rest:
      nested.setdefault(head, {})[rest] = value
    else:
      flat[key] = value
  for head, sub in nested.items():
    flat[head] = override(getattr(config, head), **sub)
  return dataclasses.replace(config, **flat)


# Approach name -> (label, overrides of TrainConfig).
APPROACHES: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("Baseline DLRM", {}),
}


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Dataset sizes and epochs of one grid."""

  datasets: dict[str, dict[str, Any]]
  epochs: dict[str, int]
  seeds: tuple[int, ...]


def schedule(quick: bool, seeds: int, names: list[str]) -> Schedule:
  if quick:
    datasets = {"criteo10k": {"data.source": CRITEO_SAMPLE},
                "synthetic100k": {"data.synthetic_rows": 20_000}}
    epochs = {"criteo10k": 2, "synthetic100k": 2}
    chosen = {k: v for k, v in datasets.items() if k in names or k.startswith("synthetic")}
    return Schedule(chosen, epochs, (0,))
  datasets = {"criteo10k": {"data.source": CRITEO_SAMPLE},
              "synthetic100k": {"data.synthetic_rows": 100_000},
              "synthetic500k": {"data.synthetic_rows": 500_000}}
  epochs = {"criteo10k": 10, "synthetic100k": 6, "synthetic500k": 3}
  return Schedule({k: v for k, v in datasets.items() if k in names}, epochs,
                  tuple(range(seeds)))


def base_config(quick: bool):
  from jaxrec.train.loop import TrainConfig
  return TrainConfig(batch_size=256 if quick else 128, log_every=10_000, eval_batch_size=8192)


def run_cell(out_dir: str, dataset: str, approach: str, seed: int, config) -> dict:
  """Trains one (dataset, approach, seed) cell, or reuses its finished run."""
  from jaxrec.train.loop import train_and_evaluate
  workdir = os.path.join(out_dir, "runs", dataset, approach, f"seed{seed}")
  metrics_path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(metrics_path):
    logging.info("running %s / %s / seed %d", dataset, approach, seed)
    train_and_evaluate(config, workdir)
  with open(metrics_path) as f:
    metrics = json.load(f)
  with open(os.path.join(workdir, "history.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
  return {"dataset": dataset, "approach": approach, "seed": seed, "workdir": workdir,
          "metrics": metrics, "history": history}


def main(argv):
  del argv
  sched = schedule(FLAGS.quick, FLAGS.seeds, FLAGS.datasets)
  datasets = dict(sched.datasets)
  if "criteo10k" in datasets and not os.path.exists(CRITEO_SAMPLE):
    logging.warning("real Criteo sample not found at %s; skipping it", CRITEO_SAMPLE)
    del datasets["criteo10k"]
  approaches = FLAGS.approaches or list(APPROACHES)
  unknown = sorted(set(approaches) - set(APPROACHES))
  if unknown:
    print(f"error: unknown approaches {unknown}; choose from {sorted(APPROACHES)}", file=sys.stderr)
    sys.exit(2)
  cells = [(d, a, s) for d in datasets for a in approaches for s in sched.seeds]
  print(f"reproduce: {len(cells)} runs ({len(datasets)} datasets x {len(approaches)} approaches"
        f" x {len(sched.seeds)} seeds); expected duration "
        f"{'3-5 minutes' if FLAGS.quick else 'about 45-60 minutes'} on 2 CPU cores", flush=True)
  base = base_config(FLAGS.quick)
  records = []
  start = time.time()
  for dataset, approach, seed in cells:
    config = override(base, **datasets[dataset], **APPROACHES[approach][1],
                      epochs=sched.epochs[dataset], seed=seed)
    records.append(run_cell(FLAGS.output_dir, dataset, approach, seed, config))
  from experiments import reproduce_report
  reproduce_report.write_report(FLAGS.output_dir, records, APPROACHES, sched.epochs,
                                time.time() - start, quick=FLAGS.quick)
  print(f"wrote {os.path.join(FLAGS.output_dir, 'report.md')}")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
