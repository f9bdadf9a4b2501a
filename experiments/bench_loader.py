r"""Loader throughput vs the training step's, at the same batch size.

  python -m experiments.bench_loader --data=/tmp/pre5m --batch_size=2048

Prints examples/s of (a) the shuffled memory-mapped loader alone (batches
assembled on the host and placed on the device by the prefetch thread) and (b)
the jitted DLRM train step alone on prefetched batches (default model), and
their ratio. --data as in experiments.train (a preprocessed directory,
raw files, or 'synthetic').
"""

from __future__ import annotations

import time

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS

flags.DEFINE_string("data", "synthetic", "As experiments.train --data.")
flags.DEFINE_integer("batch_size", 2048, "Batch size.")
flags.DEFINE_integer("loader_batches", 400, "Batches timed for the loader.")
flags.DEFINE_integer("step_batches", 30, "Batches timed for the train step.")
flags.DEFINE_integer("synthetic_rows", 200_000, "Rows when --data=synthetic.")


def main(argv):
  del argv
  import jax
  from jaxrec.data import loader
  from jaxrec.data.sources import DataConfig, load_splits
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.ctr_model import CTRModel
  from jaxrec.models.registry import ModelConfig
  from jaxrec.train import sparse
  from jaxrec.train.step import create_train_state, dense_optimizer, make_train_step

  train = load_splits(DataConfig(source=FLAGS.data, synthetic_rows=FLAGS.synthetic_rows)).train
  bs = FLAGS.batch_size
  per_epoch = loader.num_batches(len(train), bs)

  def batches(count):
    epoch = 0
    while count > 0:
      for batch in loader.iterate_batches(train, bs, shuffle=True, seed=0, epoch=epoch):
        yield batch
        count -= 1
        if count == 0:
          return
      epoch += 1

  stream = loader.prefetch_to_device(batches(FLAGS.loader_batches + 5))
  for _ in range(5):  # warm-up
    jax.block_until_ready(next(stream))
  start = time.perf_counter()
  n = 0
  for batch in stream:
    jax.block_until_ready(batch)
    n += 1
  loader_rate = n * bs / (time.perf_counter() - start)

  model = CTRModel.create(ModelConfig(), EmbeddingConfig(), train.vocab_sizes,
                          num_dense=train.num_dense)
  tx = dense_optimizer("sgd", 0.1)
  table_opt = sparse.create("sgd", 0.1)
  init_key, dropout_key = jax.random.split(jax.random.key(0))
  state = create_train_state(model, init_key, tx, table_opt)
  step = make_train_step(model, tx, table_opt, dropout_key)
  cached = [jax.device_put(b) for b in batches(min(FLAGS.step_batches, per_epoch))]
  state, _ = step(state, cached[0])  # compile
  jax.block_until_ready(state.step)
  start = time.perf_counter()
  for i in range(FLAGS.step_batches):
    state, _ = step(state, cached[i % len(cached)])
  jax.block_until_ready(state.step)
  step_rate = FLAGS.step_batches * bs / (time.perf_counter() - start)
  print(f"{len(train):,} train rows, batch {bs}, device {jax.devices()[0].device_kind}")
  print(f"loader alone (shuffled, prefetched to device): {loader_rate:,.0f} examples/s")
  print(f"train step alone (DLRM defaults):              {step_rate:,.0f} examples/s")
  print(f"loader / step: {loader_rate / step_rate:.1f}x")


if __name__ == "__main__":
  cli.run(main)
