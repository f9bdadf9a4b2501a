"""jaxrec: functional DLRM-family CTR models in JAX.

The names below are the library's public surface; everything else lives in the
subpackages (`jaxrec.data`, `jaxrec.layers`, `jaxrec.models`, `jaxrec.factorize`,
`jaxrec.train`, `jaxrec.serving`) and may change between versions.

A minimal run on in-memory arrays::

  import jaxrec
  config = jaxrec.TrainConfig(model=jaxrec.ModelConfig(name="afm"), epochs=1)
  metrics = jaxrec.fit(config, "runs/afm", jaxrec.generate_synthetic(
      jaxrec.SyntheticConfig(num_rows=20_000, max_vocab=1_000)))
  run = jaxrec.load_run("runs/afm")
  params, factorize_config = jaxrec.factorize_svd(
      run.variables["params"], jaxrec.FactorizeConfig(method="svd", rank_fraction=0.5))

Names are imported on first use, so ``import jaxrec`` does not import jax.
"""

from __future__ import annotations

import importlib
import importlib.metadata

try:
  __version__ = importlib.metadata.version("jaxrec")
except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
  __version__ = "0.0.0+unknown"

# Public name -> (module, attribute in it). Grouped as the docs are.
_EXPORTS = {
    # Models and their configuration.
    "ModelConfig": ("jaxrec.models.registry", "ModelConfig"),
    "CTRModel": ("jaxrec.models.ctr_model", "CTRModel"),
    "MODELS": ("jaxrec.models.registry", "MODELS"),
    "build_network": ("jaxrec.models.registry", "build_network"),
    "DLRM": ("jaxrec.models.dlrm", "DLRM"),
    "AFM": ("jaxrec.models.afm", "AFM"),
    "AFMClassic": ("jaxrec.models.afm_classic", "AFMClassic"),
    "FM": ("jaxrec.models.fm", "FM"),
    "DeepFM": ("jaxrec.models.deepfm", "DeepFM"),
    "DCNv2": ("jaxrec.models.dcnv2", "DCNv2"),
    "DLRMDCN": ("jaxrec.models.dlrm_dcn", "DLRMDCN"),
    "AutoInt": ("jaxrec.models.autoint", "AutoInt"),
    "register_model": ("jaxrec.models.registry", "register"),
    "model_size": ("jaxrec.models.size", "model_size"),
    "mean_attention": ("jaxrec.models.attention_map", "mean_attention"),
    "save_heatmap": ("jaxrec.models.attention_map", "save_heatmap"),
    # Layers.
    "EmbeddingConfig": ("jaxrec.layers.embeddings", "EmbeddingConfig"),
    "EmbeddingLayout": ("jaxrec.layers.embeddings", "EmbeddingLayout"),
    "Dense": ("jaxrec.layers.mlp", "Dense"),
    "MLP": ("jaxrec.layers.mlp", "MLP"),
    "qr_from_full": ("jaxrec.layers.qr_from_full", "qr_from_full"),
    # Low-rank factorization: pure transforms (params, config) -> (params', config').
    "FactorizeConfig": ("jaxrec.factorize.rank", "FactorizeConfig"),
    "factorize_before": ("jaxrec.factorize.before", "before"),
    "factorize_svd": ("jaxrec.factorize.svd", "svd"),
    "factorize_nmf": ("jaxrec.factorize.nmf", "nmf"),
    "factorize_auto": ("jaxrec.factorize.auto", "auto"),
    "rank_rule": ("jaxrec.factorize.rank", "rank_rule"),
    "layer_ranks": ("jaxrec.factorize.rank", "layer_ranks"),
    # Data.
    "CTRDataset": ("jaxrec.data.dataset", "CTRDataset"),
    "Splits": ("jaxrec.data.dataset", "Splits"),
    "DataConfig": ("jaxrec.data.sources", "DataConfig"),
    "load_splits": ("jaxrec.data.sources", "load_splits"),
    "Schema": ("jaxrec.data.schema", "Schema"),
    "load_schema": ("jaxrec.data.schema", "load"),
    "SyntheticConfig": ("jaxrec.data.synthetic", "SyntheticConfig"),
    "generate_synthetic": ("jaxrec.data.synthetic", "generate"),
    "iterate_batches": ("jaxrec.data.loader", "iterate_batches"),
    # Training.
    "TrainConfig": ("jaxrec.train.loop", "TrainConfig"),
    "train_and_evaluate": ("jaxrec.train.loop", "train_and_evaluate"),
    "fit": ("jaxrec.train.loop", "fit"),
    "evaluate": ("jaxrec.train.loop", "evaluate"),
    "TrainState": ("jaxrec.train.step", "TrainState"),
    "create_train_state": ("jaxrec.train.step", "create_train_state"),
    "make_train_step": ("jaxrec.train.step", "make_train_step"),
    "make_predict": ("jaxrec.train.step", "make_predict"),
    "dense_optimizer": ("jaxrec.train.step", "dense_optimizer"),
    "sparse_optimizer": ("jaxrec.train.sparse", "create"),
    "MeshConfig": ("jaxrec.train.sharding", "MeshConfig"),
    "ScheduleConfig": ("jaxrec.train.schedules", "ScheduleConfig"),
    # Metrics (numpy, whole split).
    "auc": ("jaxrec.train.metrics", "auc"),
    "logloss": ("jaxrec.train.metrics", "logloss"),
    "accuracy": ("jaxrec.train.metrics", "accuracy"),
    "ctr_metrics": ("jaxrec.train.metrics", "ctr_metrics"),
    # Run directories and serving.
    "load_run": ("jaxrec.train.run_dir", "load_run"),
    "Run": ("jaxrec.train.run_dir", "Run"),
    "ModelSpec": ("jaxrec.train.run_dir", "ModelSpec"),
    "export_run": ("jaxrec.serving.export", "export_run"),
    "ServingModel": ("jaxrec.serving.artifact", "ServingModel"),
    # Figures.
    "write_report": ("jaxrec.provenance", "write_report"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
  try:
    module_name, attribute = _EXPORTS[name]
  except KeyError:
    raise AttributeError(f"module 'jaxrec' has no attribute {name!r}") from None
  value = getattr(importlib.import_module(module_name), attribute)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
