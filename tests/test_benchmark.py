"""Smoke test of experiments.benchmark on a tiny run (record keys and FLOP counts)."""

import json
import os

import numpy as np
import pytest

from experiments import benchmark


@pytest.mark.slow
def test_benchmark_writes_records_with_the_issue_keys(tmp_path):
  config = benchmark.BenchConfig(
      output_dir=str(tmp_path), models=("dlrm", "no_such_model"), rank_fractions=(1.0,),
      batch_sizes=(32,), tables=("100k",), min_seconds=0.01, repeats=1, num_batches=2)
  logs = []
  records = benchmark.run(config, log=logs.append)
  with open(os.path.join(tmp_path, "benchmark.json")) as f:
    assert json.load(f) == records
  assert [(r["workload"], r["batch_size"]) for r in records] == [("train", 32), ("inference", 32)]
  assert any("no_such_model" in line and "skipped" in line for line in logs)
  for r in records:
    assert set(benchmark.RECORD_KEYS) <= set(r)
    assert r["model"] == "dlrm" and r["tables"] == "100k" and r["rank_fraction"] == 1.0
    assert r["examples_per_sec"] > 0 and r["peak_rss_bytes"] > 2**20
    assert r["compiles"] == 1  # timed steps never recompile
    assert r["fraction_of_peak"] == pytest.approx(
        r["flops_per_example"] * r["examples_per_sec"] / r["peak_flops_per_sec"])
    assert r["host_cpu"] == benchmark.host_cpu()["model"] and r["peak_dtype"] == "float32"
  inference = records[1]["flops_per_example"]
  assert inference == 972_064
  # Forward + backward: about 3x the forward matmuls (the dense input gets no gradient).
  assert 2.9 * inference < records[0]["flops_per_example"] < 3.0 * inference


