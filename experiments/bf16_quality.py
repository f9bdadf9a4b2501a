r"""Does bfloat16 compute cost quality? Test AUC of float32 and bfloat16 training, paired by seed.

  python -m experiments.bf16_quality --output=docs/bf16_quality.md

Trains the default DLRM (bottom 13-512-256-64-16, top 512-256-1, d = 16) with
`ModelConfig.compute_dtype` float32 and bfloat16 on the same data, split and
seed, for --seeds seeds, on the real 10k-row Criteo sample and on synthetic
data (`jaxrec.data.synthetic`, --synthetic_rows rows), and reports each pair's
test AUC and their difference: the evidence for (or against) bfloat16 as the
default on CPUs with bfloat16 units (the rule: every |ΔAUC| within
--tolerance).
"""

from __future__ import annotations

import os
import tempfile

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags (only when run as a script, so importing this module is side-effect free)."""
  flags.DEFINE_string("output", "docs/bf16_quality.md", "Generated page to write.")
  flags.DEFINE_string("data", None, "Raw Criteo sample (default: ../shared/data/criteo/"
                      "criteo_kaggle_train_first10k.tsv beside the checkout).")
  flags.DEFINE_integer("seeds", 3, "Seeds per dataset (0..N-1).")
  flags.DEFINE_integer("synthetic_rows", 50_000, "Rows of the synthetic dataset.")
  flags.DEFINE_integer("epochs", 1, "Training epochs.")
  flags.DEFINE_float("tolerance", 0.002, "The largest |ΔAUC| that counts as no change.")


def train_auc(source: str, compute_dtype: str, seed: int, epochs: int, synthetic_rows: int,
              work_dir: str) -> float:
  """Test AUC of the default DLRM trained with `compute_dtype`."""
  from jaxrec.data.sources import DataConfig
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train.loop import TrainConfig, train_and_evaluate
  data = DataConfig(source=source, synthetic_rows=synthetic_rows, seed=seed,
                    cache_dir=os.path.join(work_dir, "cache"))
  config = TrainConfig(model=ModelConfig(compute_dtype=compute_dtype), data=data,
                       epochs=epochs, seed=seed, log_every=100_000, checkpoint_every=-1)
  report = train_and_evaluate(config, os.path.join(work_dir, f"{compute_dtype}-{seed}"))
  return float(report["auc"])


def render(rows: list[dict], tolerance: float) -> str:
  lines = ["Test AUC of the default DLRM trained with float32 and with bfloat16 MLP matmuls"
           " (`--compute_dtype`), same data, split and seed in each pair.", "",
           "| data | seed | float32 AUC | bfloat16 AUC | ΔAUC |", "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['data']} | {r['seed']} | {r['float32']:.5f} | {r['bfloat16']:.5f} |"
                 f" {r['bfloat16'] - r['float32']:+.5f} |")
  worst = max(abs(r["bfloat16"] - r["float32"]) for r in rows)
  verdict = "within" if worst <= tolerance else "outside"
  lines += ["", f"Largest |ΔAUC|: {worst:.5f}, {verdict} ±{tolerance:g}."]
  return "\n".join(lines)


def main(argv):
  cli.check_no_arguments(argv)
  data = cli.existing_file("data", FLAGS.data)
  rows = []
  with tempfile.TemporaryDirectory() as work_dir:
    for label, source in (("real sample", data), ("synthetic", "synthetic")):
      for seed in range(FLAGS.seeds):
        row = {"data": label, "seed": seed}
        for dtype in ("float32", "bfloat16"):
          row[dtype] = train_auc(source, dtype, seed, FLAGS.epochs, FLAGS.synthetic_rows,
                                 work_dir)
        print(f"{label} seed {seed}: float32 {row['float32']:.5f}, bfloat16"
              f" {row['bfloat16']:.5f}")
        rows.append(row)
  from jaxrec import provenance
  provenance.write_report(FLAGS.output, "bfloat16 compute and quality", render(rows,
                                                                              FLAGS.tolerance))
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
