"""qr_from_full: QR tables that start at the trained full tables' group means."""

import jax
import numpy as np
import pytest

from jaxrec.layers import embeddings
from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.layers.qr_from_full import qr_from_full

VOCAB = (3, 10, 7)


def _layouts(operation, first_order=False):
  full = EmbeddingLayout(EmbeddingConfig(dim=4, first_order=first_order), VOCAB)
  qr = EmbeddingLayout(EmbeddingConfig(kind="qr", dim=4, qr_collisions=4, qr_threshold=5,
                                       qr_operation=operation, first_order=first_order), VOCAB)
  return full, qr


def _vectors(layout, tables, cat):
  """Field vectors [B, F, d] of `cat` under `layout` (the model's own combination)."""
  rows = embeddings.lookup(tables, layout.row_ids(cat))
  module = embeddings.FieldEmbeddings(layout)
  return module.apply(module.init(jax.random.key(0), rows), rows)


@pytest.mark.parametrize("operation", ["mult", "add"])
def test_every_category_starts_at_its_group_mean(operation):
  full, qr = _layouts(operation)
  tables = full.init_tables(jax.random.key(1))
  cat = np.stack([np.arange(10) % 3, np.arange(10), np.arange(10) % 7], axis=1)
  want = np.asarray(_vectors(full, tables, cat))
  got = np.asarray(_vectors(qr, qr_from_full(tables, full, qr), cat))
  np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-6)  # 3 rows <= threshold: copied
  for field in (1, 2):
    for i, category in enumerate(cat[:, field]):
      members = np.arange(VOCAB[field])[np.arange(VOCAB[field]) // 4 == category // 4]
      expected = np.asarray(tables["embedding"])[full.tables[0].offsets[field] + members].mean(0)
      np.testing.assert_allclose(got[i, field], expected, rtol=1e-5, atol=1e-7)


def test_first_order_scalars_are_averaged_per_quotient_row():
  full, qr = _layouts("mult", first_order=True)
  tables = full.init_tables(jax.random.key(2))
  tables["first_order"] = np.arange(sum(VOCAB), dtype=np.float32)[:, None]
  out = qr_from_full(tables, full, qr)
  # field 1 (ids 0..9, offset 3): quotient rows {0..3}, {4..7}, {8, 9}
  np.testing.assert_allclose(np.asarray(out["first_order"])[3:6, 0], [4.5, 8.5, 11.5])


def test_concat_and_mismatched_layouts_are_rejected():
  full, qr = _layouts("concat")
  with pytest.raises(ValueError, match="concat"):
    qr_from_full(full.init_tables(jax.random.key(0)), full, qr)
  other = EmbeddingLayout(EmbeddingConfig(kind="qr", dim=8), VOCAB)
  with pytest.raises(ValueError, match="same vocabularies"):
    qr_from_full(full.init_tables(jax.random.key(0)), full, other)
