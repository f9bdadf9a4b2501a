r"""Training and inference throughput of the DLRM Criteo configuration (and friends).

  python -m experiments.benchmark --output_dir=runs/bench            # full suite
  python -m experiments.benchmark --output_dir=runs/bench --quick    # < 2 minutes

Measures the machine's float32 matmul peak, then examples/s of the jitted train
step (sparse SGD, state donated) and of inference for bottom 13-512-256-64-16,
d = 16, dot interaction, top 512-256-1, at batch 128 / 2048 / 8192, with 26 x
100k tables and with the real Criteo Kaggle cardinalities (33.8M rows, 2.2 GB).
AFM, DeepFM, DCN-V2 and DLRM-DCNv2 (`--models`, with their `ModelConfig`
defaults; names not in `jaxrec.models.MODELS` are skipped) and
`rank_fraction` 0.5 (SVD via `jaxrec.factorize`, when present) run beside DLRM;
missing ones are skipped with a message. Inputs are deterministic synthetic
batches with Zipf-skewed ids, generated and moved to the device before timing.

Prints a table and writes DIR/benchmark.json, a list of records with keys
workload, model, batch_size, tables, rank_fraction, examples_per_sec,
compile_seconds, peak_rss_bytes, flops_per_example, fraction_of_peak, device
(plus a few extras: compiles, peak_flops_per_sec, loadavg, ratio_to_dlrm,
host_cpu / host_cpu_count / host_cpu_features, ...).
``ratio_to_dlrm`` is a record's rate over dense DLRM's at the same workload,
batch and tables; with `--interleave` all variants of a table set are built at
once and their timed windows alternate, so it is the median of paired
window-by-window ratios (range in ``ratio_to_dlrm_range``).
``flops_per_example`` counts the matmuls of the traced step (forward and
backward for training); ``fraction_of_peak`` = flops_per_example x
examples_per_sec / measured matmul peak (in `--compute_dtype`). ``peak_rss_bytes``
is the process's resident-set high-water mark during the record (reset before each
record where Linux allows, else the process peak so far). `--profile_dir` writes one JAX
profiler trace per record (a few steps each); open it with TensorBoard's
profile plugin or https://ui.perfetto.dev (see README). `--steps_per_call=K` times
`jaxrec.train.step.make_multi_train_step` (K steps per jitted call, a `lax.scan`) in
place of one step per call; records say `steps_per_call`. ``cpu_kernels`` says
whether the pairwise layers ran as the fused C++ kernels of `jaxrec.kernels.cpu`
(the default on a CPU backend; `--cpu_kernels=false` times their XLA formulation).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import sys
import time

from absl import flags

from experiments import cli
from experiments.cli import FlagError

from jaxrec import provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags (only when run as a script, so importing this module is side-effect free)."""
  flags.DEFINE_string("output_dir", None, "Directory for benchmark.json.")
  flags.DEFINE_bool("quick", False, "Small run (dlrm, its rank-0.5 svd and afm; 26x100k tables;"
                    " batch 128 and 2048; short windows): under 2 minutes on 2 CPU cores.")
  flags.DEFINE_string("profile_dir", None, "Write a JAX profiler trace per record here.")
  from jaxrec.models.registry import MODELS
  flags.DEFINE_list("models", list(MODELS),
                    "Models to run (default: every registered model; unregistered names are"
                    " skipped).")
  flags.DEFINE_list("rank_fractions", ["1.0", "0.5"],
                    "DLRM rank fractions (1.0 = dense; others need jaxrec.factorize).")
  flags.DEFINE_list("batch_sizes", ["128", "2048", "8192"], "Batch sizes.")
  flags.DEFINE_list("tables", ["100k", "kaggle"], "Table sets: 100k (26 x 100,000 rows) and/or"
                    " kaggle (real Criteo Kaggle cardinalities, 33.8M rows).")
  flags.DEFINE_list("workloads", ["train", "inference"], "Workloads to time.")
  flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "MLP matmul dtype.")
  flags.DEFINE_float("min_seconds", 2.0, "Length of each timed window.")
  flags.DEFINE_integer("repeats", 3, "Timed windows per record (the median is reported).")
  flags.DEFINE_bool("interleave", False, "Build every variant of a table set at once and"
                    " alternate their timed windows (paired ratios to DLRM; needs memory for"
                    " all their tables together).")
  flags.DEFINE_integer("num_batches", 8, "Distinct pre-generated batches cycled through.")
  flags.DEFINE_integer("steps_per_call", 1, "Training steps per jitted call (a lax.scan over"
                       " that many batches: one dispatch for several steps).")
  flags.DEFINE_bool("cpu_kernels", True, "On a CPU backend, run the pairwise layers (dot"
                    " interaction, AFM attention) as fused C++ kernels (jaxrec.kernels.cpu);"
                    " false = their XLA formulation.")
  flags.DEFINE_float("zipf_exponent", 1.1, "Skew of the synthetic ids.")
  flags.DEFINE_integer("seed", 0, "Seed of the synthetic batches and of init.")
  flags.DEFINE_string("mesh", "", "Time the sharded steps on a device mesh 'data:N,model:M'"
                      " (jaxrec.train.sharded_step); empty = one device.")


