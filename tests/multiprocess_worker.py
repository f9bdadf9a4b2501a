"""One process of a multi-process (jax.distributed over loopback) training run.

`tests/test_multiprocess.py` starts it with XLA_FLAGS giving each process its
virtual CPU devices, and reads the JSON it prints:

  python tests/multiprocess_worker.py WORKDIR PROCESS_ID NUM_PROCESSES PORT

NUM_PROCESSES 1 runs without jax.distributed (the one-process reference, one
pass over the epoch); several processes stop after RESUME_AT steps and resume
from that step with a new loader, as a restarted run does. The training rows
are wrapped so that every row the loader gathers is counted. Process 0 writes
the final params and tables (gathered from every process) to WORKDIR/final.npz.
"""

import json
import sys

import numpy as np

TRAIN_ROWS = 512
BATCH = 64
RESUME_AT = 3


class CountedRows(np.ndarray):
  """An array that records the rows of every integer-array index (what the loader reads)."""

  reads: list = []

  def __getitem__(self, index):
    if isinstance(index, np.ndarray) and index.dtype.kind in "iu" and index.ndim == 1:
      CountedRows.reads.append(np.asarray(index).copy())
    return np.asarray(self)[index]


def main(workdir: str, process_id: int, num_processes: int, port: int) -> None:
  import dataclasses
  import jax
  if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)
  from jax.experimental import multihost_utils
  from jaxrec.data import loader, synthetic
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.ctr_model import CTRModel
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train import sharding, sparse
  from jaxrec.train.sharded_step import ShardedTraining
  from jaxrec.train.step import dense_optimizer

  data = synthetic.generate(synthetic.SyntheticConfig(num_rows=TRAIN_ROWS, max_vocab=50, seed=0))
  data = dataclasses.replace(data, label=np.asarray(data.label).view(CountedRows))
  model = CTRModel.create(ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)),
                          EmbeddingConfig(dim=8), data.vocab_sizes)
  tx, table_opt = dense_optimizer("adam", 0.05), sparse.create("rowwise_adagrad", 0.05)
  init_key, dropout_key = jax.random.split(jax.random.key(0))
  training = ShardedTraining.for_mesh(sharding.MeshConfig(data=2, model=2), model, tx, table_opt,
                                      dropout_key, batch_size=BATCH)
  state = training.init_state(init_key)
  order = dict(shuffle=True, seed=7, epoch=1, block_rows=32, window_blocks=4)  # windowed shuffle
  pieces = [(0, None)] if num_processes == 1 else [(0, RESUME_AT), (RESUME_AT, None)]
  steps = 0
  for start, stop in pieces:
    batches = sharding.host_batches(data, BATCH, training.batch_sharding, start_batch=start,
                                    **order)
    if stop is None:  # as the training loop feeds its steps (read-ahead would be counted)
      batches = loader.prefetch_to_device(batches, sharding=training.batch_sharding)
    for batch in batches:
      state, _ = training.train_step(state, batch)
      steps += 1
      if stop is not None and steps == stop:
        break  # a restarted run resumes from `steps` with a new loader
  host = multihost_utils.process_allgather({"params": state.params, "tables": state.tables},
                                           tiled=True)
  if jax.process_index() == 0:
    leaves = jax.tree_util.tree_flatten_with_path(host)[0]
    np.savez(f"{workdir}/final.npz",
             **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
  reads = np.concatenate(CountedRows.reads) if CountedRows.reads else np.zeros(0, np.int64)
  print("RESULT " + json.dumps({
      "process": jax.process_index(), "processes": jax.process_count(),
      "local_devices": jax.local_device_count(), "steps": steps, "rows_read": int(len(reads)),
      "distinct_rows": sorted(set(reads.tolist()))}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
