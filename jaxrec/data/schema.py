"""Feature schema: which columns of a CTR file are the label, the dense features,
the categorical and the multi-hot (bag) features, and how each is encoded.

A `Schema` is a frozen dataclass with a JSON round trip (`to_json` /
`from_json`, `load(spec)` for a preset name or a ``.json`` path). Presets:

* ``criteo``: Criteo Kaggle's headerless TSV (label, I1..I13, C1..C26, 8-hex-digit
  categoricals): exactly the historical behaviour, through the fast hex reader.
* ``criteo_terabyte``: the same layout with MLPerf's 40M-row cap per table.
* ``avazu``: Avazu's CSV with a header; ``id`` dropped, ``hour`` (YYMMDDHH) split
  into hour-of-day and weekday categoricals, every other column categorical.

Columns: `Dense` (``log1p``: ``log(1 + max(x, 0))`` as Criteo's, or ``none``;
missing -> 0), `Categorical` (each distinct text value is a key; the vocabulary
keeps keys seen at least ``min_frequency`` times in the training rows, optionally
after hashing into ``max_rows - 1`` buckets), `MultiHot` (a bag of values joined
by ``separator`` inside one field, at most ``max_length`` kept, pooled by ``sum``
or ``mean``; an empty field is an empty bag, whose pooled vector is zero).

Encoded, a row's categorical part is one int32 vector of *slots*: one slot per
categorical field, then ``max_length`` slots per multi-hot field, padded with
`PAD_ID` (-1). Field ``j`` owns slots ``slot_starts[j] : slot_starts[j] + bag_lengths[j]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

PAD_ID = -1  # encoded id of an unused multi-hot slot (gathers a zero row, updates nothing)
TRANSFORMS = ("log1p", "none")
POOLINGS = ("sum", "mean")
FORMATS = ("tsv", "csv", "parquet")
KEY_ENCODINGS = ("text", "hex8")
DERIVATIONS = ("hour_of_day", "weekday")  # of a YYMMDDHH column (Avazu's hour)


class SchemaError(ValueError):
  """An invalid schema (file or preset), naming where."""


@dataclasses.dataclass(frozen=True)
class Dense:
  """A numeric column; missing -> 0 after `transform` ("log1p" or "none")."""

  name: str
  transform: str = "log1p"


@dataclasses.dataclass(frozen=True)
class Categorical:
  """One id per row.

  Attributes:
    name: field name (reports, heat-maps, vocabulary keys).
    source: the column read (default: `name`).
    derive: None, or "hour_of_day" / "weekday" of a YYMMDDHH `source` column.
  """

  name: str
  source: str | None = None
  derive: str | None = None

  @property
  def column(self) -> str:
    return self.source or self.name


@dataclasses.dataclass(frozen=True)
class MultiHot:
  """A bag of ids per row: `separator`-joined values, the first `max_length` kept."""

  name: str
  separator: str = "|"
  max_length: int = 8
  pooling: str = "sum"

  @property
  def column(self) -> str:
    return self.name


@dataclasses.dataclass(frozen=True)
class Schema:
  """How one CTR file format becomes label, dense features and categorical slots.

  Attributes:
    name: preset name or a user's label for the schema.
    label: the 0/1 label column.
    dense / categorical / multi_hot: the feature columns, in model field order
      (categorical fields first, then multi-hot ones).
    format: "tsv", "csv" or "parquet".
    header: text files start with a header line naming the columns.
    columns: every column of a headerless text file, in order (None with a header).
    key_encoding: "text" (any value) or "hex8" (Criteo's 8-hex-digit values, read
      by the fast vectorised decoder).
  """

  name: str
  label: str
  dense: tuple[Dense, ...] = ()
  categorical: tuple[Categorical, ...] = ()
  multi_hot: tuple[MultiHot, ...] = ()
  format: str = "csv"
  header: bool = True
  columns: tuple[str, ...] | None = None
  key_encoding: str = "text"

  def __post_init__(self):
    where = f"schema {self.name!r}"
    if self.format not in FORMATS:
      raise SchemaError(f"{where}: format must be one of {FORMATS}, got {self.format!r}")
    if self.key_encoding not in KEY_ENCODINGS:
      raise SchemaError(f"{where}: key_encoding must be one of {KEY_ENCODINGS}")
    if self.key_encoding == "hex8" and self.multi_hot:
      raise SchemaError(f"{where}: hex8 keys have no multi-hot columns")
    if not self.categorical and not self.multi_hot:
      raise SchemaError(f"{where}: needs at least one categorical or multi-hot column")
    names = [self.label] + self.dense_names + list(self.field_names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise SchemaError(f"{where}: duplicate names {duplicates}")
    for d in self.dense:
      if d.transform not in TRANSFORMS:
        raise SchemaError(f"{where}: dense {d.name!r}: transform must be one of {TRANSFORMS}")
    for c in self.categorical:
      if c.derive is not None and c.derive not in DERIVATIONS:
        raise SchemaError(f"{where}: categorical {c.name!r}: derive must be one of {DERIVATIONS}")
    for m in self.multi_hot:
      if m.pooling not in POOLINGS:
        raise SchemaError(f"{where}: multi_hot {m.name!r}: pooling must be one of {POOLINGS}")
      if m.max_length < 1 or not m.separator:
        raise SchemaError(f"{where}: multi_hot {m.name!r}: needs max_length >= 1 and a separator")
    if not self.header and self.format != "parquet":
      if not self.columns:
        raise SchemaError(f"{where}: a headerless text format needs 'columns'")
      missing = sorted(set(self.source_columns) - set(self.columns))
      if missing:
        raise SchemaError(f"{where}: columns {missing} are used but not in 'columns'")

  # -- derived facts -------------------------------------------------------------------------

  @property
  def dense_names(self) -> list[str]:
    return [d.name for d in self.dense]

  @property
  def field_names(self) -> tuple[str, ...]:
    """Categorical then multi-hot field names (one embedding field each)."""
    return tuple(c.name for c in self.categorical) + tuple(m.name for m in self.multi_hot)

  @property
  def num_dense(self) -> int:
    return len(self.dense)

  @property
  def num_fields(self) -> int:
    return len(self.categorical) + len(self.multi_hot)

  @property
  def bag_lengths(self) -> tuple[int, ...]:
    """Slots per field: 1 for a categorical, max_length for a multi-hot field."""
    return (1,) * len(self.categorical) + tuple(m.max_length for m in self.multi_hot)

  @property
  def poolings(self) -> tuple[str, ...]:
    return ("sum",) * len(self.categorical) + tuple(m.pooling for m in self.multi_hot)

  @property
  def num_slots(self) -> int:
    return int(sum(self.bag_lengths))

  @property
  def has_bags(self) -> bool:
    return bool(self.multi_hot)

  @property
  def source_columns(self) -> tuple[str, ...]:
    """Columns read from the file (label, dense, categorical sources, multi-hot), unique."""
    names = [self.label] + self.dense_names + [c.column for c in self.categorical] + [
        m.column for m in self.multi_hot]
    return tuple(dict.fromkeys(names))

  @property
  def delimiter(self) -> str:
    return "\t" if self.format == "tsv" else ","

  def is_criteo_layout(self) -> bool:
    """The Criteo TSV layout read by the fast hex path (`jaxrec.data.criteo`)."""
    return self.key_encoding == "hex8"

  # -- JSON ----------------------------------------------------------------------------------

  def to_json(self) -> dict:
    """Plain JSON values (lists, not tuples): equal to what `json.load` gives back."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_json(cls, data: dict, where: str = "schema") -> "Schema":
    if not isinstance(data, dict):
      raise SchemaError(f"{where}: expected a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise SchemaError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    if "label" not in data:
      raise SchemaError(f"{where}: 'label' (the 0/1 column) is required")
    kwargs: dict[str, Any] = dict(data)
    kwargs.setdefault("name", os.path.splitext(os.path.basename(where))[0])
    for key, column_cls in (("dense", Dense), ("categorical", Categorical),
                            ("multi_hot", MultiHot)):
      kwargs[key] = tuple(_column(column_cls, c, f"{where}: {key}[{i}]")
                          for i, c in enumerate(data.get(key, ())))
    if kwargs.get("columns") is not None:
      kwargs["columns"] = tuple(kwargs["columns"])
    try:
      return cls(**kwargs)
    except TypeError as e:
      raise SchemaError(f"{where}: {e}") from e


def _column(cls, value, where: str):
  if isinstance(value, str):
    return cls(name=value)
  if not isinstance(value, dict) or "name" not in value:
    raise SchemaError(f"{where}: expected a name or an object with 'name'")
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(value) - known)
  if unknown:
    raise SchemaError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
  return cls(**value)


