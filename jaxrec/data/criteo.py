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
import os
import re
import zlib
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jaxrec.data.dataset import (CTRDataset, DENSE_NAMES, NUM_DENSE,
                                 NUM_SPARSE, SPARSE_NAMES)
from jaxrec.data.schema import PAD_ID, slot_starts

FIELD_NAMES = ("label",) + DENSE_NAMES + SPARSE_NAMES
NUM_FIELDS = len(FIELD_NAMES)
MISSING_KEY = -1  # key of an empty categorical field
PAD_KEY = -2  # key of an unused multi-hot slot (schemas with bags)
OOV_ID = 0  # id of rare and unseen categorical values

_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
  _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
  _HEX_VALUE[_c] = 10 + _i
_HEX_CHARS = b"0123456789abcdefABCDEF"
# Every byte of a well-formed block is one of these; anything else (spaces,
# '+', 'x', '.', quotes) sends the block to the strict line-by-line check, so
# pyarrow's lenient integer parsing (" 5", "0x5") never decides a value.
_ALLOWED_BYTES = _HEX_CHARS + b"-\t\n\r"
_INT_RE = re.compile(rb"-?[0-9]+\Z")
ON_BAD_ROW = ("error", "skip")
_INT64_MAX = (1 << 63) - 1


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
    self.reason = message

  def __reduce__(self):  # pickled whole (raised in a Dask worker, re-raised here)
    return type(self), (self.path, self.line, self.field, self.reason)


@dataclasses.dataclass
class BadRowLog:
  """Rows skipped under ``on_bad_row="skip"``: a count and the first few errors."""

  count: int = 0
  examples: list[str] = dataclasses.field(default_factory=list)
  max_examples: int = 20

  def add(self, error: CriteoFormatError) -> None:
    self.count += 1
    if len(self.examples) < self.max_examples:
      self.examples.append(str(error))

  def merge(self, other: "BadRowLog") -> None:
    """Appends `other`'s count and examples (the log of the rows that follow)."""
    self.count += other.count
    self.examples.extend(other.examples[:max(0, self.max_examples - len(self.examples))])


@dataclasses.dataclass(frozen=True)
class RawBlock:
  """Parsed, not yet encoded rows.

  label: int8 [n]; dense: float64 [n, 13] with NaN for missing;
  cat_keys: int64 [n, 26], the hex value or MISSING_KEY; first_line: 1-based
  line number of row 0 in its file; lines: int64 [n] 1-based line number of
  every row when some lines of the block were skipped (None: the rows are the
  consecutive lines from `first_line`).
  """

  label: np.ndarray
  dense: np.ndarray
  cat_keys: np.ndarray
  first_line: int
  lines: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.label)

  def line_numbers(self) -> np.ndarray:
    """1-based line number of every row."""
    if self.lines is not None:
      return self.lines
    return np.arange(self.first_line, self.first_line + len(self), dtype=np.int64)


def _read_options(block_size: int) -> tuple:
  read = pacsv.ReadOptions(column_names=list(FIELD_NAMES),
                           block_size=block_size)
  parse = pacsv.ParseOptions(delimiter="\t", quote_char=False,
                             escape_char=False, ignore_empty_lines=False)
  types = {"label": pa.string()}  # checked as text: pyarrow reads "01" and "-0" as ints
  types.update({n: pa.int64() for n in DENSE_NAMES})
  types.update({n: pa.string() for n in SPARSE_NAMES})
  convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                 null_values=[""], quoted_strings_can_be_null=False)
  return read, parse, convert


_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_BIT_6 = np.uint64(0x0101010101010101)


