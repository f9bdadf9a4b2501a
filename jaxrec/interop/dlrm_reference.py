"""Import models trained by the PyTorch DLRM reference (facebookresearch/dlrm, dlrm_s_pytorch.py).

The reference's ``DLRM_Net`` state_dict holds, for T categorical features:

* ``emb_l.{k}.weight [n_k, m]``: one ``EmbeddingBag`` per feature; or, with
  ``--qr-flag``, ``emb_l.{k}.weight_q [ceil(n_k / c), m]`` and
  ``emb_l.{k}.weight_r [c, m]`` (quotient-remainder, row i = q[i / c] (op) r[i % c]);
  or, with ``--md-flag``, ``emb_l.{k}.embs.weight [n_k, m_k]`` and an optional
  ``emb_l.{k}.proj.weight [m, m_k]`` (mixed dimensions, projected to m).
* ``v_W_l.{k} [n_k]`` with ``--weighted-pooling=learned`` (row i scaled by v[i]).
* ``bot_l.{2i}.weight [out, in]`` / ``.bias``, and ``top_l.{2i}...``: torch
  ``Sequential`` MLPs alternating Linear and activation, so the Linear layers
  sit at even indices. Every bottom layer is followed by ReLU (the reference
  passes ``sigmoid_bot=-1``); the top's hidden layers by ReLU and its last by
  a sigmoid (``sigmoid_top = len(ln_top) - 2``).

Forward pass (``sequential_forward``): x = bot(dense); per-feature rows; for
``dot``, T = [x, e_1..e_T] stacked, Z = T T^T, the pairs (i, j) with j < i
(j <= i with ``--arch-interaction-itself``) in row-major order of i, then
[x, Z_pairs]; for ``cat``, [x, e_1..e_T]; p = top(.). jaxrec's DLRM is the
same network returning the logit before the sigmoid, so an imported model
gives the reference's probabilities as ``sigmoid(logit)``.

Mapping: a torch ``Linear`` weight ``[out, in]`` becomes a Flax ``Dense``
kernel ``[in, out]`` (``weight.T``), layer i of ``bot_l``/``top_l`` becomes
``bottom/layers_i`` / ``top/layers_i``. Tables are stacked in feature order
into jaxrec's one ``embedding`` array with per-feature offsets; compressed
tables (QR, mixed-dimension, learned pooling weights) are materialised to the
full rows they compute, so the imported model is a plain ``full`` DLRM whose
ids are the reference's ids (no out-of-vocabulary shift).

`reference_forward` re-implements the reference forward in plain numpy from
the state_dict itself (not from the converted params): it is the independent
side of the parity check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.train import run_dir, sparse
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.loop import TrainConfig
from jaxrec.train.run_dir import ModelSpec
from jaxrec.train.step import TrainState, dense_optimizer

QR_OPERATIONS = ("mult", "add", "concat")

_EMB = re.compile(r"^emb_l\.(\d+)\.(weight|weight_q|weight_r|embs\.weight|proj\.weight)$")
_POOL = re.compile(r"^v_W_l\.(\d+)$")
_MLP = re.compile(r"^(bot_l|top_l)\.(\d+)\.(weight|bias)$")


class ReferenceCheckpointError(ValueError):
  """A state_dict that is not a DLRM reference model jaxrec can import."""


@dataclasses.dataclass(frozen=True)
class ImportOptions:
  """What a reference state_dict does not record.

  Attributes:
    interaction: "dot" or "cat" (``--arch-interaction-op``); None infers it
      from the top MLP's input width.
    self_interaction: ``--arch-interaction-itself``; None infers it.
    qr_operation: ``--qr-operation`` of QR tables (the reference's default
      is "mult").
    table_sizes: rows of each table (``--arch-embedding-size`` / the
      preprocessing counts). Needed only to trim QR tables, whose state_dict
      records ceil(n / c) quotient rows, not n (unless learned pooling weights
      give n); None keeps ceil(n / c) * c rows (ids beyond n never occur, so
      the extra rows change nothing).
  """

  interaction: str | None = None
  self_interaction: bool | None = None
  qr_operation: str = "mult"
  table_sizes: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TableInfo:
  """How one reference table was stored (for the import report)."""

  kind: str  # "full", "qr", "md"
  rows: int
  stored_params: int


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops a ``module.`` prefix (DataParallel / DDP wrappers)."""
  out = {}
  for key, value in state_dict.items():
    out[key[len("module."):] if key.startswith("module.") else key] = np.asarray(value)
  return out


