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

from absl import flags, logging

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where the report, plots and runs go.", required=True)
flags.DEFINE_bool("quick", False, "A small grid (one seed, small data, few epochs) in minutes.")
flags.DEFINE_integer("seeds", 3, "Seeds per cell (full grid).")
flags.DEFINE_list("datasets", ["criteo10k", "synthetic100k", "synthetic500k"],
                  "Datasets to run (criteo10k is skipped when the sample is absent).")
flags.DEFINE_list("approaches", [], "Subset of approaches (default: all).")
flags.DEFINE_bool("report_only", False,
                  "Train nothing: write the report from the runs already finished in"
                  " --output_dir (a partial grid is labelled as such).")

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


def _factorize(method: str, rank_fraction: float):
  from jaxrec.factorize.rank import FactorizeConfig
  return FactorizeConfig(method=method, rank_fraction=rank_fraction)


# Approach name -> (label, overrides of TrainConfig). Rank fraction 0.5 unless named.
APPROACHES: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("Baseline DLRM", {}),
    "mf_before": ("MF approach 1 (low-rank before training)",
                  {"factorize": _factorize("before", 0.5)}),
    "mf_nmf": ("MF approach 2 (NMF after training)", {"factorize": _factorize("nmf", 0.5)}),
    "svd": ("SVD after training", {"factorize": _factorize("svd", 0.5)}),
    "afm_mf": ("Attention with MF (AFM, low-rank)",
               {"model.name": "afm", "factorize": _factorize("before", 0.5)}),
    "qr": ("Compositional embeddings (QR, c=4, mult)",
           {"embedding.kind": "qr", "embedding.qr_collisions": 4,
            "embedding.qr_operation": "mult"}),
}
# Extra rank fractions for the Pareto and throughput plots (run on one dataset).
RANK_SWEEP = {
    f"{method}_p{int(p * 100)}": (f"{'SVD' if method == 'svd' else 'low-rank before'} p={p}",
                                  {"factorize": _factorize(method, p)})
    for method in ("svd", "before") for p in (0.25, 0.75)
}
SWEEP_DATASET = "synthetic100k"


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Dataset sizes and epochs of one grid."""

  datasets: dict[str, dict[str, Any]]
  epochs: dict[str, int]
  seeds: tuple[int, ...]


def schedule(quick: bool, seeds: int, names: list[str]) -> Schedule:
  if quick:
    datasets = {"criteo10k": {"data.source": CRITEO_SAMPLE, "batch_size": 256},
                "synthetic100k": {"data.synthetic_rows": 20_000, "batch_size": 256}}
    epochs = {"criteo10k": 2, "synthetic100k": 2}
    chosen = {k: v for k, v in datasets.items() if k in names or k.startswith("synthetic")}
    return Schedule(chosen, epochs, (0,))
  # The study trained 10/20/30 epochs; on 2 CPU cores the grid keeps to an hour with
  # 10 epochs on the 10k sample, 3 on 100K rows and 1 on 500K rows (evaluated every
  # quarter epoch), so held-out logloss is tracked over training in every cell.
  datasets = {"criteo10k": {"data.source": CRITEO_SAMPLE, "batch_size": 128},
              "synthetic100k": {"data.synthetic_rows": 100_000, "batch_size": 512},
              "synthetic500k": {"data.synthetic_rows": 500_000, "batch_size": 1024,
                                "eval_every": 98}}
  epochs = {"criteo10k": 10, "synthetic100k": 3, "synthetic500k": 1}
  return Schedule({k: v for k, v in datasets.items() if k in names}, epochs,
                  tuple(range(seeds)))


def base_config():
  from jaxrec.train.loop import TrainConfig
  return TrainConfig(log_every=10_000, eval_batch_size=8192)


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
  all_approaches = {**APPROACHES, **RANK_SWEEP}
  cells = [(d, a, s) for d in datasets for a in approaches for s in sched.seeds]
  if not FLAGS.quick and not FLAGS.approaches and SWEEP_DATASET in datasets:
    cells += [(SWEEP_DATASET, a, s) for a in RANK_SWEEP for s in sched.seeds]
  print(f"reproduce: {len(cells)} runs ({len(datasets)} datasets x {len(approaches)} approaches"
        f" x {len(sched.seeds)} seeds); expected duration "
        f"{'about 2 minutes' if FLAGS.quick else 'about 16-25 minutes'} on 2 idle CPU cores"
        " (measured 1.8 and 16.0 min; slower when other jobs share them)", flush=True)
  base = base_config()
  records = []
  start = time.time()
  for i, (dataset, approach, seed) in enumerate(cells):
    if FLAGS.report_only and not os.path.exists(
        os.path.join(FLAGS.output_dir, "runs", dataset, approach, f"seed{seed}", "metrics.json")):
      continue
    config = override(base, **datasets[dataset], **all_approaches[approach][1],
                      epochs=sched.epochs[dataset], seed=seed)
    records.append(run_cell(FLAGS.output_dir, dataset, approach, seed, config))
    print(f"[{i + 1}/{len(cells)}] {dataset} {approach} seed {seed}:"
          f" AUC {records[-1]['metrics']['auc']:.4f} ({(time.time() - start) / 60:.1f} min)",
          flush=True)
  from experiments import reproduce_report
  sweep = reproduce_report.rank_sweep(records)
  reproduce_report.write_report(FLAGS.output_dir, records, all_approaches, sched.epochs,
                                None if FLAGS.report_only else time.time() - start,
                                quick=FLAGS.quick, sweep=sweep,
                                planned_runs=len(cells))
  print(f"wrote {os.path.join(FLAGS.output_dir, 'report.md')}")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  cli.run(main)