TABLE_SETS = ("100k", "kaggle")


def table_sizes(tables: str) -> tuple[int, ...]:
  """Rows per table of a table set: 26 x 100,000, or the Criteo Kaggle cardinalities."""
  from jaxrec.data.synthetic import KAGGLE_CARDINALITIES
  if tables == "100k":
    return (100_000,) * 26
  if tables == "kaggle":
    return tuple(KAGGLE_CARDINALITIES)
  raise ValueError(f"tables must be one of {', '.join(TABLE_SETS)}, not {tables!r}")
RECORD_KEYS = ("workload", "model", "batch_size", "tables", "rank_fraction", "examples_per_sec",
               "compile_seconds", "peak_rss_bytes", "flops_per_example", "fraction_of_peak",
               "device")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What to run; built from flags by `config_from_flags`."""

  output_dir: str
  models: tuple[str, ...] = ()  # () = every registered model
  rank_fractions: tuple[float, ...] = (1.0, 0.5)
  batch_sizes: tuple[int, ...] = (128, 2048, 8192)
  tables: tuple[str, ...] = ("100k", "kaggle")
  workloads: tuple[str, ...] = ("train", "inference")
  compute_dtype: str = "float32"
  min_seconds: float = 2.0
  repeats: int = 3
  num_batches: int = 8
  steps_per_call: int = 1
  cpu_kernels: bool = True
  zipf_exponent: float = 1.1
  seed: int = 0
  profile_dir: str | None = None
  mesh: str = ""
  interleave: bool = False


def config_from_flags() -> BenchConfig:
  if not FLAGS.output_dir:
    raise FlagError("--output_dir is required")
  try:
    batch_sizes = tuple(int(b) for b in FLAGS.batch_sizes)
    fractions = tuple(float(r) for r in FLAGS.rank_fractions)
  except ValueError:
    raise FlagError("--batch_sizes and --rank_fractions take comma-separated numbers") from None
  if not batch_sizes or any(b < 1 for b in batch_sizes):
    raise FlagError(f"--batch_sizes={','.join(FLAGS.batch_sizes)}: must be positive")
  if any(not 0.0 < r <= 1.0 for r in fractions):
    raise FlagError(f"--rank_fractions={','.join(FLAGS.rank_fractions)}: each in (0, 1]")
  bad = [t for t in FLAGS.tables if t not in TABLE_SETS]
  if bad:
    raise FlagError(f"--tables: unknown {bad}; choose from {', '.join(TABLE_SETS)}")
  bad = [w for w in FLAGS.workloads if w not in ("train", "inference")]
  if bad:
    raise FlagError(f"--workloads: unknown {bad}; choose from train, inference")
  if FLAGS.min_seconds <= 0 or FLAGS.repeats < 1 or FLAGS.num_batches < 1:
    raise FlagError("--min_seconds must be > 0, --repeats and --num_batches >= 1")
  if FLAGS.steps_per_call < 1 or (FLAGS.steps_per_call > 1 and FLAGS.mesh):
    raise FlagError("--steps_per_call must be >= 1, and 1 with --mesh")
  if FLAGS.mesh:
    from jaxrec.train.sharding import MeshConfig, MeshError
    try:
      devices = MeshConfig.parse(FLAGS.mesh).num_devices
    except MeshError as e:
      raise FlagError(f"--mesh: {e}") from None
    if any(b % devices for b in batch_sizes):
      raise FlagError(f"--batch_sizes={','.join(FLAGS.batch_sizes)}: each must be a multiple"
                      f" of the {devices} devices of --mesh={FLAGS.mesh}")
  config = BenchConfig(
      output_dir=FLAGS.output_dir, models=tuple(FLAGS.models), rank_fractions=fractions,
      batch_sizes=batch_sizes, tables=tuple(FLAGS.tables), workloads=tuple(FLAGS.workloads),
      compute_dtype=FLAGS.compute_dtype, min_seconds=FLAGS.min_seconds, repeats=FLAGS.repeats,
      num_batches=FLAGS.num_batches, steps_per_call=FLAGS.steps_per_call,
      cpu_kernels=FLAGS.cpu_kernels, zipf_exponent=FLAGS.zipf_exponent, seed=FLAGS.seed,
      profile_dir=FLAGS.profile_dir, mesh=FLAGS.mesh, interleave=FLAGS.interleave)
  if FLAGS.quick:  # flags given explicitly still win over the quick defaults
    quick = {"tables": ("100k",), "batch_sizes": (128, 2048), "models": ("dlrm", "afm"),
             "min_seconds": 0.5, "repeats": 1, "num_batches": 4}
    quick = {k: v for k, v in quick.items() if not FLAGS[k].present}
    config = dataclasses.replace(config, **quick)
  return config


# ----------------------------------------------------------------------------- measurement

def _rss_reset() -> bool:
  """Resets the kernel's RSS high-water mark (VmHWM) of this process if possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _rss_peak() -> int:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _loadavg() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def device_name() -> str:
  import jax
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind}"


