"""Quantized serving weights: row-wise 8/4-bit embedding tables, bfloat16 or int8 MLP weights.

`pack(variables, config)` turns a model's variables into the flat list of
arrays a serving artifact stores, and a `Packed` description whose methods
rebuild what the model needs *inside* exported functions, so the artifact's
loader needs no knowledge of the formats.

Tables (``QuantizeConfig.tables``); serving gathers the stored rows a batch
looks up and dequantizes only those:

* ``float32``: stored as trained.
* ``int8``: row-wise symmetric codes ``round(x / scale)`` in [-127, 127] and
  one scale byte per row: 17 bytes a row for d = 16, 3.76x smaller than
  float32. The byte is an unsigned 8-bit float, 5 exponent and 3 mantissa
  bits, ``scale = 2**(e - 24) * (1 + m / 8)`` (2**-24 to 240, decoded exactly
  by integer ops into float32 bits): the smallest such value ``>= max|x| /
  127``, so a step is at most 12.5% coarser than the row's ideal symmetric
  step. Stored as two arrays: the codes packed four to a little-endian uint32
  ([rows, ceil(width / 4)]) and the scale bytes ([rows]). Gathering words
  rather than bytes keeps the lookup as fast as float32's on tables far larger
  than the caches (a [rows, 17] byte array, or int8 codes [rows, width], made
  the batch-8192 call on 26 x 100k tables 2% and 6-8% slower); the codes are
  unpacked with shifts. Cache-sized tables are gathered code by code instead
  (`gather_rows`).
* ``int8-affine`` / ``int4``: row-wise affine quantization, as the DLRM
  reference's ``--quantize-emb-with-bit=8|4`` (PyTorch's
  ``embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack``): each row
  keeps its own ``bias = min`` and ``scale = (max - min) / (2**bits - 1)`` and
  its values become codes ``round((x - bias) / scale)``; a stored row is
  ``[codes | scale | bias]`` in one uint8 array (int4 packs two codes per
  byte, low nibble first; scale and bias are float16, as the reference's 4-bit
  rows; its 8-bit rows keep float32 ones): width + 4 bytes for 8 bits, 20 for
  d = 16 (3.2x). Codes are computed against the float16-rounded scale and bias.

In every format the error of a value is at most half its row's step. Width-1
tables (first-order scalars) stay float32: a per-row scale would save little.
The exported function holds the dequantization, so an artifact loads the same
whatever its row format (older ``int8`` artifacts hold affine rows).

Network weights (``QuantizeConfig.mlp``; every param with 2 or more axes, i.e.
kernels and projections; biases stay float32):

* ``float32``; ``bfloat16`` (rounded to nearest even); ``int8``: symmetric, one
  float32 scale per output column (the last axis), ``scale = max|w| / 127``.

Everything is dequantized to float32 inside exported functions and the model
runs as it trained: tables by the serving function, on the rows each call
gathers (`Packed.rows`); network weights, which every call uses whole, once
when the artifact is loaded, by a second exported function
(`Packed.float32_param_leaves`), so calls pay no dequantization of kernels
(per call it cost a batch-128 call ~15%).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TABLE_FORMATS = ("float32", "int8", "int8-affine", "int4")
MLP_FORMATS = ("float32", "bfloat16", "int8")
# Stored row layout of each quantized table format (recorded in the artifact's metadata).
ROW_LAYOUTS = {
    "int8": "int8 codes (symmetric) 4 per little-endian uint32 [rows, ceil(width / 4)],"
            " uint8 scale bytes [rows] (e5m3: 2**(e - 24) * (1 + m / 8))",
    "int8-affine": "uint8 codes, then float16 scale, float16 bias",
    "int4": "uint4 codes (2 per byte, low nibble first), then float16 scale, float16 bias",
}
_SCALE_EXPONENT_BIAS = 24  # scale byte e5m3: 2**(e - 24) * (1 + m / 8)
# int8 tables with at most this many bytes of codes are gathered code by code (`gather_rows`).
# Batch-8192 DLRM calls against float32: a 10k-row table gathered as words cost ~3% more, as
# int8 codes ~0%; 26 x 100k rows (42 MB of codes) as words ~0%, as codes 6-8% more.
CACHED_CODES_BYTES = 2 << 20


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
  """How a serving artifact stores the weights.

  Attributes:
    tables: one of TABLE_FORMATS (embedding tables).
    mlp: one of MLP_FORMATS (network kernels; biases stay float32).
  """

  tables: str = "float32"
  mlp: str = "float32"

  def __post_init__(self):
    if self.tables not in TABLE_FORMATS:
      raise ValueError(f"table format {self.tables!r}: choose from {TABLE_FORMATS}")
    if self.mlp not in MLP_FORMATS:
      raise ValueError(f"mlp weight format {self.mlp!r}: choose from {MLP_FORMATS}")


def code_bytes(width: int, bits: int) -> int:
  """Bytes of codes in one stored row of `width` values."""
  return width if bits == 8 else -(-width // 2)


def row_bytes(width: int, fmt: str) -> int:
  """Bytes of one stored row of `width` values in table format `fmt`."""
  if fmt == "float32":
    return 4 * width
  if fmt == "int8":
    return 4 * -(-width // 4) + 1
  return code_bytes(width, 8 if fmt == "int8-affine" else 4) + 4


def _check_finite(table: np.ndarray, limit: float, what: str) -> None:
  if not np.isfinite(table).all():
    row = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0])
    raise ValueError(f"row {row} holds a non-finite value: it cannot be quantized")
  if table.size and np.abs(table).max() > limit:
    row = int(np.flatnonzero(np.abs(table).max(axis=1) > limit)[0])
    raise ValueError(f"row {row} holds |x| = {np.abs(table[row]).max():.4g} > {limit:.4g},"
                     f" beyond what {what} can store")


def scale_from_byte(byte):
  """Scale bytes (numpy or jax, any integer dtype) -> float32 scales, exactly.

  The byte ``e << 3 | m`` is ``2**(e - 24) * (1 + m / 8)``: its float32 bits are
  the biased exponent ``e - 24 + 127`` and the mantissa's top 3 bits ``m``.
  """
  host = isinstance(byte, np.ndarray)
  byte = byte.astype(np.uint32)
  bits = ((byte >> 3) + (127 - _SCALE_EXPONENT_BIAS)) << 23 | (byte & 7) << 20
  return bits.view(np.float32) if host else jax.lax.bitcast_convert_type(bits, jnp.float32)


_SCALES = scale_from_byte(np.arange(256, dtype=np.uint8))  # ascending
MAX_INT8_VALUE = float(_SCALES[-1]) * 127  # the largest |x| an int8 row stores


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """float [rows, width] -> (uint32 [rows, ceil(width / 4)]: int8 codes packed 4 per word,
  little-endian, zero-padded; uint8 scale bytes [rows])."""
  table = np.asarray(table, np.float32)
  _check_finite(table, MAX_INT8_VALUE, "an int8 row (scale <= 240)")
  needed = np.abs(table).max(axis=1, initial=0.0) / np.float32(127)
  byte = np.minimum(np.searchsorted(_SCALES, needed), 255).astype(np.uint8)  # least >= needed
  codes = np.clip(np.rint(table / _SCALES[byte][:, None]), -127, 127).astype(np.int8)
  codes = np.pad(codes, ((0, 0), (0, -table.shape[1] % 4)))
  return np.ascontiguousarray(codes).view("<u4"), byte


def dequantize_rows_int8(words: jax.Array, byte: jax.Array, width: int) -> jax.Array:
  """Packed codes [..., ceil(width / 4)] and scale bytes [...] (stored or gathered) -> float32
  [..., width]."""
  # Byte k of a word, sign-extended: shift it to the top, then arithmetic-shift it down.
  signed = jax.lax.bitcast_convert_type(words, jnp.int32)[..., None]
  codes = (signed << jnp.array([24, 16, 8, 0], jnp.int32)) >> 24
  codes = codes.reshape(*words.shape[:-1], 4 * words.shape[-1])[..., :width]
  return codes.astype(jnp.float32) * scale_from_byte(byte)[..., None]


def quantize_rows(table: np.ndarray, bits: int) -> np.ndarray:
  """float [rows, width] -> uint8 [rows, code_bytes + 4]: codes, float16 scale, float16 bias."""
  table = np.asarray(table, np.float32)
  _check_finite(table, 6e4, "float16 row scales")
  levels = (1 << bits) - 1
  low, high = table.min(axis=1), table.max(axis=1)
  bias = low.astype(np.float16)
  scale = ((high - bias.astype(np.float32)) / levels).astype(np.float16)
  scale32 = scale.astype(np.float32)[:, None]
  safe = np.where(scale32 > 0, scale32, 1.0)
  codes = np.where(scale32 > 0, np.rint((table - bias.astype(np.float32)[:, None]) / safe), 0)
  codes = np.clip(codes, 0, levels).astype(np.uint8)
  if bits == 4:
    if codes.shape[1] % 2:
      codes = np.pad(codes, ((0, 0), (0, 1)))
    codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
  tail = np.stack([scale, bias], axis=1).view(np.uint8)  # [rows, 4]
  return np.ascontiguousarray(np.concatenate([codes, tail], axis=1))


def dequantize_rows(stored: jax.Array, width: int, bits: int) -> jax.Array:
  """uint8 [..., code_bytes + 4] (stored or gathered rows) -> float32 [..., width]."""
  n = code_bytes(width, bits)
  codes = stored[..., :n]
  if bits == 4:
    codes = jnp.stack([codes & 15, codes >> 4], axis=-1).reshape(*codes.shape[:-1], 2 * n)
    codes = codes[..., :width]
  # float16 scale and bias from their little-endian bytes. A same-width bitcast:
  # a uint8 -> float16 one does not export with a symbolic batch dimension.
  tail = stored[..., n:].astype(jnp.uint16)
  bits16 = tail[..., 0::2] | (tail[..., 1::2] << 8)
  scale_bias = jax.lax.bitcast_convert_type(bits16, jnp.float16).astype(jnp.float32)
  return codes.astype(jnp.float32) * scale_bias[..., :1] + scale_bias[..., 1:]


def quantize_table(table: np.ndarray, fmt: str) -> list[np.ndarray]:
  """The arrays (one, or two for int8) that store a table [rows, width] in format `fmt`."""
  if fmt == "float32":
    return [np.asarray(table, np.float32)]
  if fmt == "int8":
    return list(quantize_rows_int8(table))
  return [quantize_rows(table, 8 if fmt == "int8-affine" else 4)]


def dequantize_table_rows(stored: Sequence[jax.Array], width: int, fmt: str) -> jax.Array:
  """A table's stored arrays (`quantize_table`), or their rows gathered alike -> float32."""
  if fmt == "float32":
    return stored[0]
  if fmt == "int8":
    return dequantize_rows_int8(*stored, width)
  return dequantize_rows(stored[0], width, 8 if fmt == "int8-affine" else 4)


