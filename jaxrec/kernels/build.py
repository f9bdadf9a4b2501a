"""``python -m jaxrec.kernels.build``: compile and load the fused CPU kernels ahead of time.

Run once after installing (the install line does where a compiler exists), so no
training run pays for the compile. Prints the library path, or why the kernels
are not used on this host (no AVX-512, no compiler, ...); exits 1 only when a
build was attempted and failed.
"""

from __future__ import annotations

import sys

from jaxrec.kernels import cpu


def main() -> int:
  if cpu.available():
    print(f"jaxrec CPU kernels built and loaded: {cpu.build()}")
    return 0
  reason = cpu.unavailable_reason()
  print(f"jaxrec CPU kernels not used on this host: {reason}")
  return 1 if reason.startswith("building ") else 0  # a compile error, not a missing feature


if __name__ == "__main__":
  sys.exit(main())