host_cpu = provenance.host_cpu  # records and versus_reference use it from here too


def matmul_peak(seconds: float = 1.0, dtype: str = "float32") -> float:
  """Best matmul rate (FLOP/s) of the default device, n x n x n, inputs in `dtype`
  (float32 accumulation)."""
  import jax
  import jax.numpy as jnp
  n = 1024 if jax.devices()[0].platform == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  best, reps, start = 0.0, 1, time.perf_counter()
  while time.perf_counter() - start < seconds:
    tic = time.perf_counter()
    for _ in range(reps):
      out = f(a, b)
    out.block_until_ready()
    dt = time.perf_counter() - tic
    best = max(best, reps * 2.0 * n**3 / dt)
    if dt < 0.05:
      reps *= 2
  return best


def synthetic_batches(vocab_sizes, batch_size: int, count: int, zipf_exponent: float,
                      seed: int) -> list[dict]:
  """`count` deterministic batches (numpy) with Zipf-skewed ids per column."""
  import numpy as np
  from jaxrec.data.synthetic import zipf_ids
  rng = np.random.default_rng([seed, batch_size])
  out = []
  for _ in range(count):
    cat = np.stack([zipf_ids(rng, batch_size, n, zipf_exponent) for n in vocab_sizes], axis=1)
    counts = rng.lognormal(1.0, 1.5, size=(batch_size, 13)).round()
    out.append({"dense": np.log1p(counts).astype(np.float32), "cat": cat.astype(np.int32),
                "label": (rng.random(batch_size) < 0.25).astype(np.float32),
                "mask": np.ones(batch_size, np.float32)})
  return out


