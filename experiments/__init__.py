"""absl-flag entry points (``python -m experiments.X``).

Run as a command, the package first re-executes the process under a faster
memory allocator for XLA:CPU (`jaxrec.allocator`; ``JAXREC_ALLOCATOR=system``
keeps the default). Importing these modules from Python does nothing of the kind.
"""

import sys

if sys.argv and sys.argv[0] == "-m":  # `python -m experiments.X`, before jax is imported
  from jaxrec import allocator as _allocator
  _allocator.reexec_with_fast_allocator()
