r"""Train and evaluate a CTR model.

  python -m experiments.train                      # DLRM on synthetic Criteo-like data
  python -m experiments.train --data=../shared/data/criteo/criteo_kaggle_train_first10k.tsv

Flags are validated here and turned into a frozen `TrainConfig`; the library
never reads them. Writes config.json, history.jsonl, metrics.json and
checkpoints/ to --output_dir, which one run at a time may use (run.lock).

SIGTERM or Ctrl-C stops the run after the current step group with a
checkpoint, prints the command that resumes it, and exits 143 / 130; a second
signal exits at once (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shlex
import sys

from absl import flags, logging

from experiments import cli
from experiments.cli import FlagError, parse_flags  # noqa: F401 (tests call train.parse_flags)

from experiments import embedding_flags  # defines --embedding, --hash_buckets, --qr_*, --md_*

FLAGS = flags.FLAGS

flags.DEFINE_string("model", "dlrm", "Model name (see jaxrec.models.MODELS).")
flags.DEFINE_string("data", "synthetic",
                    "'synthetic'; a directory written by experiments.preprocess; or raw Criteo"
                    " TSV / TSV.gz file(s) (comma-separated) or a directory of them, preprocessed"
                    " once into --cache_dir.")
flags.DEFINE_string("schema", "criteo", "Columns of raw --data and their encoding: a preset"
                    " (criteo, criteo_terabyte, avazu) or a JSON schema file (docs/datasets.md).")
# Many rows: the model selected on validation is the first epoch's (later ones over-fit).
flags.DEFINE_integer("synthetic_rows", 600_000, "Rows of the synthetic dataset.")
flags.DEFINE_integer("synthetic_max_vocab", 100_000,
                     "Cap on synthetic table sizes; 0 = real Kaggle cardinalities (33.8M rows).")
flags.DEFINE_integer("min_frequency", 2,
                     "Categorical values seen fewer times in train map to the OOV id.")
flags.DEFINE_list("split", ["0.8", "0.1", "0.1"],
                  "Train,validation,test fractions of a seeded random split (also"
                  " 'random:0.8,0.1,0.1'), or 'kaggle' / 'days' for raw inputs (see"
                  " experiments.preprocess).")
flags.DEFINE_enum("on_bad_row", "error", ["error", "skip"],
                  "Malformed raw lines: stop naming file, line and field, or skip and count them.")
flags.DEFINE_integer("max_rows_per_table", 0,
                     "Raw inputs: cap every table at N rows by hashing (0 = no cap).")
flags.DEFINE_string("cache_dir", None,
                    "Where raw --data files are preprocessed (default $JAXREC_CACHE_DIR or"
                    " ~/.cache/jaxrec).")
flags.DEFINE_integer("epochs", 8, "Passes over the training split (an upper bound with"
                     " --early_stopping_patience).")
flags.DEFINE_integer("max_steps", 0, "Stop after this many steps (0 = all epochs).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 8192, "Evaluation batch size.")
flags.DEFINE_float("learning_rate", None,
                   "Learning rate of the dense parameters (default: 0.1 for sgd, 0.001 for"
                   " adam, 0.01 for adagrad).")
flags.DEFINE_enum("optimizer", None, ["sgd", "adam", "adagrad"],
                  "Dense-parameter optimizer (default: the model's — sgd for the DLRM family"
                  " as in the reference, adam for deepfm and dcnv2 as in their papers).")
flags.DEFINE_enum("embedding_optimizer", "auto", ["auto", "sgd", "rowwise_adagrad"],
                  "Sparse table optimizer; auto = sgd with --optimizer=sgd, else rowwise_adagrad.")
flags.DEFINE_float("embedding_learning_rate", 0.0,
                   "Table learning rate (0 = --learning_rate when given, else the optimizer's"
                   " default table rate: 0.02 for adagrad, the dense rate otherwise).")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "warmup_decay", "warmup_cosine"],
                  "Learning-rate schedule of dense and table rates alike: warmup_decay is the DLRM"
                  " reference's (linear warm-up, then polynomial decay from --decay_start_step);"
                  " warmup_cosine decays to 0 over --decay_steps (0 = to the end).")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps of --lr_schedule.")
flags.DEFINE_integer("decay_start_step", 0, "--lr_schedule=warmup_decay: first decayed step.")
flags.DEFINE_integer("decay_steps", 0, "Decay length in steps (warmup_decay: 0 = no decay;"
                     " warmup_cosine: 0 = to the end of training).")
flags.DEFINE_float("negative_sampling_rate", 1.0,
                   "Keep each negative training row with this probability (every positive is"
                   " kept; seeded by --seed); predictions are corrected to"
                   " p / (p + (1 - p) / rate) in evaluation, export and serving.")
flags.DEFINE_integer("embedding_dim", 16, "Embedding dimension d.")
flags.DEFINE_string("bottom_mlp", "512-256-64-16", "Bottom MLP layer sizes, dash-separated.")
flags.DEFINE_string("top_mlp", "512-256-1", "Top MLP layer sizes, dash-separated (ends in 1).")
flags.DEFINE_enum("interaction", "dot", ["dot", "cat"], "DLRM feature interaction.")
flags.DEFINE_bool("interaction_itself", False, "Include self dot products (reference option).")
flags.DEFINE_enum("compute_dtype", "auto", ["auto", "float32", "bfloat16"],
                  "MLP matmul dtype (operands; products accumulate in float32). auto: bfloat16 on"
                  " GPUs and on CPUs with bfloat16 units (AMX, AVX512-BF16), else float32;"
                  " --resume keeps the run's.")
flags.DEFINE_bool("cpu_kernels", True, "On a CPU backend, run the pairwise layers (dot"
                  " interaction, AFM attention) as fused C++ kernels (jaxrec.kernels.cpu);"
                  " false = their XLA formulation.")
flags.DEFINE_integer("attention_factor", 16, "AFM attention network size t (afm, afm_classic).")
flags.DEFINE_float("dropout", 0.5,
                   "Dropout on the AFM/FM pooled pairwise layer (afm, afm_classic, fm).")
flags.DEFINE_float("attention_l2", 0.0, "L2 weight on the AFM attention kernel W (0 = off).")
flags.DEFINE_integer("cross_layers", 3, "DCN-V2 cross layers (dcnv2, dlrm_dcn).")
flags.DEFINE_integer("cross_rank", 0, "Rank of the cross kernels (0 = full; dcnv2, dlrm_dcn).")
flags.DEFINE_enum("dcn_structure", "stacked", ["stacked", "parallel"],
                  "dcnv2: cross network then deep MLP, or the two side by side.")
flags.DEFINE_string("deep_mlp", "512-256-64", "Deep network hidden sizes (deepfm, dcnv2).")
flags.DEFINE_bool("attention_heatmap", False,
                  "afm/afm_classic: write the mean test-split attention per field pair to"
                  " <output_dir>/attention_heatmap.png and attention.json.")
flags.DEFINE_integer("seed", 0, "Seed of init, data, split and dropout.")
flags.DEFINE_enum("select_metric", "logloss", ["logloss", "auc", "last"],
                  "Validation metric that selects the reported model: its best evaluation is"
                  " checkpointed (kept beside the latest ones) and tested, exported and served;"
                  " last = no selection, the final model.")
flags.DEFINE_integer("early_stopping_patience", 2,
                     "Stop after N validation evaluations without a better --select_metric"
                     " (--epochs becomes an upper bound); 0 = train all epochs.")
flags.DEFINE_integer("eval_every", 0, "Evaluate on validation every N steps (0 = each epoch).")
flags.DEFINE_integer("log_every", 100, "Log loss, learning rate and throughput every N steps"
                     " (history.jsonl and TensorBoard).")
flags.DEFINE_string("tensorboard_dir", None, "TensorBoard event files (default: --output_dir;"
                    " '' = none). View with: tensorboard --logdir=DIR.")
flags.DEFINE_integer("checkpoint_every", 0, "Checkpoint every N steps (0 = each epoch).")
flags.DEFINE_integer("steps_per_call", 1,
                     "Train steps per jitted call (a lax.scan over that many batches; the same"
                     " updates, one dispatch: pays at small batches).")
flags.DEFINE_float("rank_fraction", 0.0,
                   "Low-rank factorization of the Dense layers at this parameter fraction p"
                   " (rank r < p*m*n/(m+n)); 0 = dense. Alone it implies --factorize=before.")
flags.DEFINE_enum("factorize", None, ["before", "svd", "nmf", "auto"],
                  "before: train factors from scratch; svd / nmf: factorize after training;"
                  " auto: per-layer rank from --auto_tolerance or --auto_energy, then SVD.")
flags.DEFINE_integer("finetune_epochs", 0, "Epochs of training after --factorize=svd|nmf|auto.")
flags.DEFINE_float("auto_tolerance", 1e-3,
                   "--factorize=auto: keep validation logloss within this of the dense model.")
flags.DEFINE_float("auto_energy", 0.0,
                   "--factorize=auto: if > 0, keep this share of each kernel's spectral energy"
                   " instead (no evaluation).")
flags.DEFINE_integer("nmf_iterations", 300, "Multiplicative-update iterations per NMF.")
flags.DEFINE_string("output_dir", None, "Run directory (default: runs/<model>-<timestamp>).")
flags.DEFINE_string("profile_dir", None,
                    "Write a JAX profiler trace of the run here (use with a small --max_steps;"
                    " open with TensorBoard's profile plugin or ui.perfetto.dev).")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --output_dir.")
flags.DEFINE_string("mesh", "", "Train on a device mesh 'data:N,model:M': batches split over"
                    " all N*M devices, embedding rows split over M (empty = one device).")
flags.DEFINE_float("device_memory_gb", 0.0, "Memory of one device in GiB for the check, before"
                   " anything is allocated, that the train state fits (0 = what the platform"
                   " reports; CPUs report nothing).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0"
                    " (calls jax.distributed.initialize; every process runs the same command).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
flags.DEFINE_enum("on_nonfinite", "stop", ["stop", "skip"],
                  "A NaN/Inf loss or gradient: stop naming the step (the last good checkpoint is"
                  " kept), or skip the batch and count it (metrics.json:"
                  " skipped_nonfinite_batches).")

# ModelConfig fields whose flag has another name (kept: the README and issues use them).
MODEL_FLAG_ALIASES = {"name": "model", "self_interaction": "interaction_itself"}


def _define_model_flags() -> None:
  """A flag for every registered model's config field that has no hand-written one, so a
  model added to the registry is configurable from the command line (e.g. autoint's
  --attention_heads). Types: int, float, bool, str; tuples as dash-separated integers;
  `int | None` as an integer with 0 = None."""
  from jaxrec.models import registry
  for field in dataclasses.fields(registry.ModelConfig):
    name = MODEL_FLAG_ALIASES.get(field.name, field.name)
    if name in FLAGS:
      continue
    users = ", ".join(e.name for e in registry.MODELS.values()
                      if field.name in {f.name for f in dataclasses.fields(e.config)})
    help_text = f"Model config field {field.name} ({users})."
    kind = str(field.type)
    if kind.startswith("tuple"):
      flags.DEFINE_string(name, "-".join(map(str, field.default)), help_text + " Dash-separated.")
    elif kind == "bool":
      flags.DEFINE_bool(name, field.default, help_text)
    elif kind.startswith("int"):
      flags.DEFINE_integer(name, field.default or 0, help_text + (
          " 0 = None." if kind.endswith("| None") else ""))
    elif kind == "float":
      flags.DEFINE_float(name, field.default, help_text)
    else:
      flags.DEFINE_string(name, field.default, help_text)


_define_model_flags()


def parse_layers(name: str, value: str) -> tuple[int, ...]:
  try:
    sizes = tuple(int(v) for v in value.split("-"))
  except ValueError:
    raise FlagError(
        f"--{name}={value!r}: expected dash-separated integers like 512-256-1") from None
  if not sizes or any(s < 1 for s in sizes):
    raise FlagError(f"--{name}={value!r}: layer sizes must be positive")
  return sizes


def parse_mesh(text: str, batch_size: int):
  """--mesh -> MeshConfig (None when empty); the batch must split over its devices."""
  from jaxrec.train.sharding import MeshConfig, MeshError
  if not text:
    return None
  try:
    mesh = MeshConfig.parse(text)
  except MeshError as e:
    raise FlagError(f"--mesh: {e}") from None
  if batch_size % mesh.num_devices:
    raise FlagError(f"--batch_size={batch_size} must be a multiple of the {mesh.num_devices}"
                    f" devices of --mesh={text}")
  return mesh


def init_distributed() -> None:
  """jax.distributed.initialize from the multi-host flags (before any device is used)."""
  given = [FLAGS.coordinator_address is not None, FLAGS.num_processes is not None,
           FLAGS.process_id is not None]
  if not any(given):
    return
  if not all(given):
    raise FlagError("multi-host runs need all of --coordinator_address, --num_processes and"
                    " --process_id")
  if not 0 <= FLAGS.process_id < FLAGS.num_processes:
    raise FlagError(f"--process_id={FLAGS.process_id}: must be in [0, --num_processes="
                    f"{FLAGS.num_processes})")
  if not FLAGS.mesh:
    raise FlagError("multi-host runs need --mesh (covering every process's devices)")
  import jax
  jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def schema_from_flag(spec: str):
  """--schema -> Schema; a bad preset name or schema file is a one-line FlagError."""
  from jaxrec.data import schema as schema_lib
  try:
    return schema_lib.load(spec)
  except schema_lib.SchemaError as e:
    raise FlagError(f"--schema: {e}") from None


def max_rows_from_flag(schema_spec: str, max_rows: int) -> int | None:
  """--max_rows_per_table, else the preset's cap (criteo_terabyte: MLPerf's 40M), else None."""
  from jaxrec.data import schema as schema_lib
  return max_rows or schema_lib.PRESET_MAX_ROWS.get(schema_spec)


def config_from_flags():
  """Validated flags -> TrainConfig. Raises FlagError with a one-line message."""
  from jaxrec.data.sources import DataConfig
  from jaxrec.models.registry import (DEFAULT_EMBEDDING_LEARNING_RATE, DEFAULT_LEARNING_RATE,
                                      MODELS, default_optimizer)
  from jaxrec.train.loop import TrainConfig

  if FLAGS.model not in MODELS:
    raise FlagError(f"--model={FLAGS.model!r}: unknown model; choose from {', '.join(MODELS)}")
  if FLAGS.data != "synthetic":
    for path in FLAGS.data.split(","):
      if not os.path.exists(path):
        raise FlagError(f"--data={FLAGS.data!r}: no such file or directory: {path}")
  for name in ("epochs", "batch_size", "eval_batch_size", "embedding_dim", "log_every",
               "synthetic_rows", "min_frequency", "steps_per_call"):
    if getattr(FLAGS, name) < 1:
      raise FlagError(f"--{name}={getattr(FLAGS, name)}: must be >= 1")
  if FLAGS.max_rows_per_table == 1:
    raise FlagError("--max_rows_per_table=1: must be 0 (no cap) or >= 2")
  if FLAGS.device_memory_gb < 0:
    raise FlagError(f"--device_memory_gb={FLAGS.device_memory_gb}: must be >= 0 (0: the"
                    " platform's figure)")
  for name in ("eval_every", "checkpoint_every", "max_steps", "synthetic_max_vocab",
               "max_rows_per_table", "early_stopping_patience"):
    if getattr(FLAGS, name) < 0:
      raise FlagError(f"--{name}={getattr(FLAGS, name)}: must be >= 0")
  optimizer, learning_rate = default_optimizer(FLAGS.model)
  if FLAGS.optimizer is not None:
    optimizer, learning_rate = FLAGS.optimizer, DEFAULT_LEARNING_RATE[FLAGS.optimizer]
  embedding_learning_rate = FLAGS.embedding_learning_rate or None
  if FLAGS.learning_rate is not None:
    learning_rate = FLAGS.learning_rate
  elif embedding_learning_rate is None and FLAGS.embedding_optimizer != "sgd":
    embedding_learning_rate = DEFAULT_EMBEDDING_LEARNING_RATE.get(optimizer)
  if not (math.isfinite(learning_rate) and math.isfinite(FLAGS.embedding_learning_rate)) \
      or learning_rate <= 0 or FLAGS.embedding_learning_rate < 0:
    raise FlagError("--learning_rate must be > 0 and --embedding_learning_rate >= 0 (finite)")
  if not 0.0 < FLAGS.negative_sampling_rate <= 1.0:
    raise FlagError(f"--negative_sampling_rate={FLAGS.negative_sampling_rate}: must be in (0, 1]")
  from jaxrec.train.schedules import ScheduleConfig
  from jaxrec.train.selection import Selection
  patience = FLAGS.early_stopping_patience  # the default stops nothing under "last"
  if FLAGS.select_metric == "last" and not FLAGS["early_stopping_patience"].present:
    patience = 0
  try:
    Selection(FLAGS.select_metric, max(patience, 0))
  except ValueError as e:
    raise FlagError(f"--{e}") from None
  lr_schedule = ScheduleConfig(FLAGS.lr_schedule, FLAGS.warmup_steps, FLAGS.decay_start_step,
                               FLAGS.decay_steps)
  try:
    lr_schedule.validate()
  except ValueError as e:
    raise FlagError(f"--{e}") from None
  split_mode, split_values = "random", list(FLAGS.split)
  if split_values and split_values[0].startswith("random:"):
    split_values[0] = split_values[0][len("random:"):]
  if split_values in (["kaggle"], ["days"]):
    split_mode, split_values = split_values[0], ["0.8", "0.1", "0.1"]
    if FLAGS.data == "synthetic":
      raise FlagError(f"--split={split_mode} needs raw Criteo --data (synthetic data splits"
                      " randomly)")
    if split_mode == "days" and "," not in FLAGS.data and os.path.isfile(FLAGS.data):
      raise FlagError("--split=days needs several day files in --data (the last is held out)")
  try:
    split = tuple(float(s) for s in split_values)
  except ValueError:
    raise FlagError(f"--split={','.join(FLAGS.split)}: expected three fractions") from None
  if (len(split) != 3 or not all(map(math.isfinite, split)) or any(s < 0 for s in split)
      or abs(sum(split) - 1) > 1e-6 or split[0] == 0):
    raise FlagError(f"--split={','.join(FLAGS.split)}: need three non-negative fractions"
                    " summing to 1 with a non-empty train split")
  if FLAGS.attention_heatmap and FLAGS.model not in ("afm", "afm_classic"):
    raise FlagError(f"--attention_heatmap: --model={FLAGS.model} has no learned attention"
                    " (use afm or afm_classic)")
  if FLAGS.resume and not FLAGS.output_dir:
    raise FlagError("--resume needs --output_dir (the run to continue)")
  mesh = parse_mesh(FLAGS.mesh, FLAGS.batch_size)
  check_output_dir(FLAGS.output_dir, FLAGS.resume)

  factorize = factorize_from_flags()

  schema = schema_from_flag(FLAGS.schema)
  data = DataConfig(source=FLAGS.data, schema=schema, synthetic_rows=FLAGS.synthetic_rows,
                    synthetic_max_vocab=FLAGS.synthetic_max_vocab or None,
                    min_frequency=FLAGS.min_frequency, split=split, seed=FLAGS.seed,
                    split_mode=split_mode, on_bad_row=FLAGS.on_bad_row,
                    max_rows_per_table=max_rows_from_flag(FLAGS.schema, FLAGS.max_rows_per_table),
                    cache_dir=FLAGS.cache_dir)
  model, embedding = model_and_embedding_from_flags()
  return TrainConfig(
      model=model, embedding=embedding, data=data, optimizer=optimizer,
      learning_rate=learning_rate, embedding_optimizer=FLAGS.embedding_optimizer,
      embedding_learning_rate=embedding_learning_rate, lr_schedule=lr_schedule,
      negative_sampling_rate=FLAGS.negative_sampling_rate,
      batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.eval_batch_size, epochs=FLAGS.epochs,
      max_steps=FLAGS.max_steps or None, eval_every=FLAGS.eval_every, log_every=FLAGS.log_every,
      checkpoint_every=FLAGS.checkpoint_every, seed=FLAGS.seed,
      tensorboard_dir=FLAGS.tensorboard_dir, select_metric=FLAGS.select_metric,
      early_stopping_patience=patience, factorize=factorize, mesh=mesh,
      on_nonfinite=FLAGS.on_nonfinite, steps_per_call=FLAGS.steps_per_call,
      device_memory_gb=FLAGS.device_memory_gb or None)


def _model_flag_value(field):
  """The flag value of ModelConfig field `field`, converted to the field's type."""
  value = getattr(FLAGS, MODEL_FLAG_ALIASES.get(field.name, field.name))
  if field.name == "cpu_kernels":
    return None if value else False  # --cpu_kernels: where they run / never
  if field.name == "compute_dtype" and value == "auto":
    from jaxrec.models.registry import resolve_compute_dtype
    return _saved_compute_dtype() or resolve_compute_dtype(value)
  if str(field.type).startswith("tuple"):
    return parse_layers(field.name, value)
  if str(field.type).endswith("| None"):
    return value or None  # 0 = None (e.g. --cross_rank=0: full rank)
  return value


