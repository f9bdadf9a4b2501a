"""Model hyperparameters and the name -> network registry behind `--model`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax.numpy as jnp
from flax import linen as nn

from jaxrec.kernels import cpu as cpu_kernels
from jaxrec.layers import afm as afm_layer
from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.models import afm, afm_classic, dcnv2, deepfm, dlrm, dlrm_dcn, fm


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of every registered model (each reads the ones it uses).

  Attributes:
    name: registered model name.
    bottom_mlp / top_mlp: MLP layer sizes.
    interaction: DLRM interaction, "dot" or "cat".
    self_interaction: DLRM dot interaction includes <t_i, t_i>.
    compute_dtype: "float32" or "bfloat16" for MLP matmuls.
    attention_factor: AFM attention network size t (afm, afm_classic).
    dropout: dropout on the AFM/FM pooled pairwise layer (afm, afm_classic, fm).
    attention_l2: L2 weight on the AFM attention kernel W (0 = off).
    cross_layers: DCN-V2 cross layers (dcnv2, dlrm_dcn).
    cross_rank: init rank of the cross kernels (None = full; dcnv2, dlrm_dcn).
    dcn_structure: "stacked" or "parallel" cross and deep networks (dcnv2).
    deep_mlp: hidden sizes of the deep network (deepfm, dcnv2).
    cpu_kernels: the pairwise layers (dot interaction, AFM attention) as the
      fused CPU kernels of `jaxrec.kernels.cpu`: None = where they run (a CPU
      backend, AVX-512, built), False = their XLA formulation, True = required.
      Resolved when the network is built (outside jit); the built network holds
      the answer as a static field. Not part of what a checkpoint must match.
  """

  name: str = "dlrm"
  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
  top_mlp: tuple[int, ...] = (512, 256, 1)
  interaction: str = "dot"
  self_interaction: bool = False
  compute_dtype: str = "float32"
  attention_factor: int = 16
  dropout: float = 0.5
  attention_l2: float = 0.0
  cross_layers: int = 3
  cross_rank: int | None = None
  dcn_structure: str = "stacked"
  deep_mlp: tuple[int, ...] = (512, 256, 64)
  cpu_kernels: bool | None = None

  @property
  def dtype(self):
    return None if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)


def _check_bottom_top(config: ModelConfig, layout: EmbeddingLayout, what: str,
                      bottom_to_dim: bool = True) -> None:
  """DLRM-style MLPs: the bottom ends in the embedding dim (when `bottom_to_dim`), the top in 1."""
  if bottom_to_dim and config.bottom_mlp[-1] != layout.config.dim:
    raise ValueError(f"{what} needs the bottom MLP to end in the embedding dim"
                     f" {layout.config.dim}, got {config.bottom_mlp[-1]}")
  if config.top_mlp[-1] != 1:
    raise ValueError(f"the top MLP must end in 1 output, got {config.top_mlp[-1]}")


