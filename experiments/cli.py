"""The prologue every experiments entry point shares.

A user's mistake (a bad flag, a stray argument, a value a config rejects) is one
line on stderr and exit code 2, never a traceback:

  def main(argv):
    cli.check_no_arguments(argv)
    try:
      config = config_from_flags()
    except cli.FlagError as e:
      cli.fail(e)
    ...

  if __name__ == "__main__":
    cli.run(main)
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from absl import app, flags


class FlagError(ValueError):
  """A bad flag value or combination: reported in one line, exit code 2."""


def fail(message, code: int = 2) -> NoReturn:
  """Prints ``error: message`` on stderr and exits with `code` (2: a usage error)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def check_no_arguments(argv: list[str]) -> None:
  """Entry points take flags only: anything else is a usage error."""
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run` with `parse_flags`."""
  app.run(main, flags_parser=parse_flags)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real Criteo Kaggle sample beside the checkout (../shared/data), the figures' default data.
CRITEO_SAMPLE = os.path.join(os.path.dirname(REPO), "shared", "data", "criteo",
                             "criteo_kaggle_train_first10k.tsv")


def existing_file(flag: str, path: str | None, default: str = CRITEO_SAMPLE) -> str:
  """`path` (or `default`) when it is a file; else one line naming `--flag`, exit 2."""
  path = path or default
  if not os.path.isfile(path):
    fail(f"--{flag}={path}: no such file")
  return path


def int_list(flag: str, values: list[str]) -> list[int]:
  """A list flag's values as integers; else one line naming `--flag`, exit 2."""
  try:
    return [int(v) for v in values]
  except ValueError:
    fail(f"--{flag}={','.join(values)}: integers expected")
