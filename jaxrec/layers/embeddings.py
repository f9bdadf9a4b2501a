"""Embedding tables in the stacked layout, and the Linen module that combines rows.

Categorical columns share a few stacked arrays ("tables", each
``[total_rows, width]``) with per-column row offsets, so a lookup is one gather
per stacked array — never a Python loop over the 26 columns. The split of work:

* `EmbeddingLayout` (pure, no params): which stacked tables exist
  (`TableSpec`), their shapes and init, and `row_ids(cat) -> {table: int32
  [B, L]}` — the rows a batch touches.
* `lookup(tables, ids)`: the gather, done outside the network so that training
  differentiates with respect to the gathered rows and updates the tables
  sparsely (`jaxrec.train.sparse`), whatever the strategy.
* `FieldEmbeddings` (Linen): gathered rows -> field vectors ``[B, F, d]``; it
  owns whatever dense parameters a strategy needs (mixed-dim projections).

Strategies (`EmbeddingConfig.kind`):

* ``full``: one row per category (table ``embedding``).
* ``hash``: ids modulo a bucket count; tables smaller than it stay whole.
* ``qr``: quotient-remainder compositional embeddings (Shi et al. 2019,
  arXiv:1909.02107). A column with more than ``qr_threshold`` categories gets
  ``ceil(n / c)`` rows in table ``quotient`` (row ``id // c``) and ``c`` rows
  in table ``remainder`` (row ``id % c``), combined by ``mult``, ``add`` or
  ``concat``. The two partitions are complementary — (id // c, id % c)
  determines id — so every category keeps a distinct vector. ``concat``
  splits d into ``d - d // 2`` quotient and ``d // 2`` remainder columns so the
  output stays d wide for every model (the DLRM reference instead doubles it).
  Smaller columns stay whole in ``embedding``.
* ``mixed_dim``: mixed-dimension embeddings (Ginart et al. 2019,
  arXiv:1909.11810) with the DLRM reference's alpha-power rule
  (`mixed_dimensions`): columns with more than ``md_threshold`` categories get
  smaller widths; columns of equal width share one stacked table
  (``embedding_dim{k}``) and a learned per-column projection ``[k, d]``
  (``projection_dim{k}`` in `FieldEmbeddings`); width-d columns stay in
  ``embedding``.

Multi-hot (bag) fields: with ``bag_lengths``, field j owns ``bag_lengths[j]``
consecutive slots of ``cat`` (unused slots hold a negative id). `row_ids` gives
every slot its row (unused slots: `PAD_ROW`, past every table, so the gather
returns zeros and the sparse update drops them); `EmbeddingLayout.pool` sums (or
averages) each field's gathered rows into one row, after the gather and inside the
differentiated function, so the gradient reaches every gathered row and duplicate
ids are summed by the sparse update like any other. An empty bag pools to zero.

Row ids are int32 while every stacked table has fewer than 2^31 - 1 rows, else
int64 (which needs JAX's 64-bit mode, ``JAX_ENABLE_X64=1``; without it the
layout refuses, naming the table). Offsets are computed in int64 on the host,
so they never wrap.

Optional ``first_order`` (every kind): a width-1 table of per-category scalars
for FM/AFM first-order terms, gathered as ``rows["first_order"]`` ``[B, F,
1]`` and indexed by the column's primary row: the category (full, mixed_dim,
qr columns at or below the threshold), its hash bucket (hash), or its quotient
row (qr columns above the threshold, so c categories share a bias, as in
hashing).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Tables = Mapping[str, jax.Array]
RowIds = Mapping[str, jax.Array]

EMBEDDING_KINDS = ("full", "hash", "qr", "mixed_dim")
QR_OPERATIONS = ("mult", "add", "concat")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """How categorical columns become vectors.

  Attributes:
    kind: one of EMBEDDING_KINDS.
    dim: embedding dimension d (every kind outputs d per column).
    hash_buckets: rows per table for ``hash`` (tables smaller stay whole).
    first_order: also keep a width-1 table of per-category scalars (FM/AFM
      first-order terms), indexed by each column's primary row.
    qr_collisions: c, categories per quotient row for ``qr``.
    qr_operation: ``mult``, ``add`` or ``concat`` (how the two rows combine).
    qr_threshold: ``qr`` compresses only columns with more rows than this.
    md_temperature: alpha of the ``mixed_dim`` power rule (0 = all d wide).
    md_threshold: ``mixed_dim`` shrinks only columns with more rows than this.
    md_round_dims: round ``mixed_dim`` widths to the nearest power of 2.
  """

  kind: str = "full"
  dim: int = 16
  hash_buckets: int | None = None
  first_order: bool = False
  qr_collisions: int = 4
  qr_operation: str = "mult"
  qr_threshold: int = 200
  md_temperature: float = 0.3
  md_threshold: int = 200
  md_round_dims: bool = False

  def __post_init__(self):
    if self.kind not in EMBEDDING_KINDS:
      raise ValueError(f"unknown embedding kind {self.kind!r}; choose from {EMBEDDING_KINDS}")
    if self.dim < 1:
      raise ValueError(f"embedding dim must be >= 1, got {self.dim}")
    if self.kind == "hash" and (self.hash_buckets is None or self.hash_buckets < 1):
      raise ValueError("embedding kind 'hash' needs hash_buckets >= 1")
    if self.qr_operation not in QR_OPERATIONS:
      raise ValueError(f"unknown qr operation {self.qr_operation!r}; choose from {QR_OPERATIONS}")
    if self.qr_collisions < 1:
      raise ValueError(f"qr_collisions must be >= 1, got {self.qr_collisions}")
    if self.kind == "qr" and self.qr_operation == "concat" and self.dim < 2:
      raise ValueError("qr concat splits the dim between two tables: needs dim >= 2")
    if self.md_temperature < 0:
      raise ValueError(f"md_temperature must be >= 0, got {self.md_temperature}")


def mixed_dimensions(rows: Sequence[int], base_dim: int, temperature: float, *,
                     popularity: Sequence[float] | None = None,
                     round_pow2: bool = False) -> tuple[int, ...]:
  """Per-table widths from the alpha-power rule of mixed-dimension embeddings.

  Matches the DLRM reference's ``md_solver`` with ``d0``: the table with the
  fewest rows per query (``rows / popularity``) gets ``base_dim``; the others
  get ``round(base_dim * (n_min / n) ** temperature)``, at least 1, optionally
  rounded to the nearest power of 2. Widths are capped at ``base_dim`` (the
  reference rejects wider ones).

  Args:
    rows: rows of each table.
    base_dim: width of the smallest table (the common dim d).
    temperature: alpha >= 0; larger shrinks big tables more.
    popularity: average lookups of each table per example (None: 1 each, as
      for one-hot Criteo columns — the rule is then purely size-based).
    round_pow2: round widths to powers of 2.

  Returns:
    One width per table, in the order of `rows`.
  """
  n = np.asarray(rows, np.float64)
  if popularity is not None:
    n = n / np.asarray(popularity, np.float64)
  smallest = int(np.argmin(n))
  dims = np.maximum(np.round(base_dim * (n[smallest] / n) ** temperature), 1.0)
  dims[smallest] = base_dim
  if round_pow2:
    dims = 2.0 ** np.round(np.log2(dims))
  return tuple(int(d) for d in np.minimum(dims, base_dim))


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One stacked array: a block of rows for each of `fields`, in order.

  A category id of field ``fields[i]`` maps to row
  ``offset[i] + (id // divisors[i]) % moduli[i]`` (``moduli`` None: no modulus).
  Rows start at ``center + Uniform(-1, 1) * scales[i]``.
  """

  name: str
  width: int
  fields: tuple[int, ...]
  rows: tuple[int, ...]
  divisors: tuple[int, ...]
  moduli: tuple[int, ...] | None
  scales: tuple[float, ...]
  center: float = 0.0

  @property
  def num_rows(self) -> int:
    return int(sum(self.rows))

  @property
  def offsets(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)[:-1]]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FieldGroup:
  """Fields whose vectors are made the same way, by `FieldEmbeddings`.

  combine: ``rows`` (the gathered row is the vector), ``mult`` / ``add`` /
  ``concat`` (quotient and remainder rows), or ``project`` (a per-field
  ``[width, d]`` projection of the gathered row).
  """

  fields: tuple[int, ...]
  tables: tuple[str, ...]
  combine: str
  width: int


