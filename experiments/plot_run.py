r"""Plots a run's training curves from its history.jsonl.

  python -m experiments.plot_run --run=runs/dlrm-20261208-001500

Writes <run>/curves.png (or --output): training loss and validation logloss
against steps, validation AUC, and the learning rate, with the step of the
model selected on validation marked when metrics.json names one.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Run directory (holds history.jsonl).")
flags.DEFINE_string("output", None, "PNG to write (default: <run>/curves.png).")


def read_history(run: str) -> list[dict]:
  """history.jsonl's records (a torn last line, from a killed run, is skipped)."""
  records = []
  with open(os.path.join(run, "history.jsonl")) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        pass
  return records


def _series(records: list[dict], split: str, key: str) -> tuple[list, list]:
  points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
  return [s for s, _ in points], [v for _, v in points]


def plot_curves(run: str, output: str) -> str:
  """Writes the curves of run `run` to `output`; returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_history(run)
  metrics_path = os.path.join(run, "metrics.json")
  best_step = None
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      best_step = json.load(f).get("best_step")
  fig, (loss_ax, auc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
  loss_ax.plot(*_series(records, "train", "loss"), label="training loss", color="tab:blue",
               alpha=0.8)
  loss_ax.plot(*_series(records, "validation", "logloss"), "o-", label="validation logloss",
               color="tab:orange")
  loss_ax.set(title="logloss", xlabel="step")
  auc_ax.plot(*_series(records, "validation", "auc"), "o-", color="tab:green",
              label="validation AUC")
  auc_ax.set(title="validation AUC", xlabel="step")
  lr_ax.plot(*_series(records, "train", "learning_rate"), label="dense", color="tab:purple")
  lr_ax.plot(*_series(records, "train", "embedding_learning_rate"), "--", label="embeddings",
             color="tab:gray")
  lr_ax.set(title="learning rate", xlabel="step")
  for ax in (loss_ax, auc_ax):
    if best_step is not None:
      ax.axvline(best_step, color="black", linestyle=":", label=f"selected (step {best_step})")
  for ax in (loss_ax, auc_ax, lr_ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(os.path.basename(os.path.normpath(run)))
  fig.tight_layout()
  fig.savefig(output, dpi=110)
  plt.close(fig)
  return output


def main(argv):
  cli.check_no_arguments(argv)
  if not FLAGS.run or not os.path.exists(os.path.join(FLAGS.run, "history.jsonl")):
    print(f"error: --run={FLAGS.run!r}: no history.jsonl there (a run directory of"
          " experiments.train)", file=sys.stderr)
    sys.exit(2)
  print(plot_curves(FLAGS.run, FLAGS.output or os.path.join(FLAGS.run, "curves.png")))


if __name__ == "__main__":
  cli.run(main)
