"""Low-rank factorization inside a training run: at init, or after training.

`train_and_evaluate` calls two small hooks from here:

* `at_init` (``--factorize=before``): right after the state is created (and
  before a checkpoint is restored into it), the Dense kernels become fresh
  factors, so the run trains the low-rank model from scratch.
* `after_training` (``svd``, ``nmf``, ``auto``): the trained dense model is
  evaluated on the test split and transformed; the loop then fine-tunes it for
  `finetune_epochs` with the same step (which recompiles once for the new
  structure), logging, validating and checkpointing as in training.
* `with_ranks`: a fresh state given the factorized structure recorded in a
  checkpoint, so that a run resumes inside its fine-tuning.

Also `inference_examples_per_sec`, the throughput of the final model at a
fixed batch of 8192.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from absl import logging

from jaxrec import factorize
from jaxrec.data import loader
from jaxrec.data.dataset import CTRDataset, Splits
from jaxrec.factorize import rank as rank_lib
from jaxrec.factorize.rank import FactorizeConfig
from jaxrec.models.ctr_model import CTRModel, param_count
from jaxrec.train.step import TrainState

INFERENCE_BATCH = 8192

# (params, dataset) -> metrics dict of `jaxrec.train.loop.evaluate`.
EvaluateParams = Callable[[Any, CTRDataset], dict]


def _with_layers(model: CTRModel, config: FactorizeConfig) -> FactorizeConfig:
  """Restricts the config to the jaxrec Dense layers the network builds."""
  if config.layers is not None:
    return config
  paths = factorize.dense_layer_paths(lambda: model.init(jax.random.key(0)))
  return dataclasses.replace(config, layers=paths)


def _replace_params(state: TrainState, params,
                    dense_tx: optax.GradientTransformation) -> TrainState:
  return state.replace(params=params, opt_state=dense_tx.init(params))


def at_init(model: CTRModel, state: TrainState, config: FactorizeConfig,
            dense_tx: optax.GradientTransformation) -> tuple[TrainState, FactorizeConfig]:
  """The `before` transform applied to a freshly created state (optimizer state re-initialised)."""
  params, config = factorize.before.before(state.params, _with_layers(model, config))
  return _replace_params(state, params, dense_tx), config


def after_training(model: CTRModel, state: TrainState, config: FactorizeConfig, *,
                   splits: Splits, evaluate_params: EvaluateParams,
                   dense_tx: optax.GradientTransformation
                   ) -> tuple[TrainState, FactorizeConfig, dict]:
  """Transforms the trained state's params and reports what changed.

  Returns:
    (new state, the config with its ranks, report) where report holds the
    dense model's test metrics (``prefactorize_*``), the per-layer plan, the
    reconstruction errors beside SVD's, the auto-rank search log, the time
    taken and, when fine-tuning follows, the transformed model's test metrics
    (``prefinetune_*``).
  """
  config = _with_layers(model, config)
  dense_params = state.params
  dense = evaluate_params(dense_params, splits.test)
  tic = time.perf_counter()
  if config.method == "auto":
    validation_logloss = lambda p: evaluate_params(p, splits.validation)["logloss"]
    ranks, search = factorize.choose_ranks(dense_params, config, validation_logloss)
    params, config = factorize.svd.svd(dense_params,
                                   dataclasses.replace(config, ranks=tuple(ranks.items())))
  else:
    params, config = factorize.TRANSFORMS[config.method](dense_params, config)
    search = []
  transform_seconds = time.perf_counter() - tic
  report = {
      "prefactorize_auc": dense["auc"],
      "prefactorize_logloss": dense["logloss"],
      "prefactorize_dense_param_count": param_count(dense_params),
      "reconstruction": factorize.reconstruction_report(dense_params, params),
      "transform_seconds": transform_seconds,
  }
  if search:
    report["auto_search"] = search
  state = _replace_params(state, params, dense_tx)
  if config.finetune_epochs:
    transformed = evaluate_params(params, splits.test)
    report["prefinetune_auc"] = transformed["auc"]
    report["prefinetune_logloss"] = transformed["logloss"]
  logging.info("factorized (%s): ranks %s", config.method, dict(config.ranks))
  return state, config, report


def with_ranks(model: CTRModel, state: TrainState, config: FactorizeConfig, ranks,
               dense_tx: optax.GradientTransformation) -> tuple[TrainState, FactorizeConfig]:
  """`state` with the structure `after_training` gave (`ranks`: its config's ranks), to
  restore a fine-tuning checkpoint into (the values are the checkpoint's)."""
  config = dataclasses.replace(_with_layers(model, config),
                               ranks=tuple((path, rank) for path, rank in ranks))
  params, config = factorize.svd.svd(state.params, config)
  return _replace_params(state, params, dense_tx), config


def factorize_summary(params, config: FactorizeConfig | None) -> dict:
  """metrics.json fields describing the network's low-rank structure."""
  layers = [rank_lib.LayerPlan(path, *rank_lib.layer_shape(layer), rank_lib.layer_rank(layer))
            for path, layer in rank_lib.iter_layers(params)]
  return {
      "factorize": config.method if config is not None else "none",
      "rank_fraction": config.rank_fraction if config is not None else None,
      "layer_ranks": {layer.name: layer.rank for layer in layers},
      "factorized_layers": [layer.to_json() for layer in layers],
  }


def inference_examples_per_sec(predict, params, tables, dataset: CTRDataset,
                               batch_size: int = INFERENCE_BATCH, repeats: int = 5,
                               sharding=None) -> float:
  """Examples/s of `predict` on one device-resident batch of `batch_size` rows.

  Rows of `dataset` are repeated cyclically to fill the batch; the first call
  (compilation) is not timed; the median of `repeats` timed calls is used.
  `sharding` places the batch (a mesh run's batch sharding).
  """
  index = np.arange(batch_size) % len(dataset)
  batch = jax.device_put(loader.make_batch(dataset, index, batch_size), sharding)
  jax.block_until_ready(predict(params, tables, batch["dense"], batch["cat"]))
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(predict(params, tables, batch["dense"], batch["cat"]))
    times.append(time.perf_counter() - tic)
  return batch_size / max(statistics.median(times), 1e-9)
