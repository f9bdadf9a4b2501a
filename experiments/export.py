r"""Export a trained run for serving: the inference function as StableHLO, weights, vocabularies.

  python -m experiments.export --checkpoint=runs/kaggle --output=dlrm.serving.npz
  python -m experiments.export --checkpoint=runs/kaggle --output=dlrm.int8.npz --quantize=int8

Writes one file that `jaxrec.serving.artifact.ServingModel.load` runs with jax
alone (no jaxrec model code), and that `experiments.predict --checkpoint=FILE`
scores raw rows with. The batch dimension is symbolic (any batch size), inputs
and output are float32 / int32. --quantize stores the embedding tables row-wise
quantized: int8 (symmetric codes and one scale byte per row: 17 bytes for a
16-wide row against 64), or as the DLRM reference's --quantize-emb-with-bit=8|4
(int8-affine, int4: a float16 scale and bias per row); the network kernels are
stored as --quantize_mlp says. The exported function dequantizes the table rows
each call gathers; a second one, run once by the loader, the kernels
(`jaxrec.serving.quantize`, and docs/quantized_serving.md for sizes, speed and
AUC).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Run directory (experiments.train / import_dlrm output).")
flags.DEFINE_string("output", None, "Artifact file to write (e.g. model.serving.npz).")
flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms to lower for (cpu, cuda, rocm, tpu).")
flags.DEFINE_integer("batch_size", 0, "Fixed batch size (0: symbolic batch dimension).")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the model selected on validation, else the"
                     " latest).")
flags.DEFINE_enum("quantize", "none", ["none", "int8", "int8-affine", "int4"],
                  "Embedding tables: float32 as trained (none); row-wise int8 codes with a scale"
                  " byte per row (int8); or 8/4-bit codes with a float16 scale and bias per row"
                  " (int8-affine, int4).")
flags.DEFINE_enum("quantize_mlp", "auto", ["auto", "float32", "bfloat16", "int8"],
                  "Network kernels (biases stay float32); auto: int8 when --quantize is set,"
                  " else float32.")


def main(argv):
  cli.check_no_arguments(argv)
  if not FLAGS.checkpoint or not FLAGS.output:
    print("error: --checkpoint and --output are required", file=sys.stderr)
    sys.exit(2)
  if FLAGS.batch_size < 0:
    print(f"error: --batch_size={FLAGS.batch_size}: must be >= 0", file=sys.stderr)
    sys.exit(2)
  from jaxrec.serving.export import export_run
  from jaxrec.serving.quantize import QuantizeConfig
  from jaxrec.train.run_dir import load_run
  try:
    run = load_run(FLAGS.checkpoint, step=None if FLAGS.step < 0 else FLAGS.step)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  mlp = FLAGS.quantize_mlp
  if mlp == "auto":
    mlp = "float32" if FLAGS.quantize == "none" else "int8"
  quantize = QuantizeConfig(tables="float32" if FLAGS.quantize == "none" else FLAGS.quantize,
                            mlp=mlp)
  try:
    meta = export_run(run, FLAGS.output, platforms=FLAGS.platforms,
                      batch_size=FLAGS.batch_size or None, quantize=quantize)
  except ValueError as e:  # e.g. a table beyond float16's range
    print(f"error: --quantize={FLAGS.quantize}: {e}", file=sys.stderr)
    sys.exit(2)
  size = os.path.getsize(FLAGS.output)
  print(f"exported step {run.step} of {FLAGS.checkpoint} -> {FLAGS.output}:"
        f" {size / 2**20:.2f} MiB ({meta['stablehlo_bytes'] / 1024:.1f} KiB StableHLO for"
        f" {', '.join(meta['platforms'])}, batch {meta['batch']},"
        f" vocabularies {'included' if meta['has_vocabulary'] else 'absent'}; tables"
        f" {quantize.tables}, kernels {quantize.mlp})")


if __name__ == "__main__":
  cli.run(main)