def _saved_compute_dtype() -> str | None:
  """With --resume, the compute dtype the run was started with (so that "auto" on another
  machine continues it as it trained), else None."""
  path = os.path.join(FLAGS.output_dir or "", "config.json")
  if not (FLAGS.resume and os.path.exists(path)):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f).get("model", {}).get("compute_dtype")
  except (OSError, ValueError, AttributeError):
    return None  # the resume check reports a damaged run directory


def model_and_embedding_from_flags():
  """ModelConfig and EmbeddingConfig from the flags, validated by the configs and by building
  the network abstractly (jax.eval_shape, before any data is read)."""
  import jax
  from jaxrec.models.ctr_model import CTRModel
  from jaxrec.models.registry import ModelConfig, embedding_config_for

  fields = dataclasses.fields(ModelConfig)
  try:
    model = ModelConfig(**{f.name: _model_flag_value(f) for f in fields})
    embedding = embedding_config_for(
        model, embedding_flags.embedding_config_from_flags(FLAGS.embedding_dim))
    network = CTRModel.create(model, embedding, (2,) * 26)
    jax.eval_shape(network.init, jax.random.key(0))
  except ValueError as e:
    first = str(e).split(" ", 1)[0]
    named = {f.name for f in fields}
    flag = MODEL_FLAG_ALIASES.get(first, first) if first in named else f"model={FLAGS.model}"
    raise FlagError(f"--{flag}: {e}") from None
  return model, embedding


