r"""Parameter counts and float32 bytes of a configuration, from shapes only (no training).

  python -m experiments.model_size                                 # DLRM, full tables, Kaggle
  python -m experiments.model_size --embedding=qr --qr_collisions=4 --qr_operation=mult
  python -m experiments.model_size --cardinalities=terabyte --embedding=mixed_dim
  python -m experiments.model_size --cardinalities=kaggle --compare   # every strategy, one table

The model is initialised under `jax.eval_shape`, so no table is allocated:
Terabyte-sized configurations (hundreds of millions of rows) print instantly.

--cardinalities takes a preset or comma-separated table sizes. Presets, with
the DLRM reference's architecture for each (used unless --embedding_dim /
--bottom_mlp / --top_mlp are given):

* kaggle: Criteo Kaggle (DAC), `jaxrec.data.synthetic.KAGGLE_CARDINALITIES`;
  d = 16, bottom 13-512-256-64-16, top 512-256-1 (bench/dlrm_s_criteo_kaggle.sh).
* terabyte: Criteo Terabyte with --max-ind-range=10000000, d = 64, bottom
  13-512-256-64, top 512-512-256-1 (bench/dlrm_s_criteo_terabyte.sh).
* terabyte_mlperf: Criteo Terabyte with --max-ind-range=40000000 (the MLPerf
  training configuration), d = 128, bottom 13-512-256-128, top
  1024-1024-512-256-1.

The Terabyte table sizes are those listed in facebookresearch/dlrm,
tools/visualize.py (the ``ln_emb`` arrays for max_ind_range 10M and 40M); the
40M ones are also MLPerf's DLRM ``--vocab_sizes_embed`` / HugeCTR's
``slot_size_array``.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import embedding_flags
from experiments.train import FlagError, parse_layers  # also defines --model, --embedding_dim, ...

FLAGS = flags.FLAGS

flags.DEFINE_string("cardinalities", "kaggle",
                    "kaggle | terabyte | terabyte_mlperf | comma-separated table sizes.")
flags.DEFINE_bool("compare", False,
                  "Print one markdown table over full, hash, qr (c = 2, 4, 8; mult, add, concat)"
                  " and mixed_dim instead of one configuration.")

TERABYTE_10M_CARDINALITIES = (
    9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10,
    2208, 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36)
TERABYTE_40M_CARDINALITIES = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)

# name -> (cardinalities, embedding dim, bottom MLP, top MLP) of the DLRM reference.
PRESETS = {
    "kaggle": (None, 16, (512, 256, 64, 16), (512, 256, 1)),
    "terabyte": (TERABYTE_10M_CARDINALITIES, 64, (512, 256, 64), (512, 512, 256, 1)),
    "terabyte_mlperf": (TERABYTE_40M_CARDINALITIES, 128, (512, 256, 128),
                        (1024, 1024, 512, 256, 1)),
}


def resolve_cardinalities(value: str) -> tuple[tuple[int, ...], tuple | None]:
  """(table sizes, preset architecture or None) from --cardinalities."""
  if value in PRESETS:
    sizes, dim, bottom, top = PRESETS[value]
    if sizes is None:
      from jaxrec.data.synthetic import KAGGLE_CARDINALITIES
      sizes = KAGGLE_CARDINALITIES
    return tuple(sizes), (dim, bottom, top)
  try:
    sizes = tuple(int(v) for v in value.split(","))
  except ValueError:
    raise FlagError(f"--cardinalities={value!r}: expected one of {sorted(PRESETS)} or"
                    " comma-separated integers") from None
  if not sizes or min(sizes) < 1:
    raise FlagError(f"--cardinalities={value!r}: table sizes must be positive")
  return sizes, None


def model_size(model_config, embedding_config, cardinalities, num_dense: int = 13) -> dict:
  """Counts from `jax.eval_shape` of the model's init: nothing is allocated."""
  import jax
  import numpy as np
  from jaxrec.models.ctr_model import CTRModel

  model = CTRModel.create(model_config, embedding_config, cardinalities, num_dense)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  nbytes = int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes)))
  total = count(shapes)
  assert count(shapes["tables"]) == model.layout.table_param_count()
  return {
      "layout": model.layout,
      "table_shapes": {k: tuple(v.shape) for k, v in shapes["tables"].items()},
      "projection_shapes": model.layout.projection_shapes(),
      "embedding_param_count": model.layout.param_count(),
      "dense_param_count": total - model.layout.param_count(),
      "param_count": total,
      "param_bytes": nbytes,
  }


