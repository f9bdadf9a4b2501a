r"""Inference speed of the PyTorch DLRM reference's model, for `experiments.versus_reference`.

  cd ../dlrm && ../dlrmenv/bin/python /path/to/jaxrec/experiments/reference_inference.py \
      --batch_size=8192 --tables=100000,100000,...

The reference script times training only (`--print-time`), so this driver
builds its `DLRM_Net` (imported from the checkout in the working directory;
none of its code is part of jaxrec) with the benchmark configuration (bottom
13-512-256-64-16, top 512-256-1, d = 16, dot interaction, one index per
lookup), draws uniform random batches as the reference's random data does, and
times `forward` under `torch.no_grad()` for --seconds after one warm-up call.
Prints one JSON line: {"examples_per_sec", "calls", "seconds", "torch"}.
Runs with the reference's Python (torch), not jaxrec's: it imports no jaxrec.
"""

import argparse
import json
import os
import sys
import time


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=8192)
  parser.add_argument("--tables", required=True, help="Comma-separated rows per table.")
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--num_batches", type=int, default=4, help="Distinct batches cycled.")
  args = parser.parse_args()
  sys.path.insert(0, os.getcwd())
  import numpy as np
  import torch
  from dlrm_s_pytorch import DLRM_Net

  sizes = np.array([int(n) for n in args.tables.split(",")])
  bottom, top = np.array([13, 512, 256, 64, 16]), np.array([512, 256, 1])
  features = len(sizes) + 1  # the tables' vectors and the bottom MLP's output
  num_int = features * (features - 1) // 2 + bottom[-1]  # as the reference's top MLP input
  top = np.concatenate([[num_int], top])
  model = DLRM_Net(16, sizes, bottom, top, arch_interaction_op="dot",
                   arch_interaction_itself=False, sigmoid_bot=-1, sigmoid_top=len(top) - 2,
                   ndevices=-1)
  model.eval()
  rng = np.random.default_rng(0)
  offsets = [torch.arange(args.batch_size, dtype=torch.int64)] * len(sizes)
  batches = []
  for _ in range(args.num_batches):
    dense = torch.tensor(rng.random((args.batch_size, 13), dtype=np.float32))
    ids = [torch.tensor(rng.integers(0, n, args.batch_size)) for n in sizes]
    batches.append((dense, offsets, ids))
  with torch.no_grad():
    model(*batches[0])
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
      model(*batches[calls % len(batches)])
      calls += 1
    seconds = time.perf_counter() - start
  print(json.dumps({"examples_per_sec": calls * args.batch_size / seconds, "calls": calls,
                    "seconds": seconds, "torch": torch.__version__}))


if __name__ == "__main__":
  main()
