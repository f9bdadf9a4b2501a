"""`train_and_evaluate(config, workdir)`: the training loop behind `experiments.train`.

Trains with the jitted sparse-update step, evaluates on the whole validation
split during training and on the whole test split at the end, checkpoints with
orbax and resumes exactly, and writes ``config.json``, ``history.jsonl`` and
``metrics.json`` to `workdir`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxrec.data import loader, sampling
from jaxrec.data.dataset import CTRDataset, Splits, random_split_indices
from jaxrec.data.sources import DataConfig, load_splits_and_vocabulary, schema_for
from jaxrec.factorize.rank import FactorizeConfig
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.ctr_model import CTRModel, param_bytes, param_count
from jaxrec.models.registry import ModelConfig, build_regularizer
from jaxrec.train import metrics as metrics_lib
from jaxrec.train import (factorize_phase, faults, preemption, run_dir, scalars, schedules,
                          selection, sparse)
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train import sharding as sharding_lib
from jaxrec.train.sharding import MeshConfig, host_batches
from jaxrec.train.step import Training, TrainState, dense_optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole training run.

  Attributes:
    model / embedding / data: what to train, on what.
    optimizer: dense-parameter optimizer (sgd, adam, adagrad).
    learning_rate: dense (peak) learning rate.
    embedding_optimizer: sparse table optimizer (sgd, rowwise_adagrad), or
      "auto": sgd with sgd, rowwise_adagrad otherwise.
    embedding_learning_rate: table (peak) learning rate (None: learning_rate).
    negative_sampling_rate: train on every positive and this share of the
      negative rows (seeded by `seed`, the same rows on resume); predictions
      are corrected for it (`jaxrec.data.sampling`).
    lr_schedule: the schedule of both rates over train steps
      (`jaxrec.train.schedules`).
    batch_size: training batch (static; the last one is padded and masked).
    eval_batch_size: evaluation batch.
    epochs: passes over the training split (an upper bound with early stopping).
    max_steps: stop after this many steps (None: all epochs).
    eval_every: evaluate on validation every N steps (0: each epoch end).
    log_every: fetch and log the running loss every N steps (a "train" record of
      history.jsonl and TensorBoard: loss, learning rates, examples/s).
    tensorboard_dir: where TensorBoard event files go (None: the run directory;
      "": none).
    checkpoint_every: save every N steps (0: each epoch end); the end is always saved.
      -1: never save (benchmark runs; such a run cannot be resumed).
    seed: init, data order and dropout seed.
    select_metric: validation metric that selects the reported model (logloss,
      auc; last: none, the final model): its best evaluation is checkpointed as
      selected, and the test
      metrics, test_predictions.npz and `run_dir.load_run` use that model.
      Needs checkpoints (checkpoint_every >= 0); otherwise the last model.
    early_stopping_patience: stop after this many validation evaluations
      without improvement of select_metric (0: train all epochs).
    mesh: train on a (data, model) device mesh (`jaxrec.train.sharded_step`);
      None: one device. Checkpoints restore on any mesh.
    device_memory_gb: memory of one device, for the check (before anything is
      allocated) that the train state fits; None: what the platform reports
      (GPUs and TPUs do, CPUs do not: then nothing is checked).
    factorize: low-rank factorization of the Dense layers (None: dense);
      "before" applies at init, the others after training, then fine-tune
      for its `finetune_epochs` in this loop (logged, validated, checkpointed
      and resumable like training; on any mesh).
    on_nonfinite: a non-finite loss or gradient "stop"s training (NonFiniteError
      naming the step; the newest checkpoint is the last good one) or "skip"s
      the batch and counts it (metrics.json: skipped_nonfinite_batches).
    steps_per_call: train steps per jitted call (`make_multi_train_step`, a
      `lax.scan` over that many batches): the same updates with one dispatch,
      which pays at small batches. Groups never straddle a log, eval,
      checkpoint or epoch end (steps just before one run one per call). On
      any mesh.
  """

  model: ModelConfig = ModelConfig()
  embedding: EmbeddingConfig = EmbeddingConfig()
  data: DataConfig = DataConfig()
  optimizer: str = "sgd"
  learning_rate: float = 0.1
  embedding_optimizer: str = "auto"
  embedding_learning_rate: float | None = None
  negative_sampling_rate: float = 1.0
  lr_schedule: schedules.ScheduleConfig = schedules.ScheduleConfig()
  batch_size: int = 256
  eval_batch_size: int = 8192
  epochs: int = 1
  max_steps: int | None = None
  eval_every: int = 0
  log_every: int = 100
  tensorboard_dir: str | None = None
  checkpoint_every: int = 0
  seed: int = 0
  select_metric: str = "logloss"
  early_stopping_patience: int = 0
  mesh: MeshConfig | None = None
  factorize: FactorizeConfig | None = None
  on_nonfinite: str = "stop"
  steps_per_call: int = 1
  device_memory_gb: float | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def resolved_embedding_optimizer(self) -> str:
    if self.embedding_optimizer != "auto":
      return self.embedding_optimizer
    return "sgd" if self.optimizer == "sgd" else "rowwise_adagrad"


