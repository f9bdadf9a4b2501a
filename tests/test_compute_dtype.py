"""The default compute dtype: bfloat16 where the hardware has bfloat16 matmul units."""

import json

import pytest
from absl import flags

from experiments import train
from jaxrec.models.registry import default_compute_dtype, resolve_compute_dtype


@pytest.mark.parametrize("backend, features, want", [
    ("cpu", ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"], "bfloat16"),
    ("cpu", ["avx2", "fma", "avx512f", "avx512_bf16"], "bfloat16"),  # AVX-512 BF16, no AMX
    ("cpu", ["avx2", "fma", "avx512f"], "float32"),  # bfloat16 would be emulated
    ("cpu", [], "float32"),
    ("gpu", [], "bfloat16"),
])
def test_default_compute_dtype_follows_the_hardware(backend, features, want):
  assert default_compute_dtype(backend, features) == want


def test_resolve_compute_dtype_passes_explicit_choices_through():
  assert resolve_compute_dtype("float32") == "float32"
  assert resolve_compute_dtype("bfloat16") == "bfloat16"
  assert resolve_compute_dtype("auto") == default_compute_dtype()


def _model_config(argv):
  try:
    train.parse_flags(["train", *argv])
    return train.model_and_embedding_from_flags()[0]
  finally:
    flags.FLAGS.unparse_flags()


def test_cli_auto_is_this_machines_default_and_resume_keeps_the_runs_dtype(tmp_path):
  assert _model_config([]).compute_dtype == default_compute_dtype()
  assert _model_config(["--compute_dtype=float32"]).compute_dtype == "float32"
  # A run started elsewhere in the other dtype continues in it when resumed with "auto".
  other = "float32" if default_compute_dtype() == "bfloat16" else "bfloat16"
  (tmp_path / "config.json").write_text(json.dumps({"model": {"compute_dtype": other}}))
  resumed = _model_config([f"--output_dir={tmp_path}", "--resume"])
  assert resumed.compute_dtype == other
  # An explicit flag is what the user asked for (the resume check then compares it).
  explicit = _model_config([f"--output_dir={tmp_path}", "--resume",
                            f"--compute_dtype={default_compute_dtype()}"])
  assert explicit.compute_dtype == default_compute_dtype()
