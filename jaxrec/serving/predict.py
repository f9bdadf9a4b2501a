"""Streaming batch prediction: raw Criteo rows in, one click probability per line out.

A background thread parses and encodes blocks of rows with the training
vocabularies (unseen categories -> the out-of-vocabulary id) while the main
thread scores fixed-size batches (the last one padded, so the scorer compiles
once) and writes results. Memory is bounded by the block size, plus 4 bytes
per row (8 with labels) kept for the final AUC / logloss.

A `Scorer` is built either from a run directory (the model code, jitted) or
from a serving artifact (the exported function, no model code): both encode
identically and give the same probabilities.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import queue
import threading
import time
from typing import Callable, Iterator

import jax
import numpy as np

from jaxrec.data import criteo, tabular
from jaxrec.data import schema as schema_lib
from jaxrec.serving.artifact import ServingModel
from jaxrec.train import metrics as metrics_lib
from jaxrec.train.run_dir import Run
from jaxrec.train.step import make_predict


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Encodes raw rows and scores encoded batches.

  Attributes:
    encode: RawBlock -> (dense float32 [n, 13], ids int32 [n, 26]).
    score: (dense, ids) of one full batch -> probabilities, a device array.
    num_dense / num_fields: the model's input widths.
    source: what it was built from (for messages).
    schema: the raw rows' columns (`jaxrec.data.schema`).
  """

  encode: Callable[[criteo.RawBlock], tuple[np.ndarray, np.ndarray]]
  score: Callable[[np.ndarray, np.ndarray], jax.Array]
  num_dense: int
  num_fields: int
  source: str
  schema: schema_lib.Schema = schema_lib.criteo()


def scorer_from_run(run: Run) -> Scorer:
  """Scores with the run's model (the evaluation path's jitted predict function)."""
  if run.vocabulary is None:
    raise ValueError(f"{run.workdir}: no vocab.npz, so raw rows cannot be encoded as in"
                     " training (the run was trained on synthetic or pre-encoded data, or"
                     " imported from the reference)")
  predict = make_predict(run.model)
  params, tables = run.variables["params"], run.variables["tables"]
  vocabulary, schema = run.vocabulary, run.schema or schema_lib.criteo()
  return Scorer(encode=lambda raw: tabular.encode_block(raw, vocabulary, schema),
                score=lambda dense, cat: predict(params, tables, dense, cat),
                num_dense=run.model.num_dense, num_fields=run.model.layout.num_fields,
                source=run.workdir, schema=schema)


def scorer_from_artifact(model: ServingModel, path: str = "artifact") -> Scorer:
  """Scores with an exported artifact (`jaxrec.serving.artifact`)."""
  if model.vocabulary is None:
    raise ValueError(f"{path}: the artifact has no vocabularies, so raw rows cannot be encoded")
  return Scorer(encode=model.encode, score=model.predict_async,
                num_dense=model.meta["num_dense"], num_fields=len(model.vocab_sizes),
                source=path, schema=model.schema)


@dataclasses.dataclass(frozen=True)
class PredictResult:
  """What a prediction pass saw.

  Attributes:
    rows: rows scored (= lines written).
    seconds: wall time, reading to last write, compilation included.
    has_label: whether the input had a label column.
    probs: float32 [rows], the probabilities written.
    labels: float32 [rows] when has_label, else None.
    metrics: auc / logloss / ... (`jaxrec.train.metrics.ctr_metrics` with the
      input's own positive rate as the constant baseline) when has_label.
  """

  rows: int
  seconds: float
  has_label: bool
  probs: np.ndarray
  labels: np.ndarray | None
  metrics: dict | None

  @property
  def rows_per_sec(self) -> float:
    return self.rows / max(self.seconds, 1e-9)


