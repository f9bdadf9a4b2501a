"""Serving: export round trip, the model-free loader, streaming predict on the real 10k sample."""

import gzip
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec.data import criteo
from jaxrec.data.preprocess import SplitAssigner
from jaxrec.data.sources import DataConfig
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.serving import predict as predict_lib
from jaxrec.serving import raw_rows
from jaxrec.serving.artifact import ServingModel
from jaxrec.serving.export import export_function, export_run
from jaxrec.train import run_dir
from jaxrec.train.loop import TrainConfig, train_and_evaluate

from conftest import CRITEO_KAGGLE_10K, REPO


def _random_run(tmp_path, embedding=EmbeddingConfig(dim=4), self_interaction=False):
  spec = run_dir.ModelSpec(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1),
                                       self_interaction=self_interaction),
                           embedding, tuple(range(3, 29)))
  model = spec.build()
  return run_dir.Run(model=model, variables=model.init(jax.random.key(0)), spec=spec,
                     vocabulary=None, step=0, workdir=str(tmp_path))


def _random_inputs(sizes, batch, seed):
  rng = np.random.default_rng(seed)
  dense = rng.exponential(2.0, (batch, 13)).astype(np.float32)
  cat = np.stack([rng.integers(0, n, batch) for n in sizes], axis=1).astype(np.int32)
  return dense, cat


@pytest.mark.parametrize("embedding, itself", [
    (EmbeddingConfig(dim=4), False),
    (EmbeddingConfig(kind="hash", dim=4, hash_buckets=5), True)])
def test_exported_function_equals_in_process_apply(tmp_path, embedding, itself):
  run = _random_run(tmp_path, embedding, itself)
  path = str(tmp_path / "m.npz")
  meta = export_run(run, path, platforms=("cpu",))
  assert meta["batch"] == "symbolic" and not meta["has_vocabulary"]
  served = ServingModel.load(path)
  apply = jax.jit(lambda v, d, c: jax.nn.sigmoid(run.model.apply(v, d, c)))
  for batch, seed in ((1, 0), (7, 1), (300, 2)):  # one artifact, any batch size
    dense, cat = _random_inputs(run.spec.vocab_sizes, batch, seed)
    got = served.predict(dense, cat)
    assert got.shape == (batch,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(apply(run.variables, dense, cat)),
                               rtol=1e-6, atol=1e-7)


def test_export_batch_dimension_is_symbolic_and_multi_platform(tmp_path):
  exported, _ = export_function(_random_run(tmp_path), platforms=("cpu", "cuda"))
  assert exported.platforms == ("cpu", "cuda")
  assert str(exported.in_avals[-1].shape[0]) == "batch"
  assert str(exported.out_avals[0]) == "float32[batch]"


def test_loader_checks_id_ranges(tmp_path):
  run = _random_run(tmp_path)
  export_run(run, str(tmp_path / "m.npz"), platforms=("cpu",))
  served = ServingModel.load(str(tmp_path / "m.npz"))
  dense, cat = _random_inputs(run.spec.vocab_sizes, 4, 0)
  cat[2, 5] = run.spec.vocab_sizes[5]
  with pytest.raises(ValueError, match="row 2, column 5"):
    served.predict(dense, cat)
  with pytest.raises(ValueError, match="no vocabularies"):
    predict_lib.scorer_from_artifact(served)