# -- presets ---------------------------------------------------------------------------------

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))


def criteo(name: str = "criteo") -> Schema:
  return Schema(name=name, label="label", dense=tuple(Dense(n) for n in CRITEO_DENSE),
                categorical=tuple(Categorical(n) for n in CRITEO_SPARSE), format="tsv",
                header=False, columns=("label",) + CRITEO_DENSE + CRITEO_SPARSE,
                key_encoding="hex8")


AVAZU_CATEGORICAL = (
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21")


def avazu() -> Schema:
  derived = (Categorical("hour_of_day", source="hour", derive="hour_of_day"),
             Categorical("weekday", source="hour", derive="weekday"))
  return Schema(name="avazu", label="click",
                categorical=derived + tuple(Categorical(n) for n in AVAZU_CATEGORICAL),
                format="csv", header=True)


# criteo_terabyte: MLPerf DLRM's cap of 40M rows per table (values hashed beyond it) is a
# preprocessing option (--max_rows_per_table=40000000); the row layout is Criteo's.
PRESETS = {"criteo": criteo, "criteo_terabyte": lambda: criteo("criteo_terabyte"),
           "avazu": avazu}
# Rows per table past which a preset's preprocessing hashes values (None: no cap).
PRESET_MAX_ROWS = {"criteo_terabyte": 40_000_000}


def load(spec: str) -> Schema:
  """A preset name (`PRESETS`) or the path of a JSON schema file.

  Raises:
    SchemaError naming the file (or the unknown preset) and the problem.
  """
  if spec in PRESETS:
    return PRESETS[spec]()
  if not spec.endswith(".json"):
    raise SchemaError(f"--schema={spec}: expected one of {sorted(PRESETS)} or a .json file")
  if not os.path.exists(spec):
    raise SchemaError(f"{spec}: no such schema file")
  try:
    with open(spec) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise SchemaError(f"{spec}: line {e.lineno}: not valid JSON: {e.msg}") from e
  return Schema.from_json(data, where=spec)


def slot_fields(bag_lengths: tuple[int, ...]) -> np.ndarray:
  """Field index of every slot (int32 [num_slots])."""
  return np.repeat(np.arange(len(bag_lengths), dtype=np.int32), bag_lengths)


def slot_starts(bag_lengths: tuple[int, ...]) -> np.ndarray:
  """First slot of every field (int64 [num_fields])."""
  return np.concatenate([[0], np.cumsum(bag_lengths)[:-1]]).astype(np.int64)
