"""README.md and docs/: a short front door, links that resolve, headed generated pages."""

import glob
import os
import re

import pytest

from conftest import REPO

PAGES = sorted([os.path.join(REPO, "README.md")]
               + glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _rel(path):
  return os.path.relpath(path, REPO)


def test_readme_is_a_front_door():
  with open(os.path.join(REPO, "README.md")) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 200
  assert "python -m experiments.train" in lines and "python3 -m pytest -q tests" in lines


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
  with open(page, encoding="utf-8") as f:
    text = f.read()
  missing = []
  for target in LINK.findall(text):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue
    if not os.path.exists(os.path.join(os.path.dirname(page), target.split("#")[0])):
      missing.append(target)
  assert not missing, f"{_rel(page)}: links to missing files {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_machine_local_paths(page):
  with open(page, encoding="utf-8") as f:
    text = f.read()
  assert not re.search(r"/work/|/home/\w|/root/", text), _rel(page)


def _generated(page):
  with open(page, encoding="utf-8") as f:
    return "<!-- Generated file" in f.read()


GENERATED = [p for p in PAGES if _generated(p)]


def test_the_study_report_is_generated():
  assert os.path.join(REPO, "docs", "reproduce", "report.md") in GENERATED


@pytest.mark.parametrize("page", GENERATED, ids=_rel)
def test_generated_pages_name_command_machine_and_date(page):
  with open(page, encoding="utf-8") as f:
    text = f.read()
  for field in ("- Command: `python ", "- Machine: ", "- Versions: ", "- Date: "):
    assert field in text, f"{_rel(page)} lacks {field!r}"


def test_model_size_writes_its_comparison_page(tmp_path):
  import subprocess
  import sys
  page = tmp_path / "sizes.md"
  proc = subprocess.run([sys.executable, "-m", "experiments.model_size", "--compare",
                         "--cardinalities=1000,50,300", f"--report={page}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = page.read_text()
  assert text.startswith("# Embedding strategies: parameters and size\n")
  assert "- Command: `python -m experiments.model_size --compare" in text
  assert "| full | 21,600 |" in text  # (1000 + 50 + 300) rows x 16
