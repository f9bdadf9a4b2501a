"""Streaming preprocessing: split modes with known answers, chunking invariance,
--data=FILE vs preprocessed DIR, reuse, bad input (error or counted skip)."""

import gzip
import os

import numpy as np
import pytest

from jaxrec.data import criteo, preprocess
from jaxrec.data.preprocess import PreprocessConfig, SplitAssigner
from jaxrec.data.sources import DataConfig, load_splits, vocabulary_for


def _row(label, first_dense, key):
  """A valid line whose I1 and C1 identify it."""
  return "\t".join([str(label), str(first_dense)] + [""] * 12 + [f"{key:08x}"] + ["0000000a"] * 25)


def _write_rows(path, n, start=0):
  with open(path, "w") as f:
    for i in range(start, start + n):
      f.write(_row(i % 2, i, i % 5) + "\n")
  return str(path)


def _run(tmp_path, inputs, name="out", **kw):
  config = PreprocessConfig(inputs=tuple(inputs), output_dir=str(tmp_path / name), **kw)
  meta = preprocess.preprocess(config, report=lambda m: None)
  return meta, preprocess.load_preprocessed(config.output_dir)


def _ids(dataset):
  """Original row numbers (stored in I1 as log1p(i))."""
  return np.rint(np.expm1(np.asarray(dataset.dense[:, 0], np.float64))).astype(int).tolist()


def test_kaggle_split_known_answer(tmp_path):
  # 100 lines: 7 chunks of 15,15,14,14,14,14,14 -> train = first 86; the last
  # 14 halved: test 86..92, validation 93..99 (the reference's np.array_split).
  meta, splits = _run(tmp_path, [_write_rows(tmp_path / "a.tsv", 100)], split="kaggle",
                      min_frequency=1)
  assert meta["rows"] == {"train": 86, "validation": 7, "test": 7}
  assert _ids(splits.train) == list(range(86))
  assert _ids(splits.test) == list(range(86, 93))
  assert _ids(splits.validation) == list(range(93, 100))
  assert splits.train.label.tolist() == [i % 2 for i in range(86)]


def test_kaggle_split_odd_last_chunk():
  a = SplitAssigner("kaggle", [10])  # chunks 2,2,2,1,1,1,1: train 0..8, test 9, validation none
  assert a.assign(np.arange(10)).tolist() == [0] * 9 + [2]
  b = SplitAssigner("kaggle", [7 * 3 + 3])  # 4,4,4,3,3,3,3 -> train 21, test 2, validation 1
  assert b.assign(np.arange(24)).tolist() == [0] * 21 + [2, 2, 1]


def test_days_split_holds_out_last_file(tmp_path):
  files = [_write_rows(tmp_path / f"day_{d}", 10, start=10 * d) for d in range(3)]
  meta, splits = _run(tmp_path, files, split="days", min_frequency=1)
  assert meta["rows"] == {"train": 20, "validation": 5, "test": 5}
  assert _ids(splits.train) == list(range(20))
  assert _ids(splits.test) == list(range(20, 25))
  assert _ids(splits.validation) == list(range(25, 30))
  # A directory of day files is read in natural (day) order: day_2 < day_10.
  os.rename(files[2], tmp_path / "day_10")
  assert preprocess.expand_inputs([str(tmp_path)]) == [files[0], files[1],
                                                       str(tmp_path / "day_10")]
  with pytest.raises(ValueError, match="days"):
    _run(tmp_path, files[:1], name="one", split="days")


def test_random_split_exact_counts_seeded_and_disjoint(tmp_path):
  meta, splits = _run(tmp_path, [_write_rows(tmp_path / "a.tsv", 1000)],
                      split="random:0.7,0.2,0.1", seed=3, min_frequency=1)
  assert meta["rows"] == {"train": 700, "validation": 200, "test": 100}
  ids = [_ids(s) for s in (splits.train, splits.validation, splits.test)]
  assert sorted(sum(ids, [])) == list(range(1000))
  assert ids[0] == sorted(ids[0])  # file order kept within a split
  assert ids[0] != list(range(700))  # actually shuffled
  # The same assignment as the documented rule, independent of chunking.
  rule = SplitAssigner("random:0.7,0.2,0.1", [1000], seed=3).assign(np.arange(1000))
  assert ids[2] == np.flatnonzero(rule == 2).tolist()
  other = SplitAssigner("random:0.7,0.2,0.1", [1000], seed=4).assign(np.arange(1000))
  assert (other != rule).any()
  with pytest.raises(ValueError, match="random"):
    preprocess.parse_split("random:0.5,0.5")


