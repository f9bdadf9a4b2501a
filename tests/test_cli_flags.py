"""Bad flags and combinations: one line on stderr, exit code 2, no traceback.

The cases run in one subprocess that calls `experiments.train.main` the way
``python -m experiments.train`` does (flags parsed by `parse_flags`), so the
suite pays for one interpreter start instead of one per case.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

DRIVER = r"""
import contextlib, io, json, sys, traceback
from absl import flags
from experiments import train
results = []
for argv in json.loads(sys.argv[1]):
  err = io.StringIO()
  code = None
  with contextlib.redirect_stderr(err):
    try:
      train.main(train.parse_flags(["train", *argv]))
    except SystemExit as e:
      code = e.code
    except BaseException:
      traceback.print_exc(file=err)
      code = "raised"
  flags.FLAGS.unparse_flags()
  results.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


def _fake_run(path, bottom_mlp):
  """A run directory with a config.json and one (empty) checkpoint directory."""
  os.makedirs(os.path.join(path, "checkpoints", "5"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"model": {"name": "dlrm", "bottom_mlp": bottom_mlp}}, f)
  return str(path)


def test_bad_flags_exit_2_with_one_line(tmp_path):
  run = _fake_run(tmp_path / "run", [32, 16])
  a_file = tmp_path / "file"
  a_file.write_text("x")
  cases = [
      (["--model=nope"], "unknown model"),
      (["--data=/no/such/file.tsv"], "no such file"),
      (["--learning_rate=nan"], "--learning_rate must be > 0"),
      (["--learning_rate=-0.1"], "--learning_rate must be > 0"),
      (["--embedding_learning_rate=inf"], "--embedding_learning_rate >= 0"),
      (["--split=nan,0.5,0.5"], "--split"),
      (["--split=0.5,0.5"], "--split"),
      (["--batch_size=0"], "--batch_size=0"),
      (["--epochs=-1"], "--epochs=-1"),
      (["--checkpoint_every=-5"], "--checkpoint_every=-5"),
      (["--top_mlp=8-2"], "1 output"),
      (["--interaction=cat", "--interaction_itself"],
       "--interaction_itself: self_interaction only applies"),
      (["--model=autoint", "--attention_heads=0"], "--attention_heads: attention_heads must be"),
      (["--bottom_mlp=64-8"], "needs the bottom MLP to end in embedding_dim 16"),
      (["--resume"], "--resume needs --output_dir"),
      ([f"--output_dir={run}"], "already holds a run (checkpoint at step 5); pass --resume"),
      ([f"--output_dir={a_file}"], "not a directory"),
      ([f"--output_dir={run}", "--resume"], "cannot resume: the checkpoint was written with a"
                                            " different model"),
      (["--rank_fraction=1.5"], "--rank_fraction=1.5: must be in"),
      (["--rank_fraction=-0.25"], "--rank_fraction=-0.25: must be in"),
      (["--rank_fraction=nan"], "--rank_fraction=nan: must be in"),
      (["--finetune_epochs=2"], "--finetune_epochs needs --factorize"),
      (["--on_nonfinite=maybe"], "on_nonfinite"),
      (["--batch_size=abc"], "batch_size"),
      (["--no_such_flag=1"], "no_such_flag"),
  ]
  proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([c for c, _ in cases])],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for (argv, message), result in zip(cases, results):
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["code"] == 2, (argv, result)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
    assert message in lines[0], (argv, lines[0])


@pytest.mark.slow
def test_flag_parse_error_through_the_real_entry_point():
  proc = subprocess.run([sys.executable, "-m", "experiments.train", "--batch_size=abc"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
  assert "Traceback" not in proc.stderr
