"""Static-shape batches from a `CTRDataset`, with seeded per-epoch shuffling and prefetch.

Every batch has exactly `batch_size` rows: the last partial batch is padded
(with copies of row 0) and its padding is masked out (`mask` = 0), so the train
step compiles once. Batch order depends only on (seed, epoch), so a run resumed
at global step s continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np

from jaxrec.data.dataset import CTRDataset

Batch = dict[str, np.ndarray]


def num_batches(num_rows: int, batch_size: int) -> int:
  return -(-num_rows // batch_size)


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_rows)


def make_batch(dataset: CTRDataset, index: np.ndarray, batch_size: int) -> Batch:
  """Gathers rows `index` and pads to `batch_size` with a 0/1 mask."""
  real = len(index)
  if real < batch_size:
    index = np.concatenate([index, np.zeros(batch_size - real, dtype=index.dtype)])
  mask = np.zeros(batch_size, np.float32)
  mask[:real] = 1.0
  return {"dense": np.asarray(dataset.dense[index], np.float32),
          "cat": np.asarray(dataset.cat[index], np.int32),
          "label": np.asarray(dataset.label[index], np.float32),
          "mask": mask}


def iterate_batches(dataset: CTRDataset, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
  """Batches of one epoch, starting at batch `start_batch`."""
  n = len(dataset)
  order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
  for b in range(start_batch, num_batches(n, batch_size)):
    index = order[b * batch_size:(b + 1) * batch_size]
    if shuffle:
      index = np.sort(index)  # sequential reads from memory-mapped arrays
    yield make_batch(dataset, index, batch_size)


def prefetch_to_device(batches: Iterator[Batch], size: int = 2,
                       sharding: jax.sharding.Sharding | None = None) -> Iterator[Batch]:
  """Moves batches to the device in a background thread, `size` ahead."""
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()
  errors = []

  def producer():
    try:
      for batch in batches:
        q.put(jax.device_put(batch, sharding) if sharding is not None else jax.device_put(batch))
    except Exception as e:  # surfaced in the consumer
      errors.append(e)
    finally:
      q.put(sentinel)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  while True:
    item = q.get()
    if item is sentinel:
      break
    yield item
  thread.join()
  if errors:
    raise errors[0]
