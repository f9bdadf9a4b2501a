r"""The model zoo (dlrm, afm, fm, afm_classic, deepfm, dcnv2, dlrm_dcn) over seeds.

AUC, logloss, params and train examples/s of each model on each dataset:


  python -m experiments.compare_models                 # real 10k Criteo sample + synthetic
  python -m experiments.compare_models --datasets=synthetic --seeds=1

Every run is `train_and_evaluate` with the same data, optimizer and schedule;
only the model and the training seed (init, batch order, dropout) change, the
data split is fixed. Prints a markdown table of mean ± sample std (n = seeds)
and writes it, with every run's metrics.json, under --output_dir. With
--heatmaps the first seed's afm and afm_classic write their mean test-split
attention heat-map; on synthetic data the script also reports how the
teacher's interacting column pairs rank by learned attention.
About 3.5 CPU-minutes (user time) with the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import numpy as np
from absl import flags, logging

from experiments import cli
from jaxrec.models.registry import MODELS

FLAGS = flags.FLAGS

flags.DEFINE_list("models", list(MODELS),
                  "Models to compare (each with its ModelConfig defaults; default: all"
                  " registered).")
flags.DEFINE_list("datasets", ["real", "synthetic"], "'real' (--real_data) and/or 'synthetic'.")
flags.DEFINE_string("real_data", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "data", "criteo",
    "criteo_kaggle_train_first10k.tsv"), "Raw Criteo TSV for the 'real' dataset.")
flags.DEFINE_integer("synthetic_rows", 50_000, "Rows of the synthetic dataset.")
flags.DEFINE_integer("synthetic_max_vocab", 1_000, "Cap on synthetic table sizes.")
flags.DEFINE_integer("seeds", 3, "Training seeds per (dataset, model).")
flags.DEFINE_integer("epochs", 1, "Passes over the training split.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_enum("optimizer", "adam", ["sgd", "adam", "adagrad"], "Dense optimizer.")
flags.DEFINE_float("learning_rate", 0.001, "Dense learning rate.")
flags.DEFINE_float("embedding_learning_rate", 0.05,
                   "Table learning rate (row-wise Adagrad unless --optimizer=sgd).")
flags.DEFINE_float("dropout", 0.5, "AFM/FM pairwise-layer dropout.")
flags.DEFINE_integer("attention_factor", 16, "AFM attention network size.")
flags.DEFINE_float("attention_l2", 0.0, "L2 weight on the AFM attention W.")
flags.DEFINE_bool("heatmaps", True, "Write afm / afm_classic attention heat-maps (first seed).")
flags.DEFINE_string("output_dir", "runs/compare_models", "Where runs and the table go.")
flags.DEFINE_string("report", None, "Also write the table as a docs page with its provenance"
                    " header (e.g. docs/model_zoo.md).")


def _loadavg() -> str:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "n/a"


def _base_config(dataset: str):
  from jaxrec.data.sources import DataConfig
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train.loop import TrainConfig

  source = FLAGS.real_data if dataset == "real" else "synthetic"
  data = DataConfig(source=source, synthetic_rows=FLAGS.synthetic_rows,
                    synthetic_max_vocab=FLAGS.synthetic_max_vocab)
  model = ModelConfig(dropout=FLAGS.dropout, attention_factor=FLAGS.attention_factor,
                      attention_l2=FLAGS.attention_l2)
  return TrainConfig(model=model, embedding=EmbeddingConfig(dim=16), data=data,
                     optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
                     embedding_learning_rate=FLAGS.embedding_learning_rate,
                     batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, log_every=10**9)


def teacher_pair_ranks(attention, data_config) -> dict:
  """Where the synthetic teacher's interacting (Ci, Cj) pairs rank by mean attention."""
  from jaxrec.data import synthetic
  teacher = synthetic._teacher_pairs(synthetic.SyntheticConfig(  # pylint: disable=protected-access
      num_rows=data_config.synthetic_rows, max_vocab=data_config.synthetic_max_vocab,
      seed=data_config.seed))
  index = {name: k for k, name in enumerate(attention.names)}
  cols = [index[f"C{c + 1}"] for c in range(26)]
  weights = np.array([attention.matrix[cols[a], cols[b]] for a in range(26)
                      for b in range(a + 1, 26)])
  pairs = [(a, b) for a in range(26) for b in range(a + 1, 26)]
  rank = {p: r for r, p in enumerate(sorted(range(len(pairs)), key=lambda p: -weights[p]))}
  teacher_set = {(int(a), int(b)) for a, b in teacher}
  top = [pairs[p] for p in sorted(range(len(pairs)), key=lambda p: -weights[p])[:len(teacher)]]
  ranks = [rank[pairs.index(p)] for p in teacher_set]
  return {"teacher_pairs": len(teacher_set), "categorical_pairs": len(pairs),
          "teacher_in_top": sum(p in teacher_set for p in top),
          "chance_in_top": len(teacher_set) ** 2 / len(pairs),
          "mean_teacher_rank_percentile": float(np.mean(ranks) / (len(pairs) - 1))}


