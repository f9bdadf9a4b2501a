r"""Write calibrated synthetic Criteo rows as a raw Criteo TSV (or .tsv.gz).

  python -m experiments.make_synthetic --rows=5000000 --output=/tmp/synthetic_5m.tsv
  # Criteo Terabyte at 1/1000: its 40M-capped table sizes scaled, 24 day files
  python -m experiments.make_synthetic --rows=4373472 --cardinalities=terabyte \
      --cardinality_scale=0.001 --days=24 --output=/tmp/terabyte_1k

  # Rows with a multi-hot bag that carries the signal (CSV + its JSON schema, Bayes AUC):
  python -m experiments.make_synthetic --schema=multi_hot --rows=20000 --output=/tmp/bags.csv

The Criteo rows follow jaxrec.data.synthetic (real Kaggle cardinalities, fitted
frequency skew, missing rates and dense distributions; labels from the hidden
teacher), written in bounded memory; use them to test and benchmark
experiments.preprocess.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_integer("rows", 1_000_000, "Rows to write.")
flags.DEFINE_string("output", None, "Output path (.tsv, or .tsv.gz to gzip).")
flags.DEFINE_integer("seed", 0, "Seed of the teacher and the rows.")
flags.DEFINE_float("cardinality_scale", 1.0, "Multiplies the Kaggle cardinalities.")
flags.DEFINE_integer("max_vocab", 0, "Cap on every column's cardinality (0 = none).")
flags.DEFINE_enum("cardinalities", "kaggle", ["kaggle", "terabyte"],
                  "Table sizes: Criteo Kaggle's, or Terabyte's at --max-ind-range 40M (MLPerf).")
flags.DEFINE_enum("schema", "criteo", ["criteo", "multi_hot"],
                  "criteo: Criteo TSV rows; multi_hot: a CSV with a bag field whose pooled ids"
                  " carry the signal (jaxrec.data.synthetic_bags), with OUTPUT.schema.json.")
flags.DEFINE_integer("max_length", 8, "multi_hot: the most ids in a bag.")
flags.DEFINE_integer("days", 0, "Cut the rows into this many consecutive files day_0 .."
                     " day_{N-1} inside --output (a directory), as Criteo Terabyte; 0: one file.")


def main(argv):
  cli.check_no_arguments(argv)
  if (not FLAGS.output or FLAGS.rows < 1 or FLAGS.cardinality_scale <= 0 or FLAGS.max_vocab < 0
      or not 0 <= FLAGS.days <= FLAGS.rows):
    print("error: need --output, --rows >= 1, --cardinality_scale > 0, --max_vocab >= 0,"
          " 0 <= --days <= --rows", file=sys.stderr)
    sys.exit(2)
  if FLAGS.schema == "multi_hot":
    write_multi_hot()
    return
  from jaxrec.data import synthetic
  sizes = synthetic.KAGGLE_CARDINALITIES
  if FLAGS.cardinalities == "terabyte":
    from jaxrec.models.size import TERABYTE_40M_CARDINALITIES as sizes
  config = synthetic.SyntheticConfig(num_rows=FLAGS.rows, seed=FLAGS.seed, vocab_sizes=sizes,
                                     cardinality_scale=FLAGS.cardinality_scale,
                                     max_vocab=FLAGS.max_vocab or None)
  start = time.perf_counter()
  if FLAGS.days:
    stats = synthetic.write_days(config, FLAGS.output, FLAGS.days)
  else:
    stats = synthetic.write_tsv(config, FLAGS.output)
  seconds = time.perf_counter() - start
  print(f"wrote {stats['rows']:,} rows to {FLAGS.output} in {seconds:.1f} s"
        f" (positive rate {stats['positive_rate']:.4f})")


def write_multi_hot() -> None:
  import json
  from jaxrec.data import synthetic_bags
  config = synthetic_bags.BagConfig(num_rows=FLAGS.rows, max_length=FLAGS.max_length,
                                    seed=FLAGS.seed)
  stats = synthetic_bags.write_csv(config, FLAGS.output)
  schema_path = FLAGS.output + ".schema.json"
  with open(schema_path, "w") as f:
    json.dump(synthetic_bags.schema(config).to_json(), f, indent=2)
    f.write("\n")
  print(f"wrote {stats['rows']:,} rows to {FLAGS.output} and its schema to {schema_path}"
        f" (positive rate {stats['positive_rate']:.4f}, Bayes-optimal AUC"
        f" {stats['bayes_auc']:.4f})")


if __name__ == "__main__":
  cli.run(main)
