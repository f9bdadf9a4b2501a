"""Schema-driven readers of any CTR file: CSV with a header, TSV without, ``.gz``, Parquet.

Text files stream in whole-line blocks (`criteo.iter_text_blocks`: bounded memory,
gzip, line numbers); each block is parsed by pyarrow's multithreaded CSV reader
with the schema's column types. A block the fast reader rejects is re-scanned line
by line, only to name the first bad line and field (``on_bad_row="error"``) or to
drop and log every bad line (``"skip"``), exactly as for Criteo. Parquet files
stream by record batches; their "line" is the 1-based row number.

A parsed block is a `criteo.RawBlock` whose ``cat_keys`` hold one int64 key per
*slot* (see `jaxrec.data.schema`): a text value's key is a 63-bit hash of its bytes
(`text_keys`), an empty field is `criteo.MISSING_KEY` (its own value, as in
Criteo), an unused multi-hot slot is `PAD_KEY`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jaxrec.data import criteo
from jaxrec.data.criteo import BadRowLog, CriteoFormatError, RawBlock
from jaxrec.data.schema import Schema

PAD_KEY = criteo.PAD_KEY
_POWER_BASE = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so powers never vanish mod 2^64
_powers = np.ones(1, np.uint64)


def _powers_upto(n: int) -> np.ndarray:
  """_POWER_BASE ** k mod 2^64 for k < n (cached, grown on demand)."""
  global _powers
  if len(_powers) < n:
    size = max(n, 2 * len(_powers))
    with np.errstate(over="ignore"):
      _powers = np.cumprod(np.concatenate([[np.uint64(1)],
                                           np.full(size - 1, _POWER_BASE, np.uint64)]),
                           dtype=np.uint64)
  return _powers[:n]


def text_keys(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
  """Vectorised 63-bit keys of text values (int64 >= 0); MISSING_KEY for empty / null.

  key = splitmix64(sum_i byte_i * P^(len - 1 - i) mod 2^64, mixed with the length) >> 1:
  the same bytes always give the same key, on every machine and run.
  """
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
  if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
    column = pc.cast(column, pa.string())
  column = column.fill_null("")
  n = len(column)
  offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
  offsets = np.frombuffer(column.buffers()[1], dtype=offset_type, count=n + 1,
                          offset=column.offset * np.dtype(offset_type).itemsize).astype(np.int64)
  data = column.buffers()[2]
  data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
  lengths = np.diff(offsets)
  keys = np.full(n, criteo.MISSING_KEY, np.int64)
  present = lengths > 0
  if not present.any():
    return keys
  chars = data[offsets[0]:offsets[-1]].astype(np.uint64)
  ends = offsets[1:] - offsets[0]
  owner = np.repeat(np.arange(n), lengths)
  exponent = ends[owner] - 1 - np.arange(len(chars))
  with np.errstate(over="ignore"):
    terms = chars * _powers_upto(int(lengths.max()))[exponent]
    sums = np.add.reduceat(terms, (offsets[:-1] - offsets[0])[present])
    mixed = criteo.splitmix64(sums ^ (lengths[present].astype(np.uint64) << np.uint64(56)))
  keys[present] = (mixed >> np.uint64(1)).astype(np.int64)
  return keys


def _derived_keys(values: np.ndarray, derive: str) -> tuple[np.ndarray, np.ndarray]:
  """(hour-of-day or weekday, bad flags) of YYMMDDHH integers."""
  hour, day = values % 100, values // 100 % 100
  month, year = values // 10_000 % 100, 2000 + values // 1_000_000
  bad = (values < 0) | (values > 99_12_31_23) | (hour > 23) | (day < 1) | (day > 31) | (
      month < 1) | (month > 12)
  if derive == "hour_of_day":
    return np.where(bad, 0, hour), bad
  months = np.where(bad, 0, (year - 1970) * 12 + month - 1).astype("datetime64[M]")
  days = (months.astype("datetime64[D]") + np.where(bad, 0, day - 1)).astype(np.int64)
  return (days + 3) % 7, bad  # 1970-01-01 was a Thursday; Monday = 0


def _bag_keys(column: pa.Array | pa.ChunkedArray, separator: str, length: int) -> np.ndarray:
  """int64 [n, length] keys of each row's first `length` non-empty values, PAD_KEY after."""
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks()
  n = len(column)
  if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
    lists = column.fill_null(pa.scalar([], column.type))
  else:
    if not pa.types.is_string(column.type):
      column = pc.cast(column, pa.string())
    lists = pc.split_pattern(column.fill_null(""), separator)
  counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
  keys = text_keys(pc.list_flatten(lists))
  rows = np.repeat(np.arange(n), counts)
  valid = keys != criteo.MISSING_KEY  # empty values inside a bag (or an empty field)
  rows, keys = rows[valid], keys[valid]
  starts = np.cumsum(np.bincount(rows, minlength=n)) - np.bincount(rows, minlength=n)
  position = np.arange(len(rows)) - starts[rows]
  keep = position < length
  out = np.full((n, length), PAD_KEY, np.int64)
  out[rows[keep], position[keep]] = keys[keep]
  return out