_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Some Other Name
flags\t\t: fpu
"""


def test_host_cpu_reads_the_first_processor_and_the_listed_features():
  cpu = benchmark.host_cpu(_CPUINFO)
  assert cpu["model"] == "Intel(R) Xeon(R) Processor"
  # In CPU_FEATURES order; amx_int8 and sse2 are not listed features.
  assert cpu["features"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
  assert cpu["logical_cpus"] >= 1
  zen3 = benchmark.host_cpu("model name : AMD EPYC 7B13\nflags : avx avx2 fma\n")
  assert zen3["model"] == "AMD EPYC 7B13" and zen3["features"] == ["avx2", "fma"]
  assert benchmark.host_cpu("")["features"] == []


def test_synthetic_batches_are_deterministic_and_skewed():
  a = benchmark.synthetic_batches((1000, 50), 4096, 2, 1.1, seed=3)
  b = benchmark.synthetic_batches((1000, 50), 4096, 2, 1.1, seed=3)
  assert all((x[k] == y[k]).all() for x, y in zip(a, b) for k in x)
  cat = a[0]["cat"]
  assert cat.shape == (4096, 2) and cat[:, 0].max() < 1000 and cat[:, 1].max() < 50
  assert (cat[:, 0] < 10).mean() > 0.3  # Zipf: the 1% most popular ids take a large share


def test_rank_fraction_variant_is_svd_factorized():
  variant = benchmark.build_variant("dlrm", 0.5, (50,) * 26, "float32", seed=0)
  assert not isinstance(variant, str), variant
  top0 = variant.variables["params"]["top"]["layers_0"]
  assert set(top0) == {"u", "v", "bias"}  # 367x512 -> rank 106 < 0.5 * 367 * 512 / 879
  assert top0["u"].shape == (367, 106) and top0["v"].shape == (106, 512)
  assert "kernel" in variant.variables["params"]["top"]["layers_2"]  # 256x1: rank < 1, stays dense
  assert "no_such" in benchmark.build_variant("no_such", 1.0, (50,) * 26, "float32", seed=0)


@pytest.mark.slow
def test_interleaved_windows_alternate_and_give_paired_ratios(tmp_path):
  config = benchmark.BenchConfig(
      output_dir=str(tmp_path), models=("dlrm", "afm"), rank_fractions=(1.0,),
      batch_sizes=(32,), tables=("100k",), workloads=("train",), min_seconds=0.01, repeats=3,
      num_batches=2, interleave=True)
  records = benchmark.run(config, log=lambda s: None)
  assert [(r["model"], r["workload"]) for r in records] == [("dlrm", "train"), ("afm", "train")]
  dlrm, afm = records
  assert dlrm["ratio_to_dlrm"] == 1.0 and dlrm["ratio_to_dlrm_range"] == [1.0, 1.0]
  assert len(afm["window_examples_per_sec"]) == len(dlrm["window_examples_per_sec"]) == 3
  paired = sorted(a / d for a, d in zip(afm["window_examples_per_sec"],
                                        dlrm["window_examples_per_sec"]))
  assert afm["ratio_to_dlrm"] == pytest.approx(paired[1])
  assert afm["ratio_to_dlrm_range"] == pytest.approx([paired[0], paired[-1]])
  assert all(r["compiles"] == 1 and not r["rss_peak_is_per_record"] for r in records)


def test_ratios_to_dlrm_pair_windows_only_when_interleaved():
  def record(model, windows, interleaved, batch=8):
    return {"model": model, "rank_fraction": 1.0, "workload": "train", "batch_size": batch,
            "tables": "100k", "window_examples_per_sec": windows, "interleaved": interleaved,
            "examples_per_sec": sorted(windows)[len(windows) // 2]}
  # Paired: the afm/dlrm window ratios are 0.5, 1.0 and 0.6 -> median 0.6.
  records = [record("dlrm", [10.0, 20.0, 30.0], True), record("afm", [5.0, 20.0, 18.0], True),
             record("afm", [1.0], True, batch=16)]  # no dlrm at batch 16: no ratio
  benchmark._add_ratios(records)
  assert records[1]["ratio_to_dlrm"] == pytest.approx(0.6)
  assert records[1]["ratio_to_dlrm_range"] == pytest.approx([0.5, 1.0])
  assert "ratio_to_dlrm" not in records[2]
  # Not interleaved: the ratio of the medians (18 / 20), no range.
  records = [record("dlrm", [10.0, 20.0, 30.0], False), record("afm", [5.0, 20.0, 18.0], False)]
  benchmark._add_ratios(records)
  assert records[1]["ratio_to_dlrm"] == pytest.approx(0.9)
  assert "ratio_to_dlrm_range" not in records[1]


def test_steps_per_call_trains_that_many_batches_per_call(tmp_path):
  import jax
  vocab = (50,) * 26
  batches = jax.device_put(benchmark.synthetic_batches(vocab, 16, 4, 1.1, 0))
  trained = []
  for per_call, calls in ((1, 4), (2, 2), (4, 1)):
    config = benchmark.BenchConfig(output_dir=str(tmp_path), steps_per_call=per_call)
    variant = benchmark.build_variant("dlrm", 1.0, vocab, "float32", 0)
    runner = benchmark.prepare_train(variant, batches, config)
    assert runner.steps_per_call == per_call
    runner.run_steps(calls)
    runner.finish()
    trained.append(jax.device_get(variant.variables))
  for other in trained[1:]:  # the same four batches in the same order, however grouped
    for a, b in zip(jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(trained[0])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  initial = benchmark.build_variant("dlrm", 1.0, vocab, "float32", 0).variables
  assert not np.allclose(jax.device_get(initial["tables"])["embedding"],
                         trained[0]["tables"]["embedding"])


def test_steps_per_call_counts_every_step_in_the_record(tmp_path):
  config = benchmark.BenchConfig(
      output_dir=str(tmp_path), models=("dlrm",), rank_fractions=(1.0,), batch_sizes=(16,),
      tables=("100k",), workloads=("train",), min_seconds=0.01, repeats=1, num_batches=2,
      steps_per_call=3)
  (record,) = benchmark.run(config, log=lambda s: None)
  assert record["steps_per_call"] == 3 and record["steps_per_window"] % 3 == 0
  assert record["compiles"] == 1
  (window_rate,) = record["window_examples_per_sec"]
  assert record["examples_per_sec"] == window_rate