def _mlp_layers(sd: Mapping[str, np.ndarray], name: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """[(weight [out, in], bias [out])] of a reference Sequential, in order."""
  index = {}
  for key in sd:
    match = _MLP.match(key)
    if match and match.group(1) == name:
      index.setdefault(int(match.group(2)), {})[match.group(3)] = sd[key]
  if not index:
    raise ReferenceCheckpointError(f"no {name}.*.weight entries: not a DLRM reference state_dict")
  positions = sorted(index)
  if positions != list(range(0, 2 * len(positions), 2)):
    raise ReferenceCheckpointError(
        f"{name} Linear layers at Sequential positions {positions}; expected 0, 2, 4, ..."
        " (Linear and activation alternating)")
  layers = []
  for pos in positions:
    entry = index[pos]
    if set(entry) != {"weight", "bias"}:
      raise ReferenceCheckpointError(f"{name}.{pos}: needs weight and bias, found {sorted(entry)}")
    w, b = entry["weight"], entry["bias"]
    if w.ndim != 2 or b.shape != (w.shape[0],):
      raise ReferenceCheckpointError(
          f"{name}.{pos}: weight {w.shape} and bias {b.shape} are not a Linear layer")
    if layers and layers[-1][0].shape[0] != w.shape[1]:
      raise ReferenceCheckpointError(
          f"{name}.{pos}: input width {w.shape[1]} != previous layer's output"
          f" {layers[-1][0].shape[0]}")
    layers.append((w.astype(np.float32), b.astype(np.float32)))
  return layers


def qr_rows(weight_q: np.ndarray, weight_r: np.ndarray, num_rows: int,
            operation: str) -> np.ndarray:
  """Materialises the rows a reference QREmbeddingBag computes for ids 0..num_rows-1.

  The reference computes the quotient as ``(ids / c).long()``: true division
  in float32, then truncation. It is reproduced in float32 here so that very
  large ids map to the same quotient row as in the reference.
  """
  c = weight_r.shape[0]
  ids = np.arange(num_rows, dtype=np.int64)
  quotient = (ids.astype(np.float32) / np.float32(c)).astype(np.int64)
  remainder = ids % c
  if quotient.max(initial=0) >= weight_q.shape[0]:
    raise ReferenceCheckpointError(
        f"QR table with {weight_q.shape[0]} quotient rows cannot hold {num_rows} ids")
  q, r = weight_q[quotient], weight_r[remainder]
  if operation == "mult":
    return q * r
  if operation == "add":
    return q + r
  if operation == "concat":
    return np.concatenate([q, r], axis=1)
  raise ReferenceCheckpointError(f"unknown qr_operation {operation!r}; choose from {QR_OPERATIONS}")


def _tables(sd: Mapping[str, np.ndarray], options: ImportOptions
            ) -> tuple[list[np.ndarray], list[TableInfo]]:
  """Each feature's full table [n_k, m] (compressed ones materialised), in feature order."""
  entries: dict[int, dict[str, np.ndarray]] = {}
  for key in sd:
    match = _EMB.match(key)
    if match:
      entries.setdefault(int(match.group(1)), {})[match.group(2)] = sd[key]
  if not entries:
    raise ReferenceCheckpointError("no emb_l.* entries: not a DLRM reference state_dict")
  if sorted(entries) != list(range(len(entries))):
    raise ReferenceCheckpointError(f"emb_l indices {sorted(entries)} are not 0..{len(entries) - 1}"
                                   " (a distributed shard? import the whole model)")
  if options.table_sizes is not None and len(options.table_sizes) != len(entries):
    raise ReferenceCheckpointError(f"table_sizes has {len(options.table_sizes)} entries but the"
                                   f" checkpoint has {len(entries)} tables")
  tables, infos = [], []
  for k in range(len(entries)):
    entry = entries[k]
    if set(entry) == {"weight"}:
      rows, kind = entry["weight"], "full"
    elif set(entry) == {"weight_q", "weight_r"}:
      q, r = entry["weight_q"], entry["weight_r"]
      n = q.shape[0] * r.shape[0]
      if f"v_W_l.{k}" in sd:  # learned pooling weights have exactly n entries
        n = sd[f"v_W_l.{k}"].shape[0]
      if options.table_sizes is not None:
        n = int(options.table_sizes[k])
      if options.table_sizes is not None or f"v_W_l.{k}" in sd:
        if not (q.shape[0] - 1) * r.shape[0] < n <= q.shape[0] * r.shape[0]:
          raise ReferenceCheckpointError(
              f"emb_l.{k}: {n} rows do not fit a QR table of {q.shape[0]} quotient rows"
              f" and {r.shape[0]} collisions")
      rows, kind = qr_rows(q, r, n, options.qr_operation), "qr"
    elif set(entry) in ({"embs.weight"}, {"embs.weight", "proj.weight"}):
      rows, kind = entry["embs.weight"], "md"
      if "proj.weight" in entry:
        rows = rows @ entry["proj.weight"].T  # torch Linear without bias
    else:
      raise ReferenceCheckpointError(f"emb_l.{k}: unrecognised entries {sorted(entry)}")
    pool = sd.get(f"v_W_l.{k}")
    if pool is not None:
      if pool.shape != (rows.shape[0],):
        raise ReferenceCheckpointError(
            f"v_W_l.{k}: shape {pool.shape}, expected ({rows.shape[0]},)")
      rows = rows * pool[:, None]
    if options.table_sizes is not None and kind != "qr" and rows.shape[0] != options.table_sizes[k]:
      raise ReferenceCheckpointError(f"emb_l.{k}: {rows.shape[0]} rows but table_sizes says"
                                     f" {options.table_sizes[k]}")
    tables.append(np.ascontiguousarray(rows, dtype=np.float32))
    infos.append(TableInfo(kind, rows.shape[0], int(sum(v.size for v in entry.values()))))
  dims = sorted({t.shape[1] for t in tables})
  if len(dims) != 1:
    raise ReferenceCheckpointError(f"tables have different widths {dims}; DLRM needs one width")
  return tables, infos


def _interaction_width(interaction: str, self_interaction: bool, num_tables: int,
                       bottom_out: int, dim: int) -> int:
  if interaction == "cat":
    return bottom_out + num_tables * dim
  n = num_tables + 1
  return bottom_out + (n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2)


def _resolve_interaction(options: ImportOptions, num_tables: int, bottom_out: int, dim: int,
                         top_in: int) -> tuple[str, bool]:
  candidates = [("dot", False), ("dot", True), ("cat", False)]
  if options.interaction is not None:
    candidates = [c for c in candidates if c[0] == options.interaction]
  if options.self_interaction is not None:
    candidates = [c for c in candidates if c[0] == "cat" or c[1] == options.self_interaction]
  fits = [c for c in candidates
          if _interaction_width(*c, num_tables, bottom_out, dim) == top_in]
  if len(fits) == 1:
    return fits[0]
  described = ", ".join(f"{i}{' (itself)' if s else ''}:"
                        f" {_interaction_width(i, s, num_tables, bottom_out, dim)}"
                        for i, s in candidates)
  if not fits:
    raise ReferenceCheckpointError(
        f"the top MLP takes {top_in} inputs, which matches no interaction of {num_tables}"
        f" tables of width {dim} and a bottom MLP ending in {bottom_out} ({described})")
  raise ReferenceCheckpointError(f"ambiguous interaction ({described}); pass it explicitly")


@dataclasses.dataclass(frozen=True)
class ImportedModel:
  """A converted reference model.

  Attributes:
    spec: the jaxrec `ModelSpec` (a ``full`` DLRM).
    variables: ``{"params": {"bottom": ..., "top": ...}, "tables": {"embedding": ...}}``
      as numpy float32 arrays.
    tables: how each reference table was stored.
  """

  spec: ModelSpec
  variables: dict
  tables: tuple[TableInfo, ...]


def import_state_dict(state_dict: Mapping[str, np.ndarray],
                      options: ImportOptions = ImportOptions()) -> ImportedModel:
  """Maps a reference ``DLRM_Net.state_dict()`` (as numpy arrays) to jaxrec's DLRM.

  Raises:
    ReferenceCheckpointError: naming the entry that does not fit.
  """
  if options.qr_operation not in QR_OPERATIONS:
    raise ReferenceCheckpointError(f"unknown qr_operation {options.qr_operation!r};"
                                   f" choose from {QR_OPERATIONS}")
  sd = _strip_prefix(state_dict)
  known = [k for k in sd if _EMB.match(k) or _POOL.match(k) or _MLP.match(k)]
  unknown = sorted(set(sd) - set(known))
  if unknown:
    raise ReferenceCheckpointError(f"unexpected state_dict entries {unknown[:5]}"
                                   f"{' ...' if len(unknown) > 5 else ''}")
  bottom, top = _mlp_layers(sd, "bot_l"), _mlp_layers(sd, "top_l")
  tables, infos = _tables(sd, options)
  dim = tables[0].shape[1]
  if top[-1][0].shape[0] != 1:
    raise ReferenceCheckpointError(f"the top MLP ends in {top[-1][0].shape[0]} outputs, not 1")
  interaction, self_interaction = _resolve_interaction(
      options, len(tables), bottom[-1][0].shape[0], dim, top[0][0].shape[1])
  model = ModelConfig(name="dlrm", bottom_mlp=tuple(w.shape[0] for w, _ in bottom),
                      top_mlp=tuple(w.shape[0] for w, _ in top), interaction=interaction,
                      self_interaction=self_interaction)
  spec = ModelSpec(model=model, embedding=EmbeddingConfig(kind="full", dim=dim),
                   vocab_sizes=tuple(t.shape[0] for t in tables),
                   num_dense=bottom[0][0].shape[1])
  params = {name: {f"layers_{i}": {"kernel": np.ascontiguousarray(w.T), "bias": b}
                   for i, (w, b) in enumerate(layers)}
            for name, layers in (("bottom", bottom), ("top", top))}
  variables = {"params": params, "tables": {"embedding": np.concatenate(tables, axis=0)}}
  _check_against_model(spec, variables)
  return ImportedModel(spec=spec, variables=variables, tables=tuple(infos))


def _check_against_model(spec: ModelSpec, variables: dict) -> None:
  """The converted tree must have exactly the structure and shapes jaxrec's init gives."""
  expected = jax.eval_shape(spec.build().init, jax.random.key(0))
  got = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(got) or any(
      a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(expected),
                                         jax.tree_util.tree_leaves(got))):
    raise ReferenceCheckpointError(
        f"converted parameters do not fit jaxrec's DLRM: expected"
        f" {jax.tree_util.tree_map(lambda x: x.shape, expected)},"
        f" got {jax.tree_util.tree_map(lambda x: x.shape, got)}")