def _calibrate(run_steps, min_seconds: float) -> int:
  """Steps that fill about `min_seconds`, from a short timed run."""
  steps, elapsed = 2, 0.0
  while True:
    tic = time.perf_counter()
    run_steps(steps)
    elapsed = time.perf_counter() - tic
    if elapsed > 0.2 or steps >= 4096:
      break
    steps *= 4
  return max(3, int(steps * min_seconds / max(elapsed, 1e-9)))


# ----------------------------------------------------------------------------- variants

@dataclasses.dataclass
class Variant:
  """One model variant on one table set: a built model and its variables."""

  model_name: str
  rank_fraction: float
  model: object
  variables: dict
  regularizer: object = None


def build_variant(model_name: str, rank_fraction: float, vocab_sizes, compute_dtype: str,
                  seed: int, cpu_kernels: bool | None = None) -> Variant | str:
  """The variant, or a string saying why it is skipped."""
  import jax
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models import registry
  from jaxrec.models.ctr_model import CTRModel

  if model_name not in registry.MODELS:
    return f"model {model_name!r} is not registered in jaxrec.models.MODELS"
  model_config = registry.ModelConfig(name=model_name, compute_dtype=compute_dtype,
                                      cpu_kernels=cpu_kernels)
  embedding_config = EmbeddingConfig(dim=16)
  if hasattr(registry, "embedding_config_for"):  # e.g. AFM's first-order rows
    embedding_config = registry.embedding_config_for(model_config, embedding_config)
  try:
    model = CTRModel.create(model_config, embedding_config, tuple(vocab_sizes))
  except ValueError as e:
    return f"{model_name}: {e}"
  variables = model.init(jax.random.key(seed))
  if rank_fraction < 1.0:
    try:
      from jaxrec import factorize
      svd = factorize.TRANSFORMS["svd"]
      params, _ = svd(variables["params"],
                      factorize.FactorizeConfig(method="svd", rank_fraction=rank_fraction))
    except (ImportError, AttributeError, KeyError) as e:
      return f"rank_fraction {rank_fraction}: jaxrec.factorize svd not available ({e!r})"
    variables = {**variables, "params": params}
  return Variant(model_name, rank_fraction, model, variables)


def sharded_training(variant: Variant, dense_tx, table_opt, config: BenchConfig):
  """`ShardedTraining` on `config.mesh` for a variant (see jaxrec.train.sharded_step)."""
  import jax
  from jaxrec.train.sharded_step import ShardedTraining
  from jaxrec.train.sharding import MeshConfig, make_mesh
  return ShardedTraining(make_mesh(MeshConfig.parse(config.mesh)), variant.model, dense_tx,
                         table_opt, jax.random.key(config.seed + 1), variant.regularizer)


@dataclasses.dataclass
class Runner:
  """A prepared record: `run_steps(n)` makes n calls of `steps_per_call` steps each and
  syncs once; `finish()` runs after timing."""

  run_steps: object
  flops_per_example: float
  finish: object = lambda: None
  steps_per_call: int = 1


