"""Property tests of the Criteo reader over malformed rows.

Each generated file either parses to exactly the values an independent
statement of the grammar gives (`_expected`), or raises `CriteoFormatError`
naming the file and the first bad line and field. Faults drawn: wrong field
counts, non-UTF-8 and NUL bytes, huge and negative integers, non-decimal and
non-hex text, very long lines, CRLF and lone CR, empty lines, a missing final
newline, gzip, and small blocks (line numbers across block boundaries).
"""

import gzip
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.data import criteo

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
FIELDS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)

# --- independent statement of the grammar ----------------------------------------------------


def _int_value(text: bytes):
  """int64 value of a decimal field, or None if invalid."""
  if re.fullmatch(rb"-?[0-9]+", text) is None:
    return None
  sign = -1 if text.startswith(b"-") else 1
  digits = text.lstrip(b"-").lstrip(b"0") or b"0"
  if len(digits) > 20:
    return None
  value = sign * int(digits)
  return value if INT64_MIN <= value <= INT64_MAX else None


def _expected(lines: list[bytes]):
  """(label, dense, cat) arrays, or (line, field) of the first error."""
  labels, dense, cat = [], [], []
  for number, line in enumerate(lines, start=1):
    body = line[:-1] if line.endswith(b"\n") else line
    if body.endswith(b"\r"):
      body = body[:-1]
    if b"\r" in body:  # a CR inside a line is a line-level error
      return (number, None)
    fields = body.split(b"\t")
    if len(fields) != 40:
      return (number, None)
    if fields[0] not in (b"0", b"1"):
      return (number, "label")
    row_dense, row_cat = [], []
    for name, text in zip(FIELDS[1:14], fields[1:14]):
      if not text:
        row_dense.append(np.nan)
        continue
      value = _int_value(text)
      if value is None:
        return (number, name)
      row_dense.append(float(value))
    for name, text in zip(FIELDS[14:], fields[14:]):
      if not text:
        row_cat.append(-1)
      elif len(text) == 8 and re.fullmatch(rb"[0-9a-fA-F]{8}", text):
        row_cat.append(int(text, 16))
      else:
        return (number, name)
    labels.append(int(fields[0]))
    dense.append(row_dense)
    cat.append(row_cat)
  return (np.array(labels), np.array(dense).reshape(-1, 13), np.array(cat).reshape(-1, 26))


# --- strategies --------------------------------------------------------------------------------

good_label = st.sampled_from([b"0", b"1"])
good_int = st.one_of(
    st.just(b""),
    st.integers(-1000, 100_000).map(lambda v: str(v).encode()),
    st.integers(INT64_MIN, INT64_MAX).map(lambda v: str(v).encode()),
    st.sampled_from([INT64_MIN, INT64_MAX, 2**53 + 1, -(2**53) - 1]).map(lambda v: str(v).encode()),
    st.tuples(st.integers(1, 30), st.integers(0, 999)).map(
        lambda t: b"0" * t[0] + str(t[1]).encode()),  # leading zeros
    st.just(b"-0"),
)
good_cat = st.one_of(
    st.just(b""),
    st.integers(0, 2**32 - 1).map(lambda v: f"{v:08x}".encode()),
    st.integers(0, 2**32 - 1).map(lambda v: f"{v:08X}".encode()),
)
junk = st.one_of(
    st.binary(min_size=1, max_size=12),  # arbitrary bytes: non-UTF-8, NUL, tabs, CR, ...
    st.sampled_from([b"\x00", b"5\x00", b"\xff\xfe", b"\xc3\x28", b"\xd9\xa3", b" ", b"\r"]),
)
bad_label = st.one_of(junk, st.sampled_from([b"", b"2", b"-1", b"01", b" 1", b"1 ", b"+1", b"1.0",
                                             b"true", b"99999999999999999999999"]))
bad_int = st.one_of(junk, st.sampled_from([
    b"+5", b" 5", b"5 ", b"0x10", b"1e3", b"1_0", b"5.0", b"-", b"--5", b"\xd9\xa3",
    b"9223372036854775808", b"-9223372036854775809", b"1" * 25, b"-" + b"9" * 40]),
    st.integers(INT64_MAX + 1, 10**30).map(lambda v: str(v).encode()),
    st.integers(-(10**30), INT64_MIN - 1).map(lambda v: str(v).encode()),
    st.integers(5000, 20000).map(lambda n: b"7" * n))  # past Python's int() digit limit
bad_cat = st.one_of(junk, st.sampled_from([
    b"68fd1e6g", b"68fd1e6", b"68fd1e645", b"0x68fd1e", b" 68fd1e6", b"68fd\x001e", b"68fd1e6\xff",
    b"\xef\xbc\x91" * 3]),  # full-width digits
    st.integers(1, 50_000).map(lambda n: b"a" * n))  # very long


def clean_row(draw) -> list[bytes]:
  return [draw(good_label)] + [draw(good_int) for _ in range(13)] + [
      draw(good_cat) for _ in range(26)]


FAULTS = ("none", "label", "int", "cat", "field_count", "lone_cr", "empty_line", "double_cr",
          "long_valid")
