"""experiments.versus_reference: parsing the reference's timings, paired ratios, failures."""

import os
import sys
import textwrap

import pytest

from experiments import versus_reference as vr

_LOG = """time/loss/accuracy (if enabled):
Finished training it 25/100 of epoch 0, 60.00 ms/it, loss 0.116976
Finished training it 50/100 of epoch 0, 50.00 ms/it, loss 0.083799
some other line 12.00 ms/it
Finished training it 75/100 of epoch 0, 55.50 ms/it, loss 0.083801
Finished training it 100/100 of epoch 0, 54.50 ms/it, loss 0.083393
"""


def _fake_reference(tmp_path, body):
  (tmp_path / "dlrm_s_pytorch.py").write_text(textwrap.dedent(body))
  return vr.VersusConfig(reference_dir=str(tmp_path), reference_python=sys.executable,
                         batch_size=1000, rounds=3)


def test_interval_ms_reads_only_the_reference_interval_lines():
  assert vr.interval_ms(_LOG) == [60.0, 50.0, 55.5, 54.5]
  assert vr.interval_ms("no timings here") == []


def test_commands_pin_the_benchmark_configuration():
  config = vr.VersusConfig(reference_dir="/x", batch_size=128, tables="kaggle",
                           reference_batches=400, reference_print_freq=100)
  ref = vr.reference_command(config)
  assert "--arch-mlp-bot=13-512-256-64-16" in ref and "--arch-mlp-top=512-256-1" in ref
  assert "--num-indices-per-lookup=1" in ref and "--num-indices-per-lookup-fixed=True" in ref
  assert "--mini-batch-size=128" in ref and "--num-batches=400" in ref
  sizes = next(a for a in ref if a.startswith("--arch-embedding-size=")).split("=")[1].split("-")
  assert len(sizes) == 26 and sum(map(int, sizes)) == sum(vr.table_sizes("kaggle")) > 33_000_000
  ours = vr.benchmark_command(config, "/out")
  assert "--tables=kaggle" in ours and "--batch_sizes=128" in ours and "--models=dlrm" in ours
  assert "--steps_per_call=1" in ours and "--compute_dtype=float32" in ours
  with pytest.raises(ValueError, match="100k, kaggle"):
    vr.table_sizes("1tb")


def test_compare_pairs_each_reference_run_with_the_next_jaxrec_run(tmp_path):
  config = _fake_reference(tmp_path, f"print({_LOG!r})")
  rates = iter([25_000.0, 20_000.0, 30_000.0])
  result = vr.compare(config, jaxrec=lambda c: {"examples_per_sec": next(rates)},
                      log=lambda line: None)
  (first, *_), summary = result["per_round"], result["summary"]
  assert first["reference"]["ms_per_it"] == pytest.approx(55.0)  # mean of the four intervals
  reference_rate = 1000 / 55.0 * 1000
  assert first["reference"]["examples_per_sec"] == pytest.approx(reference_rate)
  assert summary["ratios"] == pytest.approx([25_000 / reference_rate, 20_000 / reference_rate,
                                             30_000 / reference_rate])
  assert summary["median_ratio"] == pytest.approx(25_000 / reference_rate)
  assert summary["min_ratio"] == pytest.approx(20_000 / reference_rate)


def test_a_failed_or_silent_reference_run_is_an_error_naming_the_command(tmp_path):
  config = _fake_reference(tmp_path, "import sys; print('boom'); sys.exit(3)")
  with pytest.raises(RuntimeError, match=r"(?s)exit 3, 0 timed intervals.*dlrm_s_pytorch.py.*boom"):
    vr.run_reference(config)
  config = _fake_reference(tmp_path, "print('trained, but no --print-time lines')")
  with pytest.raises(RuntimeError, match="exit 0, 0 timed intervals"):
    vr.run_reference(config)
  with pytest.raises(FileNotFoundError, match="no dlrm_s_pytorch.py"):
    vr.run_reference(vr.VersusConfig(reference_dir=os.fspath(tmp_path / "missing")))