def reference_forward(state_dict: Mapping[str, np.ndarray], dense: np.ndarray, ids: np.ndarray,
                      options: ImportOptions = ImportOptions(), *, interaction: str = "dot",
                      self_interaction: bool = False, logits: bool = False) -> np.ndarray:
  """Click probabilities [B] of the reference forward pass, in plain numpy (float64).

  Args:
    state_dict: the reference state_dict (numpy arrays).
    dense: [B, num_dense] transformed dense features.
    ids: [B, T] reference categorical ids (one per bag, as for Criteo).
    options: QR operation / table sizes, as for the import.
    interaction / self_interaction: the reference's arch-interaction-op / -itself.
    logits: return the top MLP's output before its final sigmoid instead.
  """
  sd = _strip_prefix(state_dict)
  f64 = lambda a: np.asarray(a, np.float64)

  def mlp(x, name, last):  # last: "relu", "sigmoid" or "none"
    layers = _mlp_layers(sd, name)
    for i, (w, b) in enumerate(layers):
      x = x @ f64(w).T + f64(b)  # torch Linear: y = x W^T + b
      act = last if i == len(layers) - 1 else "relu"
      if act == "relu":
        x = np.maximum(x, 0.0)
      elif act == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-x))
    return x

  def bag(k, index):  # one EmbeddingBag(mode="sum") with one id per bag
    if f"emb_l.{k}.weight" in sd:
      rows = f64(sd[f"emb_l.{k}.weight"])[index]
    elif f"emb_l.{k}.weight_q" in sd:
      q, r = f64(sd[f"emb_l.{k}.weight_q"]), f64(sd[f"emb_l.{k}.weight_r"])
      c = r.shape[0]
      rq, rr = q[(index.astype(np.float32) / np.float32(c)).astype(np.int64)], r[index % c]
      rows = {"mult": lambda: rq * rr, "add": lambda: rq + rr,
              "concat": lambda: np.concatenate([rq, rr], axis=1)}[options.qr_operation]()
    else:
      rows = f64(sd[f"emb_l.{k}.embs.weight"])[index]
      if f"emb_l.{k}.proj.weight" in sd:
        rows = rows @ f64(sd[f"emb_l.{k}.proj.weight"]).T
    if f"v_W_l.{k}" in sd:  # per_sample_weights of a weighted sum
      rows = rows * f64(sd[f"v_W_l.{k}"])[index][:, None]
    return rows

  x = mlp(f64(dense), "bot_l", last="relu")
  ly = [bag(k, np.asarray(ids[:, k], np.int64)) for k in range(ids.shape[1])]
  if interaction == "dot":
    t = np.stack([x] + ly, axis=1)  # [B, T+1, d]
    z = t @ t.transpose(0, 2, 1)
    n = t.shape[1]
    offset = 1 if self_interaction else 0
    pairs = [(i, j) for i in range(n) for j in range(i + offset)]
    r = np.concatenate([x, z[:, [i for i, _ in pairs], [j for _, j in pairs]]], axis=1)
  else:
    r = np.concatenate([x] + ly, axis=1)
  return mlp(r, "top_l", last="none" if logits else "sigmoid")[:, 0]


