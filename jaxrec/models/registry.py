"""Model hyperparameters and the name -> network registry behind `--model`."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.embeddings import EmbeddingLayout
from jaxrec.models import dlrm


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of every registered model (each reads the ones it uses).

  Attributes:
    name: registered model name.
    bottom_mlp / top_mlp: MLP layer sizes.
    interaction: DLRM interaction, "dot" or "cat".
    self_interaction: DLRM dot interaction includes <t_i, t_i>.
    compute_dtype: "float32" or "bfloat16" for MLP matmuls.
  """

  name: str = "dlrm"
  bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
  top_mlp: tuple[int, ...] = (512, 256, 1)
  interaction: str = "dot"
  self_interaction: bool = False
  compute_dtype: str = "float32"

  @property
  def dtype(self):
    return None if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)


def _build_dlrm(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  if config.interaction == "dot" and config.bottom_mlp[-1] != layout.config.dim:
    raise ValueError(f"dlrm with dot interaction needs the bottom MLP to end in the"
                     f" embedding dim {layout.config.dim}, got {config.bottom_mlp[-1]}")
  if config.top_mlp[-1] != 1:
    raise ValueError(f"the top MLP must end in 1 output, got {config.top_mlp[-1]}")
  return dlrm.DLRM(layout=layout, bottom_mlp=config.bottom_mlp, top_mlp=config.top_mlp,
                   interaction=config.interaction, self_interaction=config.self_interaction,
                   dtype=config.dtype)


# name -> (config, layout) -> Linen network with signature (dense, rows, *, train) -> logits.
MODELS: dict[str, Callable[[ModelConfig, EmbeddingLayout], nn.Module]] = {
    "dlrm": _build_dlrm,
}


def build_network(config: ModelConfig, layout: EmbeddingLayout) -> nn.Module:
  if config.name not in MODELS:
    raise ValueError(f"unknown model {config.name!r}; choose from {sorted(MODELS)}")
  return MODELS[config.name](config, layout)