# Config sections that must match for a checkpoint to be resumed.
_RESUME_KEYS = ("model", "embedding", "data", "optimizer", "embedding_optimizer", "batch_size",
                "seed", "lr_schedule", "select_metric", "negative_sampling_rate")


def _trained_structure(config_json: dict):
  """The part of `factorize` that shapes the checkpointed params (only `before` does)."""
  f = config_json.get("factorize")
  return f if f and f.get("method") == "before" else None


class ResumeError(ValueError):
  """A run directory that cannot be resumed with this config."""


def check_resume_compatible(saved: dict, config: TrainConfig) -> None:
  current = json.loads(json.dumps(config.to_json()))
  for run in (saved, current):  # kernels or not, the same model trains on
    run.get("model", {}).pop("cpu_kernels", None)
  diffs = [k for k in _RESUME_KEYS if saved.get(k) != current.get(k)]
  if _trained_structure(saved) != _trained_structure(current):
    diffs.append("factorize")
  if diffs:
    raise ResumeError("cannot resume: the checkpoint was written with a different"
                      f" {', '.join(diffs)}"
                     f" (saved {saved.get(diffs[0])!r}, now {current.get(diffs[0])!r})")


def predict_dataset(predict, params, tables, dataset: CTRDataset, batch_size: int,
                    sharding=None) -> np.ndarray:
  """Click probabilities for every row of `dataset` (one host transfer at the end)."""
  outs = []
  batches = host_batches(dataset, batch_size, sharding)
  for batch in loader.prefetch_to_device(batches, sharding=sharding):
    outs.append(predict(params, tables, batch["dense"], batch["cat"]))
  probs = np.concatenate(jax.device_get(outs)) if outs else np.zeros(0, np.float32)
  return probs[:len(dataset)]


def evaluate(predict, params, tables, dataset: CTRDataset, batch_size: int,
             train_positive_rate: float, sharding=None) -> dict[str, float]:
  """`ctr_metrics` of `predict` over every row of `dataset`, plus "probs" and timings.

  A model with NaN/Inf parameters is refused (faults.NonFiniteParamsError)
  rather than scored.
  """
  faults.require_finite_params({"params": params, "tables": tables}, "evaluation")
  start = time.perf_counter()
  probs = predict_dataset(predict, params, tables, dataset, batch_size, sharding)
  seconds = time.perf_counter() - start
  out = metrics_lib.ctr_metrics(dataset.label, probs, train_positive_rate, dataset.oracle_prob)
  out["probs"] = probs
  out["eval_seconds"] = seconds
  out["eval_examples_per_sec"] = len(dataset) / max(seconds, 1e-9)
  return out


