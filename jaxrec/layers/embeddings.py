"""Embedding tables in the stacked layout, and the Linen module that combines rows.

All categorical columns share a few stacked arrays ("tables", each
``[total_rows, width]``) with per-column row offsets, so a lookup is one gather
per stacked array — never a Python loop over the 26 columns. The split of work:

* `EmbeddingLayout` (pure, no params): table shapes, their init, and
  `row_ids(cat) -> {table: int32 [B, L]}` — the rows a batch touches.
* `lookup(tables, ids)`: the gather, done outside the network so that training
  differentiates with respect to the gathered rows and updates the tables
  sparsely (`jaxrec.train.sparse`).
* `FieldEmbeddings` (Linen): gathered rows -> field vectors ``[B, F, d]``; it
  owns whatever dense parameters a strategy needs.

Strategies (`EmbeddingConfig.kind`): ``full`` (one row per category) and
``hash`` (ids modulo a bucket count).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Tables = Mapping[str, jax.Array]
RowIds = Mapping[str, jax.Array]

EMBEDDING_KINDS = ("full", "hash")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """How categorical columns become vectors.

  Attributes:
    kind: one of EMBEDDING_KINDS.
    dim: embedding dimension d.
    hash_buckets: rows per table for ``hash`` (tables smaller stay whole).
    first_order: also keep a width-1 table of per-category scalars (FM/AFM
      first-order terms), indexed like the main table.
  """

  kind: str = "full"
  dim: int = 16
  hash_buckets: int | None = None
  first_order: bool = False

  def __post_init__(self):
    if self.kind not in EMBEDDING_KINDS:
      raise ValueError(f"unknown embedding kind {self.kind!r}; choose from {EMBEDDING_KINDS}")
    if self.dim < 1:
      raise ValueError(f"embedding dim must be >= 1, got {self.dim}")
    if self.kind == "hash" and (self.hash_buckets is None or self.hash_buckets < 1):
      raise ValueError("embedding kind 'hash' needs hash_buckets >= 1")


@dataclasses.dataclass(frozen=True)
class EmbeddingLayout:
  """Stacked tables for given vocabulary sizes (hashable: a static jit argument)."""

  config: EmbeddingConfig
  vocab_sizes: tuple[int, ...]

  @property
  def num_fields(self) -> int:
    return len(self.vocab_sizes)

  @property
  def rows_per_field(self) -> tuple[int, ...]:
    if self.config.kind == "hash":
      return tuple(min(n, self.config.hash_buckets) for n in self.vocab_sizes)
    return self.vocab_sizes

  @property
  def offsets(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.rows_per_field)[:-1]]).astype(np.int32)

  def table_shapes(self) -> dict[str, tuple[int, int]]:
    total = int(sum(self.rows_per_field))
    shapes = {"embedding": (total, self.config.dim)}
    if self.config.first_order:
      shapes["first_order"] = (total, 1)
    return shapes

  def param_count(self) -> int:
    return int(sum(r * w for r, w in self.table_shapes().values()))

  def init_tables(self, rng: jax.Array) -> dict[str, jax.Array]:
    """Uniform(±1/sqrt(n)) per column (the DLRM reference's init); zeros for first order."""
    rows = self.rows_per_field
    scale = np.repeat(1.0 / np.sqrt(np.asarray(rows, np.float32)), rows)
    tables = {}
    for name, shape in self.table_shapes().items():
      if name == "first_order":
        tables[name] = jnp.zeros(shape, jnp.float32)
      else:
        tables[name] = _scaled_uniform(rng, shape, scale)
    return tables

  def row_ids(self, cat: jax.Array) -> dict[str, jax.Array]:
    """Global row of each (example, field) in every stacked table: int32 [B, F]."""
    cat = jnp.asarray(cat, jnp.int32)
    if self.config.kind == "hash":
      cat = cat % jnp.asarray(self.rows_per_field, jnp.int32)
    ids = cat + jnp.asarray(self.offsets)
    return {name: ids for name in self.table_shapes()}


def _scaled_uniform(rng: jax.Array, shape: tuple[int, int], row_scale: np.ndarray) -> jax.Array:
  """Uniform(-1, 1) rows scaled per row, fused in one jit (tables can be GBs)."""
  @jax.jit
  def make(key, scale):
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * scale[:, None]
  return make(rng, jnp.asarray(row_scale))


def lookup(tables: Tables, ids: RowIds) -> dict[str, jax.Array]:
  """Gathers the rows a batch touches: {name: [B, L, width]}."""
  return {name: jnp.take(tables[name], ids[name], axis=0) for name in ids}


class FieldEmbeddings(nn.Module):
  """Gathered rows -> one d-vector per field, [B, F, d].

  Full and hashed tables need no parameters here; compositional and
  mixed-dimension strategies combine or project their rows in this module.
  """

  layout: EmbeddingLayout

  @nn.compact
  def __call__(self, rows: Mapping[str, jax.Array]) -> jax.Array:
    return rows["embedding"]
