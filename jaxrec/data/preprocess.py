"""Streaming Criteo preprocessing: raw TSV / TSV.gz -> memory-mappable split arrays.

Three streaming passes, each over fixed-size blocks, so peak memory is set by
the block size and the vocabulary size, never by the number of rows:

1. *parse*: every input file is read in blocks by the pyarrow reader of
   `jaxrec.data.criteo` and written to compact temporary arrays (label int8,
   transformed dense float32, categorical keys uint32 plus a missing-field
   bitmask); the file's line count and sha256 are recorded.
2. *count*: rows are assigned to train / validation / test (`SplitAssigner`)
   and per-column key frequencies of the training rows are counted
   (`criteo.FrequencyCounter`); the vocabulary is saved (``vocab.npz``).
3. *encode*: rows are encoded and appended to one ``.npy`` file per split and
   field: ``{split}/dense.npy`` (float32 or float16 [N, 13]), ``{split}/cat.npy``
   (int32 [N, 26]) and ``{split}/label.npy`` (float32 [N]).

``meta.json``, written last, records rows and positive rate per split, the
vocabulary sizes, the options, the inputs (size, mtime, sha256, lines) and the
skipped bad rows. Re-running with the same inputs and options returns at once;
an interrupted run reuses every finished input file of pass 1 and a saved
vocabulary.

Split modes (``split``): ``"kaggle"`` — the DLRM reference's: the lines of all
inputs cut into 7 consecutive chunks as equal as possible (the first ``N % 7``
one line longer), chunks 0-5 train, chunk 6 halved into test (first half, the
larger when odd) and validation; ``"days"`` — every input file but the last is
training, the last (Terabyte ``day_23``) is halved into test and validation the
same way; ``"random:a,b,c"`` — a seeded uniformly random assignment with exactly
``round(a * N)`` train and ``round(b * N)`` validation lines (`SplitAssigner`).
Splits are assigned to *lines*, so skipped bad lines leave their slot empty.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
from typing import Callable, Sequence

import numpy as np
from absl import logging

from jaxrec import locking
from jaxrec.data import criteo, tabular
from jaxrec.data import schema as schema_lib
from jaxrec.data.dataset import CTRDataset, NUM_SPARSE, Splits
from jaxrec.data.schema import Schema

SPLITS = ("train", "validation", "test")
FORMAT = "jaxrec-criteo-shards/1"
META = "meta.json"
VOCAB = "vocab.npz"
LOCK = ".preprocess.lock"
_ASSIGN_CHUNK = 1 << 16  # positions per random-split assignment chunk
_MISSING_BYTES = -(-NUM_SPARSE // 8)  # missing-field bitmask bytes per row
_DATA_FILE = re.compile(r"(day_\d+|.*\.(txt|tsv|csv))(\.gz)?$|.*\.parquet$")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Options of one preprocessing run.

  Attributes:
    inputs: raw Criteo files (plain or .gz) or directories holding them, in
      order (Terabyte days in day order).
    output_dir: where the split arrays, vocab.npz and meta.json go.
    split: "kaggle", "days" or "random:train,validation,test".
    seed: seed of the random split.
    min_frequency: training-row count below which a value maps to the OOV id.
    max_rows_per_table: cap on every table's rows (values hashed into
      ``max_rows_per_table - 1`` buckets before counting); None: no cap.
    dense_dtype: "float32" or "float16" for the stored dense features.
    on_bad_row: "error" (stop naming file, line, field) or "skip" (drop,
      count and report in meta.json).
    block_rows: rows parsed per block (about 256 bytes each).
    chunk_rows: rows per block of the count and encode passes.
    keep_temp: keep the pass-1 arrays (tmp/) after finishing.
    vocabulary: "count" (pass 2 counts the training rows' values; ids by
      frequency, see `min_frequency`) or "hash:N" (no counting: the id of a
      value is hash(value) mod N in every column, tables of N rows).
    engine: "local" (threads of this process) or "dask" (tasks on a Dask
      cluster, `jaxrec.data.dask_engine`); both write the same bytes.
    scheduler: address of a running Dask scheduler (engine "dask"); None
      starts a local cluster of `workers` processes.
    workers: Dask local-cluster worker processes (None: one per core).
    schema: the columns of the inputs and how each is encoded (default Criteo's).
  """

  inputs: tuple[str, ...]
  output_dir: str
  split: str = "random:0.8,0.1,0.1"
  seed: int = 0
  min_frequency: int = 2
  max_rows_per_table: int | None = None
  dense_dtype: str = "float32"
  on_bad_row: str = "error"
  block_rows: int = 1 << 16
  chunk_rows: int = 1 << 18
  keep_temp: bool = False
  vocabulary: str = "count"
  engine: str = "local"
  scheduler: str | None = None
  workers: int | None = None
  schema: Schema = schema_lib.criteo()

  def options(self) -> dict:
    """The options that determine the output (not where or how fast)."""
    options = {"split": self.split, "seed": self.seed, "min_frequency": self.min_frequency,
               "max_rows_per_table": self.max_rows_per_table, "dense_dtype": self.dense_dtype,
               "on_bad_row": self.on_bad_row}
    if self.vocabulary != "count":  # absent for counted vocabularies: older caches stay valid
      options["vocabulary"] = self.vocabulary
    if self.schema != schema_lib.criteo():  # Criteo's identity predates schemas: caches stay valid
      options["schema"] = self.schema.to_json()
    return options


