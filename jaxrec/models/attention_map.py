"""Inspectable attention: the mean AFM attention weight per field pair over a dataset.

`mean_attention` runs a trained model over every row of a dataset (padded
rows of the last batch masked out), reads the attention weights the AFM layer
sows (``intermediates/.../attention_weights`` [B, P]) and averages them per pair on
device; `save_heatmap` draws the symmetric field × field matrix with field
names as a PNG.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data import loader
from jaxrec.data.dataset import CTRDataset
from jaxrec.layers import embeddings
from jaxrec.layers.afm import upper_pairs
from jaxrec.models.ctr_model import CTRModel


@dataclasses.dataclass(frozen=True)
class AttentionMap:
  """Mean attention per pair.

  Attributes:
    names: field names, in the model's field order.
    pair_weights: float64 [P], mean weight of pair (i, j), i < j, row-major.
    matrix: float64 [F, F], symmetric, NaN on the diagonal.
    num_examples: rows averaged over.
  """

  names: tuple[str, ...]
  pair_weights: np.ndarray
  matrix: np.ndarray
  num_examples: int

  def top_pairs(self, n: int = 10) -> list[tuple[str, str, float]]:
    """The n pairs with the largest mean weight, largest first."""
    i, j = upper_pairs(len(self.names))
    order = np.argsort(-self.pair_weights)[:n]
    return [(self.names[i[p]], self.names[j[p]], float(self.pair_weights[p])) for p in order]


def _sown_attention(intermediates: Any) -> jax.Array:
  found = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
           if any(getattr(k, "key", None) == "attention_weights" for k in path)]
  if len(found) != 1:
    raise ValueError(f"expected one AFM attention layer in the model, found {len(found)}"
                     " (models with learned attention: afm, afm_classic)")
  return found[0]


def make_attention_fn(model: CTRModel):
  """Jitted `(params, tables, dense, cat, mask) -> (Σ_b mask_b a_b [P], Σ mask)`."""

  @jax.jit
  def attention_sums(params, tables, dense, cat, mask):
    rows = model.layout.pool(embeddings.lookup(tables, model.layout.row_ids(cat)), cat)
    _, state = model.network.apply({"params": params}, dense, rows, train=False,
                                   mutable=["intermediates"])
    weights = _sown_attention(state.get("intermediates", {}))  # [B, P]
    return jnp.einsum("bp,b->p", weights, mask), jnp.sum(mask)

  return attention_sums


def mean_attention(model: CTRModel, variables: dict, dataset: CTRDataset,
                   batch_size: int = 8192) -> AttentionMap:
  """Mean attention weight per field pair over every row of `dataset`."""
  if len(dataset) == 0:
    raise ValueError("mean_attention needs a non-empty dataset")
  attention_sums = make_attention_fn(model)
  total, count = None, None
  for batch in loader.prefetch_to_device(loader.iterate_batches(dataset, batch_size)):
    s, c = attention_sums(variables["params"], variables["tables"], batch["dense"],
                          batch["cat"], batch["mask"])
    total, count = (s, c) if total is None else (total + s, count + c)  # on device
  pair_weights = np.asarray(jax.device_get(total), np.float64) / float(count)
  names = tuple(model.network.field_names(dataset.dense_names, dataset.sparse_names))
  num_fields = len(names)
  if num_fields * (num_fields - 1) // 2 != pair_weights.shape[0]:
    raise ValueError(f"{pair_weights.shape[0]} pairs do not match {num_fields} field names")
  matrix = np.full((num_fields, num_fields), np.nan)
  i, j = upper_pairs(num_fields)
  matrix[i, j] = pair_weights
  matrix[j, i] = pair_weights
  return AttentionMap(names, pair_weights, matrix, len(dataset))


def save_heatmap(attention: AttentionMap, path: str, title: str = "") -> None:
  """Writes the field × field mean-attention matrix as a PNG with field names."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  n = len(attention.names)
  size = max(6.0, 0.28 * n + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(np.ma.masked_invalid(attention.matrix), cmap="viridis")
  ax.set_xticks(range(n), attention.names, rotation=90, fontsize=7)
  ax.set_yticks(range(n), attention.names, fontsize=7)
  uniform = 1.0 / (n * (n - 1) / 2)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label=f"mean attention weight (uniform = {uniform:.2e})")
  ax.set_title(title or f"mean attention per field pair over {attention.num_examples:,} rows",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
