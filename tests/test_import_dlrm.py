"""Importing DLRM-reference (facebookresearch/dlrm) models: parity with a numpy forward pass."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec.interop import dlrm_reference as ref
from jaxrec.train import run_dir

from conftest import REPO


def make_state_dict(seed=0, sizes=(7, 3, 11, 5), dim=4, bottom=(13, 8, 4), top_hidden=(6,),
                    interaction="dot", itself=False, compressed=False):
  """A reference-layout state_dict with random weights (what DLRM_Net.state_dict() holds)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, n in enumerate(sizes):
    if compressed and k == 1:  # quotient-remainder table, 4 collisions
      sd[f"emb_l.{k}.weight_q"] = rng.normal(size=(-(-n // 4), dim)).astype(np.float32)
      sd[f"emb_l.{k}.weight_r"] = rng.normal(size=(4, dim)).astype(np.float32)
    elif compressed and k == 2:  # mixed dimension, projected to dim
      sd[f"emb_l.{k}.embs.weight"] = rng.normal(size=(n, 2)).astype(np.float32)
      sd[f"emb_l.{k}.proj.weight"] = rng.normal(size=(dim, 2)).astype(np.float32)
    else:
      sd[f"emb_l.{k}.weight"] = rng.uniform(-1, 1, (n, dim)).astype(np.float32)
    if compressed:
      sd[f"v_W_l.{k}"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
  t = len(sizes) + 1
  width = bottom[-1] + (len(sizes) * dim if interaction == "cat" else
                        t * (t + 1) // 2 if itself else t * (t - 1) // 2)
  for name, widths in (("bot_l", bottom), ("top_l", (width,) + top_hidden + (1,))):
    for i in range(len(widths) - 1):
      std = np.sqrt(2 / (widths[i] + widths[i + 1]))
      sd[f"{name}.{2 * i}.weight"] = rng.normal(
          0, std, (widths[i + 1], widths[i])).astype(np.float32)
      sd[f"{name}.{2 * i}.bias"] = rng.normal(0, 0.5, widths[i + 1]).astype(np.float32)
  return sd


def random_inputs(sizes, batch=64, seed=1, num_dense=13):
  rng = np.random.default_rng(seed)
  dense = np.log1p(rng.integers(0, 500, (batch, num_dense))).astype(np.float32)
  ids = np.stack([rng.integers(0, n, batch) for n in sizes], axis=1).astype(np.int32)
  return dense, ids


def jaxrec_logits(imported, dense, ids):
  model = imported.spec.build()
  return np.asarray(jax.jit(model.apply)(imported.variables, dense, ids))


@pytest.mark.parametrize("interaction, itself", [("dot", False), ("dot", True), ("cat", False)])
def test_logits_match_numpy_reference(interaction, itself):
  sizes = (7, 3, 11, 5)
  sd = make_state_dict(interaction=interaction, itself=itself)
  imported = ref.import_state_dict(sd)
  assert imported.spec.model.interaction == interaction
  assert imported.spec.model.self_interaction == itself
  assert imported.spec.vocab_sizes == sizes and imported.spec.num_dense == 13
  dense, ids = random_inputs(sizes)
  want = ref.reference_forward(sd, dense, ids, interaction=interaction, self_interaction=itself,
                               logits=True)
  np.testing.assert_allclose(jaxrec_logits(imported, dense, ids), want, rtol=1e-5, atol=1e-5)
  assert np.std(want) > 0.1  # the check is not vacuous: logits vary across rows


def test_mapping_is_transpose_and_stacking():
  sd = make_state_dict()
  v = ref.import_state_dict(sd).variables
  np.testing.assert_array_equal(v["params"]["bottom"]["layers_1"]["kernel"], sd["bot_l.2.weight"].T)
  np.testing.assert_array_equal(v["params"]["top"]["layers_1"]["bias"], sd["top_l.2.bias"])
  np.testing.assert_array_equal(v["tables"]["embedding"][7:10], sd["emb_l.1.weight"])


def test_qr_mixed_dim_and_pooling_weights_match_reference():
  sizes = (7, 10, 11, 5)  # table 1 is QR with 4 collisions: 3 quotient rows hold 12 ids
  sd = make_state_dict(sizes=sizes, compressed=True, seed=3)
  imported = ref.import_state_dict(sd, ref.ImportOptions(table_sizes=sizes))
  assert [t.kind for t in imported.tables] == ["full", "qr", "md", "full"]
  assert imported.spec.vocab_sizes == sizes
  dense, ids = random_inputs(sizes, seed=4)
  want = ref.reference_forward(sd, dense, ids, logits=True)
  np.testing.assert_allclose(jaxrec_logits(imported, dense, ids), want, rtol=1e-5, atol=1e-5)
  # Learned pooling weights give n; without them and without table sizes, QR keeps
  # all ceil(n / c) * c rows.
  assert ref.import_state_dict(sd).spec.vocab_sizes == sizes
  no_pooling = {k: v for k, v in sd.items() if not k.startswith("v_W_l")}
  assert ref.import_state_dict(no_pooling).spec.vocab_sizes == (7, 12, 11, 5)


def test_qr_rows_use_the_reference_float32_quotient():
  q = np.arange(3, dtype=np.float32)[:, None] + 1
  r = np.array([[10.0], [20.0]], np.float32)
  np.testing.assert_array_equal(ref.qr_rows(q, r, 5, "mult")[:, 0], [10, 20, 20, 40, 30])
  np.testing.assert_array_equal(ref.qr_rows(q, r, 5, "add")[:, 0], [11, 21, 12, 22, 13])


@pytest.mark.parametrize("change, options, message", [
    (lambda sd: sd.pop("top_l.2.bias"), ref.ImportOptions(), "needs weight and bias"),
    (lambda sd: sd.update({"module_x": np.zeros(1)}), ref.ImportOptions(), "unexpected"),
    (lambda sd: None, ref.ImportOptions(interaction="cat"), "matches no interaction"),
    (lambda sd: sd.update({"emb_l.1.weight": np.zeros((3, 5), np.float32)}), ref.ImportOptions(),
     "different widths"),
    (lambda sd: sd.update({"bot_l.3.weight": np.zeros((4, 4), np.float32)}), ref.ImportOptions(),
     "Sequential positions"),
])
def test_bad_state_dicts_are_named(change, options, message):
  sd = make_state_dict()
  change(sd)
  with pytest.raises(ref.ReferenceCheckpointError, match=message):
    ref.import_state_dict(sd, options)


def test_module_prefix_is_stripped():
  sd = make_state_dict()
  imported = ref.import_state_dict({"module." + k: v for k, v in sd.items()})
  assert imported.spec.vocab_sizes == (7, 3, 11, 5)


def _import_cli(checkpoint, output_dir, *flags):
  return subprocess.run([sys.executable, "-m", "experiments.import_dlrm",
                         f"--checkpoint={checkpoint}", f"--output_dir={output_dir}", *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_torch_checkpoint_round_trip_through_a_run_dir(tmp_path):
  torch = pytest.importorskip("torch")
  sizes = (7, 3, 11, 5)
  sd = make_state_dict(sizes=sizes)
  path = str(tmp_path / "model.pt")
  # What the reference's --save-model writes: the state_dict and training metadata.
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}, "nepochs": 1,
              "nbatches": 10, "test_acc": 0.75}, path)
  loaded = ref.load_checkpoint(path)
  assert sorted(loaded) == sorted(sd)
  ref.write_run(str(tmp_path / "run"), ref.import_state_dict(loaded), {"checkpoint": path})
  run = run_dir.load_run(str(tmp_path / "run"))
  assert run.step == 0 and run.vocabulary is None
  dense, ids = random_inputs(sizes, seed=7)
  got = np.asarray(run.model.apply(run.variables, dense, ids))
  np.testing.assert_allclose(got, ref.reference_forward(sd, dense, ids, logits=True),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(FileExistsError):
    ref.write_run(str(tmp_path / "run"), ref.import_state_dict(loaded))


@pytest.mark.slow
def test_cli_imports_and_verifies(tmp_path):
  sd = make_state_dict(interaction="cat")
  path = tmp_path / "model.npz"
  np.savez(path, **sd)
  out = tmp_path / "run"
  proc = _import_cli(path, out, "--verify_rows=32")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "max |probability difference|" in proc.stdout and "interaction cat" in proc.stdout
  assert run_dir.load_spec(str(out)).model.interaction == "cat"
  assert os.path.exists(out / "import.json") and os.path.exists(out / "config.json")


@pytest.mark.slow
def test_cli_reports_bad_checkpoint_in_one_line(tmp_path):
  path = tmp_path / "broken.npz"
  np.savez(path, **{"emb_l.0.weight": np.zeros((3, 4), np.float32)})
  proc = _import_cli(path, tmp_path / "run")
  assert proc.returncode == 2
  assert "bot_l" in proc.stderr and "Traceback" not in proc.stderr