def _hex8(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Values and bad-digit flags of rows of 8 ASCII hex digits (uint8 [m, 8])."""
  chars = np.ascontiguousarray(chars)
  if chars.tobytes().translate(None, _HEX_CHARS):
    bad = (_HEX_VALUE[chars] == 255).any(axis=1)
  else:
    bad = np.zeros(len(chars), bool)
  # SWAR over one little-endian uint64 per value (byte 0 = first digit): for
  # a hex digit c, (c & 0xF) + 9 * ((c >> 6) & 1) is its value; then the 8
  # nibbles are packed pairwise, most significant (first) digit first.
  x = chars.view("<u8").reshape(-1)
  t = np.right_shift(x, np.uint64(6))
  t &= _BIT_6
  t *= np.uint64(9)
  v = x & _LOW_NIBBLES
  v += t
  t = np.left_shift(v, np.uint64(4), out=t)
  v >>= np.uint64(8)
  v |= t
  v &= np.uint64(0x00FF00FF00FF00FF)
  t = np.left_shift(v, np.uint64(8), out=t)
  v >>= np.uint64(16)
  v |= t
  v &= np.uint64(0x0000FFFF0000FFFF)
  t = np.left_shift(v, np.uint64(16), out=t)
  v >>= np.uint64(32)
  v |= t
  v &= np.uint64(0xFFFFFFFF)
  return v.view(np.int64), bad


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
  full = lengths == 8
  bad = (lengths != 0) & ~full
  n_full = int(np.count_nonzero(full))
  if n_full == n:  # the common case: no missing values
    values, bad_digit = _hex8(data[offsets[0]:offsets[-1]].reshape(n, 8))
    return values, bad_digit
  keys = np.full(n, MISSING_KEY, dtype=np.int64)
  if n_full:
    if bad.any():  # irregular lengths: gather the 8-byte values
      starts = offsets[:-1][full]
      chars = data[starts[:, None] + np.arange(8)]
    else:  # only empty or 8-byte values: they are contiguous
      chars = data[offsets[0]:offsets[-1]].reshape(n_full, 8)
    values, bad_digit = _hex8(chars)
    keys[full] = values
    bad[np.flatnonzero(full)[bad_digit]] = True
  return keys, bad


def _field_error(name: str, value: bytes) -> str | None:
  """Why `value` is invalid for field `name`, or None."""
  if name == "label":
    if value not in (b"0", b"1"):
      return f"label must be 0 or 1, got {value[:40]!r}"
  elif name.startswith("I"):
    if value:
      if not _INT_RE.match(value):
        return f"not an integer: {value[:40]!r}"
      # Magnitude from the significant digits: int() of a long text hits Python's
      # 4300-digit limit; -2**63 is in range.
      digits = value.lstrip(b"-").lstrip(b"0")
      if len(digits) > 19 or int(digits or b"0") > _INT64_MAX + value.startswith(b"-"):
        return f"integer out of the 64-bit range: {value[:40]!r}"
  elif value:
    if len(value) != 8 or value.translate(None, _HEX_CHARS):
      return f"not an 8-digit hex categorical: {value[:40]!r}"
  return None


def _line_error(text: bytes) -> tuple[str | None, str] | None:
  """(field, reason) for a malformed line (without its newline), or None."""
  if text.endswith(b"\r"):
    text = text[:-1]
  if b"\r" in text:
    return None, "carriage return inside the line"
  fields = text.split(b"\t")
  if len(fields) != NUM_FIELDS:
    return None, f"expected {NUM_FIELDS} tab-separated fields, found {len(fields)}"
  for name, value in zip(FIELD_NAMES, fields):
    err = _field_error(name, value)
    if err:
      return name, err
  return None


def _open_binary(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_text_blocks(path: str, block_bytes: int = 1 << 26,
                     checksum=None) -> Iterator[tuple[int, bytes]]:
  """Streams a (possibly gzipped) text file as (first line number, whole lines).

  Every yielded buffer ends with a newline (one is added after a last line that
  lacks it). `checksum`, a hashlib object, is updated with the decompressed bytes.

  Raises:
    CriteoFormatError for a missing file, a directory, corrupt or truncated gzip.
  """
  if os.path.isdir(path):
    raise CriteoFormatError(path, None, None, "is a directory, expected a Criteo TSV file")
  if not os.path.exists(path):
    raise CriteoFormatError(path, None, None, "no such file")
  line, rest = 1, b""
  with _open_binary(path) as f:
    while True:
      try:
        chunk = f.read(block_bytes)
      except (EOFError, OSError, zlib.error) as e:
        raise CriteoFormatError(
            path, None, None,
            f"corrupt or truncated compressed data after line {line - 1}: {e}") from e
      if checksum is not None and chunk:
        checksum.update(chunk)
      if not chunk:
        if rest:
          yield line, rest + b"\n"
        return
      buf = rest + chunk if rest else chunk
      cut = buf.rfind(b"\n") + 1
      if cut == 0:
        rest = buf
        continue
      block, rest = buf[:cut], buf[cut:]
      yield line, block
      line += block.count(b"\n")


def parse_block(path: str, first_line: int, buf: bytes, on_bad_row: str = "error",
                bad_rows: BadRowLog | None = None, pool=None) -> RawBlock | None:
  """Parses whole lines `buf` (starting at line `first_line`) into a RawBlock.

  Well-formed blocks take pyarrow's multithreaded reader and vectorised checks;
  a block that fails any check is re-scanned line by line to name the first bad
  line and field (``on_bad_row="error"``) or to drop and log every bad line
  (``"skip"``). Returns None when every line was skipped. `pool`, an optional
  `concurrent.futures` executor, decodes the categorical columns in parallel.
  """
  n_lines = buf.count(b"\n")
  if not buf.translate(None, _ALLOWED_BYTES):
    try:
      table = pacsv.read_csv(pa.py_buffer(buf), *_READ_OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
      table = None
    if table is not None and table.num_rows == n_lines:
      block = _to_block(table, first_line, pool)
      if block is not None:
        return block
  kept = good_lines(path, first_line, buf, _line_error, on_bad_row, bad_rows)
  if kept is None:
    return None
  good, keep = kept
  table = pacsv.read_csv(pa.py_buffer(good), *_READ_OPTIONS)
  block = _to_block(table, first_line, pool)
  if block is None or len(block) != len(keep):
    raise CriteoFormatError(path, first_line, None, "unreadable block after skipping bad lines")
  return dataclasses.replace(block, lines=first_line + np.asarray(keep, dtype=np.int64))


def skip_or_raise(error: CriteoFormatError, on_bad_row: str, bad_rows: BadRowLog | None) -> None:
  """A bad row: raised, or with `on_bad_row="skip"` counted in `bad_rows`."""
  if on_bad_row != "skip":
    raise error
  if bad_rows is not None:
    bad_rows.add(error)


def good_lines(path: str, first_line: int, buf: bytes, line_error, on_bad_row: str,
               bad_rows: BadRowLog | None) -> tuple[bytes, list[int]] | None:
  """The lines of `buf` that `line_error` accepts, re-joined, and their indices in it.

  A rejected line raises its CriteoFormatError unless `on_bad_row` is "skip" (then it is
  counted in `bad_rows`); None when every line was skipped. A block the fast parser refused
  although every line passes on its own is an error, not a silent loss.
  """
  lines = buf.split(b"\n")[:-1]
  keep = []
  for i, text in enumerate(lines):
    err = line_error(text)
    if err is None:
      keep.append(i)
      continue
    skip_or_raise(CriteoFormatError(path, first_line + i, err[0], err[1]), on_bad_row, bad_rows)
  if not keep:
    return None
  if len(keep) == len(lines):
    raise CriteoFormatError(path, first_line, None,
                            "unreadable block (no single bad line found)")
  return b"\n".join(lines[i].rstrip(b"\r") for i in keep) + b"\n", keep


def iter_raw_blocks(path: str, block_rows: int = 1 << 18, *, on_bad_row: str = "error",
                    bad_rows: BadRowLog | None = None, checksum=None) -> Iterator[RawBlock]:
  """Streams a raw Criteo file as parsed blocks of about `block_rows` rows.

  Args:
    path: a plain or ``.gz`` Criteo TSV file.
    block_rows: rows per block (approximate: blocks are cut by bytes).
    on_bad_row: "error" raises on the first malformed line; "skip" drops every
      malformed line and logs it in `bad_rows`.
    bad_rows: where skipped lines are counted.
    checksum: optional hashlib object updated with the file's (decompressed) bytes.

  Raises:
    CriteoFormatError naming file, line and field on the first malformed row,
    for an empty file, a directory, or corrupt / truncated gzip data.
  """
  if on_bad_row not in ON_BAD_ROW:
    raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
  lines = 0
  for first_line, buf in iter_text_blocks(path, block_rows * 256, checksum):
    lines += 1
    block = parse_block(path, first_line, buf, on_bad_row, bad_rows)
    if block is not None:
      yield block
  if lines == 0:
    raise CriteoFormatError(path, None, None, "file has no rows")


def _to_block(table: pa.Table, first_line: int, pool=None) -> RawBlock | None:
  """Numpy arrays of a parsed table, or None if a label or categorical is invalid."""
  label_col = table.column("label")
  if not pc.all(pc.is_in(label_col, value_set=pa.array(["0", "1"]))).as_py():
    return None
  label = pc.equal(label_col, "1").to_numpy(zero_copy_only=False)
  dense = np.empty((table.num_rows, NUM_DENSE), dtype=np.float64)
  for j, name in enumerate(DENSE_NAMES):
    dense[:, j] = table.column(name).to_numpy(zero_copy_only=False)  # null -> nan
  cat = np.empty((table.num_rows, NUM_SPARSE), dtype=np.int64)
  def one(j):
    keys, bad = decode_hex_column(table.column(SPARSE_NAMES[j]))
    cat[:, j] = keys
    return bool(bad.any())
  bad = map(one, range(NUM_SPARSE)) if pool is None else pool.map(one, range(NUM_SPARSE))
  if any(list(bad)):
    return None
  return RawBlock(label=label.astype(np.int8), dense=dense, cat_keys=cat,
                  first_line=first_line)


_READ_OPTIONS = _read_options(block_size=1 << 22)  # 4 MB: parsed in parallel


def read_raw(path: str, *, on_bad_row: str = "error",
             bad_rows: BadRowLog | None = None) -> RawBlock:
  """Reads a whole (small) raw file into one block (see `iter_raw_blocks`)."""
  return concat_blocks(path, iter_raw_blocks(path, on_bad_row=on_bad_row, bad_rows=bad_rows))


def concat_blocks(path: str, blocks) -> RawBlock:
  """The blocks read from `path` as one block (line numbers kept); an error when none."""
  blocks = list(blocks)
  if not blocks:
    raise CriteoFormatError(path, None, None, "no valid rows (all were skipped)")
  lines = None
  if any(b.lines is not None for b in blocks):
    lines = np.concatenate([b.line_numbers() for b in blocks])
  return RawBlock(label=np.concatenate([b.label for b in blocks]),
                  dense=np.concatenate([b.dense for b in blocks]),
                  cat_keys=np.concatenate([b.cat_keys for b in blocks]),
                  first_line=1, lines=lines)


def transform_dense(dense: np.ndarray) -> np.ndarray:
  """log(1 + max(x, 0)); missing (NaN) -> 0. Returns float32."""
  out = np.log1p(np.maximum(np.nan_to_num(dense, nan=0.0), 0.0))
  return out.astype(np.float32)


def splitmix64(x: np.ndarray) -> np.ndarray:
  """Stateless 64-bit hash (vectorised), uint64 -> uint64."""
  x = np.asarray(x).astype(np.uint64)
  with np.errstate(over="ignore"):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return x


def hash_keys(keys: np.ndarray, buckets: int) -> np.ndarray:
  """Raw keys (MISSING_KEY included) -> bucket in [0, buckets), as int64."""
  return (splitmix64(keys.astype(np.int64).view(np.uint64)) % np.uint64(buckets)).astype(np.int64)


def _merge_two(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
  """Two sorted runs -> one, in time linear in their sizes (b's keys searched in a's)."""
  if len(a[0]) < len(b[0]):
    a, b = b, a
  (keys, counts), (new_keys, new_counts) = a, b
  pos = np.searchsorted(keys, new_keys)
  found = pos < len(keys)
  found[found] = keys[pos[found]] == new_keys[found]
  counts = counts.copy()
  counts[pos[found]] += new_counts[found]  # keys of a run are unique: no repeated index
  missing = ~found
  return (np.insert(keys, pos[missing], new_keys[missing]),
          np.insert(counts, pos[missing], new_counts[missing]))


def merge_counts(runs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (keys, counts) runs -> one sorted run with the counts of equal keys summed (exact).

  The smaller runs are combined by one sort, then merged into the largest in
  time linear in its size.
  """
  runs = sorted((r for r in runs if len(r[0])), key=lambda r: len(r[0]))
  if not runs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  if len(runs) == 1:
    return runs[0]
  small = runs[:-1]
  if len(small) > 1:
    keys = np.concatenate([k for k, _ in small])
    counts = np.concatenate([n for _, n in small])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    small = [(keys[starts], np.add.reduceat(counts, starts).astype(np.int64))]
  return _merge_two(runs[-1], small[0])


class FrequencyCounter:
  """Streaming per-column key counts with memory set by the vocabulary size.

  Each `update` counts a block's keys per column (`np.unique`) into a sorted
  run that waits beside the column's main run; once the waiting runs hold as
  many entries as the main run, they are sorted together and merged into it
  in one linear pass. A block's amortised cost is therefore set by the block,
  not by the vocabulary (a merge into a main run of V keys happens only after
  about V new entries), and the result does not depend on how the rows were
  cut into blocks. Counters of disjoint rows combine with `merge` / `combine`
  (the tree-reduce of a distributed count).
  """

  def __init__(self, num_columns: int = NUM_SPARSE):
    self._main = [(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in range(num_columns)]
    self._waiting: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(num_columns)]
    self._waiting_size = [0] * num_columns

  def add_counts(self, j: int, keys: np.ndarray, counts: np.ndarray) -> None:
    """Adds sorted unique `keys` with their `counts` to column `j`."""
    if len(keys) == 0:
      return
    self._waiting[j].append((np.asarray(keys, np.int64), np.asarray(counts, np.int64)))
    self._waiting_size[j] += len(keys)
    if self._waiting_size[j] >= max(len(self._main[j][0]), 1 << 20):
      self.column(j)

  def update_column(self, j: int, column: np.ndarray) -> None:
    values, counts = np.unique(column, return_counts=True)
    self.add_counts(j, values, counts)

  def update(self, cat_keys: np.ndarray, pool=None) -> None:
    """Counts a block of keys [n, num_columns] (columns in parallel with `pool`)."""
    cols = range(len(self._main))
    if pool is None:
      for j in cols:
        self.update_column(j, cat_keys[:, j])
    else:
      list(pool.map(lambda j: self.update_column(j, cat_keys[:, j]), cols))

  def column(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, counts) of column `j` (its waiting runs merged in)."""
    if self._waiting[j]:
      self._main[j] = merge_counts([self._main[j], *self._waiting[j]])
      self._waiting[j], self._waiting_size[j] = [], 0
    return self._main[j]

  @property
  def keys(self) -> list[np.ndarray]:
    return [self.column(j)[0] for j in range(len(self._main))]

  @property
  def counts(self) -> list[np.ndarray]:
    return [self.column(j)[1] for j in range(len(self._main))]

  def merge(self, other: "FrequencyCounter") -> None:
    """Adds the counts of `other` (disjoint rows), as one more waiting run per column."""
    for j in range(len(self._main)):
      self.add_counts(j, *other.column(j))

  @classmethod
  def combine(cls, *counters: "FrequencyCounter") -> "FrequencyCounter":
    """One counter holding the summed counts of `counters` (one tree-reduce step)."""
    out = cls(len(counters[0]._main))
    for j in range(len(out._main)):
      out._main[j] = merge_counts([c.column(j) for c in counters])
    return out

  def save(self, path: str) -> None:
    arrays = {f"k{j}": k for j, k in enumerate(self.keys)}
    arrays.update({f"n{j}": n for j, n in enumerate(self.counts)})
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path: str) -> "FrequencyCounter":
    with np.load(path) as z:
      num = len([k for k in z.files if k.startswith("k")])
      out = cls(num)
      out._main = [(z[f"k{j}"], z[f"n{j}"]) for j in range(num)]
    return out


def _for_each_column(fn, num_columns: int, pool=None) -> None:
  """fn(j) for every column j, on `pool` (a concurrent.futures executor) when given."""
  if pool is None:
    for j in range(num_columns):
      fn(j)
  else:
    list(pool.map(fn, range(num_columns)))


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Per-column sorted keys kept in the vocabulary; id = 1 + position, OOV = 0.

  Attributes:
    keys: per column, the sorted kept keys (raw hex values, MISSING_KEY for an
      empty field, or hash buckets when `hash_buckets` is set).
    min_frequency: keys seen fewer times in the training rows were dropped.
    hash_buckets: when set (``max_rows_per_table - 1``), raw keys are first
      hashed into this many buckets (`hash_keys`), so no table exceeds
      ``hash_buckets + 1`` rows; None: raw keys are kept as they are.
    hash_only: no vocabulary was counted (``--vocabulary=hash:N``): the id of a
      value is its bucket ``hash_keys(key, hash_buckets)`` itself, in
      ``[0, hash_buckets)``, every table has ``hash_buckets`` rows and there is
      no OOV id; `keys` holds one empty array per column.
  """

  keys: tuple[np.ndarray, ...]
  min_frequency: int
  hash_buckets: int | None = None
  hash_only: bool = False

  @classmethod
  def hashing(cls, buckets: int, num_columns: int = NUM_SPARSE) -> "Vocabulary":
    """Ids = hash(value) mod `buckets` per column, with no counting pass."""
    if buckets < 1:
      raise ValueError(f"hash buckets must be >= 1, got {buckets}")
    return cls(keys=tuple(np.zeros(0, np.int64) for _ in range(num_columns)), min_frequency=1,
               hash_buckets=buckets, hash_only=True)

  @classmethod
  def build(cls, cat_keys: np.ndarray, min_frequency: int = 1,
            hash_buckets: int | None = None) -> "Vocabulary":
    if min_frequency < 1:
      raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    if hash_buckets is not None:
      cat_keys = hash_keys(cat_keys, hash_buckets)
    keys = []
    for j in range(cat_keys.shape[1]):
      values, counts = np.unique(cat_keys[:, j], return_counts=True)
      keys.append(values[counts >= min_frequency])
    return cls(keys=tuple(keys), min_frequency=min_frequency, hash_buckets=hash_buckets)

  @classmethod
  def from_counts(cls, counter: FrequencyCounter, min_frequency: int = 1,
                  hash_buckets: int | None = None) -> "Vocabulary":
    """The vocabulary of streamed counts (keys already hashed when `hash_buckets`)."""
    if min_frequency < 1:
      raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    keys = tuple(k[n >= min_frequency] for k, n in zip(counter.keys, counter.counts))
    return cls(keys=keys, min_frequency=min_frequency, hash_buckets=hash_buckets)

  @property
  def sizes(self) -> tuple[int, ...]:
    """Embedding rows per column: kept values plus the OOV row (buckets when hash_only)."""
    if self.hash_only:
      return (self.hash_buckets,) * len(self.keys)
    return tuple(len(k) + 1 for k in self.keys)

  def encode_column(self, j: int, column: np.ndarray) -> np.ndarray:
    """Raw keys of column `j` -> int32 ids (OOV_ID for unseen and rare keys)."""
    if self.hash_buckets is not None:
      column = hash_keys(column, self.hash_buckets)
      if self.hash_only:
        return column.astype(np.int32)
    kept = self.keys[j]
    if len(kept) == 0:
      return np.full(len(column), OOV_ID, np.int32)
    column = np.asarray(column, np.int64)
    if len(kept) > 4 * len(column):  # a hash table of `kept` would cost more than a search
      pos = np.minimum(np.searchsorted(kept, column), len(kept) - 1)
      return np.where(kept[pos] == column, pos + 1, OOV_ID).astype(np.int32)
    # Hash lookup (pyarrow, GIL released): position in the sorted keys or null.
    pos = pc.index_in(pa.array(column), value_set=pa.array(kept))
    ids = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    ids += 1  # found: 1 + position; not found: OOV_ID = 0
    return ids

  def encode(self, cat_keys: np.ndarray, pool=None) -> np.ndarray:
    """Maps raw keys [n, 26] to int32 ids; unseen and rare keys -> OOV_ID.

    Args:
      cat_keys: int64 [n, 26] raw keys (`RawBlock.cat_keys`).
      pool: optional `concurrent.futures` executor to encode columns in parallel.
    """
    ids = np.empty(cat_keys.shape, dtype=np.int32)
    def one(j):
      ids[:, j] = self.encode_column(j, cat_keys[:, j])
    _for_each_column(one, len(self.keys), pool)
    return ids

  def encode_slots(self, keys: np.ndarray, bag_lengths: Sequence[int], pool=None
                   ) -> np.ndarray:
    """Raw keys of every slot [n, sum(bag_lengths)] -> int32 ids; PAD_KEY -> PAD_ID.

    Field j's vocabulary encodes its `bag_lengths[j]` slots.
    """
    if all(length == 1 for length in bag_lengths):
      return self.encode(keys, pool)
    ids = np.empty(keys.shape, dtype=np.int32)
    starts = slot_starts(tuple(bag_lengths))
    def one(j):
      block = keys[:, starts[j]:starts[j] + bag_lengths[j]]
      encoded = self.encode_column(j, block.reshape(-1)).reshape(block.shape)
      encoded[block == PAD_KEY] = PAD_ID
      ids[:, starts[j]:starts[j] + bag_lengths[j]] = encoded
    _for_each_column(one, len(self.keys), pool)
    return ids

  def save(self, path: str) -> None:
    """Writes an .npz (uncompressed: large vocabularies load fast)."""
    np.savez(path, min_frequency=self.min_frequency,
             hash_buckets=-1 if self.hash_buckets is None else self.hash_buckets,
             hash_only=self.hash_only, **{f"C{j + 1}": k for j, k in enumerate(self.keys)})

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    with np.load(path) as z:
      num = sum(1 for k in z.files if re.fullmatch(r"C[0-9]+", k))
      keys = tuple(z[f"C{j + 1}"] for j in range(num))
      buckets = int(z["hash_buckets"]) if "hash_buckets" in z.files else -1
      return cls(keys=keys, min_frequency=int(z["min_frequency"]),
                 hash_buckets=None if buckets < 0 else buckets,
                 hash_only="hash_only" in z.files and bool(z["hash_only"]))


def encode_raw(raw: RawBlock, vocab: Vocabulary) -> CTRDataset:
  """Encodes parsed rows with a training vocabulary (how new rows are scored)."""
  return CTRDataset(dense=transform_dense(raw.dense), cat=vocab.encode(raw.cat_keys),
                    label=raw.label.astype(np.float32), vocab_sizes=vocab.sizes)
