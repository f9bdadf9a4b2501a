"""Raw Criteo rows to score: with a label column (training layout) or without (test layout).

Criteo's training files have 40 tab-separated fields (label, I1..I13, C1..C26);
its test files drop the label (39 fields). `iter_rows` looks at the first line
to tell which, then streams `RawBlock`s: labelled files through
`jaxrec.data.criteo.iter_raw_blocks`, unlabelled ones through the same pyarrow
parsing here with the label column absent (the blocks' labels are zeros and
``has_label`` says they mean nothing). Malformed rows raise `CriteoFormatError`
naming file, line and field, as in training.
"""

from __future__ import annotations

import gzip
import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from jaxrec.data import criteo
from jaxrec.data.dataset import DENSE_NAMES, NUM_DENSE, NUM_SPARSE, SPARSE_NAMES

UNLABELED_NAMES = DENSE_NAMES + SPARSE_NAMES


def _open(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def has_label_column(path: str) -> bool:
  """True for 40-field rows (label first), False for 39-field rows; else CriteoFormatError."""
  if os.path.isdir(path):
    raise criteo.CriteoFormatError(path, None, None, "is a directory, expected a Criteo TSV file")
  if not os.path.exists(path):
    raise criteo.CriteoFormatError(path, None, None, "no such file")
  try:
    with _open(path) as f:
      first = f.readline()
  except (OSError, EOFError) as e:
    raise criteo.CriteoFormatError(path, None, None, f"unreadable: {e}") from e
  if not first:
    raise criteo.CriteoFormatError(path, None, None, "file has no rows")
  fields = first.rstrip(b"\r\n").count(b"\t") + 1
  if fields == criteo.NUM_FIELDS:
    return True
  if fields == criteo.NUM_FIELDS - 1:
    return False
  raise criteo.CriteoFormatError(
      path, 1, None, f"expected {criteo.NUM_FIELDS} tab-separated fields (label first) or"
      f" {criteo.NUM_FIELDS - 1} (no label), found {fields}")


def iter_rows(path: str, block_rows: int = 1 << 16) -> tuple[bool, Iterator[criteo.RawBlock]]:
  """(has_label, blocks of up to about `block_rows` parsed rows)."""
  if has_label_column(path):
    return True, criteo.iter_raw_blocks(path, block_rows)
  return False, _iter_unlabeled(path, block_rows)


def _locate(path: str, first_line: int, lines: list[bytes]) -> criteo.CriteoFormatError:
  for i, raw in enumerate(lines):
    fields = raw.rstrip(b"\r\n").split(b"\t")
    if len(fields) != len(UNLABELED_NAMES):
      return criteo.CriteoFormatError(
          path, first_line + i, None,
          f"expected {len(UNLABELED_NAMES)} tab-separated fields (no label), found {len(fields)}")
    for name, value in zip(UNLABELED_NAMES, fields):
      problem = criteo._field_error(name, value)  # pylint: disable=protected-access
      if problem:
        return criteo.CriteoFormatError(path, first_line + i, name, problem)
  return criteo.CriteoFormatError(path, None, None, "unreadable block (no single bad line found)")


def _iter_unlabeled(path: str, block_rows: int) -> Iterator[criteo.RawBlock]:
  read = pacsv.ReadOptions(column_names=list(UNLABELED_NAMES), block_size=1 << 24)
  parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                             ignore_empty_lines=False)
  types = {n: pa.int64() for n in DENSE_NAMES}
  types.update({n: pa.string() for n in SPARSE_NAMES})
  convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False, null_values=[""],
                                 quoted_strings_can_be_null=False)
  line = 1
  with _open(path) as f:
    while True:
      try:
        lines = f.readlines(block_rows * 256)
      except (EOFError, OSError) as e:
        raise criteo.CriteoFormatError(
            path, None, None, f"corrupt or truncated compressed data after line {line - 1}: {e}"
        ) from e
      if not lines:
        break
      if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
      try:
        table = pacsv.read_csv(pa.py_buffer(b"".join(lines)), read_options=read,
                               parse_options=parse, convert_options=convert)
      except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _locate(path, line, lines) from e
      n = table.num_rows
      dense = np.empty((n, NUM_DENSE), np.float64)
      for j, name in enumerate(DENSE_NAMES):
        dense[:, j] = table.column(name).to_numpy(zero_copy_only=False)  # null -> nan
      cat = np.empty((n, NUM_SPARSE), np.int64)
      for j, name in enumerate(SPARSE_NAMES):
        keys, bad = criteo.decode_hex_column(table.column(name))
        if bad.any():
          raise _locate(path, line, lines)
        cat[:, j] = keys
      yield criteo.RawBlock(label=np.zeros(n, np.int8), dense=dense, cat_keys=cat,
                            first_line=line)
      line += len(lines)