def factorize_from_flags():
  """--rank_fraction / --factorize / ... -> FactorizeConfig, or None for a dense run."""
  from jaxrec.factorize import FactorizeConfig

  method = FLAGS.factorize
  fraction = FLAGS.rank_fraction
  if not 0.0 <= fraction <= 1.0:
    raise FlagError(f"--rank_fraction={fraction}: must be in (0, 1] (0 = dense)")
  if method is None and fraction > 0:
    method = "before"
  if method is None:
    if FLAGS.finetune_epochs:
      raise FlagError("--finetune_epochs needs --factorize=svd|nmf|auto")
    return None
  if method in ("before", "svd", "nmf") and fraction == 0:
    raise FlagError(f"--factorize={method} needs --rank_fraction in (0, 1]")
  if FLAGS.finetune_epochs < 0:
    raise FlagError(f"--finetune_epochs={FLAGS.finetune_epochs}: must be >= 0")
  if FLAGS.finetune_epochs and method == "before":
    raise FlagError("--finetune_epochs applies after --factorize=svd|nmf|auto"
                    " (with before, train longer with --epochs)")
  if FLAGS.auto_tolerance < 0 or not 0.0 <= FLAGS.auto_energy <= 1.0:
    raise FlagError("--auto_tolerance must be >= 0 and --auto_energy in [0, 1]")
  if FLAGS.nmf_iterations < 1:
    raise FlagError(f"--nmf_iterations={FLAGS.nmf_iterations}: must be >= 1")
  return FactorizeConfig(method=method, rank_fraction=fraction or 1.0,
                         finetune_epochs=FLAGS.finetune_epochs,
                         auto_tolerance=FLAGS.auto_tolerance, auto_energy=FLAGS.auto_energy,
                         nmf_iterations=FLAGS.nmf_iterations, seed=FLAGS.seed)