def test_vocabulary_min_frequency_oov_and_hash_cap(tmp_path):
  path = _write_rows(tmp_path / "a.tsv", 20)  # C1 = i % 5: each value 4 times in 20 rows
  meta, splits = _run(tmp_path, [path], split="kaggle", min_frequency=4)
  # train = the first 18 rows (3,3,3,3,2,2,2 chunks): C1 values 0,1,2 seen 4 times; 3,4 only 3.
  assert meta["vocab_sizes"][0] == 4
  assert meta["vocab_sizes"][1] == 2  # C2 = 0xa everywhere
  assert splits.train.cat[:5, 0].tolist() == [1, 2, 3, 0, 0]
  meta2, splits2 = _run(tmp_path, [path], name="capped", split="kaggle", min_frequency=1,
                        max_rows_per_table=3)
  assert max(meta2["vocab_sizes"]) <= 3
  vocab = preprocess.load_vocabulary(str(tmp_path / "capped"))
  assert vocab.hash_buckets == 2
  raw = criteo.read_raw(path)
  np.testing.assert_array_equal(vocab.encode(raw.cat_keys[:18]), splits2.train.cat)


def test_real_sample_identical_in_one_or_many_chunks(tmp_path, criteo_kaggle_path):
  _, one = _run(tmp_path, [criteo_kaggle_path], name="one", split="kaggle")
  _, many = _run(tmp_path, [criteo_kaggle_path], name="many", split="kaggle",
                 block_rows=37, chunk_rows=1000)
  for a, b in zip((one.train, one.validation, one.test), (many.train, many.validation, many.test)):
    np.testing.assert_array_equal(a.cat, b.cat)
    np.testing.assert_array_equal(a.dense, b.dense)
    np.testing.assert_array_equal(a.label, b.label)
  # The same encoding as the in-memory reference: vocabulary of the train rows.
  raw = criteo.read_raw(criteo_kaggle_path)
  vocab = criteo.Vocabulary.build(raw.cat_keys[:8572], min_frequency=2)
  np.testing.assert_array_equal(vocab.encode(raw.cat_keys[8572:9286]), one.test.cat)
  np.testing.assert_array_equal(criteo.transform_dense(raw.dense[:8572]), one.train.dense)
  assert one.train.vocab_sizes == vocab.sizes


def test_data_file_equals_preprocessed_dir(tmp_path, criteo_kaggle_path):
  out = str(tmp_path / "pre")
  preprocess.preprocess(PreprocessConfig(inputs=(criteo_kaggle_path,), output_dir=out,
                                         split="random:0.8,0.1,0.1", seed=5),
                        report=lambda m: None)
  from_dir = load_splits(DataConfig(source=out))
  file_config = DataConfig(source=criteo_kaggle_path, seed=5, cache_dir=str(tmp_path / "cache"))
  from_file = load_splits(file_config)
  for a, b in zip((from_dir.train, from_dir.test), (from_file.train, from_file.test)):
    np.testing.assert_array_equal(a.cat, b.cat)
    np.testing.assert_array_equal(a.dense, b.dense)
    np.testing.assert_array_equal(a.label, b.label)
  assert len(from_file.test) == 1000 and len(from_file.train) == 8000
  assert vocabulary_for(file_config).sizes == from_dir.train.vocab_sizes


def test_rerun_reuses_and_refuses_other_options(tmp_path):
  path = _write_rows(tmp_path / "a.tsv", 50)
  meta, _ = _run(tmp_path, [path])
  again, _ = _run(tmp_path, [path])
  assert again == meta  # returned from meta.json, not recomputed
  with pytest.raises(ValueError, match="other inputs or options"):
    _run(tmp_path, [path], min_frequency=3)


def test_gzip_and_crlf_inputs_match_plain(tmp_path):
  plain = _write_rows(tmp_path / "a.tsv", 30)
  text = open(plain).read()
  gz = tmp_path / "b.tsv.gz"
  with gzip.open(gz, "wt", newline="") as f:
    f.write(text.replace("\n", "\r\n"))
  _, a = _run(tmp_path, [plain], name="a")
  _, b = _run(tmp_path, [str(gz)], name="b")
  np.testing.assert_array_equal(a.train.cat, b.train.cat)
  np.testing.assert_array_equal(a.train.dense, b.train.dense)