def test_loader_runs_without_model_code(tmp_path):
  run = _random_run(tmp_path)
  path = str(tmp_path / "m.npz")
  export_run(run, path, platforms=("cpu",))
  dense, cat = _random_inputs(run.spec.vocab_sizes, 5, 3)
  np.savez(tmp_path / "x.npz", dense=dense, cat=cat)
  code = ("import sys, numpy as np\n"
          "from jaxrec.serving.artifact import ServingModel\n"
          f"m = ServingModel.load({path!r})\n"
          f"x = np.load({str(tmp_path / 'x.npz')!r})\n"
          "np.save(sys.argv[1], m.predict(x['dense'], x['cat']))\n"
          "assert not [k for k in sys.modules if k.startswith(('jaxrec.models', 'jaxrec.layers',"
          " 'flax'))], 'model code imported'\n")
  out = str(tmp_path / "p.npy")
  proc = subprocess.run([sys.executable, "-c", code, out], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  want = jax.nn.sigmoid(run.model.apply(run.variables, dense, cat))
  np.testing.assert_allclose(np.load(out), want, rtol=1e-6, atol=1e-7)


# --- predict on the real Criteo sample ----------------------------------------------------------

@pytest.fixture(scope="module")
def criteo_run(tmp_path_factory):
  if not os.path.exists(CRITEO_KAGGLE_10K):
    pytest.skip("real Criteo sample not present (../shared/data/criteo)")
  workdir = str(tmp_path_factory.mktemp("criteo") / "run")
  config = TrainConfig(model=ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)),
                       embedding=EmbeddingConfig(dim=8),
                       data=DataConfig(source=CRITEO_KAGGLE_10K,
                                       cache_dir=str(tmp_path_factory.mktemp("cache"))),
                       batch_size=256,
                       eval_batch_size=512, log_every=1000)
  report = train_and_evaluate(config, workdir)
  # The test split's raw lines, in file order (the evaluation path's rows).
  assigned = SplitAssigner(config.data.split_spec, [10_000], config.data.seed).assign(
      np.arange(10_000))
  test_index = np.flatnonzero(assigned == 2)  # 0 train, 1 validation, 2 test
  with open(CRITEO_KAGGLE_10K, "rb") as f:
    lines = f.readlines()
  test_tsv = os.path.join(os.path.dirname(workdir), "test.tsv")
  with open(test_tsv, "wb") as f:
    f.writelines(lines[i] for i in test_index)
  return workdir, report, test_tsv, config


def test_predict_matches_the_evaluation_path(criteo_run, tmp_path):
  workdir, report, test_tsv, config = criteo_run
  run = run_dir.load_run(workdir)
  assert run.vocabulary is not None and run.vocabulary.sizes == run.spec.vocab_sizes
  out = str(tmp_path / "probs.txt")
  result = predict_lib.predict_file(predict_lib.scorer_from_run(run), test_tsv, out,
                                    batch_size=config.eval_batch_size, block_rows=300)
  assert result.rows == report["num_eval_examples"] == 1000 and result.has_label
  written = np.loadtxt(out)
  assert written.shape == (1000,) and np.all((written > 0) & (written < 1))
  np.testing.assert_array_equal(written.astype(np.float32), result.probs)  # lossless text
  saved = np.load(os.path.join(workdir, "test_predictions.npz"))
  np.testing.assert_array_equal(result.labels, saved["label"])
  np.testing.assert_allclose(result.probs, saved["prob"], rtol=1e-6, atol=1e-7)
  assert result.metrics["auc"] == pytest.approx(report["auc"], abs=1e-12)
  assert result.metrics["logloss"] == pytest.approx(report["logloss"], abs=1e-6)


def test_artifact_predicts_like_the_run_with_and_without_labels(criteo_run, tmp_path):
  workdir, report, test_tsv, _ = criteo_run
  path = str(tmp_path / "m.npz")
  meta = export_run(run_dir.load_run(workdir), path, platforms=("cpu",))
  assert meta["has_vocabulary"]
  scorer = predict_lib.scorer_from_artifact(ServingModel.load(path), path)
  labelled = predict_lib.predict_file(scorer, test_tsv, str(tmp_path / "a.txt.gz"), batch_size=64)
  assert labelled.metrics["auc"] == pytest.approx(report["auc"], abs=1e-6)
  with gzip.open(tmp_path / "a.txt.gz", "rt") as f:
    assert len(f.read().splitlines()) == 1000
  unlabelled_tsv = tmp_path / "test_no_label.tsv"
  with open(test_tsv, "rb") as src, open(unlabelled_tsv, "wb") as dst:
    dst.writelines(line.split(b"\t", 1)[1] for line in src)
  unlabelled = predict_lib.predict_file(scorer, str(unlabelled_tsv), str(tmp_path / "u.txt"),
                                        batch_size=64)
  assert not unlabelled.has_label and unlabelled.metrics is None
  np.testing.assert_array_equal(unlabelled.probs, labelled.probs)


