r"""Every registered model on Avazu's raw CSV, 3 seeds, beside the constant predictor.

  python -m experiments.avazu_zoo --data=../shared/data/avazu/avazu_train_first9999.csv \
      --output=docs/avazu_zoo.md

Each run is exactly ``python -m experiments.train --schema=avazu --data=DATA --model=M
--seed=S`` (the CLI's defaults, the seeded 80/10/10 split), evaluated on the
whole test split; the table gives mean ± standard deviation over the seeds of test AUC
and logloss, and the constant predictor (the training click rate) for reference. The
seed changes the split too, so the spread includes the split's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("data", None, "Avazu raw CSV (or .gz): the sample or the full train file.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (of init, split and dropout).")
flags.DEFINE_list("models", [], "Models (default: every registered model).")
flags.DEFINE_string("output", "docs/avazu_zoo.md", "The generated page.")
flags.DEFINE_list("extra", [], "Extra experiments.train flags for every run.")


def run_one(data: str, model: str, seed: int, workdir: str, cache: str, extra) -> dict:
  command = [sys.executable, "-m", "experiments.train", "--schema=avazu", f"--data={data}",
             f"--model={model}", f"--seed={seed}", f"--output_dir={workdir}",
             f"--cache_dir={cache}", *extra]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def table(results: dict[str, list[dict]]) -> str:
  def cell(values, digits=4):
    values = np.asarray(values, np.float64)
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0:.{digits}f}"
  first = next(iter(results.values()))
  lines = ["| model | test AUC | test logloss | test rows | seconds per run |",
           "|---|---|---|---|---|",
           f"| constant predictor (training click rate) | 0.5 | "
           f"{cell([m['baseline_logloss'] for m in first])} |"
           f" {first[0]['num_eval_examples']:,} | |"]
  for name, runs in results.items():
    lines.append(f"| {name} | {cell([m['auc'] for m in runs])} | "
                 f"{cell([m['logloss'] for m in runs])} | {runs[0]['num_eval_examples']:,} | "
                 f"{np.mean([m['train_seconds'] for m in runs]):.0f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1 or not FLAGS.data:
    print("error: need --data (and no positional arguments)", file=sys.stderr)
    sys.exit(2)
  from jaxrec import provenance
  from jaxrec.models.registry import MODELS
  models = FLAGS.models or sorted(MODELS)
  seeds = [int(s) for s in FLAGS.seeds]
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for model in models:
      results[model] = []
      for seed in seeds:
        metrics = run_one(FLAGS.data, model, seed, os.path.join(tmp, f"{model}-{seed}"),
                          os.path.join(tmp, "cache"), FLAGS.extra)
        results[model].append(metrics)
        print(f"{model} seed {seed}: AUC {metrics['auc']:.4f} logloss {metrics['logloss']:.4f}"
              f" (constant {metrics['baseline_logloss']:.4f})", flush=True)
  body = (f"Data: `{os.path.basename(FLAGS.data)}`, read raw with `--schema=avazu` (id dropped;"
          " hour split into hour-of-day and weekday; 23 categorical fields, no dense"
          " feature). Each model trains with `experiments.train`'s defaults for it"
          f" (docs/training.md), seeds {', '.join(map(str, seeds))}; every figure is over the"
          " whole test"
          " split (10% of the rows, drawn by the seed). Mean ± standard deviation over the"
          " seeds.\n\n" + table(results) + "\n")
  provenance.write_report(FLAGS.output, "Avazu: the model zoo beside the constant predictor",
                          body)
  print(body)


if __name__ == "__main__":
  app.run(main)
