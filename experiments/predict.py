r"""Score raw rows (Criteo, Avazu, any schema) with a trained model: one probability per line.

  python -m experiments.predict --checkpoint=runs/kaggle --input=day_23.gz --output=probs.txt
  python -m experiments.predict --checkpoint=dlrm.serving.npz --input=test.txt --output=probs.txt.gz

--checkpoint is a run directory (experiments.train) or a serving artifact
(experiments.export). --input is a file of the model's schema (schema.json in the run
directory or the artifact: Criteo TSV, Avazu CSV, ...) with or without the label
column; categorical values unseen in training map to the out-of-vocabulary id.
--schema reads the input with another schema of the same fields (e.g. the same
columns as Parquet).
The input is streamed; progress and rows/s are logged, and when the input has
labels the AUC and logloss are printed.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile

from absl import flags, logging

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Run directory, or a serving artifact file.")
flags.DEFINE_string("input", None, "Raw rows of the model's schema (label column optional).")
flags.DEFINE_string("output", None, "Output text file, one probability per line (.gz ok).")
flags.DEFINE_integer("batch_size", 8192, "Rows per scoring call.")
flags.DEFINE_string("schema", "", "Read --input with this schema (a preset or JSON file) instead"
                    " of the model's own; its fields must be the model's.")
flags.DEFINE_string("metrics_output", "", "Also write the summary (and metrics) as JSON here.")


def main(argv):
  cli.check_no_arguments(argv)
  for name in ("checkpoint", "input", "output"):
    if not getattr(FLAGS, name):
      print(f"error: --{name} is required", file=sys.stderr)
      sys.exit(2)
  if FLAGS.batch_size < 1:
    print(f"error: --batch_size={FLAGS.batch_size}: must be >= 1", file=sys.stderr)
    sys.exit(2)
  from jaxrec.data.criteo import CriteoFormatError
  from jaxrec.serving import predict as predict_lib
  from jaxrec.serving.artifact import ServingModel
  from jaxrec.train.run_dir import load_run
  try:
    if os.path.isdir(FLAGS.checkpoint):
      scorer = predict_lib.scorer_from_run(load_run(FLAGS.checkpoint))
    else:
      scorer = predict_lib.scorer_from_artifact(ServingModel.load(FLAGS.checkpoint),
                                                FLAGS.checkpoint)
    if FLAGS.schema:
      import dataclasses
      from jaxrec.data import schema as schema_lib
      schema = schema_lib.load(FLAGS.schema)
      own = scorer.schema
      if (schema.field_names, schema.bag_lengths, schema.num_dense) != (
          own.field_names, own.bag_lengths, own.num_dense):
        raise ValueError(f"--schema={FLAGS.schema}: fields {schema.field_names} differ from the"
                         f" model's {own.field_names}")
      scorer = dataclasses.replace(scorer, schema=schema)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # damaged artifacts too
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  def progress(rows, seconds):
    logging.info("%d rows, %.0f rows/s", rows, rows / max(seconds, 1e-9))

  try:
    result = predict_lib.predict_file(scorer, FLAGS.input, FLAGS.output,
                                      batch_size=FLAGS.batch_size, progress=progress)
  except (CriteoFormatError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"scored {result.rows:,} rows in {result.seconds:.1f} s ({result.rows_per_sec:,.0f}"
        f" rows/s, parsing and compilation included) -> {FLAGS.output}")
  summary = {"rows": result.rows, "seconds": result.seconds,
             "rows_per_sec": result.rows_per_sec, "has_label": result.has_label}
  if result.metrics is not None:
    m = result.metrics
    print(f"  AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}  (constant predictor at this"
          f" file's click rate: {m['baseline_logloss']:.4f})  accuracy {m['accuracy']:.4f}")
    summary.update({k: m[k] for k in ("auc", "logloss", "accuracy", "baseline_logloss",
                                      "positive_rate")})
  if FLAGS.metrics_output:
    with open(FLAGS.metrics_output, "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
      f.write("\n")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  import logging as std_logging
  std_logging.getLogger("jax").setLevel(std_logging.WARNING)  # backend probing noise
  cli.run(main)
