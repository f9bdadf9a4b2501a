"""Exports a run's inference function with ``jax.export`` into a serving artifact.

The exported function is ``(weights, dense, cat) -> probabilities`` in float32
with a symbolic batch dimension, so one artifact serves any batch size (each
new size compiles once where it runs). Weights are arguments rather than
constants baked into the StableHLO: the program stays a few kilobytes however
large the tables are, and the weights are stored beside it as plain arrays.
The artifact layout is described in `jaxrec.serving.artifact`; weights may be
stored quantized (`jaxrec.serving.quantize`), dequantized inside the function.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.serving import artifact
from jaxrec.serving.quantize import ROW_LAYOUTS, Packed, QuantizeConfig, pack
from jaxrec.train.run_dir import Run

DEFAULT_PLATFORMS = ("cpu", "cuda")


def export_function(run: Run, platforms: Sequence[str] = DEFAULT_PLATFORMS,
                    batch_size: int | None = None,
                    quantize: QuantizeConfig = QuantizeConfig()
                    ) -> tuple[jax.export.Exported, Packed]:
  """(the Exported inference function, its packed weights).

  The function's first argument is `Packed.resident(Packed.arrays)`: the tables
  as stored, the network params in float32 (`export_prepare` dequantizes them).

  Args:
    run: a loaded run (`jaxrec.train.run_dir.load_run`).
    platforms: lowering platforms ("cpu", "cuda", "rocm", "tpu").
    batch_size: a fixed batch size, or None for a symbolic one.
    quantize: how the weights are stored (float32 as trained by default).
  """
  # Artifacts hold only standard ops: the fused CPU kernels are process-local
  # custom calls that a loader elsewhere would not have.
  spec = run.spec
  model = dataclasses.replace(
      spec, model=dataclasses.replace(spec.model, cpu_kernels=False)).build()
  packed = pack(run.variables, quantize)

  n = packed.num_table_arrays

  def serve(resident, dense, cat):
    rows = packed.rows(resident[:n], model.layout.row_ids(cat))
    params = jax.tree_util.tree_unflatten(packed.params_treedef, resident[n:])
    logits = model.apply_rows(params, dense, rows, cat=cat, train=False)
    return jax.nn.sigmoid(logits.astype(jnp.float32))

  batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else batch_size
  resident_specs = jax.eval_shape(packed.resident, _specs(packed.arrays))
  exported = jax.export.export(jax.jit(serve), platforms=tuple(platforms))(
      resident_specs,
      jax.ShapeDtypeStruct((batch, model.num_dense), jnp.float32),
      jax.ShapeDtypeStruct((batch, model.layout.num_slots), jnp.int32))
  return exported, packed


def _specs(arrays) -> list:
  return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in arrays]


def export_prepare(packed: Packed, platforms: Sequence[str] = DEFAULT_PLATFORMS
                   ) -> jax.export.Exported | None:
  """The Exported ``stored network params -> float32 leaves`` a loader runs once, or None when
  the params are stored as float32."""
  if packed.params_stored_as_float32:
    return None
  return jax.export.export(jax.jit(packed.float32_param_leaves), platforms=tuple(platforms))(
      _specs(packed.arrays[packed.num_table_arrays:]))


def export_run(run: Run, path: str, platforms: Sequence[str] = DEFAULT_PLATFORMS,
               batch_size: int | None = None,
               quantize: QuantizeConfig = QuantizeConfig()) -> dict:
  """Writes the serving artifact of `run` to `path`; returns its metadata."""
  exported, packed = export_function(run, platforms, batch_size, quantize)
  prepare = export_prepare(packed, platforms)
  leaves = packed.arrays
  serialized = exported.serialize()
  spec = run.spec
  meta = {
      "format": artifact.FORMAT,
      "num_weights": len(leaves),
      "num_dense": spec.num_dense,
      "vocab_sizes": list(spec.vocab_sizes),
      "sparse_names": list(run.schema.field_names) if run.schema is not None else
                      [f"C{j + 1}" for j in range(len(spec.vocab_sizes))],
      "schema": None if run.schema is None else run.schema.to_json(),
      "has_vocabulary": run.vocabulary is not None,
      "platforms": list(exported.platforms),
      "batch": "symbolic" if batch_size is None else batch_size,
      "output": "click probability, float32 [batch]",
      "dense_transform": "log(1 + max(x, 0)), missing -> 0 (jaxrec.data.criteo.transform_dense)",
      "model_spec": spec.to_json(),
      "source_run": os.path.abspath(run.workdir),
      "source_step": run.step,
      "jax_version": jax.__version__,
      "stablehlo_bytes": len(serialized),
      "quantization": {"tables": quantize.tables, "mlp": quantize.mlp,
                       "rows": ROW_LAYOUTS.get(quantize.tables, "float32")},
      "weight_bytes": packed.nbytes,
      "num_table_weights": packed.num_table_arrays,
  }
  arrays = {"exported": np.frombuffer(bytes(serialized), np.uint8)}
  if prepare is not None:
    arrays["prepare"] = np.frombuffer(bytes(prepare.serialize()), np.uint8)
  meta["prepare_stablehlo_bytes"] = 0 if prepare is None else len(arrays["prepare"])
  arrays["meta"] = artifact.pack_json(meta)
  arrays.update({artifact.weight_key(i): x for i, x in enumerate(leaves)})
  if run.vocabulary is not None:  # Vocabulary's own .npz format, nested
    buffer = io.BytesIO()
    run.vocabulary.save(buffer)
    arrays["vocabulary"] = np.frombuffer(buffer.getvalue(), np.uint8)
  tmp = path + ".tmp"
  artifact.write_npz(tmp, arrays)
  os.replace(tmp, path)
  return meta
