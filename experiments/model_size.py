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
``slot_size_array`` (see `jaxrec.models.size`).
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import cli

from experiments import embedding_flags
from experiments.train import FlagError, parse_layers  # also defines --model, --embedding_dim, ...

FLAGS = flags.FLAGS

flags.DEFINE_string("cardinalities", "kaggle",
                    "kaggle | terabyte | terabyte_mlperf | comma-separated table sizes.")
flags.DEFINE_bool("compare", False,
                  "Print one markdown table over full, hash, qr (c = 2, 4, 8; mult, add, concat)"
                  " and mixed_dim instead of one configuration.")
flags.DEFINE_string("report", None, "With --compare: also write the table as a docs page with"
                    " its provenance header (e.g. docs/embedding_sizes.md).")


def resolve_cardinalities(value: str):
  """(table sizes, Preset or None) from --cardinalities."""
  from jaxrec.models.size import PRESETS
  if value in PRESETS:
    return PRESETS[value].cardinalities, PRESETS[value]
  try:
    sizes = tuple(int(v) for v in value.split(","))
  except ValueError:
    raise FlagError(f"--cardinalities={value!r}: expected one of {sorted(PRESETS)} or"
                    " comma-separated integers") from None
  if not sizes or min(sizes) < 1:
    raise FlagError(f"--cardinalities={value!r}: table sizes must be positive")
  return sizes, None


def _architecture(preset):
  """(dim, bottom, top) from flags, falling back to the preset's for flags not given."""
  dim, bottom, top = (preset.dim, preset.bottom_mlp, preset.top_mlp) if preset else (None,) * 3
  dim = FLAGS.embedding_dim if FLAGS["embedding_dim"].present or dim is None else dim
  bottom = (parse_layers("bottom_mlp", FLAGS.bottom_mlp)
            if FLAGS["bottom_mlp"].present or bottom is None else bottom)
  top = parse_layers("top_mlp", FLAGS.top_mlp) if FLAGS["top_mlp"].present or top is None else top
  if FLAGS.interaction == "dot" and not FLAGS["bottom_mlp"].present and bottom[-1] != dim:
    bottom = tuple(bottom[:-1]) + (dim,)
  return dim, bottom, top


def main(argv):
  cli.check_no_arguments(argv)
  if FLAGS.report and not FLAGS.compare:
    print("error: --report writes the --compare table: pass --compare too", file=sys.stderr)
    sys.exit(2)
  from jaxrec.models.registry import ModelConfig, embedding_config_for
  from jaxrec.models.size import comparison_configs, model_size
  try:
    cardinalities, preset = resolve_cardinalities(FLAGS.cardinalities)
    dim, bottom, top = _architecture(preset)
    model_config = ModelConfig(name=FLAGS.model, bottom_mlp=bottom, top_mlp=top,
                               interaction=FLAGS.interaction,
                               self_interaction=FLAGS.interaction_itself)
    embedding = embedding_config_for(model_config,
                                     embedding_flags.embedding_config_from_flags(dim))
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
  lines = ["| embedding | embedding params | total params | MB (float32) | vs full |",
           "|---|---:|---:|---:|---:|"]
  for label, size in rows:
    lines.append(f"| {label} | {size['embedding_param_count']:,} | {size['param_count']:,} |"
                 f" {size['param_bytes'] / 1e6:,.1f} | {full / size['param_bytes']:.1f}x |")
  print("\n".join(lines))
  if FLAGS.report:
    from jaxrec import provenance
    intro = (f"{FLAGS.model} on {FLAGS.cardinalities if preset else 'given'} cardinalities"
             f" ({len(cardinalities)} tables, {sum(cardinalities):,} categories), d = {dim},"
             f" bottom {'-'.join(map(str, bottom))}, top {'-'.join(map(str, top))}: parameter"
             " counts from shapes (nothing is allocated). `hash` gets the bucket count that"
             " makes its tables as large as `qr c=4`.")
    provenance.write_report(FLAGS.report, "Embedding strategies: parameters and size",
                            intro + "\n\n" + "\n".join(lines))
    print(f"wrote {FLAGS.report}")


if __name__ == "__main__":
  cli.run(main)
