"""The serving artifact: an exported inference function with its weights and vocabularies.

One file (a numpy ``.npz`` zip; weights stored as they are, so they load
without inflating, the other members deflated) written by
`jaxrec.serving.export`:

* ``exported``: the ``jax.export`` serialization (StableHLO) of
  ``probabilities = f(weights, dense [B, num_dense] float32, cat [B, F] int32)``
  with a symbolic batch dimension B, lowered for one or more platforms;
* ``weights/00000``...: the model's variables: tables, then network params,
  float32 or quantized (`jaxrec.serving.quantize`); ``f`` takes the tables as
  stored (it dequantizes the rows it gathers) and the params in float32;
* ``prepare`` (format 2, when the params are stored quantized): the
  serialization of ``float32 params = g(stored params)``, which the loader
  runs once (the first ``meta["num_table_weights"]`` weights are the tables);
* ``vocabulary``: the training vocabularies (`jaxrec.data.criteo.Vocabulary`'s
  own ``.npz`` bytes), when the run had them: raw Criteo rows encode with them;
* ``meta``: JSON (format version, input sizes, vocabulary sizes, platforms,
  the model spec for reference, the quantization and its stored row layouts).

`ServingModel.load` runs it with jax and numpy alone: no jaxrec model code
(only `jaxrec.data.criteo`, to encode raw rows the way training did).
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from typing import Any, Mapping

import jax
import numpy as np

from jaxrec.data import criteo, tabular
from jaxrec.data import schema as schema_lib

FORMAT = "jaxrec-serving/2"
# Format 1 (no ``prepare``; its ``f`` took every weight as stored, quantized params included).
READABLE_FORMATS = ("jaxrec-serving/1", FORMAT)


def pack_json(obj: Any) -> np.ndarray:
  return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)


def weight_key(i: int) -> str:
  return f"weights/{i:05d}"


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """An ``.npz`` that `np.load` reads: weights stored, the other members deflated.

  Deflate level 1 halves the vocabularies (hashed int64 keys) at ~100 MB/s and
  inflates at ~250 MB/s when loading; weights are left as they are (quantized
  codes would shrink little and load slower).
  """
  with zipfile.ZipFile(path, "w", allowZip64=True) as z:
    for key, array in arrays.items():
      if key.startswith("weights/"):
        with z.open(key + ".npy", "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
      else:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
        z.writestr(key + ".npy", buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                   compresslevel=1)


@dataclasses.dataclass
class ServingModel:
  """A loaded artifact: `predict` encoded inputs, `encode` raw rows.

  Attributes:
    meta: the artifact's metadata.
    vocabulary: training vocabularies, or None.
  """

  meta: dict
  vocabulary: criteo.Vocabulary | None
  _weights: list
  _call: Any

  @classmethod
  def load(cls, path: str) -> "ServingModel":
    """Reads an artifact and places its weights on the default device."""
    with np.load(path, allow_pickle=False) as z:
      if "meta" not in z.files or "exported" not in z.files:
        raise ValueError(f"{path}: not a jaxrec serving artifact (no meta / exported)")
      meta = json.loads(z["meta"].tobytes())
      if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path}: artifact format {meta.get('format')!r}, this loader reads"
                         f" {', '.join(READABLE_FORMATS)}")
      exported = jax.export.deserialize(bytearray(z["exported"].tobytes()))
      prepare = None
      if "prepare" in z.files:
        prepare = jax.export.deserialize(bytearray(z["prepare"].tobytes()))
      weights = [jax.device_put(z[weight_key(i)]) for i in range(meta["num_weights"])]
      vocabulary = None
      if meta["has_vocabulary"]:
        vocabulary = criteo.Vocabulary.load(io.BytesIO(z["vocabulary"].tobytes()))
    platform = jax.devices()[0].platform
    platform = "cuda" if platform == "gpu" else platform
    if platform not in exported.platforms:
      raise ValueError(f"{path}: exported for {exported.platforms}, this machine runs {platform};"
                       " re-export with --platforms including it")
    if prepare is not None:  # quantized params -> float32, once
      n = meta["num_table_weights"]
      weights = [*weights[:n], *jax.jit(prepare.call)(weights[n:])]
    return cls(meta=meta, vocabulary=vocabulary, _weights=weights,
               _call=jax.jit(exported.call))

  @property
  def vocab_sizes(self) -> tuple[int, ...]:
    return tuple(self.meta["vocab_sizes"])

  @property
  def schema(self) -> schema_lib.Schema:
    """The raw rows' columns (Criteo's for artifacts from before schemas)."""
    data = self.meta.get("schema")
    return schema_lib.criteo() if data is None else schema_lib.Schema.from_json(data)

  @property
  def bag_lengths(self) -> tuple[int, ...]:
    """Slots of each field in ``cat`` (one each without multi-hot fields)."""
    bags = self.meta.get("model_spec", {}).get("bag_lengths")
    return tuple(bags) if bags else (1,) * len(self.vocab_sizes)

  def check_inputs(self, dense: np.ndarray, cat: np.ndarray) -> None:
    """Shapes, dtypes and id ranges (an out-of-range id would gather the wrong row).

    Multi-hot slots may hold `schema.PAD_ID` (unused).
    """
    n, f = len(dense), sum(self.bag_lengths)
    if dense.shape != (n, self.meta["num_dense"]) or cat.shape != (n, f):
      raise ValueError(f"expected dense [B, {self.meta['num_dense']}] and cat [B, {f}], got"
                       f" {dense.shape} and {cat.shape}")
    sizes = np.repeat(np.asarray(self.vocab_sizes), self.bag_lengths)
    in_bag = np.repeat(np.asarray(self.bag_lengths) > 1, self.bag_lengths)
    bad = ((cat < 0) & ~(in_bag & (cat == schema_lib.PAD_ID))) | (cat >= sizes)
    if bad.any():
      row, col = map(int, np.argwhere(bad)[0])
      raise ValueError(f"categorical id {int(cat[row, col])} out of range"
                       f" [0, {sizes[col]}) in row {row}, column {col}")

  def predict_async(self, dense: np.ndarray, cat: np.ndarray) -> jax.Array:
    """Click probabilities [B] as a device array (not waited for)."""
    return self._call(self._weights, np.asarray(dense, np.float32), np.asarray(cat, np.int32))

  def predict(self, dense: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """Click probabilities [B] (float32) for encoded inputs."""
    dense, cat = np.asarray(dense, np.float32), np.asarray(cat, np.int32)
    self.check_inputs(dense, cat)
    return np.asarray(self.predict_async(dense, cat))

  def encode(self, raw: criteo.RawBlock) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows -> (dense float32, ids int32) with the training vocabularies."""
    if self.vocabulary is None:
      raise ValueError("this artifact has no vocabularies (its run was trained on encoded or"
                       " synthetic data, or imported): it scores encoded ids only")
    return tabular.encode_block(raw, self.vocabulary, self.schema)
