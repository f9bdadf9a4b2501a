"""`CTRModel`: a network and its embedding layout, initialised and applied as pure functions.

Variables are a plain dict: ``{"params": network params, "tables": stacked
embedding tables}``. Tables live outside ``params`` because they are updated
sparsely (see `jaxrec.train.sparse`) while ``params`` go through optax.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec.layers import embeddings
from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.models.registry import ModelConfig, build_network, embedding_config_for

Variables = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CTRModel:
  """A CTR network and the stacked embedding tables it reads, as pure functions.

  Attributes:
    network: the Linen module, ``(dense, rows, *, train) -> logits``.
    layout: the stacked embedding tables (`EmbeddingLayout`).
    num_dense: dense features per example.
    negative_sampling_rate: the share w of negative rows kept in training
      (`jaxrec.data.sampling`); inference logits (``train=False``) are shifted
      by log(w), so predicted probabilities are p / (p + (1 - p) / w).

  Build one with `CTRModel.create(model_config, embedding_config, vocab_sizes)`;
  `init(key)` returns ``{"params", "tables"}`` and `apply(variables, dense, cat)`
  the logits.
  """

  network: nn.Module
  layout: EmbeddingLayout
  num_dense: int = 13
  negative_sampling_rate: float = 1.0

  @classmethod
  def create(cls, model_config: ModelConfig, embedding_config: EmbeddingConfig,
             vocab_sizes: tuple[int, ...], num_dense: int = 13,
             negative_sampling_rate: float = 1.0,
             bag_lengths: tuple[int, ...] | None = None,
             poolings: tuple[str, ...] | None = None) -> "CTRModel":
    """The registered network `model_config.name` over tables of `vocab_sizes` rows
    (multi-hot fields: `bag_lengths` slots each, pooled by `poolings`)."""
    embedding_config = embedding_config_for(model_config, embedding_config)
    layout = EmbeddingLayout(embedding_config, tuple(int(v) for v in vocab_sizes),
                             None if bag_lengths is None else tuple(int(n) for n in bag_lengths),
                             None if poolings is None else tuple(poolings))
    layout.id_dtype  # pylint: disable=pointless-statement  # raises now if ids need int64
    return cls(build_network(model_config, layout), layout, num_dense,
               float(negative_sampling_rate))

  def init(self, rng: jax.Array) -> Variables:
    """Fresh variables: network params and embedding tables."""
    param_rng, table_rng, dropout_rng = jax.random.split(rng, 3)
    tables = self.layout.init_tables(table_rng)
    dense = jnp.zeros((2, self.num_dense), jnp.float32)
    cat = jnp.zeros((2, self.layout.num_slots), jnp.int32)
    rows = jax.eval_shape(lambda t: self.layout.pool(
        embeddings.lookup(t, self.layout.row_ids(cat)), cat), tables)
    rows = {k: jnp.zeros(v.shape, v.dtype) for k, v in rows.items()}
    params = self.network.init({"params": param_rng, "dropout": dropout_rng},
                               dense, rows, train=False)["params"]
    return {"params": params, "tables": tables}

  def apply_rows(self, params, dense, rows, *, cat=None, train=False, rngs=None) -> jax.Array:
    """Logits from already-gathered rows (the differentiable part); at inference
    corrected for negative down-sampling.

    With multi-hot fields the rows are one per slot and `cat` (the batch's ids)
    is needed to pool them (`EmbeddingLayout.pool`).
    """
    if self.layout.has_bags:
      if cat is None:
        raise ValueError("a layout with multi-hot fields pools its rows: pass cat=")
      rows = self.layout.pool(rows, cat)
    logits = self.network.apply({"params": params}, dense, rows, train=train, rngs=rngs)
    if not train and self.negative_sampling_rate != 1.0:
      logits = logits + math.log(self.negative_sampling_rate)
    return logits

  def apply(self, variables: Variables, dense: jax.Array, cat: jax.Array, *,
            train: bool = False, rngs=None) -> jax.Array:
    """Logits [B] from dense features [B, 13] and categorical ids [B, 26]."""
    rows = embeddings.lookup(variables["tables"], self.layout.row_ids(cat))
    return self.apply_rows(variables["params"], dense, rows, cat=cat, train=train, rngs=rngs)


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def param_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))