def _to_block(schema: Schema, table: pa.Table, first_line: int) -> RawBlock | None:
  """Arrays of a parsed table, or None when a label or a derived field is invalid."""
  n = table.num_rows
  if schema.label in table.column_names:
    label = table.column(schema.label)
    if not pa.types.is_string(label.type):
      label = pc.cast(label, pa.string())
    if not pc.all(pc.is_in(label, value_set=pa.array(["0", "1"]))).as_py() and n:
      return None
  else:  # rows to score: no label column (labels read as 0)
    label = pa.array(["0"] * n, pa.string())
  dense = np.empty((n, schema.num_dense), np.float64)
  for j, d in enumerate(schema.dense):
    column = table.column(d.name)
    if not pa.types.is_floating(column.type):
      column = pc.cast(column, pa.float64())
    dense[:, j] = column.to_numpy(zero_copy_only=False)
  keys = np.empty((n, schema.num_slots), np.int64)
  for j, c in enumerate(schema.categorical):
    column = table.column(c.column)
    if c.derive is None:
      keys[:, j] = text_keys(column)
      continue
    if column.null_count:
      return None
    values = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    keys[:, j], bad = _derived_keys(values, c.derive)
    if bad.any():
      return None
  start = len(schema.categorical)
  for m in schema.multi_hot:
    keys[:, start:start + m.max_length] = _bag_keys(table.column(m.column), m.separator,
                                                    m.max_length)
    start += m.max_length
  return RawBlock(label=pc.equal(label, "1").to_numpy(zero_copy_only=False).astype(np.int8),
                  dense=dense, cat_keys=keys, first_line=first_line)


@dataclasses.dataclass(frozen=True)
class TextFormat:
  """How one text file's lines split into named columns."""

  path: str
  schema: Schema
  names: tuple[str, ...]  # every column of a line, in order

  def options(self) -> tuple:
    s = self.schema
    quote = '"' if s.format == "csv" else False
    read = pacsv.ReadOptions(column_names=list(self.names), block_size=1 << 22)
    parse = pacsv.ParseOptions(delimiter=s.delimiter, quote_char=quote, escape_char=False,
                               ignore_empty_lines=False, newlines_in_values=False)
    types = {s.label: pa.string()}
    types.update({d.name: pa.float64() for d in s.dense})
    types.update({c.column: pa.string() for c in s.categorical if c.derive is None})
    types.update({c.column: pa.int64() for c in s.categorical if c.derive is not None})
    types.update({m.column: pa.string() for m in s.multi_hot})
    columns = [c for c in s.source_columns if c in self.names]
    convert = pacsv.ConvertOptions(column_types=types, include_columns=columns,
                                   strings_can_be_null=False, null_values=[""],
                                   quoted_strings_can_be_null=False)
    return read, parse, convert

  def split_line(self, text: bytes) -> list[str]:
    line = text.decode("utf-8", errors="replace").rstrip("\r")
    if self.schema.format == "csv":
      return next(csv.reader([line]), [""])
    return line.split(self.schema.delimiter)

  def line_error(self, text: bytes) -> tuple[str | None, str] | None:
    """(field, reason) of a malformed line, or None."""
    fields = self.split_line(text)
    if len(fields) != len(self.names):
      what = "comma" if self.schema.format == "csv" else "tab"
      return None, f"expected {len(self.names)} {what}-separated fields, found {len(fields)}"
    values = dict(zip(self.names, fields))
    s = self.schema
    if s.label in values and values[s.label] not in ("0", "1"):
      return s.label, f"label must be 0 or 1, got {values[s.label][:40]!r}"
    for d in s.dense:
      value = values[d.name]
      if value:
        try:
          float(value)
        except ValueError:
          return d.name, f"not a number: {value[:40]!r}"
    for c in s.categorical:
      if c.derive is not None:
        value = values[c.column]
        ok = len(value) == 8 and value.isdigit()
        if ok:
          ok = not _derived_keys(np.array([int(value)]), c.derive)[1][0]
        if not ok:
          return c.column, f"not a YYMMDDHH hour: {value[:40]!r}"
    return None


def _header(path: str, schema: Schema, first: bytes, require_label: bool = True
            ) -> tuple[str, ...]:
  text = first.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
  names = next(csv.reader([text], delimiter=schema.delimiter), [])
  missing = [c for c in schema.source_columns if c not in names
             and (require_label or c != schema.label)]
  if missing:
    shown = ", ".join(repr(n[:24]) for n in names[:6]) + (", ..." if len(names) > 6 else "")
    raise CriteoFormatError(
        path, 1, None, f"header lacks {len(missing)} of schema {schema.name!r}'s columns"
        f" ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}); it has"
        f" {len(names)} {schema.format} field(s): {shown}")
  return tuple(names)


