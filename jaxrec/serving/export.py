"""Exports a run's inference function with ``jax.export`` into a serving artifact.

The exported function is ``(weights, dense, cat) -> probabilities`` in float32
with a symbolic batch dimension, so one artifact serves any batch size (each
new size compiles once where it runs). Weights are arguments rather than
constants baked into the StableHLO: the program stays a few kilobytes however
large the tables are, and the weights are stored beside it as plain arrays.
The artifact layout is described in `jaxrec.serving.artifact`.
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
from jaxrec.train.run_dir import Run

DEFAULT_PLATFORMS = ("cpu", "cuda")


def export_function(run: Run, platforms: Sequence[str] = DEFAULT_PLATFORMS,
                    batch_size: int | None = None) -> tuple[jax.export.Exported, list]:
  """(the Exported inference function, its flat weight list).

  Args:
    run: a loaded run (`jaxrec.train.run_dir.load_run`).
    platforms: lowering platforms ("cpu", "cuda", "rocm", "tpu").
    batch_size: a fixed batch size, or None for a symbolic one.
  """
  # Artifacts hold only standard ops: the fused CPU kernels are process-local
  # custom calls that a loader elsewhere would not have.
  spec = run.spec
  model = dataclasses.replace(
      spec, model=dataclasses.replace(spec.model, cpu_kernels=False)).build()
  leaves, treedef = jax.tree_util.tree_flatten(run.variables)

  def serve(weights, dense, cat):
    variables = jax.tree_util.tree_unflatten(treedef, weights)
    logits = model.apply(variables, dense, cat, train=False)
    return jax.nn.sigmoid(logits.astype(jnp.float32))

  batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else batch_size
  weight_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
  exported = jax.export.export(jax.jit(serve), platforms=tuple(platforms))(
      weight_specs,
      jax.ShapeDtypeStruct((batch, model.num_dense), jnp.float32),
      jax.ShapeDtypeStruct((batch, model.layout.num_fields), jnp.int32))
  return exported, leaves


def export_run(run: Run, path: str, platforms: Sequence[str] = DEFAULT_PLATFORMS,
               batch_size: int | None = None) -> dict:
  """Writes the serving artifact of `run` to `path`; returns its metadata."""
  exported, leaves = export_function(run, platforms, batch_size)
  serialized = exported.serialize()
  spec = run.spec
  meta = {
      "format": artifact.FORMAT,
      "num_weights": len(leaves),
      "num_dense": spec.num_dense,
      "vocab_sizes": list(spec.vocab_sizes),
      "sparse_names": [f"C{j + 1}" for j in range(len(spec.vocab_sizes))],
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
  }
  arrays = {"meta": artifact.pack_json(meta),
            "exported": np.frombuffer(bytes(serialized), np.uint8)}
  arrays.update({artifact.weight_key(i): np.asarray(x) for i, x in enumerate(leaves)})
  if run.vocabulary is not None:  # Vocabulary's own .npz format, nested
    buffer = io.BytesIO()
    run.vocabulary.save(buffer)
    arrays["vocabulary"] = np.frombuffer(buffer.getvalue(), np.uint8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:  # a file object: np.savez does not append ".npz"
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return meta