def prepare_train(variant: Variant, batches, config: BenchConfig) -> Runner:
  """The jitted, donated train step (sparse SGD) of a variant over `batches`."""
  import jax
  from jaxrec.train import profiling, sparse
  from jaxrec.train.step import (TrainState, dense_optimizer, make_multi_train_step,
                                 make_train_step)

  dense_tx = dense_optimizer("sgd", 0.01)
  table_opt = sparse.sgd(0.01)
  state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32),
                     params=variant.variables["params"], tables=variant.variables["tables"],
                     opt_state=dense_tx.init(variant.variables["params"]),
                     table_opt_state=table_opt.init(variant.variables["tables"]))
  step_fn = make_train_step(variant.model, dense_tx, table_opt, jax.random.key(config.seed + 1))
  flops = profiling.matmul_flops(step_fn, state, batches[0]) / len(batches[0]["label"])
  if config.mesh:  # FLOPs above are the whole batch's; the sharded step splits them
    sharded = sharded_training(variant, dense_tx, table_opt, config)
    state, step_fn = sharded.shard_state(state), sharded.train_step
  per_call = config.steps_per_call
  if per_call > 1:  # call i trains on batches i*k ... i*k + k - 1 (cycled), stacked
    if config.mesh:
      raise ValueError("steps_per_call > 1 is not supported with a mesh")
    step_fn = make_multi_train_step(variant.model, dense_tx, table_opt,
                                    jax.random.key(config.seed + 1))
    batches = [jax.tree_util.tree_map(
        lambda *x: jax.numpy.stack(x),
        *[batches[(i * per_call + j) % len(batches)] for j in range(per_call)])
        for i in range(len(batches))]
  holder = {"state": state}

  def run_steps(n):
    s = holder["state"]
    for i in range(n):
      s, metrics = step_fn(s, batches[i % len(batches)])
    jax.block_until_ready((s.step, metrics))
    holder["state"] = s

  def finish():
    # The donated input buffers are gone: the variant keeps the trained state.
    if not config.mesh:  # (sharded tables are padded: inference re-shards the variant's own)
      variant.variables = {"params": holder["state"].params, "tables": holder["state"].tables}

  return Runner(run_steps, flops, finish, per_call)


def prepare_inference(variant: Variant, batches, config: BenchConfig) -> Runner:
  """The jitted predict function of a variant over `batches`."""
  import jax
  from jaxrec.train import profiling
  from jaxrec.train.step import TrainState, make_predict

  predict = make_predict(variant.model)
  params, tables = variant.variables["params"], variant.variables["tables"]
  flops = profiling.matmul_flops(
      lambda p, t, d, c: variant.model.apply({"params": p, "tables": t}, d, c),
      params, tables, batches[0]["dense"], batches[0]["cat"]) / len(batches[0]["label"])
  if config.mesh:
    import optax
    from jaxrec.train import sparse
    sharded = sharded_training(variant, optax.identity(), sparse.sgd(0.0), config)
    state = sharded.shard_state(TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32), params=params, tables=tables, opt_state=(),
        table_opt_state={}))
    predict, params, tables = sharded.predict, state.params, state.tables

  def run_steps(n):
    outs = [predict(params, tables, batches[i % len(batches)]["dense"],
                    batches[i % len(batches)]["cat"]) for i in range(n)]
    jax.block_until_ready(outs)

  return Runner(run_steps, flops)


PREPARE = {"train": prepare_train, "inference": prepare_inference}


def _compile_and_calibrate(runner: Runner, config: BenchConfig) -> dict:
  """Compile time (first call), compiles seen and the steps that fill one timed window."""
  from jaxrec.train import profiling
  with profiling.count_compiles() as compiles:
    tic = time.perf_counter()
    runner.run_steps(1)
    compile_seconds = time.perf_counter() - tic
    steps = _calibrate(runner.run_steps, config.min_seconds)
  return {"compile_seconds": compile_seconds, "compiles": compiles.count, "steps": steps,
          "windows": []}


def _profile(runner: Runner, record_dir: str) -> None:
  import jax
  with jax.profiler.trace(record_dir, create_perfetto_trace=True):
    runner.run_steps(3)


# ----------------------------------------------------------------------------- driver

