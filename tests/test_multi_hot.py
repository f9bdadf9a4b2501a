"""Multi-hot (bag) fields: pooled lookups, the sparse update against dense autodiff
(duplicates summed, SGD and row-wise Adagrad), every model, and int64 row offsets."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.layers import embeddings
from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.models import registry
from jaxrec.models.ctr_model import CTRModel
from jaxrec.train import sparse

VOCAB = (5, 7, 6)
BAGS = (1, 3, 4)            # field 0 single-hot, fields 1 and 2 bags
POOLINGS = ("sum", "sum", "mean")
# Slots: [f0 | f1 f1 f1 | f2 f2 f2 f2]; -1 = unused slot.
CAT = np.array([[1, 2, 2, -1, 3, 3, 0, -1],     # duplicate ids inside bags
                [4, -1, -1, -1, -1, -1, -1, -1],  # two empty bags
                [1, 6, 5, 2, 5, -1, -1, -1]], np.int32)


def _layout(**kw):
  return EmbeddingLayout(EmbeddingConfig(dim=4, **kw), VOCAB, BAGS, POOLINGS)


def test_pooled_rows_sum_mean_and_empty_bag():
  layout = _layout()
  tables = layout.init_tables(jax.random.key(0))
  pooled = layout.pool(embeddings.lookup(tables, layout.row_ids(CAT)), CAT)["embedding"]
  table = np.asarray(tables["embedding"])
  off = np.asarray(layout.tables[0].offsets)
  np.testing.assert_allclose(pooled[0, 0], table[off[0] + 1], rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 1], 2 * table[off[1] + 2], rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 2], (2 * table[off[2] + 3] + table[off[2]]) / 3, rtol=1e-6)
  np.testing.assert_array_equal(pooled[1, 1:], 0.0)  # empty bags pool to zero
  assert pooled.shape == (3, 3, 4)


def _dense_reference_loss(layout, table_values, cat, weights):
  """Loss through a dense gather of whole tables (autodiff w.r.t. the tables)."""
  def loss(tables):
    rows = {k: jnp.take(t, layout.row_ids(cat)[k], axis=0, mode="fill", fill_value=0)
            for k, t in tables.items()}
    pooled = layout.pool(rows, cat)
    return sum(jnp.sum(jnp.tanh(v) * weights[k]) for k, v in pooled.items())
  return loss


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("kind", ["full", "qr"])
def test_sparse_update_equals_dense_gradient_update(optimizer, kind):
  kw = {"qr_threshold": 5, "qr_collisions": 2} if kind == "qr" else {}
  layout = _layout(kind=kind, first_order=True, **kw)
  tables = layout.init_tables(jax.random.key(1))
  weights = {spec.name: jax.random.normal(jax.random.key(i + 7), (3, len(spec.fields), spec.width))
             for i, spec in enumerate(layout.tables)}
  loss = _dense_reference_loss(layout, tables, CAT, weights)
  dense_grads = jax.grad(loss)(tables)

  # The library's way: gradients w.r.t. the gathered rows, then a sparse update.
  ids = layout.row_ids(CAT)
  rows = embeddings.lookup(tables, ids)
  row_loss = lambda r: sum(jnp.sum(jnp.tanh(v) * weights[k])
                           for k, v in layout.pool(r, CAT).items())
  row_grads = jax.grad(row_loss)(rows)
  opt = sparse.create(optimizer, 0.1)
  state = opt.init(tables)
  new_tables, new_state = opt.update(tables, state, ids, row_grads)

  for name, table in tables.items():
    g = dense_grads[name]
    if optimizer == "sgd":
      want = table - 0.1 * g
    else:  # dense row-wise Adagrad: untouched rows see a zero gradient
      acc = state[name] + jnp.mean(g**2, axis=1)
      want = table - 0.1 * g / (jnp.sqrt(acc) + 1e-8)[:, None]
      np.testing.assert_allclose(new_state[name], acc, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new_tables[name], want, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(dense_grads["embedding"])).sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(registry.MODELS))
def test_every_model_trains_a_step_on_bags(name):
  from jaxrec.train import step as step_lib
  config = registry.ModelConfig(name=name, bottom_mlp=(8, 4), top_mlp=(8, 1), deep_mlp=(8,))
  model = CTRModel.create(config, EmbeddingConfig(dim=4), VOCAB, num_dense=0,
                          bag_lengths=BAGS, poolings=POOLINGS)
  state = step_lib.create_train_state(model, jax.random.key(0), optax.sgd(0.1),
                                      sparse.create("rowwise_adagrad", 0.1))
  batch = {"dense": np.zeros((3, 0), np.float32), "cat": CAT,
           "label": np.array([1, 0, 1], np.float32), "mask": np.ones(3, np.float32)}
  step = step_lib.make_train_step(model, optax.sgd(0.1), sparse.create("rowwise_adagrad", 0.1),
                                  jax.random.key(1))
  before = np.asarray(state.tables["embedding"]).copy()
  state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss_sum"]))
  changed = np.flatnonzero(np.any(np.asarray(state.tables["embedding"]) != before, axis=1))
  off = np.asarray(model.layout.tables[0].offsets)
  touched = {int(off[f] + i) for f, (s, n) in enumerate(zip((0, 1, 4), BAGS))
             for row in CAT for i in row[s:s + n] if i >= 0}
  assert set(changed.tolist()) <= touched and changed.size > 0


def test_int64_offsets_or_a_clear_error():
  sizes = (1_500_000_000, 1_000_000_000, 7)
  layout = EmbeddingLayout(EmbeddingConfig(dim=2), sizes)
  assert layout.tables[0].offsets.tolist() == [0, 1_500_000_000, 2_500_000_000]
  assert layout.offsets.dtype == np.int64
  if not jax.config.jax_enable_x64:
    with pytest.raises(ValueError, match="'embedding' stacks 2,500,000,007 rows.*JAX_ENABLE_X64"):
      layout.row_ids(np.zeros((1, 3), np.int32))
  with jax.enable_x64(True):
    layout = EmbeddingLayout(EmbeddingConfig(dim=2), sizes)
    ids = layout.row_ids(np.array([[5, 6, 2]], np.int32))["embedding"]
    assert ids.dtype == jnp.int64
    assert ids.tolist() == [[5, 1_500_000_006, 2_500_000_002]]
  small = EmbeddingLayout(EmbeddingConfig(dim=2), (10, 20))
  assert small.row_ids(np.array([[1, 2]]))["embedding"].dtype == jnp.int32


@pytest.mark.slow
def test_attention_heatmap_takes_field_names_from_the_data():
  from jaxrec.data.dataset import CTRDataset
  from jaxrec.models.attention_map import mean_attention
  config = registry.ModelConfig(name="afm_classic", attention_factor=4, dropout=0.0)
  model = CTRModel.create(config, EmbeddingConfig(dim=4), VOCAB, num_dense=0,
                          bag_lengths=BAGS, poolings=POOLINGS)
  data = CTRDataset(dense=np.zeros((3, 0), np.float32), cat=CAT, label=np.ones(3, np.float32),
                    vocab_sizes=VOCAB, dense_names=(), sparse_names=("site", "tags", "history"),
                    bag_lengths=BAGS, poolings=POOLINGS)
  attention = mean_attention(model, model.init(jax.random.key(0)), data)
  assert attention.names == ("site", "tags", "history") and attention.matrix.shape == (3, 3)
  np.testing.assert_allclose(attention.pair_weights.sum(), 1.0, rtol=1e-5)