def parse_block(fmt: TextFormat, first_line: int, buf: bytes, on_bad_row: str = "error",
                bad_rows: BadRowLog | None = None) -> RawBlock | None:
  """Whole lines `buf` (from line `first_line`) -> RawBlock (None: every line skipped)."""
  n_lines = buf.count(b"\n")
  options = fmt.options()
  try:
    table = pacsv.read_csv(pa.py_buffer(buf), *options)
  except (pa.ArrowInvalid, pa.ArrowTypeError):
    table = None
  if table is not None and table.num_rows == n_lines:
    block = _to_block(fmt.schema, table, first_line)
    if block is not None:
      return block
  kept = criteo.good_lines(fmt.path, first_line, buf, fmt.line_error, on_bad_row, bad_rows)
  if kept is None:
    return None
  good, keep = kept
  table = pacsv.read_csv(pa.py_buffer(good), *options)
  block = _to_block(fmt.schema, table, first_line)
  if block is None or len(block) != len(keep):
    raise CriteoFormatError(fmt.path, first_line, None,
                            "unreadable block after skipping bad lines")
  return dataclasses.replace(block, lines=first_line + np.asarray(keep, dtype=np.int64))


def iter_text_jobs(path: str, schema: Schema, block_bytes: int, checksum=None,
                   require_label: bool = True) -> Iterator[tuple[TextFormat, int, bytes]]:
  """(format, first line, whole lines) of a text file; a header line is consumed.

  Without `require_label`, a file may lack the label column (rows to score): a
  header without it, or headerless lines one field short.
  """
  fmt = None
  for first_line, buf in criteo.iter_text_blocks(path, block_bytes, checksum):
    if fmt is None and not schema.header:
      names = tuple(schema.columns)
      if not require_label:
        first = buf.split(b"\n", 1)[0].rstrip(b"\r")
        fields = len(TextFormat(path, schema, names).split_line(first))
        if fields == len(names) - 1:
          names = tuple(c for c in names if c != schema.label)
      fmt = TextFormat(path, schema, names)
    if fmt is None:
      fmt = TextFormat(path, schema, _header(path, schema, buf, require_label))
      cut = buf.find(b"\n") + 1
      buf, first_line = buf[cut:], first_line + 1
      if not buf:
        continue
    yield fmt, first_line, buf


def is_parquet(path: str, schema: Schema) -> bool:
  return schema.format == "parquet" or path.endswith(".parquet")