def run(config: BenchConfig, log=print) -> list[dict]:
  """Runs the suite; returns the records (also written to output_dir/benchmark.json)."""
  import jax
  from jaxrec import allocator
  from jaxrec.kernels import cpu as cpu_kernels
  from jaxrec.train import profiling

  os.makedirs(config.output_dir, exist_ok=True)
  device = device_name()
  cpu = host_cpu()
  memory_allocator = allocator.current_allocator()
  kernels = cpu_kernels.resolve(None if config.cpu_kernels else False)
  log(f"device {device}; host {cpu['model']} ({cpu['logical_cpus']} CPUs;"
      f" {' '.join(cpu['features']) or 'no listed features'}); jax {jax.__version__};"
      f" allocator {memory_allocator}; fused CPU kernels {'on' if kernels else 'off'};"
      f" loadavg {_loadavg()}")
  # The peak is measured in the compute dtype: %peak of a bfloat16 run is against
  # bfloat16 matmuls, which run 3-4x faster than float32 on CPUs with AMX.
  peak = matmul_peak(dtype=config.compute_dtype)
  log(f"{config.compute_dtype} matmul peak: {peak / 1e9:.1f} GFLOP/s")
  placement, num_devices = None, 1
  if config.mesh:  # batches split over the mesh; %peak is against peak x devices
    from jax.sharding import NamedSharding
    from jaxrec.train.sharding import BATCH_SPEC, MeshConfig, make_mesh
    mesh = make_mesh(MeshConfig.parse(config.mesh))
    placement, num_devices = NamedSharding(mesh, BATCH_SPEC), mesh.devices.size
    log(f"mesh {config.mesh}: {num_devices} devices")
  log(HEADER)
  from jaxrec.models.registry import MODELS
  models = config.models or tuple(MODELS)
  variants = [(m, 1.0) for m in models]
  if "dlrm" in models:
    variants += [("dlrm", r) for r in config.rank_fractions if r < 1.0]
  variants.sort(key=lambda v: (v[0] != "dlrm", -v[1]))
  if 1.0 not in config.rank_fractions:
    variants = [v for v in variants if v[1] < 1.0 or v[0] != "dlrm"]
  records = []
  out_path = os.path.join(config.output_dir, "benchmark.json")

  def save():  # rewritten after each record group: partial runs count
    with open(out_path, "w") as f:
      json.dump(records, f, indent=1)

  # --interleave: every variant of a table set is built at once and their timed
  # windows alternate, so slow drifts of the machine hit them alike.
  groups = [variants] if config.interleave else [[v] for v in variants]
  for tables in config.tables:
    vocab = table_sizes(tables)
    data = {b: jax.device_put(synthetic_batches(vocab, b, config.num_batches,
                                                config.zipf_exponent, config.seed), placement)
            for b in config.batch_sizes}
    for group in groups:
      _rss_reset()
      built = []
      for model_name, fraction in group:
        variant = build_variant(model_name, fraction, vocab, config.compute_dtype, config.seed,
                                None if config.cpu_kernels else False)
        if isinstance(variant, str):
          log(f"skipped: {variant}")
        else:
          built.append(variant)
      for workload in config.workloads:
        for batch_size in config.batch_sizes:
          timed = []
          for variant in built:
            reset = _rss_reset()
            runner = PREPARE[workload](variant, data[batch_size], config)
            timed.append((variant, runner, _compile_and_calibrate(runner, config), reset))
          for _ in range(config.repeats):
            for _, runner, result, _ in timed:
              with profiling.count_compiles() as compiles:
                tic = time.perf_counter()
                runner.run_steps(result["steps"])
                result["windows"].append(time.perf_counter() - tic)
              result["compiles"] += compiles.count
          for variant, runner, result, reset in timed:
            name = (f"{workload}-{variant.model_name}-r{variant.rank_fraction:g}-{tables}"
                    f"-b{batch_size}")
            if config.profile_dir:
              _profile(runner, os.path.join(config.profile_dir, name))
            runner.finish()
            record = _record(workload, variant, batch_size, tables, runner, result, peak,
                             num_devices, device, memory_allocator, config)
            record.update(host_cpu=cpu["model"], host_cpu_count=cpu["logical_cpus"],
                          host_cpu_features=cpu["features"])
            record["rss_peak_is_per_record"] = reset and not config.interleave
            records.append(record)
          if timed:
            _add_ratios(records)
            for record in records[-len(timed):]:
              log(format_row(record))
            save()
      del built
  return records


