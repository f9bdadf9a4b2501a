"""Compositional (quotient-remainder) tables initialised from trained full tables.

A pure transform over the table dict, like the low-rank transforms over params:
``qr_from_full(tables, full_layout, qr_layout) -> tables'``. Each quotient row
becomes the mean of the c full rows it stands for, and each remainder row the
identity of the operation (1 for ``mult``, 0 for ``add``), so every category
starts at its group's mean vector; fine-tuning then separates the categories
through the remainder rows. Columns the QR layout keeps whole copy their rows;
the ``first_order`` scalars are averaged like the quotient rows.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.embeddings import EmbeddingLayout


def _source_rows(spec, field: int, vocab: int) -> np.ndarray:
  """Rows of `field`'s ids 0..vocab-1 in a full layout's table `spec`."""
  return spec.offsets[spec.fields.index(field)] + np.arange(vocab, dtype=np.int64)


def qr_from_full(tables: Mapping[str, jax.Array], full_layout: EmbeddingLayout,
                 qr_layout: EmbeddingLayout) -> dict[str, jax.Array]:
  """The tables of `qr_layout` that start from the trained `tables` of `full_layout`.

  Args:
    tables: ``{"embedding": ..., ["first_order": ...]}`` of a ``full`` layout.
    full_layout: their layout.
    qr_layout: a ``qr`` layout (``mult`` or ``add``) over the same vocabularies and dim.

  Returns:
    The QR layout's tables (quotient rows = group means, remainder rows = identity).

  Raises:
    ValueError: layouts that do not match as described.
  """
  full, qr = full_layout.config, qr_layout.config
  if full.kind != "full" or qr.kind != "qr":
    raise ValueError(f"qr_from_full maps a 'full' layout to a 'qr' one, got {full.kind!r}"
                     f" -> {qr.kind!r}")
  if qr.qr_operation == "concat":
    raise ValueError("qr_from_full needs qr_operation 'mult' or 'add' ('concat' splits the"
                     " columns, so no quotient row can hold a group's mean vector)")
  if full_layout.vocab_sizes != qr_layout.vocab_sizes or full.dim != qr.dim:
    raise ValueError("qr_from_full needs the same vocabularies and embedding dim")
  if qr.first_order and not full.first_order:
    raise ValueError("the qr layout has first-order rows but the full layout has none")
  sources = {spec.name: spec for spec in full_layout.tables}
  identity = 1.0 if qr.qr_operation == "mult" else 0.0
  out = {}
  for spec in qr_layout.tables:
    if spec.name == "remainder":
      out[spec.name] = jnp.full((spec.num_rows, spec.width), identity, jnp.float32)
      continue
    source_name = "first_order" if spec.name == "first_order" else "embedding"
    source = sources[source_name]
    src, dst = [], []
    for k, field in enumerate(spec.fields):
      vocab = full_layout.vocab_sizes[field]
      ids = np.arange(vocab, dtype=np.int64)
      rows = ids // spec.divisors[k]
      if spec.moduli is not None:
        rows = rows % spec.moduli[k]
      src.append(_source_rows(source, field, vocab))
      dst.append(spec.offsets[k] + rows)
    src, dst = np.concatenate(src), jnp.asarray(np.concatenate(dst), jnp.int32)
    values = jnp.asarray(tables[source_name])[jnp.asarray(src)]
    sums = jax.ops.segment_sum(values, dst, num_segments=spec.num_rows)
    counts = jax.ops.segment_sum(jnp.ones(len(src), jnp.float32), dst,
                                 num_segments=spec.num_rows)
    out[spec.name] = sums / jnp.maximum(counts, 1.0)[:, None]
  return out
