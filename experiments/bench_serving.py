r"""Benchmark of the serving path: the exported artifact's size, and predict throughput.

  python -m experiments.make_synthetic --rows=1000000 --output=/tmp/synthetic_1m.tsv
  python -m experiments.bench_serving --checkpoint=runs/synthetic --input=/tmp/synthetic_1m.tsv

Exports the run, then scores --input through the run directory (model code,
jitted) and through the exported artifact (no model code), printing rows/s end
to end (parsing, encoding with the training vocabularies, scoring, writing;
compilation included) for each, and the artifact's size. Figures depend on the
host's load: the load average is printed beside them.
"""

from __future__ import annotations

import os

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Run directory trained on raw Criteo rows (has vocab.npz).")
flags.DEFINE_string("input", None, "Raw Criteo TSV / TSV.gz to score.")
flags.DEFINE_string("work_dir", "/tmp/jaxrec_bench_serving", "Where the artifact and outputs go.")
flags.DEFINE_integer("batch_size", 8192, "Rows per scoring call.")
flags.DEFINE_list("scorers", ["run", "artifact"], "Which paths to time: run, artifact.")


def _load_average() -> str:
  with open("/proc/loadavg") as f:
    return " ".join(f.read().split()[:3])


def main(argv):
  del argv
  from jaxrec.serving import predict as predict_lib
  from jaxrec.serving.artifact import ServingModel
  from jaxrec.serving.export import export_run
  from jaxrec.train.run_dir import load_run

  os.makedirs(FLAGS.work_dir, exist_ok=True)
  run = load_run(FLAGS.checkpoint)
  artifact = os.path.join(FLAGS.work_dir, "model.serving.npz")
  meta = export_run(run, artifact)
  print(f"artifact {artifact}: {os.path.getsize(artifact):,} bytes"
        f" ({meta['stablehlo_bytes']:,} bytes StableHLO for {', '.join(meta['platforms'])};"
        f" {sum(meta['vocab_sizes']):,} embedding rows)")
  for name in FLAGS.scorers:
    if name == "run":
      scorer = predict_lib.scorer_from_run(run)
    else:
      scorer = predict_lib.scorer_from_artifact(ServingModel.load(artifact), artifact)
    result = predict_lib.predict_file(scorer, FLAGS.input,
                                      os.path.join(FLAGS.work_dir, f"probs_{name}.txt"),
                                      batch_size=FLAGS.batch_size)
    metrics = ""
    if result.metrics is not None:
      metrics = f"; AUC {result.metrics['auc']:.4f}, logloss {result.metrics['logloss']:.4f}"
    print(f"predict via {name}: {result.rows:,} rows in {result.seconds:.1f} s ="
          f" {result.rows_per_sec:,.0f} rows/s (batch {FLAGS.batch_size}{metrics};"
          f" load average {_load_average()})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "input"])
  cli.run(main)