def _record(workload, variant, batch_size, tables, runner, result, peak, num_devices, device,
            memory_allocator, config) -> dict:
  from jaxrec.kernels import cpu as cpu_kernels
  rates = [result["steps"] * runner.steps_per_call * batch_size / w for w in result["windows"]]
  rate = statistics.median(rates)
  return {
      "workload": workload, "model": variant.model_name, "batch_size": batch_size,
      "tables": tables, "rank_fraction": variant.rank_fraction, "examples_per_sec": rate,
      "compile_seconds": result["compile_seconds"], "peak_rss_bytes": _rss_peak(),
      "flops_per_example": runner.flops_per_example,
      "fraction_of_peak": runner.flops_per_example * rate / (peak * num_devices),
      "device": device,
      "compute_dtype": config.compute_dtype, "compiles": result["compiles"],
      "peak_flops_per_sec": peak, "peak_dtype": config.compute_dtype,
      "steps_per_window": result["steps"] * runner.steps_per_call,
      "steps_per_call": runner.steps_per_call,
      "window_examples_per_sec": rates, "interleaved": config.interleave,
      "loadavg": _loadavg(), "mesh": config.mesh or None, "num_devices": num_devices,
      "allocator": memory_allocator,
      "cpu_kernels": cpu_kernels.resolve(None if config.cpu_kernels else False),
  }


def _add_ratios(records: list[dict]) -> None:
  """`ratio_to_dlrm`: each record's rate over dense DLRM's at the same workload, batch and
  tables. Interleaved windows are paired (the median of window-by-window ratios, with
  their range in `ratio_to_dlrm_range`); otherwise it is the ratio of the medians."""
  for r in records:
    base = next((d for d in records if d["model"] == "dlrm" and d["rank_fraction"] == 1.0
                 and all(d[k] == r[k] for k in ("workload", "batch_size", "tables"))), None)
    if base is None:
      continue
    mine, theirs = r["window_examples_per_sec"], base["window_examples_per_sec"]
    if r["interleaved"] and base["interleaved"] and len(mine) == len(theirs):
      ratios = [a / b for a, b in zip(mine, theirs)]
      r["ratio_to_dlrm"] = statistics.median(ratios)
      r["ratio_to_dlrm_range"] = [min(ratios), max(ratios)]
    else:
      r["ratio_to_dlrm"] = r["examples_per_sec"] / base["examples_per_sec"]


HEADER = (f"{'workload':9s} {'model':6s} {'rank':>4s} {'tables':6s} {'batch':>5s} "
          f"{'examples/s':>11s} {'x dlrm':>6s} {'MFLOP/ex':>8s} {'%peak':>6s} {'compile s':>9s}"
          f" {'RSS GiB':>7s}")


def format_row(r: dict) -> str:
  return (f"{r['workload']:9s} {r['model']:6s} {r['rank_fraction']:4g} {r['tables']:6s} "
          f"{r['batch_size']:5d} {r['examples_per_sec']:11,.0f} "
          f"{r['ratio_to_dlrm'] if 'ratio_to_dlrm' in r else float('nan'):6.3f} "
          f"{r['flops_per_example'] / 1e6:8.3f} {100 * r['fraction_of_peak']:5.1f}% "
          f"{r['compile_seconds']:9.2f} {r['peak_rss_bytes'] / 2**30:7.2f}")


def main(argv):
  cli.check_no_arguments(argv)
  try:
    config = config_from_flags()
  except FlagError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  start = time.perf_counter()
  records = run(config, log=lambda s: print(s, flush=True))
  print(f"\n{HEADER}")
  for r in records:
    print(format_row(r))
  print(f"wrote {os.path.join(config.output_dir, 'benchmark.json')}"
        f" ({len(records)} records, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