def test_unseen_categories_map_to_oov(criteo_run, tmp_path):
  run = run_dir.load_run(criteo_run[0])
  row = b"\t".join([b"1"] * 13 + [b"%08x" % (0xdeadbe00 + j) for j in range(26)]) + b"\n"
  path = tmp_path / "new.tsv"
  path.write_bytes(row * 3)
  has_label, blocks = raw_rows.iter_rows(str(path))
  raw = next(blocks)
  assert not has_label
  dense, cat = predict_lib.scorer_from_run(run).encode(raw)
  np.testing.assert_array_equal(cat, np.full((3, 26), criteo.OOV_ID))
  np.testing.assert_allclose(dense, np.log1p(np.ones((3, 13))), rtol=1e-6)
  result = predict_lib.predict_file(predict_lib.scorer_from_run(run), str(path),
                                    str(tmp_path / "p.txt"))
  assert result.rows == 3 and np.all((result.probs > 0) & (result.probs < 1))


def test_bad_unlabelled_row_names_line_and_field(tmp_path):
  good = b"\t".join([b"1"] * 13 + [b"0badcafe"] * 26) + b"\n"
  bad = b"\t".join([b"1"] * 13 + [b"0badcafe"] * 3 + [b"zzz"] + [b"0badcafe"] * 22) + b"\n"
  path = tmp_path / "bad.tsv"
  path.write_bytes(good * 4 + bad)
  _, blocks = raw_rows.iter_rows(str(path))
  with pytest.raises(criteo.CriteoFormatError, match="line 5, field C4"):
    list(blocks)
  path.write_bytes(b"1\t2\t3\n")
  with pytest.raises(criteo.CriteoFormatError, match="found 3"):
    raw_rows.iter_rows(str(path))


@pytest.mark.slow
def test_export_and_predict_cli(criteo_run, tmp_path):
  workdir, report, test_tsv, _ = criteo_run
  artifact = str(tmp_path / "m.npz")
  env = {**os.environ, "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, "-m", "experiments.export", f"--checkpoint={workdir}",
                         f"--output={artifact}", "--platforms=cpu"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "MiB" in proc.stdout and os.path.exists(artifact)
  summary = str(tmp_path / "summary.json")
  proc = subprocess.run([sys.executable, "-m", "experiments.predict", f"--checkpoint={artifact}",
                         f"--input={test_tsv}", f"--output={tmp_path / 'p.txt'}",
                         f"--metrics_output={summary}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "rows/s" in proc.stdout and "AUC" in proc.stdout
  assert json.load(open(summary))["auc"] == pytest.approx(report["auc"], abs=1e-6)
  small = str(tmp_path / "m8.npz")
  proc = subprocess.run([sys.executable, "-m", "experiments.export", f"--checkpoint={workdir}",
                         f"--output={small}", "--platforms=cpu", "--quantize=int8"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "tables int8, kernels int8" in proc.stdout
  assert os.path.getsize(small) < 0.6 * os.path.getsize(artifact)  # vocabularies stay as they are
  proc = subprocess.run([sys.executable, "-m", "experiments.predict", f"--checkpoint={small}",
                         f"--input={test_tsv}", f"--output={tmp_path / 'p8.txt'}",
                         f"--metrics_output={summary}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.load(open(summary))["auc"] == pytest.approx(report["auc"], abs=0.005)
  proc = subprocess.run([sys.executable, "-m", "experiments.predict", f"--checkpoint={artifact}",
                         "--input=/no/such.tsv", f"--output={tmp_path / 'q.txt'}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "no such file" in proc.stderr
  assert "Traceback" not in proc.stderr