def _build_dlrm(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  _check_bottom_top(config, layout, "dlrm with dot interaction",
                    bottom_to_dim=config.interaction == "dot")
  return dlrm.DLRM(layout=layout, bottom_mlp=config.bottom_mlp, top_mlp=config.top_mlp,
                   interaction=config.interaction, self_interaction=config.self_interaction,
                   dtype=config.dtype, kernels=cpu_kernels.resolve(config.cpu_kernels))


def _check_afm(config: ModelConfig, layout: EmbeddingLayout) -> None:
  if not layout.config.first_order:
    raise ValueError(f"{config.name} needs first-order rows: use"
                     " registry.embedding_config_for(model_config, embedding_config)")
  if config.attention_factor < 1:
    raise ValueError(f"attention_factor must be >= 1, got {config.attention_factor}")
  if not 0.0 <= config.dropout < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")


def _build_afm(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  _check_afm(config, layout)
  if config.bottom_mlp[-1] != layout.config.dim:
    raise ValueError(f"afm needs the bottom MLP to end in the embedding dim"
                     f" {layout.config.dim}, got {config.bottom_mlp[-1]}")
  return afm.AFM(layout=layout, bottom_mlp=config.bottom_mlp,
                 attention_factor=config.attention_factor, dropout=config.dropout,
                 dtype=config.dtype, kernels=cpu_kernels.resolve(config.cpu_kernels))


def _build_afm_classic(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  _check_afm(config, layout)
  return afm_classic.AFMClassic(layout=layout, attention_factor=config.attention_factor,
                                dropout=config.dropout, dtype=config.dtype,
                                kernels=cpu_kernels.resolve(config.cpu_kernels))


def _build_fm(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  _check_afm(config, layout)
  return fm.FM(layout=layout, dropout=config.dropout, dtype=config.dtype)


def _check_cross(config: ModelConfig) -> None:
  if config.cross_layers < 0:
    raise ValueError(f"cross_layers must be >= 0, got {config.cross_layers}")
  if config.cross_rank is not None and config.cross_rank < 1:
    raise ValueError(f"cross_rank must be >= 1 or None, got {config.cross_rank}")


def _build_deepfm(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  if not layout.config.first_order:
    raise ValueError("deepfm needs first-order rows: use"
                     " registry.embedding_config_for(model_config, embedding_config)")
  return deepfm.DeepFM(layout=layout, deep_mlp=config.deep_mlp, dtype=config.dtype)


def _build_dcnv2(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  _check_cross(config)
  if config.dcn_structure not in dcnv2.DCN_STRUCTURES:
    raise ValueError(f"dcn_structure must be one of {dcnv2.DCN_STRUCTURES},"
                     f" got {config.dcn_structure!r}")
  return dcnv2.DCNv2(layout=layout, cross_layers=config.cross_layers,
                     cross_rank=config.cross_rank, structure=config.dcn_structure,
                     deep_mlp=config.deep_mlp, dtype=config.dtype)


def _build_dlrm_dcn(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  _check_cross(config)
  _check_bottom_top(config, layout, "dlrm_dcn")
  return dlrm_dcn.DLRMDCN(layout=layout, bottom_mlp=config.bottom_mlp, top_mlp=config.top_mlp,
                          cross_layers=config.cross_layers, cross_rank=config.cross_rank,
                          dtype=config.dtype)


# name -> (config, layout) -> Linen network with signature (dense, rows, *, train) -> logits.
MODELS: dict[str, Callable[[ModelConfig, EmbeddingLayout], nn.Module]] = {
    "dlrm": _build_dlrm,
    "afm": _build_afm,
    "afm_classic": _build_afm_classic,
    "fm": _build_fm,
    "deepfm": _build_deepfm,
    "dcnv2": _build_dcnv2,
    "dlrm_dcn": _build_dlrm_dcn,
}

# Models with first-order terms: their layouts need the width-1 "first_order" table.
FIRST_ORDER_MODELS = frozenset({"afm", "afm_classic", "fm", "deepfm"})

# Dense-parameter optimizer each model trains with when none is asked for: plain SGD for
# the DLRM family (the reference's), Adam for DeepFM and DCN-V2 as in their papers (their
# unnormalised FM sum and multiplicative cross layers diverge under SGD at lr 0.1).
DEFAULT_OPTIMIZER = {"deepfm": "adam", "dcnv2": "adam"}
DEFAULT_LEARNING_RATE = {"sgd": 0.1, "adam": 1e-3, "adagrad": 0.01}


def default_optimizer(model_name: str) -> tuple[str, float]:
  """(optimizer, learning rate) a model trains with by default."""
  name = DEFAULT_OPTIMIZER.get(model_name, "sgd")
  return name, DEFAULT_LEARNING_RATE[name]


def embedding_config_for(config: ModelConfig, embedding: EmbeddingConfig) -> EmbeddingConfig:
  """`embedding` with the tables model `config` needs (first-order scalars for AFM/FM)."""
  if config.name in FIRST_ORDER_MODELS and not embedding.first_order:
    return dataclasses.replace(embedding, first_order=True)
  return embedding


def build_regularizer(config: ModelConfig) -> Callable | None:
  """`params -> penalty` added to the training loss, or None (AFM's L2 on the attention W)."""
  if config.attention_l2 > 0 and config.name in ("afm", "afm_classic"):
    return functools.partial(afm_layer.attention_l2, weight=config.attention_l2)
  return None


def build_network(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  """The Linen network registered as `config.name`, over the tables of `layout`."""
  if config.name not in MODELS:
    raise ValueError(f"unknown model {config.name!r}; choose from {sorted(MODELS)}")
  return MODELS[config.name](config, layout)
