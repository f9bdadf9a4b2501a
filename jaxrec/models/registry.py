"""The model registry behind `--model`: each model file registers itself here.

A model file (e.g. `jaxrec.models.dlrm`) defines its network, a frozen config
dataclass of its own hyperparameters (validated in its ``__post_init__``) and
calls `register` with a builder and its facts: whether it needs first-order
rows, the dense optimizer it trains with by default, and an optional loss
regularizer. Everything else is derived from `MODELS`: `ModelConfig` (the
flat union of every registered config's fields, plus ``name``,
``compute_dtype`` and ``cpu_kernels``; what config.json and model_spec.json
hold), the experiments' model lists and the generated flags. Adding a model is
one new file plus its name in `MODEL_MODULES` (docs/adding_a_model.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.kernels import cpu as cpu_kernels
from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.provenance import host_cpu

# The modules that register models, in `--model` listing order.
MODEL_MODULES = ("dlrm", "afm", "afm_classic", "fm", "deepfm", "dcnv2", "dlrm_dcn", "autoint")

# (own config, layout, options) -> Linen network with signature (dense, rows, *, train) -> logits.
Builder = Callable[[Any, EmbeddingLayout, "NetworkOptions"], nn.Module]
# own config -> `params -> penalty` added to the training loss, or None.
RegularizerFactory = Callable[[Any], Callable | None]

DEFAULT_LEARNING_RATE = {"sgd": 0.1, "adam": 1e-3, "adagrad": 0.01}
# Table learning rate paired with a dense optimizer's default rate (others: the same rate).
DEFAULT_EMBEDDING_LEARNING_RATE = {"adagrad": 0.02}


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
  """How every network computes (not what it is).

  Attributes:
    dtype: matmul compute dtype (None = float32).
    kernels: the pairwise layers as the fused CPU kernels (`jaxrec.kernels.cpu`),
      resolved from ``ModelConfig.cpu_kernels`` outside jit.
  """

  dtype: Any = None
  kernels: bool = False


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One registered model.

  Attributes:
    name: the `--model` name.
    config: its frozen hyperparameter dataclass (defaults = the paper's / reference's).
    build: `Builder`; checks what depends on the embedding layout.
    first_order: its layouts need the width-1 "first_order" table.
    optimizer: dense optimizer it trains with when none is asked for.
    regularizer: `RegularizerFactory`, or None.
  """

  name: str
  config: type
  build: Builder
  first_order: bool = False
  optimizer: str = "sgd"
  regularizer: RegularizerFactory | None = None


MODELS: dict[str, ModelEntry] = {}


def register(name: str, config: type, build: Builder, *, first_order: bool = False,
             optimizer: str = "sgd", regularizer: RegularizerFactory | None = None) -> None:
  """Called by each model module at import (see the module docstring)."""
  if optimizer not in DEFAULT_LEARNING_RATE:
    raise ValueError(f"{name}: unknown default optimizer {optimizer!r}")
  MODELS[name] = ModelEntry(name, config, build, first_order, optimizer, regularizer)


def _load_models() -> None:
  """Imports the model modules (they register) and orders `MODELS` as `MODEL_MODULES`."""
  for module in MODEL_MODULES:
    importlib.import_module(f"jaxrec.models.{module}")
  rank = {f"jaxrec.models.{m}": i for i, m in enumerate(MODEL_MODULES)}
  ordered = sorted(MODELS.values(), key=lambda e: rank.get(e.config.__module__, len(rank)))
  MODELS.clear()
  MODELS.update((e.name, e) for e in ordered)


def _union_fields() -> list[tuple[str, Any, dataclasses.Field]]:
  """Every registered config's fields once (a shared name must share its type and default)."""
  seen: dict[str, tuple[Any, dataclasses.Field, str]] = {}
  for entry in MODELS.values():
    for f in dataclasses.fields(entry.config):
      if f.name in seen:
        kind, first, owner = seen[f.name]
        if (kind, first.default) != (f.type, f.default):
          raise TypeError(f"{entry.name}.{f.name} and {owner}.{f.name} differ in type or"
                          " default: rename one")
      else:
        seen[f.name] = (f.type, f, entry.name)
  return [(name, kind, dataclasses.field(default=f.default)) for name, (kind, f, _) in seen.items()]


COMPUTE_DTYPES = ("float32", "bfloat16")
# CPU features with bfloat16 matmul units (AMX tiles, AVX-512 BF16 dot products).
BFLOAT16_CPU_FEATURES = ("amx_bf16", "avx512_bf16")


def _users(field_name: str) -> list[str]:
  return [e.name for e in MODELS.values()
          if field_name in {f.name for f in dataclasses.fields(e.config)}]


def _own_config(self) -> Any:
  """This config's fields that model `name` reads, as its own config dataclass."""
  entry = MODELS[self.name]
  return entry.config(**{f.name: getattr(self, f.name) for f in dataclasses.fields(entry.config)})


