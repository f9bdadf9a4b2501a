r"""Embedding strategies side by side: parameters, MB, AUC, logloss, train examples/s.

  python -m experiments.embedding_table --output_dir=runs/embedding_table
  python -m experiments.embedding_table --output_dir=/tmp/et --datasets=criteo10k

Trains DLRM (the reference's Kaggle architecture, d = 16; plain SGD, lr 0.1,
batch 128) once per strategy — full, hash, qr with c = 2, 4, 8 and each of
mult / add / concat, mixed_dim — on each dataset:

* ``criteo10k``: the real Criteo Kaggle sample (10k rows, 80/10/10 split,
  vocabularies from the training split), --criteo_epochs epochs.
* ``kaggle_synthetic``: synthetic rows drawn over the *real* Kaggle
  cardinalities (33.8M categories, 540M full-table parameters),
  --synthetic_rows rows, one epoch: a test of memory and speed at real table
  sizes more than of accuracy (most categories are never seen).

hash gets the bucket count whose tables hold as many rows as qr c = 4 (equal
memory; `jaxrec.models.size.comparison_configs`). Metrics are on the
whole test split. Finished runs under DIR/runs/ are reused. Writes
DIR/embedding_table.md and DIR/results.json; prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags, logging

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where runs, the table and results.json go.",
                    required=True)
flags.DEFINE_list("datasets", ["criteo10k", "kaggle_synthetic"], "Datasets to run.")
flags.DEFINE_integer("criteo_epochs", 3, "Epochs on the real 10k sample.")
flags.DEFINE_integer("synthetic_rows", 50_000, "Rows of the Kaggle-cardinality synthetic set.")
flags.DEFINE_list("only", [], "Run only these strategy labels' prefixes (e.g. full,qr c=4).")
flags.DEFINE_string("report", None, "Also write the table as a docs page with its provenance"
                    " header (e.g. docs/embedding_table.md).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITEO_SAMPLE = os.environ.get(
    "JAXREC_CRITEO_SAMPLE",
    os.path.join(os.path.dirname(REPO), "shared", "data", "criteo",
                 "criteo_kaggle_train_first10k.tsv"))


def _load_average() -> str:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "n/a"


def dataset_configs():
  """name -> (DataConfig, epochs)."""
  from jaxrec.data.sources import DataConfig
  out = {}
  if "criteo10k" in FLAGS.datasets:
    if os.path.exists(CRITEO_SAMPLE):
      out["criteo10k"] = (DataConfig(source=CRITEO_SAMPLE), FLAGS.criteo_epochs)
    else:
      logging.warning("real Criteo sample not found at %s; skipping it", CRITEO_SAMPLE)
  if "kaggle_synthetic" in FLAGS.datasets:
    out["kaggle_synthetic"] = (DataConfig(synthetic_rows=FLAGS.synthetic_rows,
                                          synthetic_max_vocab=None), 1)
  return out


def vocab_sizes(data) -> tuple[int, ...]:
  if data.source == "synthetic":
    from jaxrec.data.synthetic import KAGGLE_CARDINALITIES
    assert data.synthetic_max_vocab is None
    return KAGGLE_CARDINALITIES
  from jaxrec.data.sources import load_splits
  return load_splits(data).train.vocab_sizes


def run(workdir: str, config) -> dict:
  from jaxrec.train.loop import train_and_evaluate
  path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(path):
    before = _load_average()
    metrics = train_and_evaluate(config, workdir)
    metrics["load_average"] = f"{before} -> {_load_average()}"
    with open(path, "w") as f:
      json.dump(metrics, f, indent=2, sort_keys=True)
  with open(path) as f:
    return json.load(f)


def format_table(records: list[dict]) -> str:
  lines = ["| data | embedding | params | MB | test AUC | test logloss | train examples/s |"
           " load avg (1/5/15 min, before -> after) |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
  for r in records:
    m = r["metrics"]
    lines.append(f"| {r['dataset']} | {r['label']} | {m['param_count']:,} |"
                 f" {m['param_bytes'] / 1e6:,.1f} | {m['auc']:.4f} | {m['logloss']:.4f} |"
                 f" {m['train_examples_per_sec']:,.0f} | {m.get('load_average', 'n/a')} |")
  return "\n".join(lines)


def main(argv):
  cli.check_no_arguments(argv)
  from jaxrec.models.size import comparison_configs
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.train.loop import TrainConfig

  # No checkpoints: orbax needs several times a 2.2 GB full Kaggle table in memory to save it.
  base = TrainConfig(batch_size=128, log_every=10_000, eval_batch_size=8192,
                     embedding=EmbeddingConfig(dim=16), checkpoint_every=-1)
  records = []
  for name, (data, epochs) in dataset_configs().items():
    sizes = vocab_sizes(data)
    for label, embedding in comparison_configs(base.embedding, sizes):
      if FLAGS.only and not any(label.startswith(p) for p in FLAGS.only):
        continue
      slug = label.replace(" ", "_").replace("=", "").replace(",", "")
      config = dataclasses.replace(base, data=data, epochs=epochs, embedding=embedding)
      print(f"{name} / {label} ...", flush=True)
      metrics = run(os.path.join(FLAGS.output_dir, "runs", name, slug), config)
      records.append({"dataset": name, "label": label, "metrics": metrics})
      print(f"  auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f}"
            f" params {metrics['param_count']:,}"
            f" {metrics['train_examples_per_sec']:,.0f} ex/s", flush=True)
  table = format_table(records)
  with open(os.path.join(FLAGS.output_dir, "embedding_table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump(records, f, indent=2, sort_keys=True)
  print(table)
  if FLAGS.report:
    from jaxrec import provenance
    provenance.write_report(FLAGS.report, "Embedding strategies: size and test metrics", table)
    print(f"wrote {FLAGS.report}")


if __name__ == "__main__":
  cli.run(main)
