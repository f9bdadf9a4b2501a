"""experiments.versus_reference: the reference's timings, paired ratios, load flags, the page."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from experiments import versus_reference as vr

from conftest import REPO

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


def _quiet(config):
  return {"busy_cpus": 0.1, "loadavg": 0.5, "quiet": True, "waited_s": 0.0}


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
  result = vr.compare(config, jaxrec=lambda c, d: {"examples_per_sec": next(rates)},
                      load=_quiet, log=lambda line: None)
  (first, *_), summary = result["per_round"], result["summary"]["float32"]
  assert first["reference"]["ms_per_it"] == pytest.approx(55.0)  # mean of the four intervals
  reference_rate = 1000 / 55.0 * 1000
  assert first["reference"]["examples_per_sec"] == pytest.approx(reference_rate)
  assert summary["ratios"] == pytest.approx([25_000 / reference_rate, 20_000 / reference_rate,
                                             30_000 / reference_rate])
  assert summary["median_ratio"] == pytest.approx(25_000 / reference_rate)
  assert summary["min_ratio"] == pytest.approx(20_000 / reference_rate)
  assert summary["clean_rounds"] == 3 and not summary["loaded"]


def test_loaded_rounds_are_flagged_and_left_out_of_the_median(tmp_path):
  config = dataclasses.replace(_fake_reference(tmp_path, f"print({_LOG!r})"), rounds=5,
                               compute_dtypes=("float32", "bfloat16"))
  busy = iter([0.1, 0.1, 0.1] * 2 + [0.1, 1.5, 0.1] + [0.1, 0.1, 0.1] * 2)  # round 3 is loaded
  load = lambda c: {"busy_cpus": (b := next(busy)), "loadavg": 1.0, "quiet": b < 1,
                    "waited_s": 0.0}
  rates = {"float32": iter([20_000.0, 21_000, 99_000, 22_000, 23_000]),
           "bfloat16": iter([30_000.0, 31_000, 1_000, 32_000, 33_000])}
  result = vr.compare(config, jaxrec=lambda c, d: {"examples_per_sec": next(rates[d])},
                      load=load, log=lambda line: None)
  assert [r["flagged"] for r in result["per_round"]] == [False, False, True, False, False]
  reference_rate = 1000 / 55.0 * 1000
  f32, bf16 = result["summary"]["float32"], result["summary"]["bfloat16"]
  assert f32["clean_rounds"] == 4 and not f32["loaded"]
  assert f32["median_ratio"] == pytest.approx(21_500 / reference_rate)  # 99k left out
  assert bf16["median_ratio"] == pytest.approx(31_500 / reference_rate)
  # With fewer than 3 clean rounds, every round counts and the summary says so.
  s = vr.summarize([{**r, "flagged": True} for r in result["per_round"]])
  assert s["loaded"] and s["median_ratio"] == pytest.approx(22_000 / reference_rate)
  body = vr.render([result], "2.13.0")
  assert "| train:1000:100k | float32 | 5 (4) |" in body and "torch 2.13.0" in body
  assert "$DLRM_PYTHON dlrm_s_pytorch.py" in body and "--compute_dtype=bfloat16" in body
  assert "--output_dir=$OUT" in body and str(tmp_path) not in body
  marked = vr.render([result], "2.13.0", default_dtype="bfloat16")
  assert "| train:1000:100k | bfloat16 *default* | 5 (4) |" in marked
  assert "| train:1000:100k | float32 | 5 (4) |" in marked


def test_settle_waits_for_quiet_then_gives_up():
  config = vr.VersusConfig(reference_dir="/x", max_load=0.5, max_wait=12.0, load_window=1.0)
  readings, slept = iter([2.0, 0.4]), []
  state = vr.settle(config, load=lambda w: next(readings), sleep=slept.append)
  assert state["quiet"] and state["busy_cpus"] == 0.4 and slept == [5.0]
  state = vr.settle(config, load=lambda w: 2.0, sleep=slept.append)
  assert not state["quiet"] and state["waited_s"] >= 12.0
  assert 0.0 <= vr.busy_cpus(0.05) <= os.cpu_count()


def test_workloads_parse_and_inference_uses_the_driver():
  assert vr.parse_workload("inference:8192:100k") == ("inference", 8192, "100k")
  for bad in ("train:0:100k", "serve:128:100k", "train:128:1tb", "train:128"):
    with pytest.raises(ValueError, match="expected train"):
      vr.parse_workload(bad)
  config = vr.VersusConfig(reference_dir="/x", workload="inference", batch_size=8192)
  command = vr.reference_command(config)
  assert command[1].endswith("experiments/reference_inference.py")
  assert "--batch_size=8192" in command and "--workloads=inference" in vr.benchmark_command(
      config, "/o")


def test_fake_reference_inference_run(tmp_path):
  config = dataclasses.replace(_fake_reference(tmp_path, "pass"), workload="inference",
                               reference_python=str(tmp_path / "python"))
  (tmp_path / "python").write_text("#!/bin/sh\necho 'noise'\n"
                                   "echo '{\"examples_per_sec\": 1234.5, \"torch\": \"x\"}'\n")
  (tmp_path / "python").chmod(0o755)
  assert vr.run_reference(config)["examples_per_sec"] == 1234.5


def test_a_failed_or_silent_reference_run_is_an_error_naming_the_command(tmp_path):
  config = _fake_reference(tmp_path, "import sys; print('boom'); sys.exit(3)")
  with pytest.raises(RuntimeError, match=r"(?s)exit 3, 0 timed intervals.*dlrm_s_pytorch.py.*boom"):
    vr.run_reference(config)
  config = _fake_reference(tmp_path, "print('trained, but no --print-time lines')")
  with pytest.raises(RuntimeError, match="exit 0, 0 timed intervals"):
    vr.run_reference(config)
  with pytest.raises(FileNotFoundError, match="no dlrm_s_pytorch.py"):
    vr.run_reference(vr.VersusConfig(reference_dir=os.fspath(tmp_path / "missing")))


def test_cli_flags_errors_in_one_line(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.versus_reference",
                           f"--reference_dir={tmp_path}", "--output=", "--max_wait=0",
                           "--load_window=0.01", f"--output_dir={tmp_path}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)

  done = run("--workloads=train:128:1tb")
  assert done.returncode == 2 and "--workloads: workload 'train:128:1tb'" in done.stderr
  done = run("--batch_size=128", "--tables=kaggle", "--compute_dtype=float32")  # older flags
  assert done.returncode == 1 and "no dlrm_s_pytorch.py" in done.stderr
  assert "Traceback" not in done.stderr
