r"""Benchmark of the serving path: export size, and predict throughput on a large raw TSV.

  python -m experiments.bench_serving --checkpoint=runs/criteo10k --rows=1000000

Writes (once) a synthetic raw Criteo TSV of --rows rows whose fields are
resampled column by column from --source (the real 10k sample by default),
with --fresh_fraction of the categorical values replaced by random keys the
vocabulary has never seen (they take the out-of-vocabulary row). Then exports
the run and scores the TSV through the run directory and through the exported
artifact, printing rows/s end to end (parsing, encoding, scoring, writing;
compilation included) and the artifact's size. Figures are host-load
dependent: report `cat /proc/loadavg` with them.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from absl import app, flags

FLAGS = flags.FLAGS

_DEFAULT_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                               "shared", "data", "criteo", "criteo_kaggle_train_first10k.tsv")

flags.DEFINE_string("checkpoint", None, "Run directory trained on raw Criteo rows (has vocab.npz).")
flags.DEFINE_string("source", _DEFAULT_SOURCE, "Raw Criteo TSV whose columns are resampled.")
flags.DEFINE_integer("rows", 1_000_000, "Rows of the synthetic TSV.")
flags.DEFINE_float("fresh_fraction", 0.05, "Share of categorical values replaced by unseen keys.")
flags.DEFINE_string("work_dir", "/tmp/jaxrec_bench_serving", "Where the TSV and outputs go.")
flags.DEFINE_integer("batch_size", 8192, "Rows per scoring call.")
flags.DEFINE_integer("seed", 0, "Resampling seed.")


def write_resampled_tsv(source: str, path: str, rows: int, fresh_fraction: float,
                        seed: int) -> None:
  """Column-wise resampling of `source`'s raw fields (labels included) into `path`."""
  with open(source, "rb") as f:
    fields = [line.rstrip(b"\r\n").split(b"\t") for line in f]
  columns = [np.array(col, dtype=object) for col in zip(*fields)]
  rng = np.random.default_rng(seed)
  out = {}
  for j, col in enumerate(columns):
    values = col[rng.integers(0, len(col), rows)]
    if j >= 14:  # categorical: some never-seen 8-hex-digit keys
      fresh = rng.random(rows) < fresh_fraction
      values[fresh] = [b"%08x" % k for k in rng.integers(0, 2**32, int(fresh.sum()))]
    out[f"f{j}"] = pa.array(values.astype("S"), pa.binary()).cast(pa.string())
  options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
  pacsv.write_csv(pa.table(out), path + ".tmp", write_options=options)
  os.replace(path + ".tmp", path)


def main(argv):
  del argv
  from jaxrec.serving import predict as predict_lib
  from jaxrec.serving.artifact import ServingModel
  from jaxrec.serving.export import export_run
  from jaxrec.train.run_dir import load_run

  os.makedirs(FLAGS.work_dir, exist_ok=True)
  tsv = os.path.join(FLAGS.work_dir, f"resampled_{FLAGS.rows}.tsv")
  if not os.path.exists(tsv):
    tic = time.perf_counter()
    write_resampled_tsv(FLAGS.source, tsv, FLAGS.rows, FLAGS.fresh_fraction, FLAGS.seed)
    print(f"wrote {tsv} ({os.path.getsize(tsv) / 2**20:.0f} MiB) in"
          f" {time.perf_counter() - tic:.1f} s")
  run = load_run(FLAGS.checkpoint)
  artifact = os.path.join(FLAGS.work_dir, "model.serving.npz")
  meta = export_run(run, artifact)
  print(f"artifact {artifact}: {os.path.getsize(artifact):,} bytes"
        f" ({meta['stablehlo_bytes']:,} bytes StableHLO for {', '.join(meta['platforms'])})")
  scorers = {"run directory": predict_lib.scorer_from_run(run),
             "exported artifact": predict_lib.scorer_from_artifact(ServingModel.load(artifact))}
  for name, scorer in scorers.items():
    result = predict_lib.predict_file(scorer, tsv, os.path.join(FLAGS.work_dir, "probs.txt"),
                                      batch_size=FLAGS.batch_size)
    with open("/proc/loadavg") as f:
      load = f.read().split()[:3]
    print(f"predict via {name}: {result.rows:,} rows in {result.seconds:.1f} s ="
          f" {result.rows_per_sec:,.0f} rows/s (batch {FLAGS.batch_size}; load average"
          f" {' '.join(load)})")


if __name__ == "__main__":
  flags.mark_flag_as_required("checkpoint")
  app.run(main)
