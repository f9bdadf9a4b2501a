"""Sharded-training checks run in a fresh process with 8 virtual CPU devices.

`tests/test_sharding.py` starts this file with XLA_FLAGS set before jax is
imported (the pytest process already has jax with one device) and asserts on
the JSON it prints:

  python tests/sharded_worker.py equality          # sharded steps == single-device steps
  python tests/sharded_worker.py reshard WORKDIR   # save on 4 devices, resume on 2 and 1
  python tests/sharded_worker.py features WORKDIR  # skip, steps_per_call, svd + fine-tuning
"""

import dataclasses
import json
import os
import sys

import jax
import numpy as np

from jaxrec.data import loader, synthetic
from jaxrec.data.sources import DataConfig
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.ctr_model import CTRModel
from jaxrec.models import registry
from jaxrec.models.registry import MODELS, ModelConfig
from jaxrec.train import sharding, sparse
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.loop import TrainConfig, train_and_evaluate
from jaxrec.train.sharded_step import ShardedTraining
from jaxrec.train.step import create_train_state, dense_optimizer, make_train_step

STEPS = 4


def _max_diff(a, b) -> float:
  return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))),
             default=0.0)


def compare(model_config, embedding, optimizer, table_optimizer, mesh_config, data):
  """Runs STEPS steps on one device and on a mesh from the same init; reports differences."""
  embedding = registry.embedding_config_for(model_config, embedding)
  model = CTRModel.create(model_config, embedding, data.vocab_sizes, data.num_dense,
                          bag_lengths=data.bag_lengths, poolings=data.poolings)
  tx = dense_optimizer(optimizer, 0.05)
  table_opt = sparse.create(table_optimizer, 0.05)
  regularizer = registry.build_regularizer(model_config)
  init_key, dropout_key = jax.random.split(jax.random.key(0))
  single = create_train_state(model, init_key, tx, table_opt)
  step = make_train_step(model, tx, table_opt, dropout_key, regularizer=regularizer)
  mesh = sharding.make_mesh(mesh_config)
  sharded = ShardedTraining(mesh, model, tx, table_opt, dropout_key, regularizer)
  state = sharded.init_state(init_key)
  losses = []
  batches = loader.iterate_batches(data, 64, shuffle=True, seed=1)
  for _, batch in zip(range(STEPS), batches):
    single, m1 = step(single, batch)
    state, m2 = sharded.train_step(state, sharded.put_batch(batch))
    losses.append([float(m1["loss_sum"]), float(m2["loss_sum"])])
  tables = {name: np.asarray(t) for name, t in single.tables.items()}
  return {
      "model": model_config.name, "embedding": embedding.kind,
      "bags": data.bag_lengths is not None,
      "compute_dtype": model_config.compute_dtype,
      "regularized": regularizer is not None, "mesh": str(mesh_config),
      "optimizer": f"{optimizer}/{table_optimizer}", "losses": losses,
      "param_diff": _max_diff(single.params, state.params),
      "param_scale": _max_diff(single.params, jax.tree_util.tree_map(np.zeros_like, single.params)),
      "table_diff": _max_diff(tables, sharded.unpadded_tables(state.tables)),
      "table_moved": _max_diff(
          tables, sharded.unpadded_tables(sharded.init_state(init_key).tables)),
      "tables": {name: {"rows": sharded.logical_rows[name], "global_rows": int(t.shape[0]),
                        "shard_rows": sorted({int(s.data.shape[0]) for s in t.addressable_shards}),
                        "num_shards": len(t.addressable_shards),
                        "spec": str(t.sharding.spec)}
                 for name, t in state.tables.items()},
      "memory_report": sharded.memory_report(),
      "param_shards_replicated": all(
          x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(state.params)),
  }


def equality():
  data = synthetic.generate(synthetic.SyntheticConfig(num_rows=4 * 64, max_vocab=60, seed=0))
  small = dict(bottom_mlp=(16, 8), top_mlp=(16, 1))
  dlrm = ModelConfig(name="dlrm", **small)
  cases = [
      (dlrm, EmbeddingConfig(dim=8), "sgd", "sgd", sharding.MeshConfig(data=2, model=4)),
      (dlrm, EmbeddingConfig(dim=8), "adam", "rowwise_adagrad",
       sharding.MeshConfig(data=1, model=8)),
  ]
  # bfloat16 MLPs: their mixed-precision matmul is a custom VJP inside shard_map.
  cases.append((ModelConfig(name="dlrm", compute_dtype="bfloat16", **small), EmbeddingConfig(dim=8),
                "sgd", "sgd", sharding.MeshConfig(data=4, model=2)))
  # Models and embeddings other issues add: checked when they are registered.
  if "afm" in MODELS:  # no dropout: masks are drawn per device; L2 on the attention kernel
    afm = ModelConfig(name="afm", dropout=0.0, attention_l2=0.1, attention_factor=4, **small)
    cases.append((afm, EmbeddingConfig(dim=8), "sgd", "rowwise_adagrad",
                  sharding.MeshConfig(data=4, model=2)))
  from jaxrec.layers import embeddings
  if "qr" in embeddings.EMBEDDING_KINDS:  # quotient and remainder tables, both row-sharded
    qr = EmbeddingConfig(kind="qr", dim=8, qr_collisions=4, qr_threshold=20)
    cases.append((dlrm, qr, "sgd", "rowwise_adagrad", sharding.MeshConfig(data=2, model=4)))
  results = [compare(*case, data) for case in cases]
  # A multi-hot field (mean-pooled bag of 3 slots, some unused) on a mesh.
  rng = np.random.default_rng(0)
  first = np.asarray(data.cat[:, 0])
  n0 = data.vocab_sizes[0]
  bag = np.stack([first, (first * 7 + 3) % n0,
                  np.where(rng.random(len(first)) < 0.5, -1, np.asarray(data.cat[:, 1]) % n0)], 1)
  bag_data = dataclasses.replace(
      data, cat=np.concatenate([bag, np.asarray(data.cat[:, 1:])], 1).astype(np.int32),
      bag_lengths=(3,) + (1,) * (len(data.vocab_sizes) - 1),
      poolings=("mean",) + ("sum",) * (len(data.vocab_sizes) - 1))
  results.append(compare(dlrm, EmbeddingConfig(dim=8), "sgd", "rowwise_adagrad",
                         sharding.MeshConfig(data=2, model=4), bag_data))
  return results