def iter_parquet_batches(path: str, schema: Schema, block_rows: int, *,
                         on_bad_row: str = "error", checksum=None, require_label: bool = True
                         ) -> Iterator[tuple[RawBlock | None, BadRowLog]]:
  """(block or None when all its rows were skipped, its skipped rows) per record batch
  of a Parquet file; a row's "line" is its 1-based row number."""
  import pyarrow.parquet as pq
  if not os.path.isfile(path):
    raise CriteoFormatError(path, None, None, "no such file")
  if checksum is not None:
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 24), b""):
        checksum.update(chunk)
  try:
    reader = pq.ParquetFile(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise CriteoFormatError(path, None, None, f"not a Parquet file: {e}") from e
  names = reader.schema_arrow.names
  missing = [c for c in schema.source_columns if c not in names
             and (require_label or c != schema.label)]
  if missing:
    raise CriteoFormatError(path, None, None, f"lacks the schema's columns {missing}")
  row = 1
  columns = [c for c in schema.source_columns if c in names]
  for batch in reader.iter_batches(block_rows, columns=columns):
    table = pa.Table.from_batches([batch])
    bad = BadRowLog()
    block = _to_block(schema, table, row)
    if block is None:
      block = _parquet_rows(path, schema, table, row, on_bad_row, bad)
    yield block, bad
    row += table.num_rows


def iter_parquet_blocks(path: str, schema: Schema, block_rows: int, *,
                        on_bad_row: str = "error", bad_rows: BadRowLog | None = None,
                        checksum=None, require_label: bool = True) -> Iterator[RawBlock]:
  """Record batches of a Parquet file as RawBlocks (see `iter_parquet_batches`)."""
  for block, bad in iter_parquet_batches(path, schema, block_rows, on_bad_row=on_bad_row,
                                         checksum=checksum, require_label=require_label):
    if bad_rows is not None:
      bad_rows.merge(bad)
    if block is not None:
      yield block


def _parquet_rows(path, schema, table, row, on_bad_row, bad_rows) -> RawBlock | None:
  """Names (or skips) the bad rows of a Parquet batch the fast conversion rejected."""
  keep = []
  for i in range(table.num_rows):
    one = table.slice(i, 1)
    if _to_block(schema, one, row + i) is not None:
      keep.append(i)
      continue
    label = one.column(schema.label)[0].as_py() if schema.label in one.column_names else 0
    field, reason = ((schema.label, f"label must be 0 or 1, got {label!r}")
                     if str(label) not in ("0", "1") else (None, "invalid derived field"))
    criteo.skip_or_raise(CriteoFormatError(path, row + i, field, reason), on_bad_row, bad_rows)
  if not keep:
    return None
  block = _to_block(schema, table.take(pa.array(keep)), row)
  return dataclasses.replace(block, lines=row + np.asarray(keep, dtype=np.int64))


def iter_raw_blocks(path: str, schema: Schema, block_rows: int = 1 << 16, *,
                    on_bad_row: str = "error", bad_rows: BadRowLog | None = None,
                    checksum=None) -> Iterator[RawBlock]:
  """Streams any file of `schema` as parsed blocks (`criteo.iter_raw_blocks` for Criteo)."""
  if schema.is_criteo_layout():
    yield from criteo.iter_raw_blocks(path, block_rows, on_bad_row=on_bad_row,
                                      bad_rows=bad_rows, checksum=checksum)
    return
  if on_bad_row not in criteo.ON_BAD_ROW:
    raise ValueError(f"on_bad_row must be one of {criteo.ON_BAD_ROW}, got {on_bad_row!r}")
  if is_parquet(path, schema):
    yield from iter_parquet_blocks(path, schema, block_rows, on_bad_row=on_bad_row,
                                   bad_rows=bad_rows, checksum=checksum)
    return
  lines = 0
  for fmt, first_line, buf in iter_text_jobs(path, schema, block_rows * 256, checksum):
    lines += 1
    block = parse_block(fmt, first_line, buf, on_bad_row, bad_rows)
    if block is not None:
      yield block
  if lines == 0:
    raise CriteoFormatError(path, None, None, "file has no rows")


def read_raw(path: str, schema: Schema, *, on_bad_row: str = "error",
             bad_rows: BadRowLog | None = None) -> RawBlock:
  """A whole (small) file of `schema` as one block."""
  return criteo.concat_blocks(
      path, iter_raw_blocks(path, schema, on_bad_row=on_bad_row, bad_rows=bad_rows))


def transform_dense(schema: Schema, dense: np.ndarray) -> np.ndarray:
  """Per-column transforms of `schema` (missing -> 0); float32 [n, num_dense]."""
  if schema.is_criteo_layout() or all(d.transform == "log1p" for d in schema.dense):
    return criteo.transform_dense(dense)
  out = np.nan_to_num(dense, nan=0.0)
  for j, d in enumerate(schema.dense):
    if d.transform == "log1p":
      out[:, j] = np.log1p(np.maximum(out[:, j], 0.0))
  return out.astype(np.float32)


def has_label(path: str, schema: Schema) -> bool:
  """Whether a file of `schema` has its label column (a header naming it, Parquet's
  columns, or headerless lines with every column)."""
  if schema.is_criteo_layout():
    from jaxrec.serving import raw_rows  # pylint: disable=import-outside-toplevel
    return raw_rows.has_label_column(path)
  if is_parquet(path, schema):
    import pyarrow.parquet as pq
    return schema.label in pq.ParquetFile(path).schema_arrow.names
  for fmt, _, _ in iter_text_jobs(path, schema, 1 << 16, require_label=False):
    return schema.label in fmt.names
  raise CriteoFormatError(path, None, None, "file has no rows")


def iter_rows_to_score(path: str, schema: Schema, block_rows: int = 1 << 16
                       ) -> tuple[bool, Iterator[RawBlock]]:
  """(has_label, blocks) of raw rows to score, with or without the label column."""
  if schema.is_criteo_layout():
    from jaxrec.serving import raw_rows  # pylint: disable=import-outside-toplevel
    return raw_rows.iter_rows(path, block_rows)
  labelled = has_label(path, schema)
  if is_parquet(path, schema):
    return labelled, iter_parquet_blocks(path, schema, block_rows, require_label=False)
  def blocks():
    for fmt, first_line, buf in iter_text_jobs(path, schema, block_rows * 256,
                                               require_label=False):
      block = parse_block(fmt, first_line, buf)
      if block is not None:
        yield block
  return labelled, blocks()


def encode_block(raw: RawBlock, vocabulary: criteo.Vocabulary, schema: Schema
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Raw rows -> (dense float32 [n, num_dense], ids int32 [n, num_slots]) as in training."""
  return (transform_dense(schema, raw.dense),
          vocabulary.encode_slots(raw.cat_keys, schema.bag_lengths))
