"""Parameter counts and bytes of a model configuration from shapes alone, and table-size presets.

`model_size` initialises a `CTRModel` under `jax.eval_shape`, so nothing is
allocated: counting a Terabyte-sized model (hundreds of millions of rows) is
instant. `experiments.model_size` is its command line.

Table sizes of the Criteo Terabyte dataset are those listed by the DLRM
reference (facebookresearch/dlrm, tools/visualize.py, the ``ln_emb`` arrays for
``--max-ind-range`` 10M and 40M); the 40M ones are also MLPerf DLRM's
``--vocab_sizes_embed`` and HugeCTR's ``slot_size_array``. Kaggle's are
`jaxrec.data.synthetic.KAGGLE_CARDINALITIES`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from jaxrec.data.synthetic import KAGGLE_CARDINALITIES
from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.models.ctr_model import CTRModel
from jaxrec.models.registry import ModelConfig

TERABYTE_10M_CARDINALITIES = (
    9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10,
    2208, 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36)
TERABYTE_40M_CARDINALITIES = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A dataset's table sizes with the DLRM reference's architecture for it."""

  cardinalities: tuple[int, ...]
  dim: int
  bottom_mlp: tuple[int, ...]
  top_mlp: tuple[int, ...]


PRESETS = {
    # bench/dlrm_s_criteo_kaggle.sh
    "kaggle": Preset(KAGGLE_CARDINALITIES, 16, (512, 256, 64, 16), (512, 256, 1)),
    # bench/dlrm_s_criteo_terabyte.sh (--max-ind-range=10000000)
    "terabyte": Preset(TERABYTE_10M_CARDINALITIES, 64, (512, 256, 64), (512, 512, 256, 1)),
    # MLPerf training (--max-ind-range=40000000)
    "terabyte_mlperf": Preset(TERABYTE_40M_CARDINALITIES, 128, (512, 256, 128),
                              (1024, 1024, 512, 256, 1)),
}


def model_size(model_config: ModelConfig, embedding_config: EmbeddingConfig,
               cardinalities: Sequence[int], num_dense: int = 13) -> dict:
  """Counts of a model, from `jax.eval_shape` of its init.

  Returns:
    {"table_shapes", "projection_shapes", "embedding_param_count" (tables and
    mixed_dim projections), "dense_param_count", "param_count", "param_bytes"}.
  """
  model = CTRModel.create(model_config, embedding_config, tuple(cardinalities), num_dense)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  leaves = jax.tree_util.tree_leaves(shapes)
  total = int(sum(np.prod(x.shape) for x in leaves))
  embedding = model.layout.param_count()
  return {
      "table_shapes": {k: tuple(v.shape) for k, v in shapes["tables"].items()},
      "projection_shapes": model.layout.projection_shapes(),
      "embedding_param_count": embedding,
      "dense_param_count": total - embedding,
      "param_count": total,
      "param_bytes": int(sum(np.prod(x.shape) * x.dtype.itemsize for x in leaves)),
  }


def equal_memory_hash_buckets(cardinalities: Sequence[int], target_rows: int) -> int:
  """Smallest bucket count B with sum(min(n, B)) >= target_rows (bisection)."""
  lo, hi = 1, max(cardinalities)
  while lo < hi:
    mid = (lo + hi) // 2
    if sum(min(n, mid) for n in cardinalities) >= target_rows:
      hi = mid
    else:
      lo = mid + 1
  return lo


def comparison_configs(base: EmbeddingConfig, cardinalities: Sequence[int]
                       ) -> list[tuple[str, EmbeddingConfig]]:
  """(label, config) of the standard comparison: full, hash, qr c = 2/4/8 x ops, mixed_dim.

  hash gets the bucket count whose tables hold as many rows as qr c = 4 (mult),
  so the two are compared at (nearly) equal memory.
  """
  replace = lambda **kw: dataclasses.replace(base, **kw)
  qr4 = EmbeddingLayout(replace(kind="qr", qr_collisions=4, qr_operation="mult"),
                        tuple(cardinalities))
  buckets = equal_memory_hash_buckets(cardinalities, qr4.table_param_count() // base.dim)
  configs = [("full", replace(kind="full")),
             (f"hash B={buckets:,}", replace(kind="hash", hash_buckets=buckets))]
  for c in (2, 4, 8):
    for op in ("mult", "add", "concat"):
      configs.append((f"qr c={c} {op}", replace(kind="qr", qr_collisions=c, qr_operation=op)))
  configs.append((f"mixed_dim alpha={base.md_temperature:g}", replace(kind="mixed_dim")))
  return configs