ENGINES = ("local", "dask")


def parse_vocabulary(spec: str) -> int | None:
  """"count" -> None; "hash:N" -> N (the buckets of every column)."""
  if spec == "count":
    return None
  if spec.startswith("hash:") and spec[len("hash:"):].isdigit() and int(spec[len("hash:"):]) >= 1:
    return int(spec[len("hash:"):])
  raise ValueError(f"vocabulary {spec!r}: expected 'count' or 'hash:N' with N >= 1")


def parse_split(spec: str) -> tuple[str, tuple[float, float, float] | None]:
  """"kaggle" | "days" | "random:a,b,c" -> (mode, fractions or None)."""
  if spec in ("kaggle", "days"):
    return spec, None
  if spec.startswith("random:"):
    try:
      fractions = tuple(float(x) for x in spec[len("random:"):].split(","))
    except ValueError:
      fractions = ()
    if (len(fractions) == 3 and all(f >= 0 for f in fractions)
        and abs(sum(fractions) - 1) < 1e-6 and fractions[0] > 0):
      return "random", fractions
  raise ValueError(f"split {spec!r}: expected 'kaggle', 'days' or 'random:a,b,c' with three"
                   " non-negative fractions summing to 1 and a non-empty train split")


def expand_inputs(inputs: Sequence[str]) -> list[str]:
  """Files of `inputs`; a directory contributes its Criteo data files in natural order.

  Raises:
    CriteoFormatError for a missing path or a directory without data files.
  """
  out = []
  for path in inputs:
    if os.path.isdir(path):
      names = [n for n in os.listdir(path) if _DATA_FILE.match(n) and not n.startswith(".")
               and os.path.isfile(os.path.join(path, n))]
      if not names:
        raise criteo.CriteoFormatError(
            path, None, None, "directory has no Criteo data files"
            " (day_N, *.txt, *.tsv, *.csv, optionally .gz)")
      key = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
      out.extend(os.path.join(path, n) for n in sorted(names, key=key))
    elif not os.path.exists(path):
      raise criteo.CriteoFormatError(path, None, None, "no such file")
    else:
      out.append(path)
  if not out:
    raise ValueError("no input files")
  return out


