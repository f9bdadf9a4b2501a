r"""Import a model trained by the PyTorch DLRM reference (facebookresearch/dlrm) into a jaxrec run.

  pip install -e '.[torch]'
  python -m experiments.import_dlrm --checkpoint=model.pt --output_dir=runs/imported

--checkpoint is a file written by the reference's ``--save-model`` (or a bare
state_dict; a ``.npz`` of arrays named by state_dict keys needs no torch).
The output directory is a jaxrec run: ``load_run``, ``experiments.export`` and
evaluation read it. The import checks itself: it scores --verify_rows random
inputs with jaxrec and with a plain-numpy re-implementation of the reference
forward pass (reading the state_dict directly) and fails if the click
probabilities differ by more than --tolerance.

The imported model takes the reference's categorical ids (its own
preprocessing dictionaries), not jaxrec vocabularies, so the run has no
vocab.npz.
"""

from __future__ import annotations

import hashlib
import sys

from absl import flags

from experiments import cli
from experiments.cli import FlagError

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Reference checkpoint (.pt from --save-model, or .npz).")
flags.DEFINE_string("output_dir", None, "New jaxrec run directory to write.")
flags.DEFINE_enum("interaction", "auto", ["auto", "dot", "cat"],
                  "The reference's --arch-interaction-op (auto: inferred from shapes).")
flags.DEFINE_enum("interaction_itself", "auto", ["auto", "true", "false"],
                  "The reference's --arch-interaction-itself (auto: inferred from shapes).")
flags.DEFINE_enum("qr_operation", "mult", ["mult", "add", "concat"],
                  "The reference's --qr-operation (only for QR tables).")
flags.DEFINE_string("table_sizes", "",
                    "Dash-separated rows per table (the reference's --arch-embedding-size);"
                    " trims QR tables to their true size. Empty: from the checkpoint.")
flags.DEFINE_bool("allow_pickle", False,
                  "Unpickle objects beyond tensors (runs code from the file: trusted files only).")
flags.DEFINE_integer("verify_rows", 256, "Random rows of the parity check (0: skip it).")
flags.DEFINE_float("tolerance", 1e-5, "Largest accepted |probability difference| in the check.")


def options_from_flags():
  from jaxrec.interop.dlrm_reference import ImportOptions
  if not FLAGS.checkpoint or not FLAGS.output_dir:
    raise FlagError("--checkpoint and --output_dir are required")
  sizes = None
  if FLAGS.table_sizes:
    try:
      sizes = tuple(int(s) for s in FLAGS.table_sizes.split("-"))
    except ValueError:
      raise FlagError(f"--table_sizes={FLAGS.table_sizes!r}: expected dash-separated integers"
                      ) from None
  itself = {"auto": None, "true": True, "false": False}[FLAGS.interaction_itself]
  return ImportOptions(interaction=None if FLAGS.interaction == "auto" else FLAGS.interaction,
                       self_interaction=itself, qr_operation=FLAGS.qr_operation,
                       table_sizes=sizes)


def verify(state_dict, imported, options, rows: int, seed: int = 0) -> float:
  """Max |p_jaxrec - p_reference| over `rows` random inputs."""
  import jax
  import numpy as np
  from jaxrec.interop.dlrm_reference import reference_forward
  rng = np.random.default_rng(seed)
  spec = imported.spec
  dense = np.log1p(rng.integers(0, 1000, (rows, spec.num_dense))).astype(np.float32)
  ids = np.stack([rng.integers(0, n, rows) for n in spec.vocab_sizes], axis=1).astype(np.int32)
  model = spec.build()
  got = np.asarray(jax.nn.sigmoid(jax.jit(model.apply)(imported.variables, dense, ids)))
  want = reference_forward(state_dict, dense, ids, options,
                           interaction=spec.model.interaction,
                           self_interaction=spec.model.self_interaction)
  return float(np.max(np.abs(got - want)))


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def main(argv):
  cli.check_no_arguments(argv)
  from jaxrec.interop import dlrm_reference as ref
  try:
    options = options_from_flags()
    state_dict = ref.load_checkpoint(FLAGS.checkpoint, allow_pickle=FLAGS.allow_pickle)
    imported = ref.import_state_dict(state_dict, options)
  except (FlagError, ref.ReferenceCheckpointError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  spec = imported.spec
  print(f"reference DLRM: {len(spec.vocab_sizes)} tables"
        f" ({', '.join(sorted({t.kind for t in imported.tables}))}) of width {spec.embedding.dim},"
        f" {sum(spec.vocab_sizes):,} rows; bottom {spec.num_dense}-"
        f"{'-'.join(map(str, spec.model.bottom_mlp))},"
        f" top {'-'.join(map(str, spec.model.top_mlp))},"
        f" interaction {spec.model.interaction}"
        f"{' (itself)' if spec.model.self_interaction else ''}")
  if FLAGS.verify_rows > 0:
    diff = verify(state_dict, imported, options, FLAGS.verify_rows)
    print(f"parity on {FLAGS.verify_rows} random rows: max |probability difference|"
          f" {diff:.2e} (jaxrec float32 vs numpy reference float64)")
    if not diff <= FLAGS.tolerance:
      print(f"error: parity check failed ({diff:.2e} > --tolerance={FLAGS.tolerance})",
            file=sys.stderr)
      sys.exit(1)
  try:
    ref.write_run(FLAGS.output_dir, imported, {
        "checkpoint": FLAGS.checkpoint, "sha256": _sha256(FLAGS.checkpoint),
        "options": {"interaction": spec.model.interaction,
                    "self_interaction": spec.model.self_interaction,
                    "qr_operation": options.qr_operation,
                    "table_sizes": list(options.table_sizes or ())}})
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {FLAGS.output_dir} (load with jaxrec.train.run_dir.load_run)")


if __name__ == "__main__":
  cli.run(main)
