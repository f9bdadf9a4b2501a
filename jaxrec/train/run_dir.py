"""A run directory as a usable model: what rebuilds the network and encodes its inputs.

Besides ``config.json``, ``history.jsonl``, ``metrics.json`` and ``checkpoints/``,
a run directory holds:

* ``model_spec.json`` (`ModelSpec`): model and embedding configs, per-column
  vocabulary sizes and the number of dense features: everything needed to
  rebuild the network without the training data.
* ``vocab.npz`` (`jaxrec.data.criteo.Vocabulary`): the training
  vocabularies, when the run read raw rows, so that new raw rows are
  encoded exactly as the training rows were.
* ``schema.json`` (`jaxrec.data.schema.Schema`): the raw rows' columns and
  their encoding (absent in runs from before schemas: Criteo's).

`load_run(workdir)` rebuilds the `CTRModel` and restores ``{"params",
"tables"}`` from the checkpoint of the model selected on validation (else the
latest). The restored parameter tree decides the
structure (e.g. a low-rank ``Dense`` holds ``u``, ``v`` instead of a kernel), so
transformed models load with no extra bookkeeping.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from jaxrec.data import schema as schema_lib
from jaxrec.data.criteo import Vocabulary
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.ctr_model import CTRModel, Variables
from jaxrec.models.registry import ModelConfig
from jaxrec.train import faults
from jaxrec.train.checkpoint import Checkpointer, CheckpointError

MODEL_SPEC_FILE = "model_spec.json"
VOCAB_FILE = "vocab.npz"
SCHEMA_FILE = "schema.json"
CHECKPOINT_DIR = "checkpoints"


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples frozen configs hold (hashable, static under jit)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def dataclass_from_json(cls, data: dict, where: str):
  """`cls(**data)` with lists made tuples; unknown keys are an error naming `where`."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}"
                     " (written by a newer jaxrec?)")
  return cls(**{k: _tuples(v) for k, v in data.items()})


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything that rebuilds a trained network (not how it was trained)."""

  model: ModelConfig
  embedding: EmbeddingConfig
  vocab_sizes: tuple[int, ...]
  num_dense: int = 13
  negative_sampling_rate: float = 1.0  # inference logits are corrected for it
  bag_lengths: tuple[int, ...] | None = None
  poolings: tuple[str, ...] | None = None

  def build(self) -> CTRModel:
    return CTRModel.create(self.model, self.embedding, self.vocab_sizes, self.num_dense,
                           self.negative_sampling_rate, bag_lengths=self.bag_lengths,
                           poolings=self.poolings)

  def to_json(self) -> dict:
    model = dataclasses.asdict(self.model)
    model.pop("cpu_kernels", None)  # how this process runs it, not what the network is
    out = {"model": model,
           "embedding": dataclasses.asdict(self.embedding),
           "vocab_sizes": list(self.vocab_sizes), "num_dense": self.num_dense,
           "negative_sampling_rate": self.negative_sampling_rate}
    if self.bag_lengths is not None:  # multi-hot fields (absent otherwise: older specs read)
      out.update(bag_lengths=list(self.bag_lengths),
                 poolings=None if self.poolings is None else list(self.poolings))
    return out

  @classmethod
  def from_json(cls, data: dict, where: str = MODEL_SPEC_FILE) -> "ModelSpec":
    return cls(model=dataclass_from_json(ModelConfig, data["model"], where),
               embedding=dataclass_from_json(EmbeddingConfig, data["embedding"], where),
               vocab_sizes=tuple(int(v) for v in data["vocab_sizes"]),
               num_dense=int(data.get("num_dense", 13)),
               negative_sampling_rate=float(data.get("negative_sampling_rate", 1.0)),
               bag_lengths=_tuples(data.get("bag_lengths")), poolings=_tuples(data.get("poolings")))


def write_model_files(workdir: str, spec: ModelSpec, vocabulary: Vocabulary | None = None,
                      schema: schema_lib.Schema | None = None) -> None:
  """Writes model_spec.json (and vocab.npz, schema.json when given) into `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, MODEL_SPEC_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(spec.to_json(), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)
  if vocabulary is not None:
    tmp = os.path.join(workdir, "vocab.tmp.npz")
    vocabulary.save(tmp)
    os.replace(tmp, os.path.join(workdir, VOCAB_FILE))
  if schema is not None:
    path = os.path.join(workdir, SCHEMA_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump(schema.to_json(), f, indent=2)
      f.write("\n")
    os.replace(path + ".tmp", path)


@dataclasses.dataclass(frozen=True)
class Run:
  """A restored run: the model, its variables, and how to encode raw rows.

  Attributes:
    model: the rebuilt `CTRModel`.
    variables: ``{"params": ..., "tables": ...}`` on the default device.
    spec: the `ModelSpec` it was built from.
    vocabulary: training vocabularies, or None (synthetic data, imports).
    schema: the raw rows' columns (`load_schema`), or None without a vocabulary.
    step: the checkpoint's step.
    workdir: the run directory.
  """

  model: CTRModel
  variables: Variables
  spec: ModelSpec
  vocabulary: Vocabulary | None
  step: int
  workdir: str
  schema: schema_lib.Schema | None = None


def load_spec(workdir: str) -> ModelSpec:
  path = os.path.join(workdir, MODEL_SPEC_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{workdir}: no {MODEL_SPEC_FILE}; expected a run directory written by"
        " experiments.train or experiments.import_dlrm")
  with open(path) as f:
    return ModelSpec.from_json(json.load(f), where=path)


def _verified_selected_step(checkpointer: Checkpointer) -> int | None:
  """The selected step if it verifies; else None (the newest verified one is used)."""
  selected = checkpointer.selected_step()
  if selected is None:
    return None
  try:
    checkpointer.verify(selected)
    return selected
  except CheckpointError as e:
    if selected != checkpointer.latest_step():  # else restoring the latest names it
      logging.warning("%s; the model selected on validation is damaged, using the newest"
                      " checkpoint that verifies", e)
    return None


def load_run(workdir: str, step: int | None = None) -> Run:
  """Rebuilds the model of run `workdir` and restores a checkpoint: `step`, or by default
  the model selected on validation (the one metrics.json reports), else the latest.

  The checkpoint is verified first (`jaxrec.train.checkpoint`). Without `step`,
  a selected model that does not verify is logged and the newest checkpoint
  that verifies is used instead (each newer damaged one is logged too).

  Raises:
    FileNotFoundError: not a run directory, or no checkpoint in it.
    checkpoint.CheckpointError: `step` (or every step) is damaged or unreadable.
    faults.NonFiniteParamsError: the parameters hold NaN or Inf.
  """
  spec = load_spec(workdir)
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    raise FileNotFoundError(f"{workdir}: no {CHECKPOINT_DIR}/ directory")
  checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
  try:
    if step is None:
      step = _verified_selected_step(checkpointer)
    state, meta = checkpointer.restore(step=step)
  finally:
    checkpointer.close()
  model = spec.build()
  # A run trained on a device mesh saves tables padded to a multiple of its model axis.
  rows = {name: shape[0] for name, shape in model.layout.table_shapes().items()}
  tables = {name: t[:rows[name]] for name, t in state["tables"].items()}
  variables = {"params": state["params"], "tables": tables}
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  faults.require_finite_params(variables, f"{workdir} (checkpoint step {meta['step']})")
  vocab_path = os.path.join(workdir, VOCAB_FILE)
  vocabulary = Vocabulary.load(vocab_path) if os.path.exists(vocab_path) else None
  return Run(model=model, variables=variables, spec=spec, vocabulary=vocabulary,
             step=int(meta["step"]), workdir=workdir,
             schema=load_schema(workdir) if vocabulary is not None else None)


def load_schema(workdir: str) -> schema_lib.Schema:
  """The raw-row schema of a run (Criteo's for runs from before schemas)."""
  path = os.path.join(workdir, SCHEMA_FILE)
  if not os.path.exists(path):
    return schema_lib.criteo()
  with open(path) as f:
    return schema_lib.Schema.from_json(json.load(f), where=path)
