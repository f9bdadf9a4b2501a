"""Raw Criteo TSV reading, vocabularies and encoding.

Layout of every line: ``label \\t I1..I13 \\t C1..C26`` with empty fields for
missing values; categoricals are 8-hex-digit hashes. Files may be plain or
``.gz``. Parsing uses pyarrow's multithreaded C++ CSV reader in streaming
blocks; hex decoding is vectorised numpy. When the fast reader rejects a block,
the block is re-scanned in Python only to name the exact line and field.

Encoding: dense ``log(1 + max(x, 0))`` with missing -> 0; each categorical
column gets a vocabulary built on training rows, ids ``1..V`` for values seen at
least ``min_frequency`` times and id 0 for rare, unseen (out-of-vocabulary)
values. A missing categorical is its own value (key -1), since missingness
carries signal.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jaxrec.data.dataset import (CTRDataset, DENSE_NAMES, NUM_DENSE,
                                 NUM_SPARSE, SPARSE_NAMES)

FIELD_NAMES = ("label",) + DENSE_NAMES + SPARSE_NAMES
NUM_FIELDS = len(FIELD_NAMES)
MISSING_KEY = -1  # key of an empty categorical field
OOV_ID = 0  # id of rare and unseen categorical values

_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
  _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
  _HEX_VALUE[_c] = 10 + _i


class CriteoFormatError(ValueError):
  """A malformed row, naming file, line (1-based) and field."""

  def __init__(self, path: str, line: int | None, field: str | None,
               message: str):
    where = f"{path}"
    if line is not None:
      where += f", line {line}"
    if field is not None:
      where += f", field {field}"
    super().__init__(f"{where}: {message}")
    self.path, self.line, self.field = path, line, field


@dataclasses.dataclass(frozen=True)
class RawBlock:
  """Parsed, not yet encoded rows.

  label: int8 [n]; dense: float64 [n, 13] with NaN for missing;
  cat_keys: int64 [n, 26], the hex value or MISSING_KEY; first_line: 1-based
  line number of row 0 in its file.
  """

  label: np.ndarray
  dense: np.ndarray
  cat_keys: np.ndarray
  first_line: int

  def __len__(self) -> int:
    return len(self.label)


def _read_options(block_size: int) -> tuple:
  read = pacsv.ReadOptions(column_names=list(FIELD_NAMES),
                           block_size=block_size)
  parse = pacsv.ParseOptions(delimiter="\t", quote_char=False,
                             escape_char=False, ignore_empty_lines=False)
  types = {"label": pa.int64()}
  types.update({n: pa.int64() for n in DENSE_NAMES})
  types.update({n: pa.string() for n in SPARSE_NAMES})
  convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                 null_values=[""], quoted_strings_can_be_null=False)
  return read, parse, convert


def decode_hex_column(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
  """Vectorised 8-hex-digit decoding.

  Returns:
    keys: int64 [n], MISSING_KEY where the field is empty.
    bad: bool [n], True where the field is neither empty nor 8 hex digits.
  """
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
  n = len(column)
  offset_type = np.int64 if column.type == pa.large_string() else np.int32
  offsets = np.frombuffer(column.buffers()[1], dtype=offset_type, count=n + 1,
                          offset=column.offset * np.dtype(offset_type).itemsize)
  offsets = offsets.astype(np.int64)
  data = column.buffers()[2]
  data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
  lengths = np.diff(offsets)
  keys = np.full(n, MISSING_KEY, dtype=np.int64)
  bad = (lengths != 0) & (lengths != 8)
  full = lengths == 8
  if full.any():
    starts = offsets[:-1][full]
    digits = _HEX_VALUE[data[starts[:, None] + np.arange(8)]]
    bad_digit = (digits == 255).any(axis=1)
    weights = (16 ** np.arange(7, -1, -1)).astype(np.int64)
    values = digits.astype(np.int64) @ weights
    keys[full] = values
    bad[np.flatnonzero(full)[bad_digit]] = True
  return keys, bad


def _locate_error(path: str, first_line: int, lines: Sequence[bytes]) -> CriteoFormatError:
  """Finds the first malformed line of a block the fast reader rejected."""
  for i, raw in enumerate(lines):
    line_no = first_line + i
    text = raw.rstrip(b"\n")
    if text.endswith(b"\r"):
      text = text[:-1]
    fields = text.split(b"\t")
    if len(fields) != NUM_FIELDS:
      return CriteoFormatError(
          path, line_no, None,
          f"expected {NUM_FIELDS} tab-separated fields, found {len(fields)}")
    for name, value in zip(FIELD_NAMES, fields):
      err = _field_error(name, value)
      if err:
        return CriteoFormatError(path, line_no, name, err)
  return CriteoFormatError(path, None, None, "unreadable block (no single bad line found)")


def _field_error(name: str, value: bytes) -> str | None:
  """Why `value` is invalid for field `name`, or None."""
  if name == "label":
    if value not in (b"0", b"1"):
      return f"label must be 0 or 1, got {value[:40]!r}"
  elif name.startswith("I"):
    if value:
      try:
        int(value)
      except ValueError:
        return f"not an integer: {value[:40]!r}"
  elif value:
    if len(value) != 8 or any(_HEX_VALUE[c] == 255 for c in value):
      return f"not an 8-digit hex categorical: {value[:40]!r}"
  return None


def _open_binary(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_raw_blocks(path: str, block_rows: int = 1 << 18) -> Iterator[RawBlock]:
  """Streams a raw Criteo file as parsed blocks of up to `block_rows` rows.

  Raises:
    CriteoFormatError naming file, line and field on the first malformed row.
  """
  if os.path.isdir(path):
    raise CriteoFormatError(path, None, None, "is a directory, expected a Criteo TSV file")
  if not os.path.exists(path):
    raise CriteoFormatError(path, None, None, "no such file")
  read_opts, parse_opts, convert_opts = _read_options(block_size=1 << 24)
  line = 1
  with _open_binary(path) as f:
    while True:
      try:
        lines = f.readlines(block_rows * 256)
      except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise CriteoFormatError(path, None, None,
                                f"corrupt or truncated compressed data after line {line - 1}: {e}") from e
      if not lines:
        break
      if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
      buf = b"".join(lines)
      try:
        table = pacsv.read_csv(pa.py_buffer(buf), read_options=read_opts,
                               parse_options=parse_opts, convert_options=convert_opts)
      except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _locate_error(path, line, lines) from e
      block = _to_block(path, table, line, lines)
      line += len(lines)
      yield block
  if line == 1:
    raise CriteoFormatError(path, None, None, "file has no rows")


def _to_block(path: str, table: pa.Table, first_line: int, lines) -> RawBlock:
  label = table.column("label").to_numpy(zero_copy_only=False)
  if np.any(pc.is_null(table.column("label")).to_numpy(zero_copy_only=False)) or \
      np.any((label != 0) & (label != 1)):
    raise _locate_error(path, first_line, lines)
  dense = np.empty((table.num_rows, NUM_DENSE), dtype=np.float64)
  for j, name in enumerate(DENSE_NAMES):
    dense[:, j] = table.column(name).to_numpy(zero_copy_only=False)  # null -> nan
  cat = np.empty((table.num_rows, NUM_SPARSE), dtype=np.int64)
  for j, name in enumerate(SPARSE_NAMES):
    keys, bad = decode_hex_column(table.column(name))
    if bad.any():
      row = int(np.flatnonzero(bad)[0])
      value = lines[row].rstrip(b"\r\n").split(b"\t")[1 + NUM_DENSE + j]
      raise CriteoFormatError(path, first_line + row, name,
                              f"not an 8-digit hex categorical: {value[:40]!r}")
    cat[:, j] = keys
  return RawBlock(label=label.astype(np.int8), dense=dense, cat_keys=cat,
                  first_line=first_line)


def read_raw(path: str) -> RawBlock:
  """Reads a whole (small) raw file into one block."""
  blocks = list(iter_raw_blocks(path))
  return RawBlock(label=np.concatenate([b.label for b in blocks]),
                  dense=np.concatenate([b.dense for b in blocks]),
                  cat_keys=np.concatenate([b.cat_keys for b in blocks]),
                  first_line=1)


def transform_dense(dense: np.ndarray) -> np.ndarray:
  """log(1 + max(x, 0)); missing (NaN) -> 0. Returns float32."""
  out = np.log1p(np.maximum(np.nan_to_num(dense, nan=0.0), 0.0))
  return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Per-column sorted keys kept in the vocabulary; id = 1 + position, OOV = 0."""

  keys: tuple[np.ndarray, ...]
  min_frequency: int

  @classmethod
  def build(cls, cat_keys: np.ndarray, min_frequency: int = 1) -> "Vocabulary":
    if min_frequency < 1:
      raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    keys = []
    for j in range(cat_keys.shape[1]):
      values, counts = np.unique(cat_keys[:, j], return_counts=True)
      keys.append(values[counts >= min_frequency])
    return cls(keys=tuple(keys), min_frequency=min_frequency)

  @property
  def sizes(self) -> tuple[int, ...]:
    """Embedding rows per column: kept values plus the OOV row."""
    return tuple(len(k) + 1 for k in self.keys)

  def encode(self, cat_keys: np.ndarray) -> np.ndarray:
    """Maps raw keys [n, 26] to int32 ids; unseen and rare keys -> OOV_ID."""
    ids = np.empty(cat_keys.shape, dtype=np.int32)
    for j, kept in enumerate(self.keys):
      col = cat_keys[:, j]
      pos = np.searchsorted(kept, col)
      pos_clipped = np.minimum(pos, max(len(kept) - 1, 0))
      found = (len(kept) > 0) & (kept[pos_clipped] == col) if len(kept) else np.zeros(len(col), bool)
      ids[:, j] = np.where(found, pos_clipped + 1, OOV_ID)
    return ids

  def save(self, path: str) -> None:
    np.savez_compressed(path, min_frequency=self.min_frequency,
                        **{f"C{j + 1}": k for j, k in enumerate(self.keys)})

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    with np.load(path) as z:
      keys = tuple(z[f"C{j + 1}"] for j in range(NUM_SPARSE))
      return cls(keys=keys, min_frequency=int(z["min_frequency"]))


def encode_raw(raw: RawBlock, vocab: Vocabulary) -> CTRDataset:
  return CTRDataset(dense=transform_dense(raw.dense), cat=vocab.encode(raw.cat_keys),
                    label=raw.label.astype(np.float32), vocab_sizes=vocab.sizes)
