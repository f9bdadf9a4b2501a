"""Raw Criteo parsing, vocabularies, and errors that name file, line and field."""

import gzip

import numpy as np
import pytest

from jaxrec.data import criteo

GOOD = "1\t5\t\t-1\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t" + "\t".join(
    ["68fd1e64", ""] + ["0000000a"] * 24) + "\n"


def _write(tmp_path, text, name="data.tsv"):
  path = tmp_path / name
  path.write_bytes(text.encode() if isinstance(text, str) else text)
  return str(path)


def test_parses_values_exactly(tmp_path):
  raw = criteo.read_raw(_write(tmp_path, GOOD * 3))
  assert raw.label.tolist() == [1, 1, 1]
  assert raw.dense[0, 0] == 5 and np.isnan(raw.dense[0, 1]) and raw.dense[0, 2] == -1
  assert raw.cat_keys[0, 0] == 0x68fd1e64
  assert raw.cat_keys[0, 1] == criteo.MISSING_KEY
  assert raw.cat_keys[0, 2] == 10
  dense = criteo.transform_dense(raw.dense)
  np.testing.assert_allclose(dense[0, :4], [np.log(6), 0, 0, 0])


def test_gzip_and_crlf(tmp_path):
  plain = criteo.read_raw(_write(tmp_path, GOOD * 2))
  gz = tmp_path / "d.tsv.gz"
  with gzip.open(gz, "wb") as f:
    f.write(GOOD.replace("\n", "\r\n").encode() * 2)
  zipped = criteo.read_raw(str(gz))
  np.testing.assert_array_equal(plain.cat_keys, zipped.cat_keys)
  np.testing.assert_array_equal(np.nan_to_num(plain.dense), np.nan_to_num(zipped.dense))


@pytest.mark.parametrize("bad_line, field, message", [
    (GOOD.replace("\t5\t", "\tx5\t", 1), "I1", "not an integer"),
    (GOOD.replace("68fd1e64", "68fd1e6g"), "C1", "hex"),
    (GOOD.replace("68fd1e64", "68fd1e6"), "C1", "hex"),
    ("2" + GOOD[1:], "label", "label"),
    (GOOD.replace("\t", "", 1).replace("5", "5", 1), None, "fields"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, bad_line, field, message):
  path = _write(tmp_path, GOOD * 4 + bad_line + GOOD)
  with pytest.raises(criteo.CriteoFormatError, match=message) as err:
    criteo.read_raw(path)
  assert err.value.line == 5
  assert err.value.field == field
  assert path in str(err.value)


def test_empty_file_directory_and_truncated_gzip(tmp_path):
  with pytest.raises(criteo.CriteoFormatError, match="no rows"):
    criteo.read_raw(_write(tmp_path, ""))
  with pytest.raises(criteo.CriteoFormatError, match="directory"):
    criteo.read_raw(str(tmp_path))
  gz = tmp_path / "t.tsv.gz"
  gz.write_bytes(gzip.compress(GOOD.encode() * 1000)[:-200])
  with pytest.raises(criteo.CriteoFormatError, match="truncated"):
    criteo.read_raw(str(gz))


def test_vocabulary_frequency_threshold_and_oov():
  keys = np.array([[5], [5], [7], [9], [9], [9]], dtype=np.int64).repeat(26, axis=1)
  vocab = criteo.Vocabulary.build(keys, min_frequency=2)
  assert vocab.sizes[0] == 3  # 5, 9 and the OOV row
  ids = vocab.encode(np.array([[5], [9], [7], [123]]).repeat(26, axis=1))
  assert ids[:, 0].tolist() == [1, 2, criteo.OOV_ID, criteo.OOV_ID]


def test_real_kaggle_sample(criteo_kaggle_path):
  raw = criteo.read_raw(criteo_kaggle_path)
  assert len(raw) == 10_000
  assert int(raw.label.sum()) == 2182
  assert raw.cat_keys[0, 0] == 0x68fd1e64