def equal_memory_hash_buckets(cardinalities, target_rows: int) -> int:
  """Smallest bucket count B with sum(min(n, B)) >= target_rows (bisection)."""
  lo, hi = 1, max(cardinalities)
  while lo < hi:
    mid = (lo + hi) // 2
    if sum(min(n, mid) for n in cardinalities) >= target_rows:
      hi = mid
    else:
      lo = mid + 1
  return lo


def comparison_configs(base, cardinalities):
  """(label, EmbeddingConfig) for the standard strategy comparison.

  hash gets the bucket count whose tables hold as many rows as qr c = 4, so
  the two are compared at (nearly) equal memory.
  """
  import dataclasses
  from jaxrec.layers.embeddings import EmbeddingLayout

  replace = lambda **kw: dataclasses.replace(base, **kw)
  qr4 = EmbeddingLayout(replace(kind="qr", qr_collisions=4, qr_operation="mult"), cardinalities)
  buckets = equal_memory_hash_buckets(cardinalities, qr4.table_param_count() // base.dim)
  configs = [("full", replace(kind="full")),
             (f"hash B={buckets:,}", replace(kind="hash", hash_buckets=buckets))]
  for c in (2, 4, 8):
    for op in ("mult", "add", "concat"):
      configs.append((f"qr c={c} {op}", replace(kind="qr", qr_collisions=c, qr_operation=op)))
  configs.append((f"mixed_dim alpha={base.md_temperature:g}", replace(kind="mixed_dim")))
  return configs


def _architecture(preset):
  """(dim, bottom, top) from flags, falling back to the preset's for flags not given."""
  dim, bottom, top = preset if preset else (None, None, None)
  dim = FLAGS.embedding_dim if FLAGS["embedding_dim"].present or dim is None else dim
  bottom = (parse_layers("bottom_mlp", FLAGS.bottom_mlp)
            if FLAGS["bottom_mlp"].present or bottom is None else bottom)
  top = parse_layers("top_mlp", FLAGS.top_mlp) if FLAGS["top_mlp"].present or top is None else top
  if FLAGS.interaction == "dot" and not FLAGS["bottom_mlp"].present and bottom[-1] != dim:
    bottom = tuple(bottom[:-1]) + (dim,)
  return dim, bottom, top


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  from jaxrec.models.registry import ModelConfig
  try:
    cardinalities, preset = resolve_cardinalities(FLAGS.cardinalities)
    dim, bottom, top = _architecture(preset)
    embedding = embedding_flags.embedding_config_from_flags(dim)
    model_config = ModelConfig(name=FLAGS.model, bottom_mlp=bottom, top_mlp=top,
                               interaction=FLAGS.interaction,
                               self_interaction=FLAGS.interaction_itself)
    if FLAGS.compare:
      rows = [(label, model_size(model_config, cfg, cardinalities))
              for label, cfg in comparison_configs(embedding, cardinalities)]
    else:
      rows = [(embedding.kind, model_size(model_config, embedding, cardinalities))]
  except (FlagError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  print(f"{FLAGS.model} on {FLAGS.cardinalities if preset else 'given'} cardinalities:"
        f" {len(cardinalities)} tables, {sum(cardinalities):,} categories; d = {dim},"
        f" bottom {'-'.join(map(str, bottom))}, top {'-'.join(map(str, top))}")
  if not FLAGS.compare:
    size = rows[0][1]
    for name, shape in size["table_shapes"].items():
      print(f"  table      {name:16s} {shape[0]:>12,} x {shape[1]}")
    for name, shape in size["projection_shapes"].items():
      print(f"  projection {name:16s} {' x '.join(map(str, shape))}")
    print(f"  embedding_param_count {size['embedding_param_count']:,}")
    print(f"  dense_param_count     {size['dense_param_count']:,}")
    print(f"  param_count           {size['param_count']:,}")
    print(f"  param_bytes           {size['param_bytes']:,} ({size['param_bytes'] / 1e6:,.1f} MB,"
          f" float32)")
    return
  full = rows[0][1]["param_bytes"]
  print("| embedding | embedding params | total params | MB (float32) | vs full |")
  print("|---|---:|---:|---:|---:|")
  for label, size in rows:
    print(f"| {label} | {size['embedding_param_count']:,} | {size['param_count']:,} |"
          f" {size['param_bytes'] / 1e6:,.1f} | {full / size['param_bytes']:.1f}x |")


if __name__ == "__main__":
  app.run(main)