def _encoded_blocks(scorer: Scorer, blocks: Iterator[criteo.RawBlock], depth: int = 2):
  """Parses and encodes in a background thread, `depth` blocks ahead."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  done, errors = object(), []

  def work():
    try:
      for raw in blocks:
        dense, cat = scorer.encode(raw)
        q.put((dense, cat, raw.label.astype(np.float32)))
    except BaseException as e:  # re-raised in the consumer
      errors.append(e)
    finally:
      q.put(done)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  while (item := q.get()) is not done:
    yield item
  thread.join()
  if errors:
    raise errors[0]


def _batches(encoded, batch_size: int):
  """Fixed-size (dense, cat, label, real_rows) batches; only the last is padded."""
  pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
  count = 0
  for block in encoded:
    pending.append(block)
    count += len(block[0])
    if count < batch_size:
      continue
    dense, cat, label = (np.concatenate(parts) for parts in zip(*pending))
    full = (count // batch_size) * batch_size
    for start in range(0, full, batch_size):
      stop = start + batch_size
      yield dense[start:stop], cat[start:stop], label[start:stop], batch_size
    pending = [(dense[full:], cat[full:], label[full:])] if full < count else []
    count -= full
  if count:
    dense, cat, label = (np.concatenate(parts) for parts in zip(*pending))
    pad = batch_size - count
    yield (np.concatenate([dense, np.zeros((pad, dense.shape[1]), dense.dtype)]),
           np.concatenate([cat, np.zeros((pad, cat.shape[1]), cat.dtype)]), label, count)


class NonFiniteOutputError(ValueError):
  """The model scored some rows NaN or Inf: nothing is written."""


def _open_output(path: str, compress: bool):
  return gzip.open(path, "wt") if compress else open(path, "w")


def _partial_path(path: str) -> str:
  """Where the output is written until every row scored finite (then renamed)."""
  head, tail = os.path.split(path)
  return os.path.join(head, f".{tail}.partial")


def predict_file(scorer: Scorer, input_path: str, output_path: str, *, batch_size: int = 8192,
                 block_rows: int = 1 << 16, progress: Callable[[int, float], None] | None = None,
                 progress_every: float = 5.0, float_format: str = "{:.9g}") -> PredictResult:
  """Scores every row of a raw file (the scorer's schema), writing one probability per line.

  Args:
    scorer: `scorer_from_run` or `scorer_from_artifact`.
    input_path: a file of the scorer's schema, with or without the label column.
    output_path: text output (``.gz`` compresses).
    batch_size: rows per scoring call (static: the last batch is padded).
    block_rows: rows parsed per block.
    progress: called as ``progress(rows, seconds)`` about every `progress_every` s.
    float_format: format of each probability (the default round-trips float32).

  The output appears under its name only once every row has scored a finite
  probability; until then it is written beside it as ``.NAME.partial``.

  Raises:
    CriteoFormatError: a malformed row (file, line, field).
    NonFiniteOutputError: some rows scored NaN or Inf (nothing is written).
    ValueError: a model whose inputs do not match its schema's columns.
  """
  schema = scorer.schema
  if (scorer.num_dense, scorer.num_fields) != (schema.num_dense, schema.num_fields):
    raise ValueError(f"{scorer.source}: the model takes {scorer.num_dense} dense and"
                     f" {scorer.num_fields} categorical inputs, its schema {schema.name!r}"
                     f" {schema.num_dense} and {schema.num_fields}")
  start = last_report = time.perf_counter()
  has_label, blocks = tabular.iter_rows_to_score(input_path, schema, block_rows)
  probs_parts, label_parts, rows, nonfinite = [], [], 0, 0
  in_flight: list[tuple[jax.Array, np.ndarray, int]] = []

  def drain(out, keep: int):
    nonlocal rows, last_report, nonfinite
    while len(in_flight) > keep:
      probs, labels, real = in_flight.pop(0)
      probs = np.asarray(probs)[:real]
      nonfinite += int(np.count_nonzero(~np.isfinite(probs)))
      out.write("".join(float_format.format(p) + "\n" for p in probs.tolist()))
      probs_parts.append(probs)
      label_parts.append(labels)
      rows += real
      now = time.perf_counter()
      if progress is not None and now - last_report >= progress_every:
        progress(rows, now - start)
        last_report = now

  partial = _partial_path(output_path)
  try:
    with _open_output(partial, compress=output_path.endswith(".gz")) as out:
      for dense, cat, labels, real in _batches(_encoded_blocks(scorer, blocks), batch_size):
        in_flight.append((scorer.score(dense, cat), labels[:real], real))
        drain(out, keep=1)  # one batch computes while the previous one is written
      drain(out, keep=0)
    if nonfinite:
      raise NonFiniteOutputError(
          f"{scorer.source}: {nonfinite:,} of {rows:,} rows of {input_path} scored a non-finite"
          f" probability; nothing written to {output_path}")
    os.replace(partial, output_path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  seconds = time.perf_counter() - start
  probs = np.concatenate(probs_parts) if probs_parts else np.zeros(0, np.float32)
  labels = np.concatenate(label_parts) if has_label and label_parts else None
  metrics = None
  if labels is not None and len(labels):
    metrics = metrics_lib.ctr_metrics(labels, probs, float(labels.mean()))
  return PredictResult(rows=rows, seconds=seconds, has_label=has_label, probs=probs,
                       labels=labels, metrics=metrics)