POOLINGS = ("sum", "mean")
INT32_ROWS = (1 << 31) - 1  # ids of a table with more rows need int64


@dataclasses.dataclass(frozen=True)
class EmbeddingLayout:
  """Stacked tables for given vocabulary sizes (hashable: a static jit argument).

  bag_lengths: slots of each field in ``cat`` (None: one each); poolings: "sum"
  or "mean" per field (None: all "sum").
  """

  config: EmbeddingConfig
  vocab_sizes: tuple[int, ...]
  bag_lengths: tuple[int, ...] | None = None
  poolings: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.bag_lengths is not None and (len(self.bag_lengths) != len(self.vocab_sizes)
                                         or min(self.bag_lengths) < 1):
      raise ValueError(f"bag_lengths {self.bag_lengths}: need one length >= 1 per field")
    if self.poolings is not None and (len(self.poolings) != len(self.vocab_sizes)
                                      or not set(self.poolings) <= set(POOLINGS)):
      raise ValueError(f"poolings {self.poolings}: need one of {POOLINGS} per field")

  @property
  def slots(self) -> tuple[int, ...]:
    """Slots of each field in ``cat``."""
    return self.bag_lengths or (1,) * self.num_fields

  @property
  def num_slots(self) -> int:
    return int(sum(self.slots))

  @property
  def has_bags(self) -> bool:
    return any(length != 1 for length in self.slots)

  def _slot_index(self, fields: Sequence[int]) -> np.ndarray:
    """The slots of `fields`, in order."""
    starts = np.concatenate([[0], np.cumsum(self.slots)[:-1]])
    return np.concatenate([np.arange(starts[j], starts[j] + self.slots[j]) for j in fields])

  @functools.cached_property
  def id_dtype(self):
    """int32 while every table's rows (and `PAD_ROW`) fit it, else int64 (64-bit mode).

    Raises:
      ValueError naming the table when int64 is needed and JAX's 64-bit mode is off.
    """
    largest = max(self.tables, key=lambda t: t.num_rows)
    if largest.num_rows < INT32_ROWS:
      return jnp.int32
    if not jax.config.jax_enable_x64:
      raise ValueError(
          f"embedding table {largest.name!r} stacks {largest.num_rows:,} rows: its row ids"
          " pass int32 (2^31 - 1); run with JAX_ENABLE_X64=1 for int64 ids, or cap the"
          " tables (--max_rows_per_table, --vocabulary=hash:N)")
    return jnp.int64

  @property
  def pad_row(self) -> int:
    """The row id of an unused slot: past every table (gathers zeros, updates nothing)."""
    return int(jnp.iinfo(self.id_dtype).max)

  @property
  def num_fields(self) -> int:
    return len(self.vocab_sizes)

  def _compressed(self, threshold: int) -> tuple[int, ...]:
    return tuple(j for j, n in enumerate(self.vocab_sizes) if n > threshold)

  @functools.cached_property
  def field_dims(self) -> tuple[int, ...]:
    """Stored width of each field's rows (mixed_dim: from `mixed_dimensions`)."""
    c = self.config
    if c.kind != "mixed_dim":
      return (c.dim,) * self.num_fields
    solved = mixed_dimensions(self.vocab_sizes, c.dim, c.md_temperature,
                              round_pow2=c.md_round_dims)
    return tuple(k if n > c.md_threshold else c.dim for k, n in zip(solved, self.vocab_sizes))

  @property
  def rows_per_field(self) -> tuple[int, ...]:
    """Rows of each field's primary index (the `first_order` table's blocks)."""
    c = self.config
    if c.kind == "hash":
      return tuple(min(n, c.hash_buckets) for n in self.vocab_sizes)
    if c.kind == "qr":
      return tuple(-(-n // c.qr_collisions) if n > c.qr_threshold else n
                   for n in self.vocab_sizes)
    return self.vocab_sizes

  @property
  def offsets(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.rows_per_field, dtype=np.int64)[:-1]]
                          ).astype(np.int64)

  @functools.cached_property
  def tables(self) -> tuple[TableSpec, ...]:
    """Every stacked table of this layout."""
    c, sizes = self.config, self.vocab_sizes
    fields = tuple(range(self.num_fields))
    inv_sqrt = lambda rows: tuple(1.0 / math.sqrt(r) for r in rows)

    def whole(name, width, fs):
      rows = tuple(sizes[j] for j in fs)
      return TableSpec(name, width, fs, rows, (1,) * len(fs), None, inv_sqrt(rows))

    specs = []
    if c.kind == "full":
      specs.append(whole("embedding", c.dim, fields))
    elif c.kind == "hash":
      rows = self.rows_per_field
      specs.append(TableSpec("embedding", c.dim, fields, rows, (1,) * len(rows), rows,
                             inv_sqrt(rows)))
    elif c.kind == "qr":
      big = self._compressed(c.qr_threshold)
      small = tuple(j for j in fields if j not in big)
      if small:
        specs.append(whole("embedding", c.dim, small))
      if big:
        q_width, r_width = self.qr_widths
        coll = c.qr_collisions
        scales = inv_sqrt(sizes[j] for j in big)
        specs.append(TableSpec("quotient", q_width, big, tuple(-(-sizes[j] // coll) for j in big),
                               (coll,) * len(big), None, scales))
        # mult: remainder rows start near 1 so composed vectors start at the
        # quotient's (full-table) scale rather than its square.
        r_center, r_scales = (1.0, (0.5,) * len(big)) if c.qr_operation == "mult" else (0.0, scales)
        specs.append(TableSpec("remainder", r_width, big, (coll,) * len(big), (1,) * len(big),
                               (coll,) * len(big), r_scales, r_center))
    else:  # mixed_dim
      dims = self.field_dims
      for k in sorted(set(dims), reverse=True):
        name = "embedding" if k == c.dim else f"embedding_dim{k}"
        specs.append(whole(name, k, tuple(j for j in fields if dims[j] == k)))
    if c.first_order:
      rows = self.rows_per_field
      divisors = tuple(c.qr_collisions if c.kind == "qr" and n > c.qr_threshold else 1
                       for n in sizes)
      specs.append(TableSpec("first_order", 1, fields, rows, divisors,
                             rows if c.kind == "hash" else None, (0.0,) * len(rows)))
    return tuple(specs)

  @property
  def qr_widths(self) -> tuple[int, int]:
    """Widths of the quotient and remainder rows."""
    d = self.config.dim
    return (d - d // 2, d // 2) if self.config.qr_operation == "concat" else (d, d)

  @functools.cached_property
  def groups(self) -> tuple[FieldGroup, ...]:
    """How `FieldEmbeddings` turns gathered rows into field vectors."""
    groups = []
    for spec in self.tables:
      if spec.name == "embedding":
        groups.append(FieldGroup(spec.fields, ("embedding",), "rows", spec.width))
      elif spec.name == "quotient":
        groups.append(FieldGroup(spec.fields, ("quotient", "remainder"),
                                 self.config.qr_operation, spec.width))
      elif spec.name.startswith("embedding_dim"):
        groups.append(FieldGroup(spec.fields, (spec.name,), "project", spec.width))
    return tuple(groups)

  @functools.cached_property
  def field_order(self) -> np.ndarray | None:
    """Position of each field in the groups' concatenation (None: already in order)."""
    order = np.concatenate([g.fields for g in self.groups]).astype(np.int32)
    if np.array_equal(order, np.arange(self.num_fields)):
      return None
    return np.argsort(order).astype(np.int32)

  def projection_shapes(self) -> dict[str, tuple[int, int, int]]:
    """{param name: [fields, width, d]} of the mixed_dim projections in `FieldEmbeddings`."""
    return {projection_name(g.tables[0]): (len(g.fields), g.width, self.config.dim)
            for g in self.groups if g.combine == "project"}

  def table_shapes(self) -> dict[str, tuple[int, int]]:
    return {spec.name: (spec.num_rows, spec.width) for spec in self.tables}

  def table_param_count(self) -> int:
    return int(sum(r * w for r, w in self.table_shapes().values()))

  def param_count(self) -> int:
    """Embedding parameters: stacked tables plus mixed_dim projections."""
    return self.table_param_count() + int(
        sum(np.prod(s) for s in self.projection_shapes().values()))

  def init_tables(self, rng: jax.Array) -> dict[str, jax.Array]:
    """Per-field Uniform(±1/sqrt(n)) rows (the DLRM reference's init); zeros for first order.

    ``embedding`` uses `rng` itself, other tables keys folded from it.
    """
    tables = {}
    for i, spec in enumerate(self.tables):
      key = rng if spec.name == "embedding" else jax.random.fold_in(rng, i + 1)
      tables[spec.name] = _init_table(key, spec)
    return tables

  def row_ids(self, cat: jax.Array) -> dict[str, jax.Array]:
    """Global row of each (example, slot) in every stacked table: [B, slots of its fields].

    int32 (or int64, see `id_dtype`); a negative id (an unused bag slot) -> `pad_row`.
    """
    dtype = self.id_dtype
    cat = jnp.asarray(cat, dtype)
    ids = {}
    for spec in self.tables:  # a handful of stacked tables, not the 26 columns
      if self.has_bags:
        slots = self._slot_index(spec.fields)
        repeat = lambda values: np.repeat(np.asarray(values), [self.slots[j] for j in spec.fields])
      else:
        slots, repeat = np.asarray(spec.fields), np.asarray
      every_slot = len(slots) == cat.shape[1] and (slots == np.arange(len(slots))).all()
      col = cat if every_slot else cat[:, slots]
      if any(d != 1 for d in spec.divisors):
        col = col // jnp.asarray(repeat(spec.divisors), dtype)
      if spec.moduli is not None:
        col = col % jnp.asarray(repeat(spec.moduli), dtype)
      row = col + jnp.asarray(repeat(spec.offsets), dtype)
      ids[spec.name] = jnp.where(col < 0, self.pad_row, row) if self.has_bags else row
    return ids

  def pool(self, rows: Mapping[str, jax.Array], cat: jax.Array) -> dict[str, jax.Array]:
    """Gathered rows of every slot -> one row per field ({table: [B, fields, width]}).

    A bag's rows are summed, or averaged over its used slots ("mean"); an empty
    bag gives zeros. Identity when no field is a bag.
    """
    if not self.has_bags:
      return dict(rows)
    poolings = self.poolings or ("sum",) * self.num_fields
    out = {}
    for spec in self.tables:
      if spec.name not in rows:
        continue
      x = rows[spec.name]
      lengths = [self.slots[j] for j in spec.fields]
      segment = np.repeat(np.arange(len(spec.fields)), lengths)
      used = (jnp.asarray(cat)[:, self._slot_index(spec.fields)] >= 0).astype(x.dtype)
      weights = used
      mean = np.repeat([poolings[j] == "mean" for j in spec.fields], lengths)
      if mean.any():
        counts = jax.ops.segment_sum(used.T, segment, len(spec.fields),
                                     indices_are_sorted=True).T  # [B, fields]
        weights = jnp.where(mean, used / jnp.maximum(counts[:, segment], 1.0), used)
      pooled = jax.ops.segment_sum(jnp.swapaxes(x * weights[..., None], 0, 1), segment,
                                   len(spec.fields), indices_are_sorted=True)
      out[spec.name] = jnp.swapaxes(pooled, 0, 1)
    return out


def projection_name(table: str) -> str:
  return table.replace("embedding", "projection", 1)


def _init_table(key: jax.Array, spec: TableSpec) -> jax.Array:
  """center + Uniform(-1, 1) * per-field scale, fused in one jit (tables can be GBs).

  Per-row scales are expanded on device, so `jax.eval_shape` of an init
  allocates nothing.
  """
  if not any(spec.scales):
    return jnp.full((spec.num_rows, spec.width), spec.center, jnp.float32)
  ends = np.cumsum(spec.rows)

  @jax.jit
  def make(key):
    field = jnp.searchsorted(jnp.asarray(ends), jnp.arange(spec.num_rows), side="right")
    scale = jnp.asarray(spec.scales, jnp.float32)[field]
    noise = jax.random.uniform(key, (spec.num_rows, spec.width), jnp.float32, -1.0, 1.0)
    return spec.center + noise * scale[:, None]

  return make(key)


def lookup(tables: Tables, ids: RowIds) -> dict[str, jax.Array]:
  """Gathers the rows a batch touches: {name: [B, L, width]} (zeros past a table's end)."""
  return {name: jnp.take(tables[name], ids[name], axis=0, mode="fill", fill_value=0)
          for name in ids}


class FieldEmbeddings(nn.Module):
  """Gathered rows -> one d-vector per field, [B, F, d].

  Full and hashed tables need no parameters; qr combines its quotient and
  remainder rows; mixed_dim projects each narrow field with its own learned
  ``[k, d]`` matrix (Xavier-uniform init, no bias, as the reference's
  ``PrEmbeddingBag``). One step per field group — a handful — then one static
  permutation restores the column order.
  """

  layout: EmbeddingLayout

  @nn.compact
  def __call__(self, rows: Mapping[str, jax.Array]) -> jax.Array:
    layout, dim = self.layout, self.layout.config.dim
    parts = []
    for group in layout.groups:
      x = rows[group.tables[0]]
      if group.combine == "mult":
        x = x * rows[group.tables[1]]
      elif group.combine == "add":
        x = x + rows[group.tables[1]]
      elif group.combine == "concat":
        x = jnp.concatenate([x, rows[group.tables[1]]], axis=-1)
      elif group.combine == "project":
        kernel = self.param(projection_name(group.tables[0]),
                            nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=0),
                            (len(group.fields), group.width, dim), jnp.float32)
        x = jnp.einsum("bfk,fkd->bfd", x, kernel.astype(x.dtype))
      parts.append(x)
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    if layout.field_order is not None:
      out = jnp.take(out, jnp.asarray(layout.field_order), axis=1)
    return out