def _fmt(values, digits):
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def main(argv):
  cli.check_no_arguments(argv)
  from jaxrec.train.loop import train_and_evaluate
  from experiments.attention_heatmap import write_attention_report

  unknown = [m for m in FLAGS.models if m not in MODELS]
  if unknown or FLAGS.seeds < 1 or not set(FLAGS.datasets) <= {"real", "synthetic"}:
    print(f"error: bad --models {unknown} / --seeds / --datasets", file=sys.stderr)
    sys.exit(2)
  if "real" in FLAGS.datasets and not os.path.exists(FLAGS.real_data):
    print(f"error: --real_data={FLAGS.real_data!r}: no such file", file=sys.stderr)
    sys.exit(2)
  load_start = _loadavg()
  results, extras = {}, {}
  for dataset in FLAGS.datasets:
    base = _base_config(dataset)
    for name in FLAGS.models:
      for seed in range(FLAGS.seeds):
        config = dataclasses.replace(base, seed=seed,
                                     model=dataclasses.replace(base.model, name=name))
        workdir = os.path.join(FLAGS.output_dir, dataset, name, f"seed{seed}")
        shutil.rmtree(workdir, ignore_errors=True)
        on_end = None
        if FLAGS.heatmaps and seed == 0 and name in ("afm", "afm_classic"):
          def on_end(model, variables, splits, workdir=workdir, name=name, dataset=dataset):
            png = write_attention_report(model, variables, splits.test, workdir,
                                         title=f"{name}, {dataset} data: mean test attention")
            if dataset == "synthetic":
              from jaxrec.models.attention_map import mean_attention
              ranks = teacher_pair_ranks(mean_attention(model, variables, splits.test),
                                         base.data)
              extras[f"{dataset}/{name}"] = {"heatmap": png, **ranks}
              print(f"{name}: teacher pairs in attention top-{ranks['teacher_pairs']}:"
                    f" {ranks['teacher_in_top']} (chance {ranks['chance_in_top']:.1f});"
                    f" mean rank percentile {ranks['mean_teacher_rank_percentile']:.2f}")
            else:
              extras[f"{dataset}/{name}"] = {"heatmap": png}
        metrics = train_and_evaluate(config, workdir, on_end=on_end)
        results.setdefault((dataset, name), []).append(metrics)
        print(f"{dataset:9s} {name:11s} seed {seed}: auc {metrics['auc']:.4f}"
              f" logloss {metrics['logloss']:.4f}"
              f" {metrics['train_examples_per_sec']:,.0f} ex/s", flush=True)

  lines = ["| data | model | test AUC | test logloss | params | dense params | train examples/s |",
           "|---|---|---|---|---|---|---|"]
  for (dataset, name), runs in results.items():
    lines.append(
        f"| {dataset} | {name} | {_fmt([r['auc'] for r in runs], 4)}"
        f" | {_fmt([r['logloss'] for r in runs], 4)} | {runs[0]['param_count']:,}"
        f" | {runs[0]['dense_param_count']:,}"
        f" | {_fmt([r['train_examples_per_sec'] for r in runs], 0)} |")
  first = next(iter(results.values()))[0]
  footer = (f"{FLAGS.seeds} seeds, mean ± sample std; {FLAGS.optimizer} lr {FLAGS.learning_rate},"
            f" tables {base.resolved_embedding_optimizer} lr {FLAGS.embedding_learning_rate},"
            f" batch {FLAGS.batch_size}, {FLAGS.epochs} epoch(s), dropout {FLAGS.dropout},"
            f" attention factor {FLAGS.attention_factor}; {first['device']};"
            f" load average {load_start} at start, {_loadavg()} at end.")
  table = "\n".join(lines + ["", footer])
  print(table)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump({"runs": {f"{d}/{m}": runs for (d, m), runs in results.items()},
               "attention": extras, "footer": footer}, f, indent=1)
  if FLAGS.report:
    from jaxrec import provenance
    provenance.write_report(FLAGS.report, "Model zoo: test metrics on the Criteo sample and"
                            " synthetic data", table)
    print(f"wrote {FLAGS.report}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  cli.run(main)
