"""Loader: static shapes and masks, windowed shuffling of large splits, exact resume."""

import numpy as np

from jaxrec.data import loader
from jaxrec.data.dataset import CTRDataset


def _dataset(n):
  ids = np.arange(n, dtype=np.int32)
  return CTRDataset(dense=np.repeat(ids[:, None], 13, 1).astype(np.float32),
                    cat=np.repeat(ids[:, None], 26, 1), label=(ids % 2).astype(np.float32),
                    vocab_sizes=(n,) * 26)


def test_small_split_is_one_full_permutation_with_padded_last_batch():
  data = _dataset(10)
  batches = list(loader.iterate_batches(data, 4, shuffle=True, seed=0, epoch=0))
  assert [b["cat"].shape for b in batches] == [(4, 26)] * 3
  assert batches[-1]["mask"].tolist() == [1, 1, 0, 0]
  rows = np.concatenate([b["cat"][b["mask"] > 0, 0] for b in batches])
  order = loader.epoch_permutation(10, 0, 0)
  assert rows.tolist() == np.concatenate([np.sort(order[i:i + 4]) for i in (0, 4, 8)]).tolist()


def test_large_split_windows_cover_every_row_once_and_differ_by_epoch():
  n, block, window = 1000, 16, 4  # 63 blocks in 16 windows
  orders = [np.concatenate(list(loader.epoch_order(n, 3, e, 0, block, window))) for e in (0, 1)]
  for order in orders:
    assert sorted(order.tolist()) == list(range(n))
  assert (orders[0] != orders[1]).any()
  # Each window holds whole blocks: the first 64 rows come from 4 blocks only.
  assert len(np.unique(orders[0][:window * block] // block)) == window
  # Starting at any position gives the tail of the same order (exact resume).
  for start in (1, 64, 500, 999):
    tail = np.concatenate(list(loader.epoch_order(n, 3, 0, start, block, window)))
    np.testing.assert_array_equal(tail, orders[0][start:])


def test_resumed_iteration_yields_the_same_batches():
  data = _dataset(300)
  kw = dict(shuffle=True, seed=1, epoch=2, block_rows=16, window_blocks=4)
  full = [b["cat"][:, 0] for b in loader.iterate_batches(data, 32, **kw)]
  resumed = [b["cat"][:, 0] for b in loader.iterate_batches(data, 32, start_batch=5, **kw)]
  assert len(full) == 10 and len(resumed) == 5
  rows = np.concatenate([b[:len(b) if i < 9 else 300 - 9 * 32] for i, b in enumerate(full)])
  assert sorted(rows.tolist()) == list(range(300))
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a, b)