# The outcome each fault must reach at least once (its bad values can, by chance, be valid).
TARGET = {"none": "ok", "label": "label", "int": "I", "cat": "C", "field_count": "count",
          "lone_cr": "any error", "empty_line": "count", "double_cr": "any error",
          "long_valid": "ok"}


@st.composite
def files(draw, fault: str):
  """Clean rows with `fault` injected into one of them; varied line ends."""
  rows = [clean_row(draw) for _ in range(draw(st.integers(1, 5)))]
  target = draw(st.integers(0, len(rows) - 1))
  fields = rows[target]
  if fault == "label":
    fields[0] = draw(bad_label)
  elif fault == "int":
    fields[draw(st.integers(1, 13))] = draw(bad_int)
  elif fault == "cat":
    fields[draw(st.integers(14, 39))] = draw(bad_cat)
  elif fault == "field_count":
    if draw(st.booleans()):
      del fields[draw(st.integers(0, 39))]
    else:
      fields.insert(draw(st.integers(0, 40)), draw(st.sampled_from([b"", b"1", b"0000000a"])))
  elif fault == "long_valid":  # a very long but valid integer (leading zeros)
    fields[draw(st.integers(1, 13))] = b"0" * draw(st.integers(1000, 40_000)) + b"42"
  lines = []
  for i, row in enumerate(rows):
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    line = b"\t".join(row) + ending
    if i == target and fault == "lone_cr":
      cut = draw(st.integers(0, len(line) - 2))
      line = line[:cut] + b"\r" + line[cut:]
    elif i == target and fault == "double_cr":
      line = line.rstrip(b"\r\n") + b"\r\r\n"
    elif i == target and fault == "empty_line":
      lines.append(ending)
    lines.append(line)
  if draw(st.booleans()):  # no newline at the end of the file
    lines[-1] = lines[-1].rstrip(b"\n")
  return lines


def _split_as_python(data: bytes) -> list[bytes]:
  """Lines as the reader counts them: each ends at b"\\n" only."""
  parts = data.split(b"\n")
  return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _check(path: str, lines: list[bytes], block_rows: int) -> str:
  """Reads `path` and compares with `_expected`; returns the outcome's kind."""
  data = b"".join(lines)
  expected = _expected(_split_as_python(data))
  if isinstance(expected[0], int):
    line, field = expected
    with pytest.raises(criteo.CriteoFormatError) as err:
      list(criteo.iter_raw_blocks(path, block_rows=block_rows))
    assert (err.value.line, err.value.field) == (line, field), str(err.value)
    assert str(err.value).startswith(f"{path}, line {line}")
    if field is not None:
      assert f"field {field}:" in str(err.value)
    return "count" if field is None else field.rstrip("0123456789")
  blocks = list(criteo.iter_raw_blocks(path, block_rows=block_rows))
  label, dense, cat = expected
  assert sum(len(b) for b in blocks) == len(label)
  first = 1
  for b in blocks:
    assert b.first_line == first
    first += len(b)
  np.testing.assert_array_equal(np.concatenate([b.label for b in blocks]), label)
  np.testing.assert_array_equal(np.concatenate([b.dense for b in blocks]), dense)  # NaN == NaN
  np.testing.assert_array_equal(np.concatenate([b.cat_keys for b in blocks]), cat)
  return "ok"


@pytest.mark.parametrize("fault", FAULTS)
def test_rows_parse_exactly_or_name_line_and_field(tmp_path, fault):
  outcomes = []

  @SETTINGS
  @given(lines=files(fault), gz=st.booleans(), block_rows=st.sampled_from([1, 2, 1 << 18]))
  def check(lines, gz, block_rows):
    path = str(tmp_path / ("rows.tsv.gz" if gz else "rows.tsv"))
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
      f.write(b"".join(lines))
    outcomes.append(_check(path, lines, block_rows))

  check()
  # The fault reached its intended outcome (guards against a vacuous test).
  target = TARGET[fault]
  assert (target in outcomes) if target != "any error" else (set(outcomes) - {"ok"}), outcomes


@pytest.mark.parametrize("value, expected", [
    (b"9223372036854775807", float(INT64_MAX)),
    (b"-9223372036854775808", float(INT64_MIN)),
    (b"9007199254740993", 9007199254740992.0),  # 2**53 + 1 rounds to nearest float64
    (b"-0", 0.0),
    (b"000123", 123.0),
])
def test_integer_edges_parse_exactly(tmp_path, value, expected):
  fields = [b"0"] + [value] * 13 + [b""] * 26
  path = tmp_path / "e.tsv"
  path.write_bytes(b"\t".join(fields) + b"\n")
  assert criteo.read_raw(str(path)).dense[0, 12] == expected


@pytest.mark.parametrize("value, message", [
    (b"9223372036854775808", "64-bit range"),
    (b"0x10", "not an integer"),
    (b" 5", "not an integer"),
    (b"+5", "not an integer"),
])
def test_integers_pyarrow_would_accept_or_wrap_are_rejected(tmp_path, value, message):
  fields = [b"0"] + [b"1"] * 13 + [b""] * 26
  fields[3] = value
  path = tmp_path / "e.tsv"
  path.write_bytes(b"\t".join(fields) + b"\n")
  with pytest.raises(criteo.CriteoFormatError, match=message) as err:
    criteo.read_raw(str(path))
  assert (err.value.line, err.value.field) == (1, "I3")
