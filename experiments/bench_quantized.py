r"""Quantized serving against float32: artifact size, AUC on the real Criteo sample, and speed.

  python -m experiments.bench_quantized --output=docs/quantized_serving.md

For each --seeds, trains the default DLRM (bottom 13-512-256-64-16, top
512-256-1, d = 16) on the real 10k-row Criteo sample, exports it as float32 and
as each of --formats (`experiments.export --quantize`), and scores the test
split's raw rows through every artifact (`jaxrec.serving.predict`), so the AUC
change is measured on identical rows. A randomly initialised model with 26 x
100k tables (--large_tables) gives sizes and speed where the tables, not the
MLPs, dominate. Inference speed is timed on encoded inputs at --batch_sizes, in
--rounds rounds that call each artifact in turn, so every round yields a ratio
to float32 measured side by side; the page reports medians and ranges, and the
load average of each round (rounds above --max_load are flagged).

Writes the page --output (`jaxrec.provenance.write_report`) and its numbers as
JSON beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS

# (name, table format, kernel format): float32 first, the baseline.
FORMATS = {"float32": ("float32", "float32"), "int8": ("int8", "int8"),
           "int8-bf16mlp": ("int8", "bfloat16"), "int8-affine": ("int8-affine", "int8"),
           "int4": ("int4", "int8")}


def define_flags() -> None:
  """Defines the flags (only when run as a script, so importing this module is side-effect free)."""
  flags.DEFINE_string("output", "docs/quantized_serving.md", "Generated page to write.")
  flags.DEFINE_string("data", None, "Raw Criteo sample (default: ../shared/data/criteo/"
                      "criteo_kaggle_train_first10k.tsv beside the checkout).")
  flags.DEFINE_list("formats", ["int8", "int8-bf16mlp", "int8-affine", "int4"],
                    f"Quantized formats against float32: {', '.join(list(FORMATS)[1:])}.")
  flags.DEFINE_integer("seeds", 3, "Models trained on the real sample (seeds 0..N-1).")
  flags.DEFINE_integer("epochs", 1, "Training epochs on the real sample.")
  flags.DEFINE_list("batch_sizes", ["1", "128", "8192"], "Inference batch sizes timed.")
  flags.DEFINE_integer("rounds", 7, "Timing rounds (each calls every artifact in turn).")
  flags.DEFINE_float("seconds", 1.0, "Seconds of calls per artifact, batch size and round.")
  flags.DEFINE_bool("large_tables", True, "Also size and time a random 26 x 100k-table model.")
  flags.DEFINE_float("max_load", 2.5, "Flag timing rounds whose 1-minute load average exceeds it.")
  flags.DEFINE_string("work_dir", "", "Scratch directory (default: a temporary one).")


def load_average() -> float:
  with open("/proc/loadavg") as f:
    return float(f.read().split()[0])


def _quantize_config(name: str):
  from jaxrec.serving.quantize import QuantizeConfig
  return QuantizeConfig(*FORMATS[name])


def export_all(run, work_dir: str, tag: str, names) -> dict:
  """{format: (artifact path, file bytes, weight bytes)}."""
  from jaxrec.serving.export import export_run
  out = {}
  for name in names:
    path = os.path.join(work_dir, f"{tag}.{name}.npz")
    meta = export_run(run, path, platforms=("cpu",), quantize=_quantize_config(name))
    out[name] = (path, os.path.getsize(path), meta["weight_bytes"])
  return out


def train_on_sample(data: str, seed: int, epochs: int, work_dir: str):
  """(run directory, test TSV path) of the default DLRM trained on the real sample."""
  import numpy as np
  from jaxrec.data.preprocess import SplitAssigner
  from jaxrec.data.sources import DataConfig
  from jaxrec.train.loop import TrainConfig, train_and_evaluate
  workdir = os.path.join(work_dir, f"run{seed}")
  config = TrainConfig(data=DataConfig(source=data, cache_dir=os.path.join(work_dir, "cache")),
                       epochs=epochs, seed=seed, log_every=10_000)
  train_and_evaluate(config, workdir)
  with open(data, "rb") as f:
    lines = f.readlines()
  assigned = SplitAssigner(config.data.split_spec, [len(lines)], config.data.seed).assign(
      np.arange(len(lines)))
  test_tsv = os.path.join(work_dir, "test.tsv")
  with open(test_tsv, "wb") as f:
    f.writelines(lines[i] for i in np.flatnonzero(assigned == 2))
  return workdir, test_tsv


def quality(data: str, names, seeds: int, epochs: int, work_dir: str) -> list[dict]:
  """Per seed: {'seed', format: {'auc', 'logloss', 'file_bytes', 'weight_bytes'}}."""
  from jaxrec.serving import predict as predict_lib
  from jaxrec.serving.artifact import ServingModel
  from jaxrec.train.run_dir import load_run
  results = []
  for seed in range(seeds):
    workdir, test_tsv = train_on_sample(data, seed, epochs, work_dir)
    artifacts = export_all(load_run(workdir), work_dir, f"sample{seed}", names)
    record = {"seed": seed}
    for name, (path, file_bytes, weight_bytes) in artifacts.items():
      scorer = predict_lib.scorer_from_artifact(ServingModel.load(path), path)
      result = predict_lib.predict_file(scorer, test_tsv, os.path.join(work_dir, "probs.txt"),
                                        batch_size=1024)
      record[name] = {"auc": result.metrics["auc"], "logloss": result.metrics["logloss"],
                      "rows": result.rows, "file_bytes": file_bytes,
                      "weight_bytes": weight_bytes}
    print(f"seed {seed}: " + ", ".join(f"{n} AUC {record[n]['auc']:.5f}" for n in names))
    results.append(record)
  return results


def time_calls(model, dense, cat, seconds: float) -> float:
  """Examples/s of back-to-back `predict_async` calls for about `seconds` (compiled before)."""
  model.predict_async(dense, cat).block_until_ready()
  calls, start = 0, time.perf_counter()
  while True:
    model.predict_async(dense, cat).block_until_ready()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      return calls * len(dense) / elapsed


def speed(paths: dict[str, str], batch_sizes, rounds: int, seconds: float,
          max_load: float) -> dict:
  """{batch: [{'load', format: ex/s}, ...]}: rounds calling each artifact (by format) in turn."""
  import numpy as np
  from jaxrec.serving.artifact import ServingModel
  models = {name: ServingModel.load(path) for name, path in paths.items()}
  sizes = next(iter(models.values())).vocab_sizes
  rng = np.random.default_rng(0)
  out = {}
  for batch in batch_sizes:
    dense = rng.exponential(2.0, (batch, 13)).astype(np.float32)
    cat = np.stack([rng.integers(0, n, batch) for n in sizes], axis=1).astype(np.int32)
    out[batch] = []
    for r in range(rounds):
      order = list(models) if r % 2 == 0 else list(models)[::-1]  # alternate who goes first
      record = {"load": load_average()}
      for name in order:
        record[name] = time_calls(models[name], dense, cat, seconds)
      record["flagged"] = record["load"] > max_load
      out[batch].append(record)
      print(f"batch {batch} round {r + 1} (load {record['load']:.2f}): "
            + ", ".join(f"{n} {record[n]:,.0f} ex/s" for n in models))
  return out


def _ratio_cell(rounds: list[dict], name: str) -> str:
  ratios = [r[name] / r["float32"] for r in rounds]
  return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def speed_table(timing: dict, names) -> list[str]:
  lines = ["| batch | float32 ex/s (median) | " + " | ".join(f"{n} / float32" for n in names)
           + " | load averages |",
           "|---:|---:|" + "---:|" * len(names) + "---|"]
  for batch, rounds in timing.items():
    loads = ", ".join(f"{r['load']:.1f}{'*' if r['flagged'] else ''}" for r in rounds)
    lines.append(f"| {batch} | {statistics.median(r['float32'] for r in rounds):,.0f} | "
                 + " | ".join(_ratio_cell(rounds, n) for n in names) + f" | {loads} |")
  return lines


def render(results: dict) -> str:
  names = results["formats"]
  every = ["float32", *names]
  quality_rows = results["quality"]
  lines = ["Serving artifacts of the default DLRM (bottom 13-512-256-64-16, top 512-256-1,",
           "d = 16) stored as trained (float32) and quantized with `experiments.export",
           "--quantize` (`jaxrec.serving.quantize`). Embedding tables are quantized row by row:",
           "",
           "- `int8`: symmetric codes in [-127, 127] and one scale byte per row, an unsigned",
           "  8-bit float (5 exponent, 3 mantissa bits: `2**(e - 24) * (1 + m / 8)`) rounded up",
           "  from `max|x| / 127`, so a step is at most 12.5% coarser than the row's ideal",
           "  symmetric one. 17 bytes per 16-wide row against 64. The codes are stored four to a",
           "  uint32 word: serving gathers words, not bytes, and unpacks them with shifts.",
           "- `int8-affine` and `int4`: the DLRM reference's `--quantize-emb-with-bit=8|4`",
           "  layout, codes then a float16 scale and bias per row (min/max affine): 20 and 12",
           "  bytes per 16-wide row.",
           "",
           "Every value is within half a step of the trained one. Width-1 tables stay float32,",
           "network kernels are int8 (symmetric, one float32 scale per output column) or",
           "bfloat16, biases float32. Weights are stored uncompressed in the artifact (a zip);",
           "its other members (StableHLO, metadata, training vocabularies) are deflated at",
           "level 1, which halves the vocabularies' hashed keys and costs ~100 MB/s when",
           "exporting and ~250 MB/s when loading. Formats compared:", ""]
  for name in every:
    tables, mlp = FORMATS[name]
    lines.append(f"- `{name}`: tables {tables}, kernels {mlp}"
                 f" (`--quantize={'none' if tables == 'float32' else tables}"
                 f" --quantize_mlp={mlp}`)")
  lines += ["", "Export and score with them:", "", "```",
            "python -m experiments.export --checkpoint=runs/kaggle --output=dlrm.int8.npz"
            " --quantize=int8",
            "python -m experiments.predict --checkpoint=dlrm.int8.npz --input=day_23.gz"
            " --output=probs.txt",
            "```", "",
            "The loader (`jaxrec.serving.artifact.ServingModel`) dequantizes the network kernels"
            " once, with a second exported function stored in the artifact, and passes the"
            " stored tables to the exported inference function, which gathers the quantized"
            " rows each call needs and dequantizes only those.",
            "", "## Quality on the real Criteo sample", "",
            f"{results['config']['seeds']} models (seeds 0-{results['config']['seeds'] - 1},"
            f" {results['config']['epochs']} epoch(s) on the 8,000 training rows of the 10k-row"
            " Kaggle sample); each artifact scores the same"
            f" {quality_rows[0]['float32']['rows']:,} test rows from raw text. AUC change ="
            " quantized minus float32 (negative: a loss).", "",
            "| seed | float32 AUC | " + " | ".join(f"{n} ΔAUC" for n in names) + " |",
            "|---:|---:|" + "---:|" * len(names)]
  for r in quality_rows:
    lines.append(f"| {r['seed']} | {r['float32']['auc']:.5f} | "
                 + " | ".join(f"{r[n]['auc'] - r['float32']['auc']:+.5f}" for n in names) + " |")
  worst = {n: min(r[n]["auc"] - r["float32"]["auc"] for r in quality_rows) for n in names}
  lines += ["", "Worst AUC change: " + ", ".join(f"{n} {worst[n]:+.5f}" for n in names) + ".",
            "", "## Artifact size", "",
            "File bytes of the whole artifact (StableHLO, weights, and for the sample models the",
            "training vocabularies, which quantization leaves as they are), and of the"
            " weights; \"smaller\" is float32's bytes over the format's.", "",
            "| model | " + " | ".join(every) + " | " + " | ".join(f"{n} smaller" for n in names)
            + " |", "|---|" + "---:|" * (len(every) + len(names))]

  def size_rows(label, sizes):
    for what, index in (("file", 0), ("weights", 1)):
      base = sizes["float32"][index]
      lines.append(f"| {label}, {what} | " + " | ".join(f"{sizes[n][index] / 2**20:.2f} MiB"
                                                         for n in every) + " | "
                   + " | ".join(f"{base / sizes[n][index]:.2f}x" for n in names) + " |")

  seed0 = quality_rows[0]
  size_rows("real sample (seed 0)", {n: (seed0[n]["file_bytes"], seed0[n]["weight_bytes"])
                                     for n in every})
  if results.get("large_sizes"):
    size_rows("26 x 100k tables", results["large_sizes"])
  for label, key in (("real-sample model (seed 0)", "sample_speed"),
                     ("26 x 100k-table model", "large_speed")):
    if not results.get(key):
      continue
    lines += ["", f"## Inference speed: {label}", "",
              "Back-to-back calls of the loaded artifact on encoded inputs (`ServingModel."
              "predict_async`), each artifact in turn within a round; ratios are per round,"
              " median (min-max). Load averages of the rounds follow; `*` marks rounds above"
              f" {results['config']['max_load']}, whose ratios count but whose absolute rates"
              " mean little.", ""]
    lines += speed_table(results[key], names)
    if all(r["flagged"] for rounds in results[key].values() for r in rounds):
      lines += ["", "Every round ran on a loaded machine: these ratios are rough, and none of"
                " the speed figures above should be read as this CPU's."]
  return "\n".join(lines) + "\n"


def main(argv):
  cli.check_no_arguments(argv)
  unknown = [n for n in FLAGS.formats if n not in FORMATS or n == "float32"]
  if unknown:
    print(f"error: --formats: unknown {unknown}; choose from {list(FORMATS)[1:]}",
          file=sys.stderr)
    sys.exit(2)
  data = cli.existing_file("data", FLAGS.data)
  batch_sizes = cli.int_list("batch_sizes", FLAGS.batch_sizes)
  import jax
  from experiments.benchmark import table_sizes
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train import run_dir
  names = list(FLAGS.formats)
  every = ["float32", *names]
  with tempfile.TemporaryDirectory() as tmp:
    work_dir = FLAGS.work_dir or tmp
    os.makedirs(work_dir, exist_ok=True)
    results = {"config": {"seeds": FLAGS.seeds, "epochs": FLAGS.epochs, "rounds": FLAGS.rounds,
                          "seconds": FLAGS.seconds, "batch_sizes": batch_sizes,
                          "max_load": FLAGS.max_load, "data": os.path.basename(data)},
               "formats": names}
    results["quality"] = quality(data, every, FLAGS.seeds, FLAGS.epochs, work_dir)
    sample = {n: os.path.join(work_dir, f"sample0.{n}.npz") for n in every}
    results["sample_speed"] = speed(sample, batch_sizes, FLAGS.rounds, FLAGS.seconds,
                                    FLAGS.max_load)
    if FLAGS.large_tables:
      spec = run_dir.ModelSpec(ModelConfig(), EmbeddingConfig(),
                               table_sizes("100k"))
      model = spec.build()
      run = run_dir.Run(model=model, variables=model.init(jax.random.key(0)), spec=spec,
                        vocabulary=None, step=0, workdir=work_dir)
      large = export_all(run, work_dir, "large", every)
      del run
      results["large_sizes"] = {n: (f, w) for n, (_, f, w) in large.items()}
      results["large_speed"] = speed({n: p for n, (p, _, _) in large.items()}, batch_sizes,
                                     FLAGS.rounds, FLAGS.seconds, FLAGS.max_load)
  from jaxrec import provenance
  provenance.write_report(FLAGS.output, "Quantized serving: size, quality and speed",
                          render(results))
  json_path = os.path.splitext(FLAGS.output)[0] + ".json"
  with open(json_path, "w") as f:
    json.dump({**results, "machine": provenance.machine_record()}, f, indent=1,
              default=str)
  print(f"wrote {FLAGS.output} and {json_path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