def load_checkpoint(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a reference ``--save-model`` file (or a bare state_dict) into numpy arrays.

  A ``.npz`` file of arrays named by state_dict keys is read without torch.

  The reference saves ``{"state_dict": ..., "nepochs": ..., ...}`` with
  ``torch.save``. By default the file is read with ``weights_only=True``
  (tensors and plain containers only); `allow_pickle` unpickles arbitrary
  objects, which runs code from the file: only for files you trust.

  Raises:
    ImportError: torch is not installed (``pip install 'jaxrec[torch]'``).
    ReferenceCheckpointError: the file holds no state_dict.
  """
  if path.endswith(".npz"):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading a PyTorch checkpoint needs torch: pip install 'jaxrec[torch]'"
                      ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except FileNotFoundError:
    raise
  except Exception as e:  # torch raises UnpicklingError / RuntimeError with a long story
    hint = "" if allow_pickle else (" (if you trust the file, --allow_pickle reads objects"
                                    " beyond tensors)")
    raise ReferenceCheckpointError(f"{path}: cannot read as a torch checkpoint: "
                                   f"{str(e).splitlines()[0]}{hint}") from e
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if hasattr(obj, "state_dict") and callable(obj.state_dict):
    obj = obj.state_dict()
  if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ReferenceCheckpointError(f"{path}: holds no DLRM state_dict (expected a dict of tensors"
                                   " or {'state_dict': ...})")
  return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point()
          else v.detach().numpy() for k, v in obj.items()}


def write_run(output_dir: str, imported: ImportedModel, provenance: dict | None = None) -> None:
  """Writes `imported` as a jaxrec run directory that `load_run` and evaluation read.

  Writes model_spec.json, config.json (a default `TrainConfig` around the
  imported model), import.json (`provenance` and the table kinds) and an orbax
  checkpoint at step 0 holding a full train state (fresh SGD optimizer state),
  laid out exactly as a training run's.
  """
  if os.path.exists(os.path.join(output_dir, run_dir.MODEL_SPEC_FILE)):
    raise FileExistsError(f"{output_dir} already holds a model; choose a new directory")
  config = TrainConfig(model=imported.spec.model, embedding=imported.spec.embedding)
  params = jax.tree_util.tree_map(jnp.asarray, imported.variables["params"])
  tables = jax.tree_util.tree_map(jnp.asarray, imported.variables["tables"])
  dense_tx = dense_optimizer(config.optimizer, config.learning_rate)
  table_opt = sparse.create(config.resolved_embedding_optimizer, config.learning_rate)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, tables=tables,
                     opt_state=dense_tx.init(params), table_opt_state=table_opt.init(tables))
  run_dir.write_model_files(output_dir, imported.spec)
  checkpointer = Checkpointer(os.path.join(output_dir, run_dir.CHECKPOINT_DIR))
  checkpointer.save(0, state, {"step": 0})
  checkpointer.close()
  record = {"source": "facebookresearch/dlrm dlrm_s_pytorch.py", **(provenance or {}),
            "tables": [dataclasses.asdict(t) for t in imported.tables]}
  for name, obj in (("config.json", config.to_json()), ("import.json", record)):
    with open(os.path.join(output_dir, name), "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