def check_output_dir(output_dir: str | None, resume: bool) -> None:
  """A run directory must be new, or resumed: never silently mixed with an old run."""
  if not output_dir or not os.path.exists(output_dir):
    return
  if not os.path.isdir(output_dir):
    raise FlagError(f"--output_dir={output_dir}: exists and is not a directory")
  checkpoints = os.path.join(output_dir, "checkpoints")
  steps = [d for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
  if steps and not resume:
    raise FlagError(f"--output_dir={output_dir} already holds a run (checkpoint at step"
                    f" {max(map(int, steps))}); pass --resume to continue it or choose a new"
                    " --output_dir")


def summary(metrics: dict, output_dir: str) -> str:
  lines = [
      f"{metrics['model']} on {metrics['num_train_examples']:,} train rows,"
      f" evaluated on all {metrics['num_eval_examples']:,} test rows:",
      f"  AUC       {metrics['auc']:.4f}",
      f"  logloss   {metrics['logloss']:.4f}"
      f"   (constant predictor {metrics['baseline_logloss']:.4f},"
      f" normalized entropy {metrics['normalized_entropy']:.4f})",
      f"  accuracy  {metrics['accuracy']:.4f}"
      f"   (constant predictor {metrics['baseline_accuracy']:.4f})",
      f"  calibration {metrics['calibration']:.4f} (mean prediction / click rate)",
  ]
  if "bayes_auc" in metrics:
    lines.append(f"  teacher (Bayes-optimal): AUC {metrics['bayes_auc']:.4f},"
                 f" logloss {metrics['bayes_logloss']:.4f}; AUC / Bayes AUC"
                 f" {metrics['auc_over_bayes']:.4f}")
  lines += [
      f"  params    {metrics['param_count']:,} ({metrics['param_bytes'] / 2**20:.1f} MiB;"
      f" {metrics['embedding_param_count']:,} in embeddings)",
      f"  training  {metrics['train_seconds']:.1f} s, {metrics['train_examples_per_sec']:,.0f}"
      f" examples/s; inference {metrics['eval_examples_per_sec']:,.0f} examples/s"
      f" ({metrics['inference_examples_per_sec']:,.0f} at batch 8192)",
  ]
  if metrics.get("best_step") is not None:
    lines.append(f"  selected  step {metrics['best_step']} of {metrics['steps']} (best validation"
                 f" {metrics['select_metric']}"
                 f"{', stopped early' if metrics['stopped_early'] else ''})")
  if metrics.get("factorize", "none") != "none":
    ranks = ", ".join(f"{k} {'dense' if r is None else r}"
                      for k, r in metrics["layer_ranks"].items())
    lines.append(f"  factorize {metrics['factorize']}: {metrics['dense_param_count']:,} network"
                 f" params; ranks {ranks}")
    if "prefactorize_auc" in metrics:
      lines.append(f"  dense model before factorizing: AUC {metrics['prefactorize_auc']:.4f},"
                   f" logloss {metrics['prefactorize_logloss']:.4f}")
  lines += [
      f"  wrote {os.path.join(output_dir, 'metrics.json')}",
  ]
  return "\n".join(lines)


def _maybe_profile(profile_dir: str | None):
  """A JAX profiler trace of the block (TensorBoard/Perfetto), or nothing."""
  if not profile_dir:
    return contextlib.nullcontext()
  import jax
  return jax.profiler.trace(profile_dir, create_perfetto_trace=True)


RUN_LOCK = "run.lock"


def resume_command(output_dir: str, argv: list[str]) -> str:
  """The command line that continues this run: its flags, --output_dir and --resume."""
  kept, args = [], iter(argv[1:])
  for arg in args:
    name = arg.split("=")[0].lstrip("-")
    if name in ("output_dir", "resume", "noresume"):
      if arg.lstrip("-") == "output_dir":  # "--output_dir DIR": the value is the next word
        next(args, None)
      continue
    kept.append(arg)
  return shlex.join(["python", "-m", "experiments.train", *kept,
                     f"--output_dir={output_dir}", "--resume"])


def _run_lock(output_dir: str):
  """One run per output directory (process 0 of a multi-host run takes it)."""
  from jaxrec import locking
  if FLAGS.process_id:
    return contextlib.nullcontext()
  return locking.hold(os.path.join(output_dir, RUN_LOCK), wait=0,
                      report=lambda msg: logging.warning("%s", msg))


def main(argv):
  from jaxrec.train import preemption
  with preemption.StopSignals() as stop:
    try:
      _main(argv, stop)
    except preemption.Interrupted as e:  # outside the steps: nothing to finish
      print(f"\n{e}; exiting", file=sys.stderr)
      sys.exit(preemption.exit_code(e.signum))


def _main(argv, stop):
  from jaxrec import locking
  from jaxrec.train import preemption
  cli.check_no_arguments(argv)
  try:
    config = config_from_flags()
    init_distributed()
  except FlagError as e:
    cli.fail(e)
  output_dir = FLAGS.output_dir or os.path.join(
      "runs", f"{FLAGS.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
  try:
    with _run_lock(output_dir):
      _train(config, output_dir, stop)
  except locking.LockedError as e:
    holder = locking.describe(e.owner) if e.owner else "owner unknown"
    cli.fail(f"--output_dir={output_dir} is in use by another run ({holder}); wait for it"
             " to end or choose another --output_dir")
  except preemption.Stopped as e:
    how = ("resume with:\n  " + resume_command(output_dir, sys.argv)
           if e.checkpoint_step is not None else "the run cannot be resumed")
    print(f"{e}; {how}", file=sys.stderr)
    sys.exit(preemption.exit_code(e.signum))
  except preemption.Interrupted as e:  # before or after the steps: nothing to finish
    checkpoints = os.path.join(output_dir, "checkpoints")
    resumable = os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))
    how = (f"resume with:\n  {resume_command(output_dir, sys.argv)}" if resumable
           else "no checkpoint was written")
    print(f"\n{e} outside the training steps; {how}", file=sys.stderr)
    sys.exit(preemption.exit_code(e.signum))