def _validate(self) -> None:
  if self.name not in MODELS:
    raise ValueError(f"unknown model {self.name!r}; choose from {', '.join(MODELS)}")
  if self.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}"
                     " (resolve 'auto' with resolve_compute_dtype)")
  self.own()  # the model's own validation


def _make_model_config() -> type:
  _load_models()
  fields = [("name", str, dataclasses.field(default="dlrm")), *_union_fields(),
            ("compute_dtype", str, dataclasses.field(default="float32")),
            ("cpu_kernels", "bool | None", dataclasses.field(default=None))]
  shared = "\n".join(f"    {name}: used by {', '.join(_users(name))}."
                     for name, _, _ in fields[1:-2])
  doc = f"""Hyperparameters of a model: ``name`` and the fields of its registered config.

  Generated from `MODELS`: each field belongs to the model configs that declare it
  (documented there); a model reads only its own (`own()`).

  Attributes:
    name: registered model name.
{shared}
    compute_dtype: "float32" or "bfloat16" for MLP matmuls (float32 unless asked;
      `default_compute_dtype()` is what the experiments' "auto" picks).
    cpu_kernels: the pairwise layers (dot interaction, AFM attention) as the
      fused CPU kernels of `jaxrec.kernels.cpu`: None = where they run (a CPU
      backend, AVX-512, built), False = their XLA formulation, True = required.
      Resolved when the network is built (outside jit); the built network holds
      the answer as a static field. Not part of what a checkpoint must match.
  """
  cls = dataclasses.make_dataclass(
      "ModelConfig", fields, frozen=True,
      namespace={"__doc__": doc, "__post_init__": _validate, "own": _own_config,
                 "dtype": property(lambda self: None if self.compute_dtype == "float32"
                                   else jnp.dtype(self.compute_dtype))})
  cls.__module__ = __name__
  return cls


ModelConfig = _make_model_config()

# Derived views kept for callers written before the registry held entries.
FIRST_ORDER_MODELS = frozenset(name for name, e in MODELS.items() if e.first_order)
DEFAULT_OPTIMIZER = {name: e.optimizer for name, e in MODELS.items() if e.optimizer != "sgd"}


def default_compute_dtype(backend: str | None = None, cpu_features=None) -> str:
  """The MLP compute dtype where nothing asks for one: "bfloat16" on accelerators and
  on CPUs with bfloat16 matmul units, "float32" elsewhere.

  There bfloat16 operands with float32 accumulation train to the same test AUC as
  float32 (docs/bf16_quality.md) at a fraction of the matmul time; a CPU without
  those units emulates bfloat16 and is faster in float32. `backend` defaults to
  JAX's, `cpu_features` to the host's (`jaxrec.provenance.host_cpu`).
  """
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "bfloat16"
  if cpu_features is None:
    cpu_features = host_cpu()["features"]
  return "bfloat16" if set(BFLOAT16_CPU_FEATURES) & set(cpu_features) else "float32"


def resolve_compute_dtype(name: str) -> str:
  """A requested compute dtype: "auto" -> `default_compute_dtype()`, others as given."""
  return default_compute_dtype() if name == "auto" else name


def default_optimizer(model_name: str) -> tuple[str, float]:
  """(optimizer, learning rate) a model trains with by default."""
  name = MODELS[model_name].optimizer if model_name in MODELS else "sgd"
  return name, DEFAULT_LEARNING_RATE[name]


def embedding_config_for(config: ModelConfig, embedding: EmbeddingConfig) -> EmbeddingConfig:
  """`embedding` with the tables model `config` needs (first-order scalars for AFM/FM)."""
  if MODELS[config.name].first_order and not embedding.first_order:
    return dataclasses.replace(embedding, first_order=True)
  return embedding


def build_regularizer(config: ModelConfig) -> Callable | None:
  """`params -> penalty` added to the training loss, or None (AFM's L2 on the attention W)."""
  factory = MODELS[config.name].regularizer
  return None if factory is None else factory(config.own())


def build_network(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  """The registered model's network (kernels resolved here, outside jit)."""
  entry = MODELS[config.name]
  if entry.first_order and not layout.config.first_order:
    raise ValueError(f"{config.name} needs first-order rows: use"
                     " registry.embedding_config_for(model_config, embedding_config)")
  options = NetworkOptions(config.dtype, cpu_kernels.resolve(config.cpu_kernels))
  return entry.build(config.own(), layout, options)


def check_bottom_top(bottom_mlp, top_mlp, layout: EmbeddingLayout, what: str,
                     bottom_to_dim: bool = True) -> None:
  """DLRM-style MLPs: the bottom ends in the embedding dim (when `bottom_to_dim`), the top in 1."""
  if bottom_to_dim and bottom_mlp[-1] != layout.config.dim:
    raise ValueError(f"{what} needs the bottom MLP to end in embedding_dim"
                     f" {layout.config.dim}, got {bottom_mlp[-1]}")
  if top_mlp is not None and top_mlp[-1] != 1:
    raise ValueError(f"the top MLP must end in 1 output, got {top_mlp[-1]}")