def gather_rows(stored: Sequence[jax.Array], ids: jax.Array, width: int, fmt: str) -> jax.Array:
  """float32 rows [*ids.shape, width] of a table's stored arrays; ids past the table give zeros.

  Small int8 tables (codes up to `CACHED_CODES_BYTES`) are gathered as int8 codes
  (the words bitcast, a view) so that XLA fuses the gather into the rows'
  consumer, as it does float32's; larger ones are gathered as words, whose
  materialised gather makes fewer, wider reads of memory.
  """
  def take(x):
    return jnp.take(x, ids, axis=0, mode="fill", fill_value=0)  # pad slots: codes 0 -> 0.0

  if fmt == "int8" and stored[0].size * 4 <= CACHED_CODES_BYTES:
    words, byte = stored
    codes = jax.lax.bitcast_convert_type(words, jnp.int8).reshape(words.shape[0], -1)
    return take(codes)[..., :width].astype(jnp.float32) * scale_from_byte(take(byte))[..., None]
  return dequantize_table_rows([take(x) for x in stored], width, fmt)


def quantize_kernel(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """float [..., out] -> (int8 codes [..., out], float32 scale [out]), symmetric per column."""
  kernel = np.asarray(kernel, np.float32)
  scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 127.0
  safe = np.where(scale > 0, scale, 1.0)
  codes = np.clip(np.rint(kernel / safe), -127, 127).astype(np.int8)
  return codes, scale.astype(np.float32)


def _to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
  """float32 -> the uint16 bits of bfloat16 (round to nearest even); npz has no bfloat16."""
  return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16)).view(np.uint16)


