"""CI smoke test of experiments.reproduce --quick, plus its report helpers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from experiments import reproduce_report


def test_pareto_front_keeps_only_undominated_points():
  points = [(1.0, 0.70), (2.0, 0.69), (3.0, 0.75), (0.5, 0.60), (3.0, 0.74)]
  assert sorted(reproduce_report._pareto(points)) == [0, 2, 3]


def test_single_batch_accuracies_are_multiples_of_one_128th(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "test_predictions.npz", prob=rng.random(300), label=rng.integers(0, 2, 300))
  acc = reproduce_report.single_batch_accuracies(str(tmp_path))
  assert acc.shape == (2,)  # 300 rows -> two full batches of 128
  np.testing.assert_allclose(acc * 128, np.round(acc * 128))


@pytest.mark.slow
def test_quick_reproduce_writes_report_and_plots(tmp_path):
  out = tmp_path / "repro"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.reproduce", f"--output_dir={out}", "--quick",
       "--datasets=synthetic100k", "--approaches=baseline,mf_before"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (out / "report.md").read_text()
  assert "Baseline DLRM" in report and "MF approach 1" in report
  assert "1/128" in report
  for png in ("quality_vs_size.png", "logloss_vs_epoch.png"):
    assert (out / png).stat().st_size > 10_000
  results = json.loads((out / "results.json").read_text())
  assert {r["approach"] for r in results["rows"]} == {"baseline", "mf_before"}
  # The page names the machine that measured it and re-renders from results.json alone.
  assert report.startswith("# jaxrec reproduction")
  assert "- Command: `python -m experiments.reproduce" in report
  assert results["provenance"]["host_cpu"]["model"] in report
  assert not any(os.path.isabs(r["workdir"]) for r in results["records"])
  (out / "report.md").unlink()
  reproduce_report.render_report(results, str(out / "report.md"))
  assert (out / "report.md").read_text() == report
  # Re-running reuses the finished runs instead of training again.
  again = subprocess.run(
      [sys.executable, "-m", "experiments.reproduce", f"--output_dir={out}", "--quick",
       "--datasets=synthetic100k", "--approaches=baseline,mf_before"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "running" not in again.stderr


def test_readme_results_block_is_the_rendering_of_the_committed_results():
  results_path = "docs/reproduce/results.json"
  with open(os.path.join(REPO, results_path)) as f:
    results = json.load(f)
  block = reproduce_report.readme_block(results, results_path)
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  assert block in readme, "run: python -m experiments.reproduce_report --readme"
  assert "| criteo10k | Baseline DLRM |" in block


def test_update_readme_replaces_only_the_marked_block(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{reproduce_report.README_BEGIN}\nold\n{reproduce_report.README_END}\nend\n")
  reproduce_report.update_readme(str(readme), f"{reproduce_report.README_BEGIN}\nnew\n"
                                 f"{reproduce_report.README_END}")
  assert readme.read_text() == (f"intro\n{reproduce_report.README_BEGIN}\nnew\n"
                                f"{reproduce_report.README_END}\nend\n")
  readme.write_text("no markers\n")
  with pytest.raises(ValueError, match="no <!-- results:begin -->"):
    reproduce_report.update_readme(str(readme), "x")
