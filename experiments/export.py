r"""Export a trained run for serving: the inference function as StableHLO plus weights and vocabularies.

  python -m experiments.export --checkpoint=runs/kaggle --output=dlrm.serving.npz

Writes one file that `jaxrec.serving.artifact.ServingModel.load` runs with jax
alone (no jaxrec model code), and that `experiments.predict --checkpoint=FILE`
scores raw rows with. The batch dimension is symbolic (any batch size), inputs
and output are float32 / int32.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Run directory (experiments.train / import_dlrm output).")
flags.DEFINE_string("output", None, "Artifact file to write (e.g. model.serving.npz).")
flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms to lower for (cpu, cuda, rocm, tpu).")
flags.DEFINE_integer("batch_size", 0, "Fixed batch size (0: symbolic batch dimension).")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest).")


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  if not FLAGS.checkpoint or not FLAGS.output:
    print("error: --checkpoint and --output are required", file=sys.stderr)
    sys.exit(2)
  if FLAGS.batch_size < 0:
    print(f"error: --batch_size={FLAGS.batch_size}: must be >= 0", file=sys.stderr)
    sys.exit(2)
  from jaxrec.serving.export import export_run
  from jaxrec.train.run_dir import load_run
  try:
    run = load_run(FLAGS.checkpoint, step=None if FLAGS.step < 0 else FLAGS.step)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  meta = export_run(run, FLAGS.output, platforms=FLAGS.platforms,
                    batch_size=FLAGS.batch_size or None)
  size = os.path.getsize(FLAGS.output)
  print(f"exported step {run.step} of {FLAGS.checkpoint} -> {FLAGS.output}:"
        f" {size / 2**20:.2f} MiB ({meta['stablehlo_bytes'] / 1024:.1f} KiB StableHLO for"
        f" {', '.join(meta['platforms'])}, batch {meta['batch']},"
        f" vocabularies {'included' if meta['has_vocabulary'] else 'absent'})")


if __name__ == "__main__":
  app.run(main)
