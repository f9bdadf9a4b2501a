"""Preprocessing at scale: the Dask engine writes the local engine's bytes, hashed
vocabularies need no counting pass, and counting does not depend on blocking."""

import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrec.data import criteo, preprocess, synthetic
from jaxrec.data.preprocess import PreprocessConfig

from conftest import REPO


def _run(tmp_path, inputs, name, **kw):
  config = PreprocessConfig(inputs=tuple(inputs), output_dir=str(tmp_path / name), **kw)
  return preprocess.preprocess(config, report=lambda m: None)


def _assert_same_output(a, b):
  for split in preprocess.SPLITS:
    for name in ("dense", "cat", "label"):
      assert filecmp.cmp(os.path.join(a, split, f"{name}.npy"),
                         os.path.join(b, split, f"{name}.npy"), shallow=False), (split, name)
  va, vb = preprocess.load_vocabulary(a), preprocess.load_vocabulary(b)
  assert (va.hash_buckets, va.hash_only, va.min_frequency) == \
      (vb.hash_buckets, vb.hash_only, vb.min_frequency)
  for x, y in zip(va.keys, vb.keys):
    np.testing.assert_array_equal(x, y)


def test_frequency_counts_do_not_depend_on_blocking():
  rng = np.random.default_rng(0)
  keys = rng.zipf(1.3, size=(5000, 3)).astype(np.int64) % 700
  whole = criteo.FrequencyCounter(3)
  whole.update(keys)
  for block in (1, 7, 64, 999):
    streamed = criteo.FrequencyCounter(3)
    for start in range(0, len(keys), block):
      streamed.update(keys[start:start + block])
    halves = [criteo.FrequencyCounter(3) for _ in range(2)]
    halves[0].update(keys[:1234])
    halves[1].update(keys[1234:])
    combined = criteo.FrequencyCounter.combine(*halves)
    for j in range(3):
      values, counts = np.unique(keys[:, j], return_counts=True)
      for counter in (whole, streamed, combined):
        np.testing.assert_array_equal(counter.keys[j], values)
        np.testing.assert_array_equal(counter.counts[j], counts)


def test_hash_vocabulary_has_no_counting_pass(tmp_path, criteo_kaggle_path, monkeypatch):
  def no_counting(*args, **kwargs):
    raise AssertionError("a value was counted")
  monkeypatch.setattr(criteo.FrequencyCounter, "update", no_counting)
  meta = _run(tmp_path, [criteo_kaggle_path], "hashed", split="kaggle", vocabulary="hash:1000")
  assert meta["vocab_sizes"] == [1000] * 26
  assert meta["rows"] == {"train": 8572, "validation": 714, "test": 714}
  assert meta["options"]["vocabulary"] == "hash:1000"
  splits = preprocess.load_preprocessed(str(tmp_path / "hashed"))
  raw = criteo.read_raw(criteo_kaggle_path)
  expected = criteo.hash_keys(raw.cat_keys, 1000)  # id = hash(value) mod N, per field
  np.testing.assert_array_equal(splits.train.cat, expected[:8572])
  np.testing.assert_array_equal(splits.validation.cat, expected[9286:])
  vocab = preprocess.load_vocabulary(str(tmp_path / "hashed"))
  assert vocab.hash_only and vocab.sizes == (1000,) * 26
  np.testing.assert_array_equal(vocab.encode(raw.cat_keys[:50]), expected[:50])


def test_vocabulary_spec_and_exclusive_cap(tmp_path, criteo_kaggle_path):
  assert preprocess.parse_vocabulary("count") is None
  assert preprocess.parse_vocabulary("hash:40000000") == 40_000_000
  for bad in ("hash:0", "hash:", "hash:x", "counted"):
    with pytest.raises(ValueError, match="'count' or 'hash:N'"):
      preprocess.parse_vocabulary(bad)
  with pytest.raises(ValueError, match="max_rows_per_table"):
    _run(tmp_path, [criteo_kaggle_path], "both", vocabulary="hash:10", max_rows_per_table=5)
  # A counted vocabulary keeps the options (and so the cache keys) of earlier versions.
  assert "vocabulary" not in PreprocessConfig(inputs=(), output_dir="").options()


