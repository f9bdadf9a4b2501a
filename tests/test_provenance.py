"""Tests for jaxrec.provenance: the header every generated figure page starts with."""

from jaxrec import provenance

_CPUINFO = """processor : 0
model name : Intel(R) Xeon(R) Processor
flags : fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile amx_int8

processor : 1
model name : Other CPU
flags : fpu
"""


def test_host_cpu_reads_the_first_processor_block():
  cpu = provenance.host_cpu(_CPUINFO)
  assert cpu["model"] == "Intel(R) Xeon(R) Processor"
  assert cpu["features"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]


def test_report_header_names_command_machine_versions_and_date(tmp_path):
  path = tmp_path / "docs" / "page.md"
  provenance.write_report(str(path), "Figures", "| a |\n|---|\n| 1 |", command="python -m x --y=1")
  text = path.read_text()
  assert text.startswith("# Figures\n")
  assert "- Command: `python -m x --y=1`" in text
  assert provenance.host_cpu()["model"] in text
  assert "jax " in text and "- Date: 20" in text
  assert text.rstrip().endswith("| 1 |")


def test_report_header_of_a_saved_record_names_that_machine():
  record = {"host_cpu": {"model": "Saved CPU", "logical_cpus": 2, "features": ["avx2"]},
            "accelerator": "none (cpu)", "versions": {"jax": "0.1"}, "date": "2020-01-02 03:04 UTC"}
  text = provenance.report_header("T", command="python -m x", record=record)
  assert "- Machine: Saved CPU, 2 logical CPUs, features avx2; accelerator: none (cpu)" in text
  assert "- Versions: jax 0.1" in text and "- Date: 2020-01-02 03:04 UTC" in text
  unknown = provenance.report_header("T", command="python -m x", record={})
  assert "- Machine: not recorded" in unknown and "- Date: not recorded" in unknown
