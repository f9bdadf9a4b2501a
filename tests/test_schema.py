"""Feature schemas and the schema-driven readers: JSON round trip, presets, CSV with a
header, TSV without, .gz and Parquet read the same rows; bad rows name file, line, field."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrec.data import criteo, schema, tabular
from jaxrec.data.criteo import CriteoFormatError

SCHEMA = {
    "name": "toy", "label": "y", "format": "csv", "header": True,
    "dense": [{"name": "price", "transform": "log1p"}, {"name": "score", "transform": "none"}],
    "categorical": ["city", {"name": "hod", "source": "hour", "derive": "hour_of_day"},
                    {"name": "wd", "source": "hour", "derive": "weekday"}],
    "multi_hot": [{"name": "tags", "separator": "|", "max_length": 3, "pooling": "mean"}],
}
HEADER = "y,price,score,city,hour,tags,unused\n"
ROWS = ["1,3,0.5,paris,14102100,a|b,x\n",      # 2014-10-21 was a Tuesday (weekday 1)
        "0,,-2,rome,14102523,,x\n",              # 2014-10-25: Saturday (5); empty bag
        "1,7,1,,14102600,b|c|d|a|e,x\n"]          # bag truncated to 3; missing city


def _toy():
  return schema.Schema.from_json(SCHEMA)


def test_json_round_trip_and_presets(tmp_path):
  s = _toy()
  assert schema.Schema.from_json(s.to_json()) == s
  path = tmp_path / "toy.json"
  path.write_text(json.dumps(SCHEMA))
  assert schema.load(str(path)) == s
  assert s.bag_lengths == (1, 1, 1, 3) and s.num_slots == 6 and s.num_dense == 2
  assert s.field_names == ("city", "hod", "wd", "tags")
  c = schema.load("criteo")
  assert (c.num_dense, c.num_fields, c.is_criteo_layout()) == (13, 26, True)
  a = schema.load("avazu")
  assert (a.num_dense, a.num_fields, a.label) == (0, 23, "click")
  assert "id" not in a.source_columns


@pytest.mark.parametrize("bad, message", [
    ({**SCHEMA, "colour": 1}, "unknown keys"),
    ({**SCHEMA, "multi_hot": [{"name": "t", "pooling": "max"}]}, "pooling"),
    ({**SCHEMA, "dense": [{"name": "city"}]}, "duplicate"),
    ({k: v for k, v in SCHEMA.items() if k != "label"}, "label"),
])
def test_bad_schema_is_a_clear_error(tmp_path, bad, message):
  path = tmp_path / "s.json"
  path.write_text(json.dumps(bad))
  with pytest.raises(schema.SchemaError, match=message):
    schema.load(str(path))
  with pytest.raises(schema.SchemaError, match="expected one of"):
    schema.load("kaggle")


def _check_rows(raw):
  assert raw.label.tolist() == [1, 0, 1]
  np.testing.assert_array_equal(np.isnan(raw.dense[:, 0]), [False, True, False])
  assert raw.dense[1, 1] == -2
  keys = raw.cat_keys
  assert keys[2, 0] == criteo.MISSING_KEY and keys[0, 0] != keys[1, 0]
  assert keys[:, 1].tolist() == [0, 23, 0] and keys[:, 2].tolist() == [1, 5, 6]
  assert (keys[1, 3:] == tabular.PAD_KEY).all()             # empty bag
  assert keys[0, 5] == tabular.PAD_KEY                     # a|b: two of three slots
  assert keys[0, 4] == keys[2, 3]                          # "b" is the same key in every row
  assert keys[0, 3] not in keys[2, 3:]                     # "a" came 4th: truncated away


def test_csv_tsv_gz_parquet_read_the_same_rows(tmp_path):
  s = _toy()
  csv_path = tmp_path / "d.csv"
  csv_path.write_text(HEADER + "".join(ROWS))
  _check_rows(tabular.read_raw(str(csv_path), s))
  gz_path = tmp_path / "d.csv.gz"
  with gzip.open(gz_path, "wt") as f:
    f.write((HEADER + "".join(ROWS)).replace("\n", "\r\n"))
  _check_rows(tabular.read_raw(str(gz_path), s))
  tsv = schema.Schema.from_json({**SCHEMA, "format": "tsv", "header": False,
                                 "columns": HEADER.strip().split(",")})
  tsv_path = tmp_path / "d.tsv"
  tsv_path.write_text("".join(r.replace(",", "\t") for r in ROWS))
  _check_rows(tabular.read_raw(str(tsv_path), tsv))
  table = pa.table({"y": [1, 0, 1], "price": [3.0, None, 7.0], "score": [0.5, -2.0, 1.0],
                    "city": ["paris", "rome", None], "hour": [14102100, 14102523, 14102600],
                    "tags": [["a", "b"], [], ["b", "c", "d", "a", "e"]]})
  pq.write_table(table, tmp_path / "d.parquet")
  _check_rows(tabular.read_raw(str(tmp_path / "d.parquet"), s))


@pytest.mark.parametrize("row, field, message", [
    ("2,3,0.5,paris,14102100,a,x\n", "y", "label must be 0 or 1"),
    ("1,abc,0.5,paris,14102100,a,x\n", "price", "not a number"),
    ("1,3,0.5,paris,14132100,a,x\n", "hour", "YYMMDDHH"),
    ("1,3,0.5,paris,14102100,a\n", None, "expected 7 comma-separated fields, found 6"),
])
def test_bad_rows_name_file_line_field(tmp_path, row, field, message):
  path = tmp_path / "d.csv"
  path.write_text(HEADER + ROWS[0] + row + ROWS[1])
  with pytest.raises(CriteoFormatError, match=message) as e:
    tabular.read_raw(str(path), _toy())
  assert (e.value.path, e.value.line, e.value.field) == (str(path), 3, field)
  log = criteo.BadRowLog()
  raw = tabular.read_raw(str(path), _toy(), on_bad_row="skip", bad_rows=log)
  assert log.count == 1 and raw.line_numbers().tolist() == [2, 4]


def test_header_without_schema_columns(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text("y,price\n1,2\n")
  with pytest.raises(CriteoFormatError,
                     match=r"header lacks 4 of schema 'toy''s columns \(score, city, hour, tags\)"):
    tabular.read_raw(str(path), _toy())


def test_text_keys_are_stable_and_distinct():
  keys = tabular.text_keys(pa.array(["a", "b", "ab", "ba", "", None, "a"]))
  assert keys[0] == keys[6] and len(set(keys[:4].tolist())) == 4
  assert keys[4] == keys[5] == criteo.MISSING_KEY and (keys[:4] >= 0).all()
  # Fixed across versions: a vocabulary saved today encodes tomorrow's rows the same way.
  assert int(keys[0]) == int(tabular.text_keys(pa.array(["a"]))[0])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dlrm", "fm"])
def test_avazu_sample_trains_from_raw_csv(tmp_path, avazu_path, model):
  from conftest import run_train_cli
  out = tmp_path / "run"
  result = run_train_cli("--schema=avazu", f"--data={avazu_path}", f"--model={model}",
                         f"--output_dir={out}", f"--cache_dir={tmp_path / 'cache'}")
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["auc"] > 0.5 and metrics["logloss"] < metrics["baseline_logloss"]