@pytest.fixture(scope="module")
def scheduler():
  """One two-worker local cluster for the module (each start costs seconds)."""
  distributed = pytest.importorskip("distributed")  # the optional extra jaxrec[dask]
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster:
    yield cluster.scheduler_address


@pytest.mark.slow
def test_dask_engine_writes_local_bytes_on_the_real_sample(tmp_path, criteo_kaggle_path,
                                                           scheduler):
  # 20 chunks: the key counters are tree-reduced in two levels of 8.
  common = dict(split="kaggle", chunk_rows=500)
  local = _run(tmp_path, [criteo_kaggle_path], "local", **common)
  dask = _run(tmp_path, [criteo_kaggle_path], "dask", engine="dask", scheduler=scheduler,
              **common)
  _assert_same_output(str(tmp_path / "local"), str(tmp_path / "dask"))
  for key in ("rows", "positive_rate", "vocab_sizes", "inputs", "identity"):
    assert local[key] == dask[key], key


@pytest.mark.slow
def test_dask_engine_writes_local_bytes_on_generated_days(tmp_path, scheduler):
  config = synthetic.SyntheticConfig(num_rows=15000, max_vocab=3000)
  synthetic.write_days(config, str(tmp_path / "days"), 3)
  days = [str(tmp_path / "days" / f"day_{d}") for d in range(3)]
  synthetic.write_tsv(config, str(tmp_path / "whole.tsv"))
  assert b"".join(open(p, "rb").read() for p in days) == (tmp_path / "whole.tsv").read_bytes()
  assert [sum(1 for _ in open(p)) for p in days] == [5000] * 3
  cases = {"days": dict(split="days", chunk_rows=1500, dense_dtype="float16"),
           "random-capped": dict(split="random:0.8,0.1,0.1", seed=3, chunk_rows=700,
                                 max_rows_per_table=500),
           "hashed": dict(split="days", chunk_rows=2000, vocabulary="hash:4096")}
  for name, options in cases.items():
    _run(tmp_path, days, f"{name}-local", **options)
    _run(tmp_path, days, f"{name}-dask", engine="dask", scheduler=scheduler, **options)
    _assert_same_output(str(tmp_path / f"{name}-local"), str(tmp_path / f"{name}-dask"))


@pytest.mark.slow
def test_dask_engine_names_the_bad_line(tmp_path, scheduler):
  path = tmp_path / "bad.tsv"
  good = "\t".join(["1", "5"] + [""] * 12 + ["0000000a"] * 26)
  path.write_text("\n".join([good] * 5 + [good.replace("0000000a", "zz", 1)] + [good]) + "\n")
  with pytest.raises(criteo.CriteoFormatError, match=r"bad.tsv, line 6, field C1"):
    _run(tmp_path, [str(path)], "out", engine="dask", scheduler=scheduler)


@pytest.mark.slow
def test_cli_dask_engine_starts_a_local_cluster(tmp_path, criteo_1tb_path):
  pytest.importorskip("distributed")
  outs = []
  for engine in ("local", "dask"):
    out = str(tmp_path / engine)
    proc = subprocess.run([sys.executable, "-m", "experiments.preprocess",
                           f"--input={criteo_1tb_path}",
                           f"--output_dir={out}", f"--engine={engine}", "--dask_workers=2",
                           "--vocabulary=hash:100000"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs.append(out)
  assert "on 2 Dask workers" in proc.stdout
  _assert_same_output(*outs)
  bad = subprocess.run([sys.executable, "-m", "experiments.preprocess",
                        f"--input={criteo_1tb_path}",
                        f"--output_dir={tmp_path / 'bad'}", "--vocabulary=hash:0"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      "error: --vocabulary: vocabulary 'hash:0': expected 'count' or 'hash:N' with N >= 1"]
