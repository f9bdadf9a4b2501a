r"""Preprocess raw CTR files (Criteo TSV, Avazu CSV, any CSV/TSV/Parquet with a schema)
into memory-mapped split arrays.

  python -m experiments.preprocess --input=train.txt --output_dir=data/kaggle --split=kaggle
  python -m experiments.preprocess --input=day_0.gz,day_1.gz,...,day_23.gz \
      --output_dir=data/terabyte --split=days --max_rows_per_table=10000000
  # Terabyte on a Dask cluster, ids hashed on the fly (no counting pass):
  python -m experiments.preprocess --input=/data/criteo1tb --output_dir=/shared/terabyte \
      --split=days --vocabulary=hash:40000000 --engine=dask --scheduler=tcp://HOST:8786
  # Avazu's CSV (header, id dropped, hour split into hour-of-day and weekday):
  python -m experiments.preprocess --schema=avazu --input=train.gz --output_dir=data/avazu

Writes {train,validation,test}/{dense,cat,label}.npy, vocab.npz and meta.json
(see jaxrec.data.preprocess). Re-running with the same inputs and options
reuses the finished work. Train on the result with
``python -m experiments.train --data=<output_dir>``.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_list("input", None, "Raw Criteo files (plain or .gz) or directories, comma-separated,"
                  " in order (Terabyte: day_0 .. day_23).")
flags.DEFINE_string("schema", "criteo", "Columns of the inputs and their encoding: a preset"
                    " (criteo, criteo_terabyte, avazu) or a JSON schema file (docs/datasets.md).")
flags.DEFINE_string("output_dir", None, "Where the arrays, vocab.npz and meta.json go.")
flags.DEFINE_string("split", "random:0.8,0.1,0.1",
                    "'kaggle' (7 consecutive chunks: 6 train, the last halved into test and"
                    " validation), 'days' (the last input file halved into test and validation),"
                    " or 'random:train,validation,test' fractions with --seed.")
flags.DEFINE_integer("seed", 0, "Seed of the random split.")
flags.DEFINE_integer("min_frequency", 2, "Values seen fewer times in train map to the OOV id.")
flags.DEFINE_integer("max_rows_per_table", 0,
                     "Cap on every table's rows: values are hashed into N-1 buckets (0 = no cap).")
flags.DEFINE_enum("dense_dtype", "float32", ["float32", "float16"], "Stored dense feature dtype.")
flags.DEFINE_enum("on_bad_row", "error", ["error", "skip"],
                  "'error' stops at the first malformed line naming file, line and field;"
                  " 'skip' drops malformed lines and counts them in meta.json.")
flags.DEFINE_integer("block_rows", 1 << 16, "Rows parsed per block (memory ~ 1 KB per row).")
flags.DEFINE_bool("keep_temp", False, "Keep the intermediate arrays (tmp/).")
flags.DEFINE_string("vocabulary", "count",
                    "'count': ids by training-row frequency (--min_frequency,"
                    " --max_rows_per_table);"
                    " 'hash:N': no counting pass, id = hash(value) mod N in every column.")
flags.DEFINE_enum("engine", "local", ["local", "dask"],
                  "'local': threads of this process; 'dask': tasks on a Dask cluster (same bytes).")
flags.DEFINE_string("scheduler", None, "Dask scheduler address (tcp://HOST:8786) for --engine=dask;"
                    " unset: a local cluster of --dask_workers processes.")
flags.DEFINE_integer("dask_workers", 0, "Worker processes of the local Dask cluster (0 = one per"
                     " core).")


def main(argv):
  cli.check_no_arguments(argv)
  from jaxrec.data.criteo import CriteoFormatError
  from jaxrec.data.preprocess import (PreprocessConfig, parse_split, parse_vocabulary,
                                       preprocess)
  from jaxrec.data.schema import PRESET_MAX_ROWS, SchemaError, load
  try:
    try:
      schema = load(FLAGS.schema)
    except SchemaError as e:
      raise ValueError(f"--schema: {e}") from None
    if not FLAGS.input or not FLAGS.output_dir:
      raise ValueError("--input and --output_dir are required")
    parse_split(FLAGS.split)
    for name in ("min_frequency", "block_rows"):
      if getattr(FLAGS, name) < 1:
        raise ValueError(f"--{name}={getattr(FLAGS, name)}: must be >= 1")
    try:
      parse_vocabulary(FLAGS.vocabulary)
    except ValueError as e:
      raise ValueError(f"--vocabulary: {e}") from None
    if FLAGS.dask_workers < 0:
      raise ValueError(f"--dask_workers={FLAGS.dask_workers}: must be >= 0")
    if FLAGS.scheduler and FLAGS.engine != "dask":
      raise ValueError("--scheduler needs --engine=dask")
    if FLAGS.max_rows_per_table < 0 or FLAGS.max_rows_per_table == 1:
      raise ValueError(f"--max_rows_per_table={FLAGS.max_rows_per_table}: must be 0 or >= 2")
    config = PreprocessConfig(
        inputs=tuple(FLAGS.input), output_dir=FLAGS.output_dir, split=FLAGS.split,
        seed=FLAGS.seed, min_frequency=FLAGS.min_frequency,
        max_rows_per_table=FLAGS.max_rows_per_table or (
            None if FLAGS.vocabulary != "count" else PRESET_MAX_ROWS.get(FLAGS.schema)),
        schema=schema, dense_dtype=FLAGS.dense_dtype,
        on_bad_row=FLAGS.on_bad_row, block_rows=FLAGS.block_rows, keep_temp=FLAGS.keep_temp,
        vocabulary=FLAGS.vocabulary, engine=FLAGS.engine, scheduler=FLAGS.scheduler,
        workers=FLAGS.dask_workers or None)
    meta = preprocess(config, report=lambda msg: print(msg, flush=True))
  except (CriteoFormatError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"rows {meta['rows']}, vocabulary sizes {meta['vocab_sizes']},"
        f" {meta['bad_rows']['count']} bad lines skipped, {meta['rows_per_sec']:,.0f} rows/s")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  cli.run(main)