def _train(config, output_dir: str, stop) -> None:
  from experiments.debug_hooks import debug_hook_from_env
  from jaxrec.data.criteo import CriteoFormatError
  from jaxrec.train.faults import NonFiniteError, NonFiniteParamsError
  from jaxrec.train.loop import ResumeError, train_and_evaluate
  from jaxrec.train.checkpoint import CheckpointError
  from jaxrec.train.sharding import MeshError
  from jaxrec.data.sources import PreprocessWaitError
  on_end = None
  if FLAGS.attention_heatmap:
    from experiments.attention_heatmap import write_attention_report
    on_end = lambda model, variables, splits: write_attention_report(
        model, variables, splits.test, output_dir, config.eval_batch_size)
  try:
    with _maybe_profile(FLAGS.profile_dir):
      metrics = train_and_evaluate(config, output_dir, resume=FLAGS.resume, on_end=on_end,
                                   on_event=debug_hook_from_env(), stop=stop)
  except (CriteoFormatError, ResumeError, MeshError, PreprocessWaitError, CheckpointError) as e:
    cli.fail(e)
  except (NonFiniteError, NonFiniteParamsError) as e:  # not a usage error: exit code 1
    cli.fail(e, code=1)
  print(summary(metrics, output_dir))


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  cli.run(main)
