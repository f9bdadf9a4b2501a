"""The public surface of `jaxrec`: every name resolves and is documented; `fit` trains."""

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxrec

# Public names that are data, not functions or classes (documented in the module docstring).
CONSTANTS = {"MODELS"}


def test_version_matches_package_metadata():
  import importlib.metadata
  assert jaxrec.__version__ == importlib.metadata.version("jaxrec")
  assert "__version__" in jaxrec.__all__


@pytest.mark.parametrize("name", [n for n in jaxrec.__all__ if n != "__version__"])
def test_public_name_resolves_and_has_docstring(name):
  value = getattr(jaxrec, name)
  assert name in dir(jaxrec)
  if name in CONSTANTS:
    return
  doc = inspect.getdoc(value) or ""
  # A dataclass without a docstring gets "Name(field, ...)" generated: not documentation.
  generated = isinstance(value, type) and doc.startswith(f"{value.__name__}(")
  assert doc.strip() and not generated, f"jaxrec.{name} has no docstring"


def test_unknown_name_is_an_attribute_error():
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    jaxrec.nope  # noqa: B018


def test_import_is_lazy():
  code = "import sys, jaxrec; print('jax' in sys.modules, jaxrec.__version__)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.split()[0] == "False"


def _tiny_config(**kwargs):
  return jaxrec.TrainConfig(
      model=jaxrec.ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)),
      embedding=jaxrec.EmbeddingConfig(dim=4), batch_size=64, eval_batch_size=256,
      log_every=1000, optimizer="adam", learning_rate=0.01, **kwargs)


def _arrays(n=2000, seed=0):
  """Clicks decided by column 0's id: any working model separates them."""
  rng = np.random.default_rng(seed)
  cat = rng.integers(0, 10, size=(n, 3))
  dense = rng.normal(size=(n, 2)).astype(np.float32)
  label = (cat[:, 0] < 3).astype(np.float32)
  return dense, cat, label


@pytest.mark.slow
def test_fit_on_arrays_learns_and_writes_a_loadable_run(tmp_path):
  metrics = jaxrec.fit(_tiny_config(epochs=3), str(tmp_path), _arrays())
  assert metrics["auc"] > 0.95
  assert metrics["num_train_examples"] == 1600 and metrics["num_eval_examples"] == 200
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["data"]["source"] == "in_memory"
  run = jaxrec.load_run(str(tmp_path))
  assert run.model.layout.vocab_sizes == (10, 10, 10)
  saved = np.load(tmp_path / "test_predictions.npz")
  assert jaxrec.auc(saved["label"], saved["prob"]) == pytest.approx(metrics["auc"])


def test_fit_rejects_ids_outside_their_table(tmp_path):
  dense, cat, label = _arrays(100)
  with pytest.raises(ValueError, match="vocab_sizes"):
    jaxrec.fit(_tiny_config(), str(tmp_path), (dense, cat, label), vocab_sizes=(5, 10, 10))