GOOD = _row(1, 5, 0x68fd1e64)


@pytest.mark.parametrize("bad, field, message", [
    ("\t".join(GOOD.split("\t")[:-1]), None, "fields"),           # wrong number of fields
    (GOOD.replace("\t5\t", "\t5.5\t", 1), "I1", "integer"),       # non-integer dense
    (GOOD.replace("68fd1e64", "68fd1e6x"), "C1", "hex"),          # non-hex categorical
    (GOOD.replace("\t5\t", "\t 5\t", 1), "I1", "integer"),          # pyarrow would accept " 5"
    (GOOD.replace("\t5\t", "\t0x5\t", 1), "I1", "integer"),         # ... and "0x5"
    (GOOD.replace("\t5\t", "\t5\r5\t", 1), None, "carriage return"),
    ("", None, "fields"),                                           # an empty line
])
def test_bad_rows_error_or_counted_skip(tmp_path, bad, field, message):
  lines = [_row(0, i, i) for i in range(6)]
  lines[3] = bad
  path = tmp_path / "bad.tsv"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(criteo.CriteoFormatError, match=message) as err:
    _run(tmp_path, [str(path)], name="err")
  assert (err.value.path, err.value.line, err.value.field) == (str(path), 4, field)
  meta, splits = _run(tmp_path, [str(path)], name="skip", on_bad_row="skip", split="kaggle",
                      min_frequency=1)
  assert meta["bad_rows"]["count"] == 1
  assert f"{path}, line 4" in meta["bad_rows"]["examples"][0]
  kept = sorted(_ids(splits.train) + _ids(splits.validation) + _ids(splits.test))
  assert kept == [0, 1, 2, 4, 5]


def test_bad_rows_across_parallel_blocks_keep_file_order(tmp_path):
  # Blocks of ~4 lines are parsed concurrently; errors and skips still follow the file.
  bad_lines = [7, 50, 51, 190]  # 1-based
  lines = [_row(0, i, i) for i in range(200)]
  for n in bad_lines:
    lines[n - 1] = GOOD.replace("68fd1e64", "zzzzzzzz")
  path = tmp_path / "many.tsv"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(criteo.CriteoFormatError) as err:
    _run(tmp_path, [str(path)], name="err", block_rows=4)
  assert (err.value.line, err.value.field) == (7, "C1")
  meta, splits = _run(tmp_path, [str(path)], name="skip", on_bad_row="skip", split="kaggle",
                      min_frequency=1, block_rows=4)
  assert meta["bad_rows"]["count"] == 4
  assert [e.split(", field")[0] for e in meta["bad_rows"]["examples"]] == [
      f"{path}, line {n}" for n in bad_lines]
  good = [i for i in range(200) if i + 1 not in bad_lines]
  # kaggle split of 200 lines: train = lines 0..171, test 172..185, validation 186..199.
  assert _ids(splits.train) == [i for i in good if i < 172]
  assert _ids(splits.test) == [i for i in good if 172 <= i < 186]
  assert _ids(splits.validation) == [i for i in good if i >= 186]


def test_empty_truncated_and_directory_inputs(tmp_path):
  empty = tmp_path / "empty.tsv"
  empty.write_text("")
  with pytest.raises(criteo.CriteoFormatError, match="no rows"):
    _run(tmp_path, [str(empty)], name="e")
  gz = tmp_path / "t.tsv.gz"
  text = "\n".join(_row(0, i, i) for i in range(3000)) + "\n"
  gz.write_bytes(gzip.compress(text.encode())[:-100])
  with pytest.raises(criteo.CriteoFormatError, match="truncated") as err:
    _run(tmp_path, [str(gz)], name="t", on_bad_row="skip")
  assert err.value.path == str(gz)
  nodata = tmp_path / "nodata"
  nodata.mkdir()
  (nodata / "README.md").write_text("nothing here")
  with pytest.raises(criteo.CriteoFormatError, match="no Criteo data files") as err:
    _run(tmp_path, [str(nodata)], name="d")
  assert err.value.path == str(nodata)