def build_optimizers(config: TrainConfig, total_steps: int):
  """(dense optax optimizer, sparse table optimizer, dense schedule, table schedule).

  Both rates follow `config.lr_schedule` (a schedule is a float when constant).
  """
  dense_rate = schedules.build(config.lr_schedule, config.learning_rate, total_steps)
  table_rate = schedules.build(config.lr_schedule,
                               config.embedding_learning_rate or config.learning_rate,
                               total_steps)
  return (dense_optimizer(config.optimizer, dense_rate),
          sparse.create(config.resolved_embedding_optimizer, table_rate), dense_rate, table_rate)


def _downsample_negatives(splits: Splits, config: TrainConfig) -> Splits:
  """`splits` with the training negatives down-sampled at `config.negative_sampling_rate`."""
  if config.negative_sampling_rate == 1.0:
    return splits
  train = sampling.downsample_negatives(splits.train, config.negative_sampling_rate, config.seed)
  logging.info("negative down-sampling at %g: %d of %d training rows kept",
               config.negative_sampling_rate, len(train), len(splits.train))
  return dataclasses.replace(splits, train=train)


def _running_to_meta(running: dict | None) -> list[float] | None:
  """The loss sums since the last train record, for a resumed run to continue them."""
  if running is None:
    return None
  return [float(running["loss_sum"]), float(running["weight_sum"])]


def _running_from_meta(meta: dict) -> dict | None:
  saved = meta.get("running_loss")
  if saved is None:
    return None
  return {"loss_sum": jnp.float32(saved[0]), "weight_sum": jnp.float32(saved[1])}


def _restore_selected(checkpointer: Checkpointer, state: TrainState, step: int,
                      resizable: tuple[str, ...]) -> tuple[TrainState, int]:
  """(the model selected on validation, its step): its tagged checkpoint, or `state`
  itself when that is the current step or nothing was selected."""
  chosen = checkpointer.selected_step()
  if chosen is None or chosen == step:
    return state, step
  logging.info("restoring the model selected on validation (step %d)", chosen)
  restored, _ = checkpointer.restore(state, step=chosen, resizable_rows=resizable)
  return restored, chosen


def make_training(config: TrainConfig, model: CTRModel, dense_tx, table_opt,
                  dropout_key: jax.Array):
  """The run's `Training` (one device) or `ShardedTraining` (config.mesh), after checking,
  before anything is allocated, that its state fits the device memory."""
  regularizer = build_regularizer(config.model)
  if config.mesh is None:
    training = Training(model, dense_tx, table_opt, dropout_key, regularizer)
    abstract = jax.eval_shape(training.init_state, jax.random.key(0))
    total_bytes, _ = sharding_lib.state_bytes_per_device(abstract)
    logging.info("train state %.3f GiB on one device; host RSS before allocating %.3f GiB",
                 total_bytes / 2**30, sharding_lib.host_rss_bytes() / 2**30)
    sharding_lib.check_fits(abstract, sharding_lib.device_memory_bytes(
        jax.devices()[0], config.device_memory_gb), "one device (no --mesh)")
    return training
  from jaxrec.train.sharded_step import ShardedTraining  # several devices
  training = ShardedTraining.for_mesh(config.mesh, model, dense_tx, table_opt, dropout_key,
                                      batch_size=config.batch_size, regularizer=regularizer)
  logging.info("%s", training.memory_report())
  sharding_lib.check_fits(training.abstract_state(), sharding_lib.device_memory_bytes(
      training.mesh.devices.flat[0], config.device_memory_gb), f"--mesh={config.mesh}",
      config.mesh.model)
  return training