def reshard(workdir):
  """Saves on 4 devices, resumes on 2, then on 1; compares with one uninterrupted device."""
  config = TrainConfig(
      model=ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)),
      embedding=EmbeddingConfig(dim=8),
      data=DataConfig(synthetic_rows=1000, synthetic_max_vocab=90),
      optimizer="adam", batch_size=32, epochs=1, checkpoint_every=5, log_every=1000,
      eval_batch_size=256)
  full = train_and_evaluate(config, os.path.join(workdir, "one-device"))
  run = os.path.join(workdir, "resharded")
  steps = []
  for mesh, max_steps in ((sharding.MeshConfig(data=1, model=4), 10),
                          (sharding.MeshConfig(data=1, model=2), 20), (None, None)):
    report = train_and_evaluate(dataclasses.replace(config, mesh=mesh, max_steps=max_steps), run,
                                resume=mesh is None or max_steps > 10)
    steps.append(report["steps"])
  a, _ = Checkpointer(os.path.join(workdir, "one-device", "checkpoints")).restore()
  b, _ = Checkpointer(os.path.join(run, "checkpoints")).restore()
  history = [h["step"] for h in map(json.loads, open(os.path.join(run, "history.jsonl")))
             if h["split"] == "validation"]
  return {"steps": steps, "full_steps": full["steps"], "max_diff": _max_diff(a, b),
          "shapes_equal": [np.shape(x) for x in jax.tree_util.tree_leaves(a)]
                          == [np.shape(x) for x in jax.tree_util.tree_leaves(b)],
          "auc": [full["auc"], report["auc"]], "history_steps": history,
          "num_devices": jax.device_count()}


def features(workdir):
  """One run with every loop feature on data:2,model:2 and on one device: a batch with a
  NaN skipped on device, 4 steps per call, SVD after training and a fine-tuning epoch."""
  from jaxrec.factorize.rank import FactorizeConfig
  from jaxrec.train import loop

  original = loop.load_splits_and_vocabulary

  def poisoned(config):
    splits, vocabulary = original(config)
    dense = splits.train.dense.copy()
    dense[7, 2] = np.nan
    train = dataclasses.replace(splits.train, dense=dense)
    return dataclasses.replace(splits, train=train), vocabulary

  loop.load_splits_and_vocabulary = poisoned
  config = TrainConfig(
      model=ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)),
      embedding=EmbeddingConfig(dim=8), data=DataConfig(synthetic_rows=640, synthetic_max_vocab=90),
      optimizer="sgd", learning_rate=0.05, batch_size=32, epochs=1, log_every=1000,
      eval_batch_size=256, on_nonfinite="skip", steps_per_call=4,
      factorize=FactorizeConfig(method="svd", rank_fraction=0.5, finetune_epochs=1))
  reports, states, history = [], [], []
  for mesh in (None, sharding.MeshConfig(data=2, model=2)):
    run = os.path.join(workdir, "mesh" if mesh else "one-device")
    reports.append(train_and_evaluate(dataclasses.replace(config, mesh=mesh), run))
    states.append(Checkpointer(os.path.join(run, "checkpoints")).restore()[0])
    history.append([r["step"] for r in map(json.loads, open(os.path.join(run, "history.jsonl")))
                    if r["split"] == "validation"])
  keys = ("steps", "skipped_nonfinite_batches", "layer_ranks", "num_devices", "auc", "logloss",
          "prefactorize_auc", "prefinetune_auc")
  one, mesh = states
  tables = {k: np.asarray(v)[:np.asarray(one["tables"][k]).shape[0]]
            for k, v in mesh["tables"].items()}
  return {"reports": [{k: r.get(k) for k in keys} for r in reports], "history": history,
          "param_diff": _max_diff(one["params"], mesh["params"]),
          "param_scale": _max_diff(one["params"], jax.tree_util.tree_map(np.zeros_like,
                                                                         one["params"])),
          "factorized": sorted(k for k in one["params"]["top"]["layers_0"]),
          "table_diff": _max_diff(one["tables"], tables)}


if __name__ == "__main__":
  what = sys.argv[1]
  result = (equality() if what == "equality" else
            reshard(sys.argv[2]) if what == "reshard" else features(sys.argv[2]))
  print("RESULT " + json.dumps(result))
