"""The preprocessing passes as tasks on a Dask distributed cluster (``engine="dask"``).

The same three passes as the local engine (`jaxrec.data.preprocess`), with the
same per-chunk functions, so the output is byte-identical:

1. *parse*: one task per input file (a Terabyte day), writing its pass-1 arrays.
2. *count*: a map of `preprocess.count_chunk` over the chunks, then a tree
   reduce (`split_every` counters per step) of the per-chunk key counters into
   one; the per-chunk split sizes come back to the client.
3. *encode*: the client writes every output ``.npy`` header and sizes the
   files; a map of tasks each encodes one chunk and writes its rows at their
   final offsets (known from the per-chunk split sizes), so no task waits for
   another.

The workers must see the output directory at the same path (one machine, or
a shared file system across hosts). With no scheduler address a
``LocalCluster`` of one single-threaded worker process per core is started
and closed at the end. Needs ``pip install 'jaxrec[dask]'``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import time
from typing import Sequence

import numpy as np

from jaxrec.data import criteo, preprocess

try:
  import dask
  import distributed
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("engine 'dask' needs Dask distributed: pip install 'jaxrec[dask]'") from e

SPLIT_EVERY = 8  # counters merged per tree-reduce task


def _parse_one(i: int, path: str, tmp: str, config: preprocess.PreprocessConfig) -> dict:
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    return preprocess._parse_file(i, path, tmp, config, pool, 1, lambda message: None)


def _combine(*counters: criteo.FrequencyCounter) -> criteo.FrequencyCounter:
  return criteo.FrequencyCounter.combine(*counters)


def tree_reduce(items: list, combine, split_every: int = SPLIT_EVERY):
  """Delayed tree reduction: `combine` over groups of `split_every` until one is left."""
  while len(items) > 1:
    items = [dask.delayed(combine)(*items[k:k + split_every])
             for k in range(0, len(items), split_every)]
  return items[0]


@functools.lru_cache(maxsize=2)
def _vocabulary(path: str, mtime_ns: int) -> criteo.Vocabulary:
  """A worker's copy of the saved vocabulary (loaded once per worker process)."""
  del mtime_ns  # part of the cache key only
  return criteo.Vocabulary.load(path)


def _encode_and_write(job: preprocess.Job, chunk: tuple[int, int, int], vocab_file: str,
                      mtime_ns: int, row_offsets: dict[str, int], headers: dict,
                      row_bytes: dict) -> int:
  """Encodes one chunk and writes its rows into the output arrays at their offsets."""
  vocab = _vocabulary(vocab_file, mtime_ns)
  for split, arrays in preprocess.encode_chunk(job, chunk, vocab).items():
    for name, data in arrays.items():
      with open(os.path.join(job.out, split, f"{name}.npy"), "r+b") as f:
        f.seek(headers[split, name] + row_offsets[split] * row_bytes[split, name])
        f.write(data)
  return chunk[2] - chunk[1]


class DaskEngine:
  """`preprocess` passes on a Dask cluster (see the module docstring)."""

  name = "dask"

  def __init__(self, config: preprocess.PreprocessConfig):
    self.config = config

  def __enter__(self):
    self.cluster = None
    if self.config.scheduler:
      self.client = distributed.Client(self.config.scheduler)
    else:
      workers = self.config.workers or os.cpu_count() or 1
      self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                              processes=True, dashboard_address=None)
      self.client = distributed.Client(self.cluster)
    return self

  def __exit__(self, *exc):
    self.client.close()
    if self.cluster is not None:
      self.cluster.close()

  @property
  def num_workers(self) -> int:
    return len(self.client.scheduler_info(n_workers=-1)["workers"])

  def parse(self, inputs: Sequence[str], tmp: str, report) -> list[dict]:
    start = time.perf_counter()
    futures = [self.client.submit(_parse_one, i, path, tmp, self.config, pure=False)
               for i, path in enumerate(inputs)]
    records = self.client.gather(futures)
    rows = sum(r["rows"] for r in records)
    report(f"parse: {rows:,} rows from {len(inputs)} file(s) on {self.num_workers} Dask workers"
           f" in {time.perf_counter() - start:.1f} s")
    return records

  def count(self, job: preprocess.Job, chunks, report):
    start = time.perf_counter()
    job_ = dask.delayed(job, traverse=False)
    parts = [dask.delayed(preprocess.count_chunk, nout=2)(job_, chunk) for chunk in chunks]
    stats = [p[0] for p in parts]
    counter = tree_reduce([p[1] for p in parts], _combine) if job.count_keys else None
    stats, counter = self.client.compute([stats, counter], sync=True)
    report(f"count: {len(chunks):,} chunks on {self.num_workers} Dask workers in"
           f" {time.perf_counter() - start:.1f} s")
    return np.asarray(stats, np.int64).reshape(-1, 2, 3), counter

  def encode(self, job: preprocess.Job, chunks, vocab: criteo.Vocabulary, sizes: dict,
             report) -> None:
    start = time.perf_counter()
    headers = preprocess.create_arrays(job, sizes)
    row_bytes = {key: dtype.itemsize * int(np.prod(shape[1:]))
                 for key, (dtype, shape) in preprocess.array_layout(job, sizes).items()}
    vocab_file = os.path.join(job.tmp, preprocess.VOCAB)
    mtime_ns = os.stat(vocab_file).st_mtime_ns
    per_chunk = np.asarray(sizes["chunk_split_rows"], np.int64).reshape(-1, 3)
    offsets = np.cumsum(per_chunk, axis=0) - per_chunk  # first row of each chunk per split
    job_ = self.client.scatter(job, broadcast=True)
    futures = [self.client.submit(
        _encode_and_write, job_, chunk, vocab_file, mtime_ns,
        {split: int(offsets[c, s]) for s, split in enumerate(preprocess.SPLITS)}, headers,
        row_bytes, pure=False) for c, chunk in enumerate(chunks)]
    rows = sum(self.client.gather(futures))
    report(f"encode: {rows:,} rows on {self.num_workers} Dask workers in"
           f" {time.perf_counter() - start:.1f} s")