def size_report(model: CTRModel, training, state: TrainState) -> dict:
  """metrics.json's parameter counts and bytes of the trained state (real table rows only)."""
  tables = {name: jax.ShapeDtypeStruct((training.logical_rows[name],) + t.shape[1:], t.dtype)
            for name, t in state.tables.items()}  # without a mesh's padding rows
  variables = {"params": state.params, "tables": tables}
  return {
      "param_count": param_count(variables),
      "param_bytes": param_bytes(variables),
      # tables plus any embedding-owned dense params (mixed_dim projections)
      "embedding_param_count": model.layout.param_count(),
      "dense_param_count": param_count(variables) - model.layout.param_count(),
  }


def _writer() -> bool:
  """Multi-host runs write reports from process 0 only (orbax coordinates checkpoints)."""
  return jax.process_index() == 0


def _truncate_history(path: str, max_step: int) -> None:
  """Drops history lines written after the checkpoint a run resumes from.

  A line torn by a kill mid-write is dropped too (it is always the last one).
  """
  if not os.path.exists(path) or not _writer():
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= max_step:
          keep.append(line)
      except (ValueError, KeyError, TypeError):
        pass
  _write_lines(path, keep)


def _write_lines(path: str, lines: list[str]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
  os.replace(tmp, path)


def _write_json(path: str, obj: Any) -> None:
  if not _writer():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _next_boundary(step: int, config: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
  """The first step after `step` at which the loop logs, evaluates, saves, ends an epoch
  or stops: a group of steps per call must end there or before."""
  def next_multiple(n):
    return (step // n + 1) * n

  every = [config.log_every, steps_per_epoch, config.eval_every or steps_per_epoch]
  if config.checkpoint_every >= 0:
    every.append(config.checkpoint_every or steps_per_epoch)
  return min([total_steps] + [next_multiple(n) for n in every if n > 0])


@jax.jit
def _sum_steps(metrics: dict) -> dict:
  """Stacked per-step metrics of one multi-step call -> one step's worth (sums; the
  first skipped step is a min)."""
  return {k: jnp.min(v) if k == "nonfinite_step" else jnp.sum(v, axis=0)
          for k, v in metrics.items()}


def _stop_with_checkpoint(signum: int, step: int, checkpointer: Checkpointer,
                          save: Callable[[], None], saving: bool) -> None:
  """Ends a run stopped by a signal: checkpoints `step` (unless just saved) and raises."""
  if saving and checkpointer.latest_step() != step:
    save()
  checkpointer.close()
  logging.info("stopped by signal %d after step %d", signum, step)
  raise preemption.Stopped(signum, step, checkpointer.latest_step() if saving else None)


def train_and_evaluate(config: TrainConfig, workdir: str, *, resume: bool = False,
                       on_end: Callable[[CTRModel, dict, Any], None] | None = None,
                       on_event: Callable[[str, int], None] | None = None,
                       splits: Splits | None = None,
                       vocabulary: Any = None,
                       stop: preemption.StopSignals | None = None) -> dict:
  """Trains, evaluates on the whole test split, writes reports; returns metrics.json's dict.

  The rows come from `config.data`, or from `splits` when given (then
  `vocabulary`, a `criteo.Vocabulary` or None, is what `run_dir` saves to encode
  raw rows later; `fit` is the friendlier entry for data already in memory).
  `on_end(model, variables, splits)`, if given, runs on the final variables
  (e.g. to write the attention heat-map). `on_event(kind, step)`, if given, is
  called after each train step ("step"), in the middle of each validation
  evaluation ("eval": predictions made, history not yet written) and after each
  checkpoint ("save"); the fault-injection tests kill the process from it.
  `stop` (installed by the command): a SIGTERM / SIGINT while steps run ends the
  run after the current step group with a checkpoint (`preemption.Stopped`).

  Raises:
    ResumeError: `resume` with a run directory written by another config.
    checkpoint.CheckpointError: `resume` where no checkpoint verifies.
    faults.NonFiniteError: a non-finite loss with `config.on_nonfinite == "stop"`.
    preemption.Stopped: `stop` received a signal while steps ran.
  """
  on_event = on_event or (lambda kind, step: None)
  stop = stop or preemption.StopSignals()  # not installed: never requested
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.json")
  history_path = os.path.join(workdir, "history.jsonl")
  if resume and os.path.exists(config_path):
    try:
      with open(config_path) as f:
        saved = json.load(f)
    except ValueError as e:
      raise ResumeError(f"cannot resume: {config_path} is not valid JSON ({e})") from None
    if not isinstance(saved, dict):
      raise ResumeError(f"cannot resume: {config_path} holds no config object")
    check_resume_compatible(saved, config)

  if splits is None:
    splits, vocabulary = load_splits_and_vocabulary(config.data)
  train_positive_rate = splits.train.positive_rate  # of the population, before sampling
  splits = _downsample_negatives(splits, config)
  spec = run_dir.ModelSpec(config.model, config.embedding, splits.train.vocab_sizes,
                           splits.train.num_dense, config.negative_sampling_rate,
                           splits.train.bag_lengths, splits.train.poolings)
  if _writer():  # what load_run / predict need
    schema = schema_for(config.data) if vocabulary is not None else None
    run_dir.write_model_files(workdir, spec, vocabulary, schema)
  model = spec.build()
  steps_per_epoch = loader.num_batches(len(splits.train), config.batch_size)
  total_steps = config.epochs * steps_per_epoch
  if config.max_steps is not None:
    total_steps = min(total_steps, config.max_steps)
  dense_tx, table_opt, dense_rate, table_rate = build_optimizers(config, total_steps)
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  training = make_training(config, model, dense_tx, table_opt, dropout_key)
  batch_sharding = training.batch_sharding
  eval_batch_size = training.round_batch(config.eval_batch_size)
  state = training.init_state(init_key)
  factorize_config = config.factorize
  if factorize_config is not None and factorize_config.method == "before":
    state, factorize_config = factorize_phase.at_init(model, state, factorize_config, dense_tx)
    state = training.place_state(state)
  # A transform after training happens at step `dense_steps`; fine-tuning follows in this loop.
  pending_factorize = factorize_config is not None and factorize_config.method != "before"
  dense_steps = total_steps
  if pending_factorize:
    total_steps += factorize_config.finetune_epochs * steps_per_epoch
  factorize_report, finetune_start, factorized_from = {}, None, None
  resizable = ("tables", "table_opt_state")  # checkpoints from any mesh (padded rows)

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  step, running = 0, None  # running: loss sums since the last train record, on device
  monitor = faults.NonFiniteMonitor(config.on_nonfinite)
  selected = selection.Selection(config.select_metric, config.early_stopping_patience)
  if resume and checkpointer.steps():
    # The newest step that verifies (newer damaged ones are logged and set aside).
    factorized = checkpointer.read_meta().get("factorized")
    if factorized is not None:  # saved while fine-tuning: restore into its structure
      state, factorize_config = factorize_phase.with_ranks(
          model, state, factorize_config, factorized["ranks"], dense_tx)
      state = training.place_state(state)
      factorize_report, pending_factorize = factorized["report"], False
      factorized_from = dense_steps
    state, meta = checkpointer.restore(state, resizable_rows=resizable, set_aside_damaged=True)
    step = int(meta["step"])
    monitor.skipped = int(meta.get("skipped_nonfinite_batches", 0))
    selected.restore(meta.get("selection", {}))
    running = _running_from_meta(meta)
    _truncate_history(history_path, step)
    logging.info("resumed from step %d", step)
  elif os.path.exists(history_path) and _writer():
    os.remove(history_path)
  _write_json(config_path, config.to_json())

  logging.info("training %s: %d train / %d validation / %d test rows, %d steps of %d",
               config.model.name, len(splits.train), len(splits.validation), len(splits.test),
               total_steps, config.batch_size)

  scalar_log = scalars.ScalarLog(
      history_path, workdir if config.tensorboard_dir is None else config.tensorboard_dir, step)
  predict = training.predict

  def run_eval(dataset, split_name):
    result = evaluate(predict, state.params, state.tables, dataset, eval_batch_size,
                      train_positive_rate, batch_sharding)
    del result["probs"]
    on_event("eval", step)
    scalar_log.write(step, split_name, {"epoch": step / steps_per_epoch, **result})
    logging.info("step %d %s: auc %.4f logloss %.4f (constant %.4f) accuracy %.4f"
                 " calibration %.3f", step, split_name, result["auc"], result["logloss"],
                 result["baseline_logloss"], result["accuracy"], result["calibration"])
    return result

  def save(is_selected=False):
    meta = {"step": step, "skipped_nonfinite_batches": monitor.skipped,
            "selection": selected.to_meta(), "running_loss": _running_to_meta(running)}
    if step > dense_steps:  # fine-tuning: what restores its structure on resume
      meta["factorized"] = {"ranks": factorize_config.ranks, "report": factorize_report}
    checkpointer.save(step, state, meta, selected=is_selected)
    on_event("save", step)

  def factorize_trained():
    """The transform after training, of the model selected on validation; fine-tuning
    follows, and selects among its own checkpoints."""
    nonlocal state, factorize_config, factorize_report, factorized_from, selected
    state, factorized_from = _restore_selected(checkpointer, state, step, resizable)

    def evaluate_params(params, dataset):
      return evaluate(predict, training.place_params(params), state.tables, dataset,
                      eval_batch_size, train_positive_rate, batch_sharding)
    new_state, factorize_config, factorize_report = factorize_phase.after_training(
        model, state, factorize_config, splits=splits, evaluate_params=evaluate_params,
        dense_tx=dense_tx)
    # The step counter goes on from here (the selected model may be an earlier step's).
    state = training.place_state(new_state.replace(step=jnp.asarray(step, jnp.int32)))
    selected = selection.Selection(config.select_metric, config.early_stopping_patience)

  def check_finite():  # a host sync: only where the loop syncs anyway
    try:
      monitor.check(checkpointer.latest_step(), checkpointer.directory)
    except faults.NonFiniteError:
      checkpointer.close()
      raise

  train_seconds, timed_examples, compile_seconds = 0.0, 0, 0.0
  compiled = set()  # the step functions called so far: their first call compiles
  window_start, window_steps = time.perf_counter(), 0
  stop.deferring = True  # a signal from here on ends the run at the next step-group end
  while ((step < total_steps or pending_factorize) and not selected.should_stop
         and stop.requested is None):
    if pending_factorize and step >= dense_steps:
      factorize_trained()
      pending_factorize, finetune_start = False, train_seconds + compile_seconds
      compiled.clear()  # the new structure compiles the steps again
      if step >= total_steps:
        break
    epoch, start_batch = divmod(step, steps_per_epoch)
    batches = iter(loader.prefetch_to_device(host_batches(
        splits.train, config.batch_size, batch_sharding, shuffle=True, seed=config.seed,
        epoch=epoch, start_batch=start_batch), sharding=batch_sharding))
    tic = time.perf_counter()
    while True:
      room = _next_boundary(step, config, steps_per_epoch,
                            dense_steps if step < dense_steps else total_steps) - step
      count = config.steps_per_call if room >= config.steps_per_call else 1
      group = list(itertools.islice(batches, count))
      if not group:
        break
      fn = training.train_step if len(group) == 1 else training.multi_train_step
      first = fn not in compiled  # its first call compiles: timed apart from throughput
      if first:
        jax.block_until_ready(state.step)
        train_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
      if len(group) == 1:
        state, step_metrics = fn(state, group[0])
      else:
        state, step_metrics = fn(state, training.stack_batches(group))
        step_metrics = _sum_steps(step_metrics)
      if first:
        compiled.add(fn)
        jax.block_until_ready(state.step)
        compile_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
      else:
        timed_examples += len(group) * config.batch_size
      monitor.update(step_metrics)
      loss_sums = {k: step_metrics[k] for k in ("loss_sum", "weight_sum")}
      running = loss_sums if running is None else jax.tree_util.tree_map(
          lambda a, b: a + b, running, loss_sums)  # on device, no sync
      for _ in group:
        step += 1
        on_event("step", step)
      window_steps += len(group)
      end_of_epoch = step % steps_per_epoch == 0
      if step % config.log_every == 0 or step == total_steps:
        check_finite()
        loss = float(running["loss_sum"] / max(float(running["weight_sum"]), 1.0))
        now = time.perf_counter()
        rate = window_steps * config.batch_size / max(now - window_start, 1e-9)
        eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
        logging.info("step %d/%d  loss %.4f  %.0f examples/s  ETA %.0fs", step, total_steps,
                     loss, rate, eta)
        scalar_log.write(step, "train", {
            "epoch": step / steps_per_epoch, "loss": loss,
            # the rates of this record's last update (step `step`, 1-based)
            "learning_rate": schedules.value(dense_rate, step - 1),
            "embedding_learning_rate": schedules.value(table_rate, step - 1),
            "examples_per_sec": rate})
        running, window_start, window_steps = None, now, 0
      last = step in (dense_steps, total_steps)  # the end of training, or of fine-tuning
      do_eval = last or (step % config.eval_every == 0 if config.eval_every else end_of_epoch)
      do_save = config.checkpoint_every >= 0 and (
          last or (step % config.checkpoint_every == 0 if config.checkpoint_every
                   else end_of_epoch))
      if do_eval or do_save:
        jax.block_until_ready(state.step)
        train_seconds += time.perf_counter() - tic
        check_finite()
        improved = do_eval and selected.update(step, run_eval(splits.validation, "validation"))
        checkpoints = config.checkpoint_every >= 0
        if do_save or (checkpoints and (improved or selected.should_stop)):
          save(is_selected=improved)
        tic = time.perf_counter()
      if (step >= total_steps or selected.should_stop or stop.requested is not None
          or (pending_factorize and step >= dense_steps)):
        break
    jax.block_until_ready(state.step)
    train_seconds += time.perf_counter() - tic
  stop.deferring = False
  check_finite()
  if stop.requested is not None:
    scalar_log.close()
    _stop_with_checkpoint(stop.requested, step, checkpointer, save, config.checkpoint_every >= 0)
  if selected.should_stop:
    logging.info("early stopping at step %d: %d evaluations without a better validation %s",
                 step, selected.evals_since_best, config.select_metric)
  if pending_factorize:  # stopped early in training: factorized without fine-tuning
    factorize_trained()
  if factorized_from is None or (checkpointer.selected_step() or 0) > dense_steps:
    state, tested_step = _restore_selected(checkpointer, state, step, resizable)
  else:  # no fine-tuning checkpoint selected: the factorized model as trained
    tested_step = factorized_from if step == dense_steps else step
  checkpointer.close()
  scalar_log.close()

  if finetune_start is not None:
    factorize_report["finetune_seconds"] = train_seconds + compile_seconds - finetune_start

  result = evaluate(predict, state.params, state.tables, splits.test, eval_batch_size,
                    train_positive_rate, batch_sharding)
  # Test-split probabilities and labels, for analyses beyond the summary metrics.
  probs = result.pop("probs")
  if _writer():
    np.savez_compressed(os.path.join(workdir, "test_predictions.npz"), prob=probs,
                        label=splits.test.label)
  variables = {"params": state.params, "tables": state.tables}
  report = {
      "model": config.model.name,
      "embedding": config.embedding.kind,
      **{k: result[k] for k in ("auc", "logloss", "accuracy", "normalized_entropy", "calibration",
                                "baseline_logloss", "baseline_accuracy", "positive_rate")},
      **{k: result[k] for k in ("bayes_auc", "bayes_logloss", "auc_over_bayes") if k in result},
      "num_train_examples": len(splits.train),
      "num_eval_examples": len(splits.test),
      "eval_split": "test",
      "steps": step,
      "stopped_early": selected.should_stop,
      "tested_step": tested_step,  # the step of the model the test metrics describe
      **selected.report(),
      "skipped_nonfinite_batches": monitor.skipped,
      "epochs": config.epochs,
      **size_report(model, training, state),
      "train_seconds": train_seconds + compile_seconds,
      "compile_seconds": compile_seconds,
      "train_examples_per_sec": timed_examples / max(train_seconds, 1e-9),
      "eval_examples_per_sec": result["eval_examples_per_sec"],
      "inference_examples_per_sec": factorize_phase.inference_examples_per_sec(
          predict, state.params, state.tables, splits.test, sharding=batch_sharding),
      **factorize_phase.factorize_summary(state.params, factorize_config),
      **factorize_report,
      "device": str(jax.devices()[0].device_kind),
      "num_devices": 1 if config.mesh is None else config.mesh.num_devices,
  }
  _write_json(os.path.join(workdir, "metrics.json"), report)
  if on_end is not None:
    on_end(model, variables, splits)
  return report


IN_MEMORY_SOURCE = "in_memory"


def fit(config: TrainConfig, workdir: str,
        data: CTRDataset | Splits | tuple[np.ndarray, np.ndarray, np.ndarray], *,
        vocab_sizes: tuple[int, ...] | None = None, resume: bool = False,
        on_end: Callable[[CTRModel, dict, Any], None] | None = None) -> dict:
  """`train_and_evaluate` on rows already in memory; returns metrics.json's dict.

  Args:
    config: the run; `config.data.split` and `config.data.seed` split `data`
      when it is one dataset, its `source` is recorded as "in_memory".
    workdir: the run directory (reports, checkpoints, what `load_run` reads).
    data: a `Splits` (used as is), one `CTRDataset`, or arrays
      ``(dense [N, D], cat [N, C], label [N])``: dense features already
      transformed, categorical ids in ``[0, vocab_sizes[j])``, labels 0/1.
    vocab_sizes: table rows per categorical column, for arrays (default: each
      column's largest id + 1).
    resume: continue the checkpoint in `workdir` (same config and data).
    on_end: as in `train_and_evaluate`.

  Raises:
    ValueError: misaligned arrays or ids outside their table.
  """
  if isinstance(data, tuple):
    dense, cat, label = (np.asarray(a) for a in data)
    if cat.ndim != 2 or dense.ndim != 2:
      raise ValueError(f"dense and cat must be 2-D, got {dense.shape} and {cat.shape}")
    if vocab_sizes is None:
      vocab_sizes = tuple(int(v) + 1 for v in cat.max(axis=0)) if len(cat) else (1,) * cat.shape[1]
    data = CTRDataset(dense.astype(np.float32), cat.astype(np.int32), label.astype(np.float32),
                      tuple(int(v) for v in vocab_sizes))
  if isinstance(data, CTRDataset):
    cat = data.cat
    if len(cat) and (cat.min() < 0 or np.any(cat.max(axis=0) >= np.asarray(data.vocab_sizes))):
      raise ValueError("categorical ids must lie in [0, vocab_sizes[j]) for every column j")
    parts = random_split_indices(len(data), config.data.split, config.data.seed)
    data = Splits(*(data.take(p) for p in parts))
  if not isinstance(data, Splits):
    raise TypeError(f"data must be Splits, CTRDataset or (dense, cat, label), got {type(data)}")
  config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                source=IN_MEMORY_SOURCE))
  return train_and_evaluate(config, workdir, resume=resume, on_end=on_end, splits=data)
