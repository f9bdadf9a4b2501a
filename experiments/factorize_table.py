r"""Dense vs before vs SVD vs NMF at several rank fractions, on real and synthetic rows.

  python -m experiments.factorize_table      # ~5 min on 2 idle CPU cores

For each dataset (the real 10k Criteo Kaggle sample, when present, and a
synthetic Criteo-like set) it trains DLRM once dense, once per rank fraction
with factors from scratch (``--factorize=before``), and applies ``svd`` and
``nmf`` to the trained dense model at each fraction (then fine-tunes for
``--finetune_epochs``, reporting the model before and after). Every run goes
through `train_and_evaluate`, exactly as ``python -m experiments.train``
with the same flags would; svd/nmf runs resume a copy of the dense run's
final checkpoint, so they all start from the same trained model.

Prints a markdown table (test AUC, test logloss, dense-layer params,
inference examples/s at batch 8192) and the NMF-vs-SVD reconstruction errors,
and writes all rows to ``--output_dir``/factorize_table.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

from absl import flags, logging

from experiments import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CRITEO = os.path.join(os.path.dirname(REPO), "shared", "data", "criteo",
                              "criteo_kaggle_train_first10k.tsv")

FLAGS = flags.FLAGS
flags.DEFINE_string("criteo", DEFAULT_CRITEO, "Raw Criteo TSV sample ('' to skip).")
flags.DEFINE_integer("synthetic_rows", 20_000, "Rows of the synthetic dataset (0 to skip).")
flags.DEFINE_list("fractions", ["0.25", "0.5", "0.75"], "Rank fractions p.")
flags.DEFINE_integer("epochs", 1, "Training epochs of every model.")
flags.DEFINE_integer("finetune_epochs", 1, "Fine-tuning epochs after svd / nmf (0: none).")
flags.DEFINE_integer("nmf_iterations", 200, "Multiplicative-update iterations per NMF.")
flags.DEFINE_integer("seed", 0, "Seed of data split, init and order.")
flags.DEFINE_string("output_dir", "runs/factorize_table", "Where runs and the JSON go.")
flags.DEFINE_string("report", None, "Also write the tables as a docs page with its provenance"
                    " header (e.g. docs/factorize_table.md).")


def base_config(source: str):
  from jaxrec.data.sources import DataConfig
  from jaxrec.train.loop import TrainConfig
  data = DataConfig(source=source, synthetic_rows=FLAGS.synthetic_rows,
                    synthetic_max_vocab=10_000, seed=FLAGS.seed)
  return TrainConfig(data=data, batch_size=128, epochs=FLAGS.epochs, log_every=10_000,
                     seed=FLAGS.seed)


def _row(data: str, method: str, fraction, metrics: dict, *, prefinetune: bool = False) -> dict:
  errors = metrics.get("reconstruction", [])
  return {
      "data": data, "method": method, "rank_fraction": fraction,
      "auc": metrics["prefinetune_auc" if prefinetune else "auc"],
      "logloss": metrics["prefinetune_logloss" if prefinetune else "logloss"],
      "dense_param_count": metrics["dense_param_count"],
      "inference_examples_per_sec": metrics["inference_examples_per_sec"],
      "layer_ranks": metrics["layer_ranks"],
      "mean_relative_error": (sum(e["relative_error"] for e in errors) / len(errors)
                              if errors else None),
      "mean_svd_relative_error": (sum(e["svd_relative_error"] for e in errors) / len(errors)
                                  if errors else None),
  }


def run_dataset(name: str, source: str, fractions: list[float]) -> list[dict]:
  from jaxrec.factorize import FactorizeConfig
  from jaxrec.train.loop import train_and_evaluate

  root = os.path.join(FLAGS.output_dir, name)
  base = base_config(source)
  dense_dir = os.path.join(root, "dense")
  shutil.rmtree(root, ignore_errors=True)
  rows = [_row(name, "dense", None, train_and_evaluate(base, dense_dir))]
  for p in fractions:
    fz = FactorizeConfig(method="before", rank_fraction=p, seed=FLAGS.seed)
    metrics = train_and_evaluate(dataclasses.replace(base, factorize=fz),
                                 os.path.join(root, f"before-{p}"))
    rows.append(_row(name, "before", p, metrics))
  for method in ("svd", "nmf"):
    for p in fractions:
      workdir = os.path.join(root, f"{method}-{p}")
      shutil.copytree(dense_dir, workdir)  # resume at the dense run's last step
      fz = FactorizeConfig(method=method, rank_fraction=p, finetune_epochs=FLAGS.finetune_epochs,
                           nmf_iterations=FLAGS.nmf_iterations, seed=FLAGS.seed)
      metrics = train_and_evaluate(dataclasses.replace(base, factorize=fz), workdir, resume=True)
      if FLAGS.finetune_epochs:
        rows.append(_row(name, method, p, metrics, prefinetune=True))
        rows.append(_row(name, f"{method}+ft{FLAGS.finetune_epochs}", p, metrics))
      else:
        rows.append(_row(name, method, p, metrics))
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| data | method | rank fraction | test AUC | test logloss | dense-layer params |"
           " inference ex/s (batch 8192) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    p = "-" if r["rank_fraction"] is None else f"{r['rank_fraction']:g}"
    lines.append(f"| {r['data']} | {r['method']} | {p} | {r['auc']:.4f} | {r['logloss']:.4f} |"
                 f" {r['dense_param_count']:,} | {r['inference_examples_per_sec']:,.0f} |")
  lines += ["", "| data | rank fraction | NMF relative error | SVD relative error (optimal) |",
            "|---|---|---|---|"]
  for r in rows:
    if r["method"] == "nmf":
      lines.append(f"| {r['data']} | {r['rank_fraction']:g} | {r['mean_relative_error']:.4f} |"
                   f" {r['mean_svd_relative_error']:.4f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  try:
    fractions = [float(p) for p in FLAGS.fractions]
  except ValueError:
    print(f"error: --fractions={','.join(FLAGS.fractions)}: expected numbers", file=sys.stderr)
    sys.exit(2)
  if any(not 0 < p <= 1 for p in fractions):
    print("error: --fractions must lie in (0, 1]", file=sys.stderr)
    sys.exit(2)
  datasets = []
  if FLAGS.criteo:
    if os.path.exists(FLAGS.criteo):
      datasets.append(("criteo10k", FLAGS.criteo))
    else:
      logging.warning("skipping the real sample: %s not found", FLAGS.criteo)
  if FLAGS.synthetic_rows:
    datasets.append((f"synthetic{FLAGS.synthetic_rows // 1000}k", "synthetic"))
  load_before = [round(x, 2) for x in os.getloadavg()]
  rows = [row for name, source in datasets for row in run_dataset(name, source, fractions)]
  load_after = [round(x, 2) for x in os.getloadavg()]
  table = markdown(rows)
  print(table)
  print(f"\nload average (1/5/15 min) before: {load_before}, after: {load_after}")
  path = os.path.join(FLAGS.output_dir, "factorize_table.json")
  with open(path, "w") as f:
    json.dump({"rows": rows, "argv": sys.argv, "loadavg_before": load_before,
               "loadavg_after": load_after, "markdown": table}, f, indent=2)
  print(f"wrote {path}")
  if FLAGS.report:
    from jaxrec import provenance
    provenance.write_report(FLAGS.report, "Low-rank dense layers: before, SVD and NMF", table)
    print(f"wrote {FLAGS.report}")


if __name__ == "__main__":
  cli.run(main)