@dataclasses.dataclass(frozen=True)
class Packed:
  """The stored arrays of a model's variables and how to read them back.

  Attributes:
    arrays: the flat list the artifact stores: tables (sorted by name) then
      network params (tree order); one array per table or param, two for an
      int8 table (codes, scale bytes) or kernel (codes, scales).
    config: the formats used.
    tables: (name, stored format, width) of each table, in `arrays` order.
    param_formats: the stored format of each params leaf.
    params_treedef: the params tree structure.
  """

  arrays: list
  config: QuantizeConfig
  tables: tuple[tuple[str, str, int], ...]
  param_formats: tuple[str, ...]
  params_treedef: Any

  @property
  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self.arrays))

  def stored_tables(self, weights):
    """(name, format, width, stored arrays) of each table in `weights` (laid out as `arrays`)."""
    stored = iter(weights)
    for name, fmt, width in self.tables:
      yield name, fmt, width, [next(stored) for _ in range(2 if fmt == "int8" else 1)]

  def rows(self, weights, ids: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Gathered float32 rows {table: [B, L, width]} (`jaxrec.layers.embeddings.lookup`)."""
    out = {}
    for name, fmt, width, stored in self.stored_tables(weights):
      if name in ids:
        out[name] = gather_rows(stored, ids[name], width, fmt)
    return out

  @property
  def num_table_arrays(self) -> int:
    """How many of `arrays` hold tables (they come first)."""
    return sum(2 if fmt == "int8" else 1 for _, fmt, _ in self.tables)

  @property
  def params_stored_as_float32(self) -> bool:
    return all(fmt == "float32" for fmt in self.param_formats)

  def float32_param_leaves(self, stored_params) -> list:
    """The stored network params (`arrays` after the tables) -> their float32 leaves."""
    stored = iter(stored_params)
    leaves = []
    for fmt in self.param_formats:
      x = next(stored)
      if fmt == "bfloat16":
        x = jax.lax.bitcast_convert_type(x, jnp.bfloat16).astype(jnp.float32)
      elif fmt == "int8":
        x = x.astype(jnp.float32) * next(stored)
      leaves.append(x)
    return leaves

  def resident(self, weights) -> list:
    """Stored `weights` -> what the serving function takes: the tables as stored, then the
    float32 param leaves (the same arrays when the params are stored as float32)."""
    n = self.num_table_arrays
    return [*weights[:n], *self.float32_param_leaves(weights[n:])]

  def params(self, weights) -> Any:
    """The float32 network params of the stored `weights` (laid out as `arrays`)."""
    return jax.tree_util.tree_unflatten(
        self.params_treedef, self.float32_param_leaves(weights[self.num_table_arrays:]))


def pack(variables: Mapping[str, Any], config: QuantizeConfig = QuantizeConfig()) -> Packed:
  """Quantizes a model's variables (``{"params", "tables"}``) for storage."""
  arrays, tables = [], []
  for name in sorted(variables["tables"]):
    table = np.asarray(variables["tables"][name], np.float32)
    fmt = config.tables if table.shape[1] > 1 else "float32"
    try:
      arrays.extend(quantize_table(table, fmt))
    except ValueError as e:
      raise ValueError(f"table {name!r}: {e}") from None
    tables.append((name, fmt, int(table.shape[1])))
  leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
  formats = []
  for leaf in leaves:
    leaf = np.asarray(leaf, np.float32)
    fmt = config.mlp if leaf.ndim >= 2 else "float32"
    if fmt == "int8":
      arrays.extend(quantize_kernel(leaf))
    else:
      arrays.append(_to_bfloat16_bits(leaf) if fmt == "bfloat16" else leaf)
    formats.append(fmt)
  return Packed(arrays=arrays, config=config, tables=tuple(tables),
                param_formats=tuple(formats), params_treedef=treedef)
