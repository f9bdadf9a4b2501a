r"""Tables, plots and the markdown report of `experiments.reproduce`.

Pure reporting over the grid's records (metrics.json + history.jsonl of each
run): mean ± std tables, a quality-vs-size Pareto plot, held-out logloss per
epoch, inference throughput vs rank fraction, and the single-batch (1/128)
analysis of the study's accuracy figures. Everything the pages show is saved in
results.json (with the machine that measured it), so they re-render from it:

  python -m experiments.reproduce_report --readme   # docs/reproduce/report.md + README table
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import numpy as np

STUDY_BATCH = 128


def _mean_std(values) -> str:
  values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
  if len(values) == 0:
    return "n/a"
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def _group(records):
  groups = collections.OrderedDict()
  for r in records:
    groups.setdefault((r["dataset"], r["approach"]), []).append(r)
  return groups


def _inference_rate(metrics: dict) -> float:
  return metrics.get("inference_examples_per_sec", metrics["eval_examples_per_sec"])


def summary_rows(records) -> list[dict[str, Any]]:
  """One row per (dataset, approach): means and stds over seeds."""
  rows = []
  for (dataset, approach), runs in _group(records).items():
    m = [r["metrics"] for r in runs]
    def col(key):
      return [x.get(key) for x in m]
    rows.append({
        "dataset": dataset, "approach": approach, "seeds": len(runs),
        "auc": _mean_std(col("auc")), "logloss": _mean_std(col("logloss")),
        "accuracy": _mean_std(col("accuracy")),
        "baseline_accuracy": f"{np.mean(col('baseline_accuracy')):.4f}",
        "baseline_logloss": f"{np.mean(col('baseline_logloss')):.4f}",
        "train_seconds": f"{np.mean(col('train_seconds')):.1f}",
        "inference_eps": f"{np.mean([_inference_rate(x) for x in m]):,.0f}",
        "param_count": f"{int(np.mean(col('param_count'))):,}",
        "dense_param_count": f"{int(np.mean(col('dense_param_count'))):,}",
        "mb": f"{np.mean(col('param_bytes')) / 1e6:.2f}",
        "auc_mean": float(np.nanmean(np.asarray(col("auc"), np.float64))),
        "logloss_mean": float(np.nanmean(np.asarray(col("logloss"), np.float64))),
        "bytes_mean": float(np.mean(col("param_bytes"))),
        "dense_params_mean": float(np.mean(col("dense_param_count"))),
    })
  return rows


def markdown_table(rows, labels) -> str:
  head = ("| dataset | approach | AUC | logloss | accuracy | constant acc. | constant logloss |"
          " train s | inference ex/s | params | dense params | MB |")
  lines = [head, "|" + "---|" * 12]
  for r in rows:
    lines.append(f"| {r['dataset']} | {labels.get(r['approach'], r['approach'])} | {r['auc']} |"
                 f" {r['logloss']} | {r['accuracy']} | {r['baseline_accuracy']} |"
                 f" {r['baseline_logloss']} | {r['train_seconds']} | {r['inference_eps']} |"
                 f" {r['param_count']} | {r['dense_param_count']} | {r['mb']} |")
  return "\n".join(lines)


def single_batch_accuracies(workdir: str, batch: int = STUDY_BATCH) -> np.ndarray:
  """Accuracy of each consecutive `batch`-row slice of the test split (full slices only)."""
  with np.load(os.path.join(workdir, "test_predictions.npz")) as z:
    prob, label = z["prob"], z["label"]
  n = len(prob) // batch * batch
  correct = ((prob[:n] > 0.5) == (label[:n] > 0.5)).reshape(-1, batch)
  return correct.mean(axis=1)


def rank_sweep(records) -> list[dict[str, Any]]:
  """Inference throughput per (method, rank fraction), dense as p = 1, mean over runs."""
  points = collections.defaultdict(list)
  for r in records:
    m = r["metrics"]
    config_path = os.path.join(r["workdir"], "config.json")
    with open(config_path) as f:
      factorize = json.load(f).get("factorize")
    eps = m.get("inference_examples_per_sec", m["eval_examples_per_sec"])
    if r["approach"] == "baseline":
      for method in ("svd", "before"):
        points[(r["dataset"], method, 1.0)].append(eps)
    elif factorize and factorize["method"] in ("svd", "before") and r["approach"] != "afm_mf":
      points[(r["dataset"], factorize["method"], factorize["rank_fraction"])].append(eps)
  datasets = collections.Counter(d for d, _, _ in points)
  if not datasets:
    return []
  dataset = max(datasets, key=datasets.get)  # the dataset with the sweep
  return [{"dataset": d, "method": m, "rank_fraction": p,
           "inference_examples_per_sec": float(np.mean(v))}
          for (d, m, p), v in sorted(points.items()) if d == dataset]


def _pareto(points):
  """Indices of points not dominated in (smaller size, larger quality)."""
  order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
  best, front = -np.inf, []
  for i in order:
    if points[i][1] > best:
      front.append(i)
      best = points[i][1]
  return front


def _colors(approaches):
  import matplotlib
  cmap = matplotlib.colormaps["tab20"]
  return {a: cmap(i % 20) for i, a in enumerate(approaches)}


def plot_pareto(rows, labels, path):
  """Test AUC against total model size (top) and dense-layer size (bottom), per dataset."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  datasets = list(dict.fromkeys(r["dataset"] for r in rows))
  colors = _colors(list(dict.fromkeys(r["approach"] for r in rows)))
  fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets) + 3.2, 7.6),
                           squeeze=False)
  for col, dataset in enumerate(datasets):
    sub = [r for r in rows if r["dataset"] == dataset]
    for row, (key, xlabel) in enumerate([
        ("bytes_mean", "model size, MB (float32)"),
        ("dense_params_mean", "dense-layer parameters (MLPs, attention)")]):
      ax = axes[row, col]
      scale = 1e6 if key == "bytes_mean" else 1.0
      pts = [(r[key] / scale, r["auc_mean"]) for r in sub]
      for r, (x, y) in zip(sub, pts):
        ax.scatter(x, y, s=45, color=colors[r["approach"]], edgecolor="black", lw=0.4,
                   label=labels.get(r["approach"], r["approach"]), zorder=3)
      front = sorted(pts[i] for i in _pareto(pts))
      ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, zorder=2)
      ax.set_xscale("log")
      ax.set_xlabel(xlabel)
      ax.set_ylabel("test AUC (mean over seeds)")
      ax.set_title(f"{dataset}: AUC vs {'size' if row == 0 else 'dense-layer size'}"
                   " (dashed: Pareto front)", fontsize=9)
      ax.grid(alpha=0.3)
  handles, names = axes[0, 0].get_legend_handles_labels()
  seen = {}
  for ax in axes.flat:
    for h, n in zip(*ax.get_legend_handles_labels()):
      seen.setdefault(n, h)
  fig.legend(list(seen.values()), list(seen.keys()), loc="center right", fontsize=8,
             frameon=False)
  fig.tight_layout(rect=(0, 0, 1 - 3.0 / (4.6 * len(datasets) + 3.2), 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_logloss_vs_epoch(records, labels, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  datasets = list(dict.fromkeys(r["dataset"] for r in records))
  colors = _colors(list(dict.fromkeys(r["approach"] for r in records)))
  fig, axes = plt.subplots(1, len(datasets), figsize=(5.0 * len(datasets), 4.4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    for (d, approach), runs in _group(records).items():
      if d != dataset:
        continue
      curves = [[(h["epoch"], h["logloss"]) for h in r["history"] if h["split"] == "validation"]
                for r in runs]
      n = min(len(c) for c in curves)
      if n == 0:
        continue
      epochs = [p[0] for p in curves[0][:n]]
      mean = np.mean([[p[1] for p in c[:n]] for c in curves], axis=0)
      ax.plot(epochs, mean, marker="o", ms=3, color=colors[approach],
              label=labels.get(approach, approach))
    base = [r["metrics"]["baseline_logloss"] for r in records if r["dataset"] == dataset]
    ax.axhline(np.mean(base), color="gray", ls=":", label="constant predictor (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation logloss (mean over seeds)")
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_throughput_vs_rank(sweep, path):
  """sweep: list of {method, rank_fraction, inference_examples_per_sec}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  for method in dict.fromkeys(s["method"] for s in sweep):
    pts = sorted((s["rank_fraction"], s["inference_examples_per_sec"]) for s in sweep
                 if s["method"] == method)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
  ax.set_xlabel("rank fraction p (1.0 = dense)")
  ax.set_ylabel("inference examples/s (batch 8192)")
  ax.set_title(f"{sweep[0]['dataset']}: DLRM dense layers factorized" if sweep else "")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def single_batch_rows(records, batch: int = STUDY_BATCH) -> list[dict[str, Any]]:
  """Spread of single-batch test accuracies of each dataset's baseline (seed 0) run."""
  out = []
  for r in records:
    if r["approach"] != "baseline" or r["seed"] != 0:
      continue
    acc = single_batch_accuracies(r["workdir"], batch)
    if len(acc) == 0:
      continue
    q = np.percentile(acc, [5, 50, 95])
    out.append({"dataset": r["dataset"], "batches": int(len(acc)), "min": float(acc.min()),
                "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]),
                "max": float(acc.max()), "accuracy": r["metrics"]["accuracy"],
                "baseline_accuracy": r["metrics"]["baseline_accuracy"]})
  return out


def write_report(out_dir: str, records, approaches, epochs, seconds: float | None, *, quick: bool,
                 sweep=None, planned_runs: int | None = None) -> None:
  """Plots, results.json (everything the pages are rendered from) and report.md."""
  from jaxrec import provenance
  labels = {k: v[0] for k, v in approaches.items()}
  rows = summary_rows(records)
  plot_pareto(rows, labels, os.path.join(out_dir, "quality_vs_size.png"))
  plot_logloss_vs_epoch(records, labels, os.path.join(out_dir, "logloss_vs_epoch.png"))
  if sweep:
    plot_throughput_vs_rank(sweep, os.path.join(out_dir, "throughput_vs_rank.png"))
  results = {
      "command": provenance.command_line(), "provenance": provenance.machine_record(),
      "seconds": seconds, "quick": quick, "planned_runs": planned_runs,
      "epochs": {k: v for k, v in epochs.items() if any(r["dataset"] == k for r in records)},
      "seeds": sorted({r["seed"] for r in records}), "labels": labels, "rows": rows,
      "single_batch": single_batch_rows(records), "sweep": sweep or [],
      "records": [{**{k: v for k, v in r.items() if k != "history"},
                   "workdir": os.path.relpath(r["workdir"], out_dir)} for r in records],
  }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  render_report(results, os.path.join(out_dir, "report.md"))


def render_report(results: dict, path: str) -> None:
  """Writes report.md from results.json's dict alone (plots beside it)."""
  from jaxrec import provenance
  labels, rows, records = results["labels"], results["rows"], results["records"]
  lines = []
  if results.get("seconds") is not None:
    lines.append(f"{len(records)} runs in {results['seconds'] / 60:.1f} min.")
  planned = results.get("planned_runs")
  if planned is not None and len(records) < planned:
    lines += ["", f"**Partial grid: {len(records)} of {planned} planned runs finished.**"
              " Cells below cover only the finished runs; re-running the command trains the rest"
              " (finished runs are reused)."]
  lines.append("")
  lines.append("All metrics are on the **whole test split** of each dataset (random 80/10/10"
               " train/validation/test split, seed 0); mean ± sample std over model seeds "
               f"{results['seeds']} (init, data order, dropout). Epochs: "
               + ", ".join(f"{k}: {v}" for k, v in results["epochs"].items())
               + ". Datasets: `criteo10k` = first 10,000 rows of Criteo Kaggle train.txt;"
               " `syntheticN` = N synthetic Criteo-like rows (tables capped at 100k rows) with a"
               " known teacher. Timing columns are of the machine above, one run each.")
  lines += ["", "## Results", "", markdown_table(rows, labels), ""]
  lines += ["![quality vs size](quality_vs_size.png)", "",
            "![logloss vs epoch](logloss_vs_epoch.png)", "",
            "SVD and NMF are applied after training, so their training curves are the dense"
            " model's (they coincide with the baseline's); the table reports them after the"
            " transform. Embedding tables dominate model size, so dense-layer compression shows"
            " on the lower axes of the size plot.", ""]
  if results.get("sweep"):
    lines += ["![throughput vs rank](throughput_vs_rank.png)", ""]
  if results.get("single_batch"):
    lines += ["## The study's accuracies were single-batch measurements", ""]
    lines.append("The study's accuracies (80.469 = 103/128, 72.656 = 93/128, 75.781 = 97/128)"
                 " are multiples of 1/128: each was measured on one 128-example batch. On one"
                 " batch the standard error of an accuracy near 0.8 is sqrt(0.8·0.2/128) ≈ 0.035,"
                 " larger than the differences the study reports between approaches. Below, the"
                 " accuracy of every consecutive 128-row batch of the test split, for the"
                 " baseline model:")
    lines += ["", "| dataset | batches | min | 5th pct | median | 95th pct | max |"
              " whole-split accuracy | constant predictor |", "|" + "---|" * 9]
    for b in results["single_batch"]:
      lines.append(f"| {b['dataset']} | {b['batches']} | {b['min']:.4f} | {b['p5']:.4f} |"
                   f" {b['median']:.4f} | {b['p95']:.4f} | {b['max']:.4f} | {b['accuracy']:.4f} |"
                   f" {b['baseline_accuracy']:.4f} |")
    lines += ["", "Whole-split AUC and logloss separate approaches that single-batch accuracy"
              " cannot; and accuracy itself is dominated by the class balance: the constant"
              " predictor already scores the majority-class rate.", ""]
  provenance.write_report(path, "jaxrec reproduction of the study's experiments",
                          "\n".join(lines), command=results["command"],
                          record=results.get("provenance") or {})


README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"
# The README's table: the six approaches on every dataset (the rank sweep stays in the report).
README_APPROACHES = ("baseline", "mf_before", "mf_nmf", "svd", "afm_mf", "qr")


def readme_block(results: dict, results_path: str) -> str:
  """The README's results table with where it came from (between the README markers)."""
  record = results.get("provenance") or {}
  cpu = (record.get("host_cpu") or {}).get("model", "not recorded")
  lines = [README_BEGIN,
           "<!-- Generated by `python -m experiments.reproduce_report --readme`: edit that"
           " script, not this block. -->", "",
           f"Test split, mean ± std over seeds {results['seeds']}; measured by"
           f" `{results['command']}` (machine: {cpu}; date: {record.get('date', 'not recorded')});"
           f" this table rewritten from `{results_path}` by"
           " `python -m experiments.reproduce_report --readme`. Full report:"
           " [docs/reproduce/report.md](docs/reproduce/report.md).", "",
           "| dataset | approach | test AUC | test logloss | params | dense params | MB |",
           "|---|---|---|---|---:|---:|---:|"]
  for r in results["rows"]:
    if r["approach"] in README_APPROACHES:
      lines.append(f"| {r['dataset']} | {results['labels'].get(r['approach'], r['approach'])} |"
                   f" {r['auc']} | {r['logloss']} | {r['param_count']} |"
                   f" {r['dense_param_count']} | {r['mb']} |")
  lines.append(README_END)
  return "\n".join(lines)


def update_readme(readme_path: str, block: str) -> None:
  """Replaces the text between the README markers with `block` (markers included)."""
  with open(readme_path, encoding="utf-8") as f:
    text = f.read()
  begin, end = text.find(README_BEGIN), text.find(README_END)
  if begin < 0 or end < begin:
    raise ValueError(f"{readme_path}: no {README_BEGIN} ... {README_END} block to rewrite")
  text = text[:begin] + block + text[end + len(README_END):]
  with open(readme_path, "w", encoding="utf-8") as f:
    f.write(text)


def main(argv):
  from absl import flags
  del argv
  flags_ = flags.FLAGS
  with open(flags_.results) as f:
    results = json.load(f)
  render_report(results, os.path.join(os.path.dirname(flags_.results), "report.md"))
  print(f"wrote {os.path.join(os.path.dirname(flags_.results), 'report.md')}")
  if flags_.readme:
    update_readme(flags_.readme_path, readme_block(results, flags_.results))
    print(f"rewrote the results block of {flags_.readme_path}")


if __name__ == "__main__":
  from absl import flags

  from experiments import cli
  flags.DEFINE_string("results", "docs/reproduce/results.json",
                      "results.json written by experiments.reproduce.")
  flags.DEFINE_bool("readme", False, "Also rewrite the README's results block.")
  flags.DEFINE_string("readme_path", "README.md", "The README whose block --readme rewrites.")
  cli.run(main)
