r"""Runs training recipes over several seeds and prints test metrics as mean ± std.

  python -m experiments.recipe_search \
      --data=../shared/data/criteo/criteo_kaggle_train_first10k.tsv --split=kaggle \
      --recipes=defaults,reference --seeds=0,1,2

Each recipe is a set of `experiments.train` flags added to the common ones
(--data, --split and --extra); `defaults` adds none, so it measures what a
user gets from the command line alone. Every run is a separate
`python -m experiments.train` process writing to --output_dir/<recipe>/seed<k>;
the table (and --json) hold the test AUC, logloss and calibration, the
selected step and the wall time. This is the command behind the recipe
figures in docs/recipes.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "synthetic", "--data of every run.")
flags.DEFINE_list("split", None, "--split of every run (default: train's).")
flags.DEFINE_list("recipes", ["defaults"], "Recipe names (see RECIPES).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each recipe runs once per seed.")
flags.DEFINE_list("extra", [], "More train flags for every run, e.g. --extra=--epochs=3.")
flags.DEFINE_string("output_dir", "runs/recipe_search", "Where the runs go.")
flags.DEFINE_string("json", None, "Also write the per-run records and summaries here.")
flags.DEFINE_string("report", None, "Write the summary as a generated markdown page (with the"
                    " machine, versions and command) here, e.g. docs/recipes_criteo10k.md.")
flags.DEFINE_list("from_json", None, "Render --report (and print) from --json files of earlier"
                  " searches (comma-separated, tables joined) instead of running one.")
flags.DEFINE_string("title", "Training recipes", "Title of the --report page.")

# Flags added to the common ones. "defaults" is what the command line gives alone;
# "reference" is the DLRM reference's Kaggle recipe (SGD 0.1, batch 128, 10 epochs,
# the last model tested).
RECIPES = {
    "defaults": [],
    "reference": ["--optimizer=sgd", "--learning_rate=0.1", "--batch_size=128", "--epochs=10",
                  "--early_stopping_patience=0", "--lr_schedule=constant",
                  "--select_metric=last"],
    "sgd_es": ["--optimizer=sgd", "--learning_rate=0.1", "--epochs=30",
               "--early_stopping_patience=2"],
    "adagrad_es": ["--optimizer=adagrad", "--learning_rate=0.01",
                   "--embedding_optimizer=rowwise_adagrad", "--embedding_learning_rate=0.05",
                   "--epochs=30", "--early_stopping_patience=2"],
    "adagrad_emb02": ["--optimizer=adagrad", "--learning_rate=0.01",
                      "--embedding_learning_rate=0.02", "--epochs=8",
                      "--early_stopping_patience=2"],
    "adam_es": ["--optimizer=adam", "--learning_rate=0.001",
                "--embedding_optimizer=rowwise_adagrad", "--embedding_learning_rate=0.05",
                "--epochs=30", "--early_stopping_patience=1"],
    "adagrad_es_q": ["--optimizer=adagrad", "--learning_rate=0.01",
                     "--embedding_optimizer=rowwise_adagrad", "--embedding_learning_rate=0.05",
                     "--epochs=30", "--eval_every=17", "--early_stopping_patience=4"],
}


def run_one(recipe: str, seed: str, out: str) -> dict:
  """One `experiments.train` process; returns its metrics.json plus the wall time."""
  cmd = [sys.executable, "-m", "experiments.train", f"--data={FLAGS.data}", f"--seed={seed}",
         f"--output_dir={out}", *RECIPES[recipe], *FLAGS.extra]
  if FLAGS.split:
    cmd.append(f"--split={','.join(FLAGS.split)}")
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  return {"recipe": recipe, "seed": int(seed), "wall_seconds": seconds, **metrics}


def _mean_std(values: list[float]) -> str:
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def summarize(records: list[dict]) -> list[dict]:
  rows = []
  for recipe in dict.fromkeys(r["recipe"] for r in records):
    runs = [r for r in records if r["recipe"] == recipe]
    row = {"recipe": recipe, "seeds": len(runs)}
    for key in ("auc", "logloss", "calibration", "auc_over_bayes", "wall_seconds"):
      if all(key in r for r in runs):
        values = [r[key] for r in runs]
        row[key] = statistics.fmean(values)
        row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["steps"] = [r["steps"] for r in runs]
    row["best_step"] = [r.get("best_step") for r in runs]
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  """The summary as a markdown table (mean ± std over seeds)."""
  bayes = any("auc_over_bayes" in r for r in rows)
  head = "| recipe | seeds | test AUC | test logloss | calibration |" + (
      " AUC / Bayes AUC |" if bayes else "") + " steps (selected) | wall s |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    std = lambda k: f"{r[k]:.4f} ± {r[k + '_std']:.4f}" if k in r else "n/a"
    steps = ", ".join(f"{s} ({b})" for s, b in zip(r["steps"], r["best_step"]))
    lines.append(f"| {r['recipe']} | {r['seeds']} | {std('auc')} | {std('logloss')} |"
                 f" {std('calibration')} |" + (f" {std('auc_over_bayes')} |" if bayes else "")
                 + f" {steps} | {r['wall_seconds']:.0f} |")
  return "\n".join(lines)


def report_body(result: dict) -> str:
  flags_of = "\n".join(f"- `{name}`: `{' '.join(RECIPES.get(name, [])) or '(no flags)'}`"
                        for name in dict.fromkeys(r["recipe"] for r in result["records"]))
  return (f"{table(result['summary'])}\n\nRecipes (added to the command's common flags):\n\n"
          f"{flags_of}\n\nWall seconds include process start, compilation, evaluations and"
          " checkpoints, on the machine above (shared with other jobs when it was measured).\n")


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.from_json:
    results = []
    for path in FLAGS.from_json:
      with open(path) as f:
        results.append(json.load(f))
    result = {"records": [r for res in results for r in res["records"]],
              "summary": [row for res in results for row in res["summary"]]}
    print(table(result["summary"]))
    if FLAGS.report:
      from jaxrec import provenance
      command = "; ".join(res.get("command", "(not recorded)") for res in results)
      provenance.write_report(FLAGS.report, FLAGS.title, report_body(result), command=command,
                              record=results[0].get("machine"))
    return
  unknown = [r for r in FLAGS.recipes if r not in RECIPES]
  if unknown:
    print(f"error: --recipes: unknown {unknown}; choose from {', '.join(RECIPES)}",
          file=sys.stderr)
    sys.exit(2)
  records = []
  for recipe in FLAGS.recipes:
    for seed in FLAGS.seeds:
      out = os.path.join(FLAGS.output_dir, recipe, f"seed{seed}")
      record = run_one(recipe, seed, out)
      records.append(record)
      print(f"{recipe:>14} seed {seed}: auc {record['auc']:.4f} logloss {record['logloss']:.4f}"
            f" calibration {record['calibration']:.3f} steps {record['steps']}"
            f" best {record.get('best_step')} ({record['wall_seconds']:.0f} s)", flush=True)
  print(f"\n{'recipe':>14}  {'test AUC':>16}  {'test logloss':>16}  {'wall s':>8}")
  for row in summarize(records):
    std = lambda k: f"{row[k]:.4f} ± {row[k + '_std']:.4f}"
    extra = f"  auc/bayes {std('auc_over_bayes')}" if "auc_over_bayes" in row else ""
    print(f"{row['recipe']:>14}  {std('auc'):>16}  {std('logloss'):>16}"
          f"  {row['wall_seconds']:8.0f}{extra}")
  from jaxrec import provenance
  result = {"records": records, "summary": summarize(records),
            "command": provenance.command_line(), "machine": provenance.machine_record()}
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)
  if FLAGS.report:
    provenance.write_report(FLAGS.report, FLAGS.title, report_body(result))


if __name__ == "__main__":
  app.run(main)