def _identity(path: str) -> dict:
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _halves(start: int, stop: int) -> tuple[int, int, int]:
  """(start, mid, stop): [start, mid) test, [mid, stop) validation (np.array_split)."""
  return start, start + -(-(stop - start) // 2), stop


class SplitAssigner:
  """Deterministic split (0 train, 1 validation, 2 test) of every line position.

  Positions count the lines of all inputs from 0, in input order.
  """

  def __init__(self, spec: str, lines_per_file: Sequence[int], seed: int = 0):
    self.mode, self.fractions = parse_split(spec)
    self.total = int(sum(lines_per_file))
    self.seed = seed
    if self.mode == "kaggle":
      q, r = divmod(self.total, 7)
      train_end = 6 * q + min(r, 6)
      self.bounds = _halves(train_end, self.total)
    elif self.mode == "days":
      if len(lines_per_file) < 2:
        raise ValueError("split 'days' needs at least two input files (one per day); the"
                         " last is held out")
      self.bounds = _halves(self.total - int(lines_per_file[-1]), self.total)
    else:
      n_train = int(round(self.fractions[0] * self.total))
      n_val = int(round(self.fractions[1] * self.total))
      remaining = np.array([n_train, n_val, self.total - n_train - n_val], np.int64)
      rng = np.random.default_rng([seed, 1])
      chunks = -(-self.total // _ASSIGN_CHUNK)
      self.chunk_counts = np.zeros((chunks, 3), np.int64)
      for k in range(chunks):
        size = min(_ASSIGN_CHUNK, self.total - k * _ASSIGN_CHUNK)
        draw = rng.multivariate_hypergeometric(remaining, size)
        self.chunk_counts[k] = draw
        remaining -= draw
      self._cache: dict[int, np.ndarray] = {}

  def _chunk(self, k: int) -> np.ndarray:
    if k not in self._cache:
      if len(self._cache) > 64:
        self._cache.clear()
      labels = np.repeat(np.arange(3, dtype=np.uint8), self.chunk_counts[k])
      self._cache[k] = labels[np.random.default_rng([self.seed, 2, k]).permutation(len(labels))]
    return self._cache[k]

  def assign(self, positions: np.ndarray) -> np.ndarray:
    """uint8 split ids of (ascending) line positions."""
    positions = np.asarray(positions, np.int64)
    if self.mode != "random":
      start, mid, stop = self.bounds
      out = np.zeros(len(positions), np.uint8)
      out[positions >= start] = 2
      out[positions >= mid] = 1
      return out
    out = np.empty(len(positions), np.uint8)
    chunk = positions // _ASSIGN_CHUNK
    for k in np.unique(chunk):
      sel = chunk == k
      out[sel] = self._chunk(int(k))[positions[sel] - k * _ASSIGN_CHUNK]
    return out


class _Progress:
  """Logs rows and rows/s at most every `every` seconds."""

  def __init__(self, name: str, total: int | None, report: Callable[[str], None],
               every: float = 5.0):
    self.name, self.total, self.report, self.every = name, total, report, every
    self.start = self.last = time.perf_counter()
    self.rows = 0

  def add(self, rows: int) -> None:
    self.rows += rows
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      rate = self.rows / max(now - self.start, 1e-9)
      of = f"/{self.total:,}" if self.total else ""
      self.report(f"{self.name}: {self.rows:,}{of} rows, {rate:,.0f} rows/s")


def _background(iterator, size: int = 2):
  """Runs `iterator` in a thread, `size` items ahead (reading and gunzip overlap parsing)."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done, stop = object(), threading.Event()
  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False
  def produce():
    try:
      for item in iterator:
        if not put(item):
          return
      put(done)
    except BaseException as e:  # re-raised in the consumer
      put(e)
  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join()


def _temp_paths(tmp: str, i: int) -> dict[str, str]:
  return {k: os.path.join(tmp, f"{i}.{k}") for k in
          ("label", "dense", "keys", "missing", "lines", "json")}


def _encode_block(path: str, first_line: int, buf: bytes, on_bad_row: str,
                  fmt: tabular.TextFormat | None = None) -> dict:
  """Pass-1 work of one text block (runs on a worker thread): parsed, transformed arrays.

  ``rows`` is 0 (and no arrays) when every line was skipped; raises
  `CriteoFormatError` for a bad line under ``on_bad_row="error"``. Skipped lines
  go to the block's own log, merged in file order by the caller. `fmt`: the
  schema's text format (None: Criteo's fast hex path).
  """
  bad = criteo.BadRowLog()
  if fmt is None:
    block = criteo.parse_block(path, first_line, buf, on_bad_row, bad)
  else:
    block = tabular.parse_block(fmt, first_line, buf, on_bad_row, bad)
  return _block_part(block, bad, None if fmt is None else fmt.schema)


def _block_part(block: criteo.RawBlock | None, bad: criteo.BadRowLog,
                schema: Schema | None) -> dict:
  """The pass-1 arrays of a parsed block (`schema` None: Criteo's compact hex keys)."""
  if block is None:
    return {"bad": bad, "rows": 0}
  keys = block.cat_keys
  if schema is not None:  # text keys need 64 bits; MISSING_KEY / PAD_KEY stay inline
    return {"bad": bad, "rows": len(block),
            "lines": block.line_numbers() if block.lines is not None else None,
            "label": block.label.astype(np.int8),
            "dense": tabular.transform_dense(schema, block.dense),
            "keys": keys.astype(np.int64)}
  return {
      "bad": bad, "rows": len(block),
      "lines": block.line_numbers() if block.lines is not None else None,
      "label": block.label.astype(np.int8),
      "dense": criteo.transform_dense(block.dense),
      "keys": keys.astype(np.uint32),
      "missing": np.packbits(keys == criteo.MISSING_KEY, axis=1, bitorder="little"),
  }


def _ordered_map(pool, fn, items, depth: int):
  """`fn(*item)` for each item on `pool`, at most `depth` in flight, results in order."""
  pending: collections.deque = collections.deque()
  try:
    for item in items:
      pending.append(pool.submit(fn, *item))
      if len(pending) >= depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    for future in pending:
      future.cancel()


def _parse_file(i: int, path: str, tmp: str, config: PreprocessConfig, pool, workers: int,
                report) -> dict:
  """Pass 1 for one input: parsed rows to temporary arrays; returns its record.

  Whole text blocks are parsed in parallel on `pool` (most of the work releases
  the GIL) and written in file order, so errors name the first bad line.
  """
  paths = _temp_paths(tmp, i)
  identity = _identity(path)
  if os.path.exists(paths["json"]):
    with open(paths["json"]) as f:
      done = json.load(f)
    if {k: done[k] for k in identity} == identity and done["on_bad_row"] == config.on_bad_row:
      report(f"parse {path}: reusing finished pass-1 output ({done['rows']:,} rows)")
      return done
  checksum = hashlib.sha256()
  bad = criteo.BadRowLog()
  progress = _Progress(f"parse {os.path.basename(path)}", None, report)
  schema = config.schema
  generic = not schema.is_criteo_layout()
  files = {k: open(paths[k], "wb") for k in ("label", "dense", "keys", "missing")[:4 - generic]}
  lines_file = None
  rows = lines = 0
  try:
    if generic and tabular.is_parquet(path, schema):
      batches = tabular.iter_parquet_batches(path, schema, config.block_rows,
                                             on_bad_row=config.on_bad_row, checksum=checksum)
      parts = (_block_part(block, log, schema) for block, log in _background(batches))
    else:
      if generic:
        text_jobs = tabular.iter_text_jobs(path, schema, config.block_rows * 256, checksum)
        jobs = ((path, first_line, buf, config.on_bad_row, fmt)
                for fmt, first_line, buf in _background(text_jobs))
      else:
        text_blocks = _background(criteo.iter_text_blocks(path, config.block_rows * 256,
                                                          checksum))
        jobs = ((path, first_line, buf, config.on_bad_row) for first_line, buf in text_blocks)
      parts = _ordered_map(pool, _encode_block, jobs, depth=workers + 1)
    for part in parts:
      lines += part["bad"].count + part["rows"]
      bad.merge(part["bad"])
      if not part["rows"]:
        continue
      if part["lines"] is not None and lines_file is None:
        lines_file = open(paths["lines"], "wb")
        lines_file.write(np.arange(1, rows + 1, dtype=np.int64).tobytes())
      if lines_file is not None:
        block_lines = part["lines"]
        if block_lines is None:
          block_lines = np.arange(lines - part["rows"] + 1, lines + 1, dtype=np.int64)
        lines_file.write(block_lines.astype(np.int64).tobytes())
      for name in files:
        files[name].write(part[name].tobytes())
      rows += part["rows"]
      progress.add(part["rows"])
  finally:
    for f in files.values():
      f.close()
    if lines_file is not None:
      lines_file.close()
  if lines == 0:
    raise criteo.CriteoFormatError(path, None, None, "file has no rows")
  if rows == 0:
    raise criteo.CriteoFormatError(path, None, None, f"no valid rows: all {lines:,} lines"
                                   " were malformed and skipped")
  if lines_file is None and os.path.exists(paths["lines"]):
    os.remove(paths["lines"])
  record = {**identity, "sha256": checksum.hexdigest(), "lines": lines, "rows": rows,
            "bad_rows": bad.count, "bad_row_examples": bad.examples,
            "on_bad_row": config.on_bad_row, "has_lines": lines_file is not None}
  with open(paths["json"], "w") as f:
    json.dump(record, f)
  report(f"parse {path}: {rows:,} rows ({bad.count:,} bad lines skipped) in"
         f" {time.perf_counter() - progress.start:.1f} s")
  return record


def _read_temp(tmp: str, i: int, record: dict, start: int, stop: int,
               keys: bool = True, schema: Schema = schema_lib.criteo()) -> dict[str, np.ndarray]:
  """Rows [start, stop) of input `i`'s pass-1 arrays (plain reads: no mmap in RSS).

  Without `keys` only the labels and line numbers are read (what splitting needs).
  """
  paths = _temp_paths(tmp, i)
  n = stop - start
  def read(name, dtype, width):  # width None: one value per row, a flat array
    per_row = 1 if width is None else width
    with open(paths[name], "rb") as f:
      f.seek(start * np.dtype(dtype).itemsize * per_row)
      out = np.fromfile(f, dtype=dtype, count=n * per_row)
    return out if width is None else out.reshape(n, width)
  out = {"label": read("label", np.int8, None)}
  if keys:
    out["dense"] = read("dense", np.float32, schema.num_dense)
    if schema.is_criteo_layout():
      cat = read("keys", np.uint32, NUM_SPARSE).astype(np.int64)
      missing = read("missing", np.uint8, _MISSING_BYTES)
      if missing.any():
        bits = np.unpackbits(missing, axis=1, count=NUM_SPARSE, bitorder="little")
        cat[bits.astype(bool)] = criteo.MISSING_KEY
    else:
      cat = read("keys", np.int64, schema.num_slots)
    out["keys"] = cat
  if record["has_lines"]:
    out["lines"] = read("lines", np.int64, None)
  else:
    out["lines"] = np.arange(start + 1, stop + 1, dtype=np.int64)
  return out


def _chunks(rows: int, chunk_rows: int):
  for start in range(0, rows, chunk_rows):
    yield start, min(start + chunk_rows, rows)


def _write_npy_header(f, dtype, shape) -> None:
  np.lib.format.write_array_header_2_0(
      f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
          "shape": tuple(shape)})


@dataclasses.dataclass(frozen=True)
class Job:
  """What every count and encode task needs (small and picklable: sent once to Dask).

  Attributes:
    tmp: the pass-1 arrays' directory; out: the output directory.
    records: pass-1 record of every input (rows, lines, has_lines).
    assigner: the split of every line position.
    line_offsets: line position of each input's first line.
    buckets: hash buckets before counting (``max_rows_per_table - 1``) or None.
    count_keys: False under ``vocabulary="hash:N"`` (no key is read in pass 2).
    dense_dtype: stored dense dtype name.
    schema: the inputs' columns (`jaxrec.data.schema`).
  """

  tmp: str
  out: str
  records: tuple[dict, ...]
  assigner: SplitAssigner
  line_offsets: tuple[int, ...]
  buckets: int | None
  count_keys: bool
  dense_dtype: str
  schema: Schema = schema_lib.criteo()

  def chunks(self, chunk_rows: int) -> list[tuple[int, int, int]]:
    """(input, start row, stop row) of every count / encode chunk, in row order."""
    return [(i, start, stop) for i, r in enumerate(self.records)
            for start, stop in _chunks(r["rows"], chunk_rows)]

  def read(self, chunk: tuple[int, int, int], keys: bool = True) -> dict[str, np.ndarray]:
    """A chunk's pass-1 arrays and the split of each row (``split``)."""
    i, start, stop = chunk
    part = _read_temp(self.tmp, i, self.records[i], start, stop, keys, self.schema)
    part["split"] = self.assigner.assign(self.line_offsets[i] + part["lines"] - 1)
    return part


def count_part(job: Job, part: dict[str, np.ndarray], pool=None
               ) -> tuple[np.ndarray, criteo.FrequencyCounter | None]:
  """Pass 2 of one chunk's arrays (`Job.read`): ([rows per split, positives per
  split] int64 [2, 3], the counts of its training rows' keys — None when
  `job.count_keys` is False)."""
  stats = np.stack([np.bincount(part["split"], minlength=3),
                    np.bincount(part["split"], weights=part["label"], minlength=3)]
                   ).astype(np.int64)
  if not job.count_keys:
    return stats, None
  train_keys = part["keys"][part["split"] == 0]
  counter = criteo.FrequencyCounter(job.schema.num_fields)
  if job.schema.has_bags:
    count_fields(counter, train_keys, job.schema.bag_lengths, job.buckets, pool)
    return stats, counter
  if job.buckets is not None:
    train_keys = criteo.hash_keys(train_keys, job.buckets)
  counter.update(train_keys, pool)
  return stats, counter


def count_fields(counter: criteo.FrequencyCounter, keys: np.ndarray,
                 bag_lengths: Sequence[int], buckets: int | None, pool=None) -> None:
  """Counts every field's keys of slot keys [n, sum(bag_lengths)] (PAD_KEY slots skipped)."""
  starts = schema_lib.slot_starts(tuple(bag_lengths))
  def one(j):
    column = keys[:, starts[j]:starts[j] + bag_lengths[j]].reshape(-1)
    if bag_lengths[j] > 1:
      column = column[column != criteo.PAD_KEY]
    if buckets is not None:
      column = criteo.hash_keys(column, buckets)
    counter.update_column(j, column)
  if pool is None:
    for j in range(len(bag_lengths)):
      one(j)
  else:
    list(pool.map(one, range(len(bag_lengths))))


def count_chunk(job: Job, chunk: tuple[int, int, int]):
  """`count_part` of one chunk read from the pass-1 arrays."""
  return count_part(job, job.read(chunk, keys=job.count_keys))


def encode_chunk(job: Job, chunk: tuple[int, int, int], vocab: criteo.Vocabulary, pool=None
                 ) -> dict[str, dict[str, bytes]]:
  """Pass 3 of one chunk: the bytes it adds to each split's dense, cat and label arrays."""
  part = job.read(chunk)
  # Whole chunk: one lookup table per column.
  ids = vocab.encode_slots(part["keys"], job.schema.bag_lengths, pool)
  out = {}
  for s, split in enumerate(SPLITS):
    sel = part["split"] == s
    if sel.any():
      out[split] = {"dense": part["dense"][sel].astype(job.dense_dtype).tobytes(),
                    "cat": ids[sel].tobytes(),
                    "label": part["label"][sel].astype(np.float32).tobytes()}
  return out


def array_layout(job: Job, sizes: dict) -> dict[tuple[str, str], tuple[np.dtype, tuple]]:
  """dtype and shape of every output array, keyed by (split, field)."""
  layout = {}
  for s, split in enumerate(SPLITS):
    n = sizes["rows"][s]
    for name, dtype, shape in (("dense", np.dtype(job.dense_dtype), (n, job.schema.num_dense)),
                               ("cat", np.dtype(np.int32), (n, job.schema.num_slots)),
                               ("label", np.dtype(np.float32), (n,))):
      layout[split, name] = (dtype, shape)
  return layout


def create_arrays(job: Job, sizes: dict) -> dict[tuple[str, str], int]:
  """Writes every output .npy's header, sized for its rows; returns each header's length."""
  headers = {}
  for (split, name), (dtype, shape) in array_layout(job, sizes).items():
    os.makedirs(os.path.join(job.out, split), exist_ok=True)
    with open(os.path.join(job.out, split, f"{name}.npy"), "wb") as f:
      _write_npy_header(f, dtype, shape)
      headers[split, name] = f.tell()
      f.truncate(f.tell() + int(np.prod(shape)) * dtype.itemsize)
  return headers


class LocalEngine:
  """The passes on a thread pool of this process, streaming chunks in row order."""

  name = "local"

  def __init__(self, config: PreprocessConfig):
    self.config = config
    self.workers = min(4, os.cpu_count() or 1)

  def __enter__(self):
    self.pool = concurrent.futures.ThreadPoolExecutor(self.workers)
    return self

  def __exit__(self, *exc):
    self.pool.shutdown()

  def parse(self, inputs: Sequence[str], tmp: str, report) -> list[dict]:
    return [_parse_file(i, p, tmp, self.config, self.pool, self.workers, report)
            for i, p in enumerate(inputs)]

  def count(self, job: Job, chunks, report) -> tuple[np.ndarray, criteo.FrequencyCounter | None]:
    """Per-chunk stats [C, 2, 3] and the training rows' key counts (None: not counted)."""
    counter = criteo.FrequencyCounter(job.schema.num_fields) if job.count_keys else None
    progress = _Progress("count", sum(r["rows"] for r in job.records), report)
    stats = []
    # Chunks are read ahead on a thread; each chunk's columns are counted on the pool.
    for part in _background(job.read(chunk, keys=job.count_keys) for chunk in chunks):
      chunk_stats, chunk_counter = count_part(job, part, self.pool)
      stats.append(chunk_stats)
      if counter is not None:
        counter.merge(chunk_counter)
      progress.add(len(part["label"]))
    return np.asarray(stats, np.int64).reshape(-1, 2, 3), counter

  def encode(self, job: Job, chunks, vocab: criteo.Vocabulary, sizes: dict, report) -> None:
    headers = create_arrays(job, sizes)
    files = {key: open(os.path.join(job.out, key[0], f"{key[1]}.npy"), "r+b") for key in headers}
    for key, f in files.items():
      f.seek(headers[key])
    progress = _Progress("encode", sum(sizes["rows"]), report)
    try:
      for chunk in chunks:
        for split, arrays in encode_chunk(job, chunk, vocab, self.pool).items():
          for name, data in arrays.items():
            files[split, name].write(data)
        progress.add(chunk[2] - chunk[1])
    finally:
      for f in files.values():
        f.close()


def _engine(config: PreprocessConfig):
  if config.engine == "dask":
    from jaxrec.data import dask_engine  # optional dependency
    return dask_engine.DaskEngine(config)
  return LocalEngine(config)


def preprocess(config: PreprocessConfig,
               report: Callable[[str], None] = logging.info) -> dict:
  """Preprocesses `config.inputs` into `config.output_dir`; returns meta.json's dict.

  One job at a time writes an output directory (``.preprocess.lock`` in it): a
  second job on the same directory waits for the first, then reuses its
  output. ``meta.json`` is written last, so an interrupted job's output is
  never taken for a finished one (the next job resumes it).

  Raises:
    CriteoFormatError: a malformed row (file, line, field), an empty file,
      truncated gzip or a directory without data (unless skipping bad rows).
    ValueError: bad options, or an output_dir holding a different preprocessing.
  """
  with locking.hold(os.path.join(config.output_dir, LOCK), wait=None, report=report):
    return _preprocess_locked(config, report)


def _preprocess_locked(config: PreprocessConfig, report: Callable[[str], None]) -> dict:
  """`preprocess`, with the output directory's lock held."""
  mode, _ = parse_split(config.split)
  hash_buckets = parse_vocabulary(config.vocabulary)
  if config.on_bad_row not in criteo.ON_BAD_ROW:
    raise ValueError(f"on_bad_row must be one of {criteo.ON_BAD_ROW}, got {config.on_bad_row!r}")
  if config.dense_dtype not in ("float32", "float16"):
    raise ValueError(f"dense_dtype must be float32 or float16, got {config.dense_dtype!r}")
  if config.min_frequency < 1:
    raise ValueError(f"min_frequency must be >= 1, got {config.min_frequency}")
  if config.max_rows_per_table is not None and config.max_rows_per_table < 2:
    raise ValueError(f"max_rows_per_table must be >= 2, got {config.max_rows_per_table}")
  if hash_buckets is not None and config.max_rows_per_table is not None:
    raise ValueError("vocabulary 'hash:N' already caps every table at N rows: drop"
                     " max_rows_per_table")
  if config.engine not in ENGINES:
    raise ValueError(f"engine must be one of {ENGINES}, got {config.engine!r}")
  inputs = expand_inputs(config.inputs)
  if mode == "days" and len(inputs) < 2:
    raise ValueError("split 'days' needs at least two input files (one per day)")
  identity = {"inputs": [_identity(p) for p in inputs], "options": config.options()}
  out = config.output_dir
  meta_path = os.path.join(out, META)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("identity") == identity:
      report(f"{out}: already preprocessed from the same inputs and options; reusing it")
      return meta
    raise ValueError(f"{out} already holds a preprocessing of other inputs or options;"
                     " choose another --output_dir or delete it")
  tmp = os.path.join(out, "tmp")
  os.makedirs(tmp, exist_ok=True)
  state_path = os.path.join(tmp, "identity.json")
  if os.path.exists(state_path):
    with open(state_path) as f:
      if json.load(f) != identity:  # options changed since the interrupted run
        shutil.rmtree(tmp)
        os.makedirs(tmp)
  with open(state_path, "w") as f:
    json.dump(identity, f)
  start_time = time.perf_counter()
  pass_seconds = {}
  with _engine(config) as engine:
    # Pass 1: parse.
    parsing = time.perf_counter()  # after a Dask cluster started
    records = engine.parse(inputs, tmp, report)
    pass_seconds["parse"] = time.perf_counter() - parsing
    assigner = SplitAssigner(config.split, [r["lines"] for r in records], config.seed)
    job = Job(tmp=tmp, out=out, records=tuple(records), assigner=assigner,
              line_offsets=tuple(int(x) for x in np.cumsum([0] + [r["lines"] for r in records])),
              buckets=None if config.max_rows_per_table is None else config.max_rows_per_table - 1,
              count_keys=hash_buckets is None, dense_dtype=config.dense_dtype,
              schema=config.schema)
    chunks = job.chunks(config.chunk_rows)
    # Pass 2: split sizes, positive rates, training-row frequencies -> vocabulary.
    vocab_path = os.path.join(tmp, VOCAB)
    sizes_path = os.path.join(tmp, "sizes.json")
    sizes = None
    if os.path.exists(vocab_path) and os.path.exists(sizes_path):
      with open(sizes_path) as f:
        sizes = json.load(f)
      if sizes.get("chunk_rows") == config.chunk_rows:
        vocab = criteo.Vocabulary.load(vocab_path)
        report("count: reusing the saved vocabulary")
      else:
        sizes = None
    if sizes is None:
      counting = time.perf_counter()
      stats, counter = engine.count(job, chunks, report)
      pass_seconds["count"] = time.perf_counter() - counting
      if hash_buckets is not None:
        vocab = criteo.Vocabulary.hashing(hash_buckets, config.schema.num_fields)
      else:
        vocab = criteo.Vocabulary.from_counts(counter, config.min_frequency, job.buckets)
      del counter
      total = stats.sum(axis=0)
      sizes = {"rows": total[0].tolist(), "positives": total[1].tolist(),
               "chunk_rows": config.chunk_rows, "chunk_split_rows": stats[:, 0].tolist()}
      if sizes["rows"][0] == 0:
        raise ValueError(f"the training split of {inputs} is empty")
      vocab.save(vocab_path)
      with open(sizes_path, "w") as f:
        json.dump(sizes, f)
      what = "split sizes (no counting: hashed ids)" if hash_buckets else "vocabulary of" \
          f" {sum(vocab.sizes):,} rows"
      report(f"count: {what} in {time.perf_counter() - counting:.1f} s")
    # Pass 3: encode and write one .npy per split and field.
    encoding = time.perf_counter()
    engine.encode(job, chunks, vocab, sizes, report)
    pass_seconds["encode"] = time.perf_counter() - encoding
  vocab.save(os.path.join(out, VOCAB))
  seconds = time.perf_counter() - start_time
  total_rows = int(sum(sizes["rows"]))
  meta = {
      "format": FORMAT,
      "identity": identity,
      "rows": dict(zip(SPLITS, sizes["rows"])),
      "positive_rate": {split: sizes["positives"][s] / max(sizes["rows"][s], 1)
                        for s, split in enumerate(SPLITS)},
      "vocab_sizes": list(vocab.sizes),
      "num_dense": config.schema.num_dense,
      "num_sparse": config.schema.num_fields,
      "schema": config.schema.to_json(),
      "bag_lengths": list(config.schema.bag_lengths),
      "dense_dtype": config.dense_dtype,
      "options": config.options(),
      "split_mode": mode,
      "inputs": [{k: r[k] for k in ("path", "size", "mtime_ns", "sha256", "lines", "rows",
                                    "bad_rows")} for r in records],
      "bad_rows": {"count": int(sum(r["bad_rows"] for r in records)),
                   "examples": [e for r in records for e in r["bad_row_examples"]][:20]},
      "seconds": seconds,
      "rows_per_sec": total_rows / max(seconds, 1e-9),
      "engine": config.engine,
      "pass_seconds": pass_seconds,
  }
  tmp_meta = meta_path + ".tmp"
  with open(tmp_meta, "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  os.replace(tmp_meta, meta_path)
  if not config.keep_temp:
    shutil.rmtree(tmp, ignore_errors=True)
  report(f"preprocessed {total_rows:,} rows into {out} in {seconds:.1f} s"
         f" ({meta['rows_per_sec']:,.0f} rows/s); rows per split {meta['rows']},"
         f" {meta['bad_rows']['count']:,} bad lines skipped")
  return meta


def is_current(config: PreprocessConfig) -> bool:
  """Whether `config.output_dir` holds a finished preprocessing of these inputs and options."""
  meta_path = os.path.join(config.output_dir, META)
  if not os.path.exists(meta_path):
    return False
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except ValueError:
    return False
  identity = {"inputs": [_identity(p) for p in expand_inputs(config.inputs)],
              "options": config.options()}
  return meta.get("identity") == identity


def is_preprocessed(path: str) -> bool:
  return os.path.isfile(os.path.join(path, META))


def load_meta(path: str) -> dict:
  with open(os.path.join(path, META)) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}/{META}: unknown format {meta.get('format')!r}")
  return meta


def load_preprocessed(path: str) -> Splits:
  """Memory-mapped train / validation / test `CTRDataset`s of a preprocessed directory."""
  meta = load_meta(path)
  sizes = tuple(meta["vocab_sizes"])
  schema = load_schema(path)
  names = {"dense_names": tuple(schema.dense_names), "sparse_names": schema.field_names}
  if schema.has_bags:
    names.update(bag_lengths=schema.bag_lengths, poolings=schema.poolings)
  def split(name):
    arrays = {k: np.load(os.path.join(path, name, f"{k}.npy"), mmap_mode="r")
              for k in ("dense", "cat", "label")}
    return CTRDataset(vocab_sizes=sizes, **names, **arrays)
  return Splits(*(split(s) for s in SPLITS))


def load_schema(path: str) -> Schema:
  """The schema a preprocessed directory was written with (Criteo's before schemas)."""
  meta = load_meta(path)
  if "schema" not in meta:
    return schema_lib.criteo()
  return Schema.from_json(meta["schema"], where=os.path.join(path, META))


def load_vocabulary(path: str) -> criteo.Vocabulary:
  """The training vocabulary of a preprocessed directory: encodes new raw rows
  exactly like its training rows (`criteo.encode_raw(criteo.read_raw(f), vocab)`)."""
  return criteo.Vocabulary.load(os.path.join(path, VOCAB))
