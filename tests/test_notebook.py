"""notebooks/quickstart.ipynb runs end to end (small sizes, CPU) and shows what it promises."""

import os
import re

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

CRITEO_SAMPLE = os.path.join(os.path.dirname(REPO), "shared", "data", "criteo",
                             "criteo_kaggle_train_first10k.tsv")


def _text(cell) -> str:
  out = []
  for o in cell.get("outputs", []):
    if o.get("output_type") == "stream":
      out.append(o["text"])
    elif "data" in o and "text/plain" in o["data"]:
      out.append(o["data"]["text/plain"])
  return "".join(out)


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXREC_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAXREC_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
  monkeypatch.setenv("JAXREC_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("JAXREC_CRITEO_SAMPLE", CRITEO_SAMPLE)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  notebook = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": REPO}}).execute()
  code = [c for c in notebook.cells if c.cell_type == "code"]
  text = "\n".join(_text(c) for c in code)
  assert "No GPU found: running on cpu" in text
  aucs = {name: float(v) for name, v in re.findall(r"^(dlrm|afm): test AUC ([0-9.]+)", text, re.M)}
  assert set(aucs) == {"dlrm", "afm"} and min(aucs.values()) > 0.6, text
  images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 2  # the validation curves and the attention heat-map
  if os.path.exists(CRITEO_SAMPLE):
    assert re.search(r"^afm on criteo_kaggle_train_first10k.tsv: test AUC", text, re.M), text
  for step in ("SVD, p = 0.5:", "QR embeddings, c=4:", "parameters:"):
    assert step in text, text
  difference = float(re.search(r"largest difference from the model: ([0-9.e+-]+)", text).group(1))
  assert difference < 1e-5
