"""Static-shape batches from a `CTRDataset`, with seeded per-epoch shuffling and prefetch.

Every batch has exactly `batch_size` rows: the last partial batch is padded
(with copies of row 0) and its padding is masked out (`mask` = 0), so the train
step compiles once.

Shuffling: a split of up to ``block_rows * window_blocks`` rows (1M by
default) is fully permuted each epoch. A larger (memory-mapped) split is
shuffled in two levels so that reads stay local: the order of its
``block_rows``-row blocks is permuted, then consecutive groups of
``window_blocks`` blocks form windows whose rows are permuted together.

The iterator position is (epoch, batch): the order depends only on (seed,
epoch), so the global step saved in a checkpoint is the whole loader state —
``divmod(step, num_batches)`` — and a resumed run continues with exactly the
batches it would have seen (`iterate_batches(..., start_batch=)` skips whole
windows without reading them).

Per-host input: with several processes (`jax.distributed`) each computes the
same global order (it costs no reads) and gathers only the rows of its own
devices' slice of each global batch (`positions`), so reading falls as 1/P.
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


def make_batch(dataset: CTRDataset, index: np.ndarray, batch_size: int,
               positions: np.ndarray | None = None) -> Batch:
  """Gathers rows `index` and pads to `batch_size` with a 0/1 mask.

  With `positions` (sorted positions in the padded global batch) only those
  rows are read and returned: one process's part of a global batch.
  """
  real = len(index)
  if real < batch_size:
    index = np.concatenate([index, np.zeros(batch_size - real, dtype=index.dtype)])
  mask = np.zeros(batch_size, np.float32)
  mask[:real] = 1.0
  if positions is not None:
    index, mask = index[positions], mask[positions]
  return {"dense": np.asarray(dataset.dense[index], np.float32),
          "cat": np.asarray(dataset.cat[index], np.int32),
          "label": np.asarray(dataset.label[index], np.float32),
          "mask": mask}


BLOCK_ROWS = 1 << 14
WINDOW_BLOCKS = 64


def epoch_windows(num_rows: int, seed: int, epoch: int, block_rows: int = BLOCK_ROWS,
                  window_blocks: int = WINDOW_BLOCKS) -> list[np.ndarray]:
  """The blocks of each shuffle window of an epoch (sorted block ids per window)."""
  num_blocks = -(-num_rows // block_rows)
  block_order = np.random.default_rng([seed, epoch, 1]).permutation(num_blocks)
  return [np.sort(block_order[w:w + window_blocks])
          for w in range(0, num_blocks, window_blocks)]


def _window_rows(blocks: np.ndarray, num_rows: int, block_rows: int) -> int:
  last = -(-num_rows // block_rows) - 1
  return len(blocks) * block_rows - (int(np.any(blocks == last)) *
                                     (last * block_rows + block_rows - num_rows))


def _window_order(blocks: np.ndarray, num_rows: int, block_rows: int, seed: int, epoch: int,
                  w: int) -> np.ndarray:
  rows = (blocks[:, None] * block_rows + np.arange(block_rows)).reshape(-1)
  rows = rows[rows < num_rows]
  return rows[np.random.default_rng([seed, epoch, 2, w]).permutation(len(rows))]


def epoch_order(num_rows: int, seed: int, epoch: int, start: int = 0,
                block_rows: int = BLOCK_ROWS, window_blocks: int = WINDOW_BLOCKS):
  """Yields the epoch's row order from position `start` on, in pieces (one per window)."""
  if num_rows <= block_rows * window_blocks:
    yield epoch_permutation(num_rows, seed, epoch)[start:]
    return
  position = 0
  for w, blocks in enumerate(epoch_windows(num_rows, seed, epoch, block_rows, window_blocks)):
    size = _window_rows(blocks, num_rows, block_rows)
    if position + size > start:
      order = _window_order(blocks, num_rows, block_rows, seed, epoch, w)
      yield order[max(start - position, 0):]
    position += size


def iterate_batches(dataset: CTRDataset, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, epoch: int = 0, start_batch: int = 0,
                    block_rows: int = BLOCK_ROWS, window_blocks: int = WINDOW_BLOCKS,
                    positions: np.ndarray | None = None) -> Iterator[Batch]:
  """Batches of one epoch, starting at batch `start_batch` (see the module docstring).

  `positions`: per-host input — only these positions of every global batch are
  read (`sharding.process_positions`: the rows of this process's devices), so
  each of P processes reads 1/P of the rows, in the order one process would.
  """
  n = len(dataset)
  if not shuffle:
    for b in range(start_batch, num_batches(n, batch_size)):
      yield make_batch(dataset, np.arange(b * batch_size, min((b + 1) * batch_size, n)),
                       batch_size, positions)
    return
  carry = np.zeros(0, np.int64)
  for piece in epoch_order(n, seed, epoch, start_batch * batch_size, block_rows, window_blocks):
    piece = np.concatenate([carry, piece]) if len(carry) else piece
    full = len(piece) // batch_size * batch_size
    for b in range(0, full, batch_size):
      # Sorted within the batch: sequential reads from memory-mapped arrays.
      yield make_batch(dataset, np.sort(piece[b:b + batch_size]), batch_size, positions)
    carry = piece[full:]
  if len(carry):
    yield make_batch(dataset, np.sort(carry), batch_size, positions)


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
