"""Embedding strategies: qr uniqueness and shapes, sparse updates, parameter counts, mixed dims."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.synthetic import KAGGLE_CARDINALITIES
from jaxrec.layers.embeddings import (EmbeddingConfig, EmbeddingLayout, FieldEmbeddings, lookup,
                                      mixed_dimensions)
from jaxrec.models import CTRModel, ModelConfig
from jaxrec.train import sparse


def _qr(vocab, op="mult", c=4, dim=6, threshold=4, first_order=False):
  return EmbeddingLayout(EmbeddingConfig(kind="qr", dim=dim, qr_collisions=c, qr_operation=op,
                                         qr_threshold=threshold, first_order=first_order),
                         tuple(vocab))


def _field_vectors(layout, tables, cat, params=None):
  module = FieldEmbeddings(layout)
  rows = lookup(tables, layout.row_ids(cat))
  if params is None:
    params = module.init(jax.random.key(1), rows)
  return module.apply(params, rows)


@pytest.mark.parametrize("op", ["mult", "add", "concat"])
def test_qr_gives_distinct_vectors_for_distinct_ids(op):
  layout = _qr((3, 37), op=op)
  tables = layout.init_tables(jax.random.key(0))
  ids = np.arange(37)
  cat = np.stack([ids % 3, ids], axis=1)
  row = layout.row_ids(cat)
  # Complementary partitions: (quotient row, remainder row) identifies the id ...
  pairs = set(zip(np.asarray(row["quotient"][:, 0]), np.asarray(row["remainder"][:, 0])))
  assert len(pairs) == 37
  # ... though each partition alone collides.
  assert len(set(np.asarray(row["quotient"][:, 0]))) == 10
  assert len(set(np.asarray(row["remainder"][:, 0]))) == 4
  vectors = np.asarray(_field_vectors(layout, tables, cat)[:, 1])
  distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
  assert distances[~np.eye(37, dtype=bool)].min() > 1e-4


def test_qr_row_ids_and_small_tables_stay_whole():
  layout = _qr((3, 37, 10), c=4, threshold=4, first_order=True)
  assert layout.table_shapes() == {"embedding": (3, 6), "quotient": (10 + 3, 6),
                                   "remainder": (8, 6), "first_order": (3 + 10 + 3, 1)}
  ids = layout.row_ids(np.array([[2, 30, 9]]))
  np.testing.assert_array_equal(ids["embedding"], [[2]])
  np.testing.assert_array_equal(ids["quotient"], [[30 // 4, 10 + 9 // 4]])
  np.testing.assert_array_equal(ids["remainder"], [[30 % 4, 4 + 9 % 4]])
  np.testing.assert_array_equal(ids["first_order"], [[2, 3 + 30 // 4, 13 + 9 // 4]])


def test_qr_concat_output_has_the_stated_dim():
  layout = _qr((3, 37), op="concat", dim=7)
  assert layout.qr_widths == (4, 3)
  assert layout.table_shapes()["quotient"] == (10, 4)
  assert layout.table_shapes()["remainder"] == (4, 3)
  tables = layout.init_tables(jax.random.key(0))
  cat = np.array([[1, 30], [2, 5]])
  out = _field_vectors(layout, tables, cat)
  assert out.shape == (2, 2, 7)
  np.testing.assert_array_equal(out[0, 1, :4], tables["quotient"][30 // 4])
  np.testing.assert_array_equal(out[0, 1, 4:], tables["remainder"][30 % 4])
  np.testing.assert_array_equal(out[1, 0], tables["embedding"][2])


@pytest.mark.parametrize("op", ["mult", "add", "concat"])
def test_sparse_updates_of_both_qr_tables_equal_dense_update(op):
  layout = _qr((3, 37, 50), op=op, first_order=True)
  tables = layout.init_tables(jax.random.key(0))
  tables["first_order"] = tables["first_order"] + 0.1
  rng = np.random.default_rng(0)
  cat = jnp.asarray(np.stack([rng.integers(0, n, 16) for n in layout.vocab_sizes], 1), jnp.int32)
  target = jnp.asarray(rng.normal(size=(16, 3, 6)), jnp.float32)
  module = FieldEmbeddings(layout)
  ids = layout.row_ids(cat)
  params = module.init(jax.random.key(1), lookup(tables, ids))

  def loss_of_rows(rows):
    out = module.apply(params, rows)
    return jnp.sum((out - target) ** 2) + jnp.sum(rows["first_order"] ** 2)

  lr, eps = 0.05, 1e-8
  dense_grads = jax.jit(jax.grad(lambda t: loss_of_rows(lookup(t, ids))))(tables)
  row_grads = jax.jit(jax.grad(loss_of_rows))(lookup(tables, ids))
  for optimizer in ("sgd", "rowwise_adagrad"):
    opt = sparse.create(optimizer, lr)
    got, _ = jax.jit(opt.update)(tables, opt.init(tables), ids, row_grads)
    for name in ("quotient", "remainder", "embedding", "first_order"):
      g = dense_grads[name]
      assert np.abs(np.asarray(g)).sum() > 0, name
      if optimizer == "sgd":
        expected = tables[name] - lr * g
      else:
        expected = tables[name] - lr * g / (jnp.sqrt(jnp.mean(g**2, axis=1)) + eps)[:, None]
      np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{optimizer} {name}")
    assert not np.allclose(got["remainder"], tables["remainder"])


def test_hash_and_qr_param_counts_match_formulas():
  vocab = (10, 300, 1001)
  # hash: sum(min(n, B)) * d
  hashed = EmbeddingLayout(EmbeddingConfig(kind="hash", dim=8, hash_buckets=100), vocab)
  assert hashed.param_count() == (10 + 100 + 100) * 8
  # qr: small n * d + sum over big tables of ceil(n / c) * d_q + c * d_r
  assert _qr(vocab, op="mult", c=4, dim=8, threshold=200).param_count() == (
      10 * 8 + (75 + 251) * 8 + 2 * 4 * 8)
  assert _qr(vocab, op="concat", c=4, dim=8, threshold=200).param_count() == (
      10 * 8 + (75 + 251) * 4 + 2 * 4 * 4)
  # and the arrays actually built agree with the count
  for layout in (hashed, _qr(vocab, op="concat", c=3, dim=5, threshold=200, first_order=True)):
    tables = layout.init_tables(jax.random.key(0))
    assert sum(t.size for t in tables.values()) == layout.param_count()


@pytest.mark.parametrize("c", [2, 4, 8])
def test_qr_kaggle_param_count_from_shapes_only(c):
  layout = _qr(KAGGLE_CARDINALITIES, c=c, dim=16, threshold=200)
  shapes = jax.eval_shape(layout.init_tables, jax.random.key(0))  # allocates nothing
  small = [n for n in KAGGLE_CARDINALITIES if n <= 200]
  big = [n for n in KAGGLE_CARDINALITIES if n > 200]
  expected = 16 * (sum(small) + sum(math.ceil(n / c) for n in big) + c * len(big))
  assert sum(math.prod(s.shape) for s in shapes.values()) == expected == layout.param_count()
  assert EmbeddingLayout(EmbeddingConfig(dim=16), KAGGLE_CARDINALITIES).param_count() == 540_201_232


def test_mixed_dimensions_match_the_alpha_power_rule():
  # n_min = 3 gets d0 = 8; others round(8 * (3 / n) ** 0.3), at least 1.
  assert mixed_dimensions((50, 3, 7, 1000), 8, 0.3) == (3, 8, 6, 1)
  assert mixed_dimensions((50, 3, 7, 1000), 8, 0.3, round_pow2=True) == (4, 8, 8, 1)
  assert mixed_dimensions((50, 3, 7, 1000), 8, 0.0) == (8, 8, 8, 8)
  # popularity divides the rows: 50 rows queried 50x per example count as 1 row,
  # so that table gets d0 and the 3-row one round(8 * (1 / 3) ** 0.3) = 6
  assert mixed_dimensions((50, 3), 8, 0.3, popularity=(50, 1)) == (8, 6)


def test_mixed_dim_projection_shapes_and_field_order():
  config = EmbeddingConfig(kind="mixed_dim", dim=8, md_threshold=5, first_order=True)
  model = CTRModel.create(ModelConfig(bottom_mlp=(16, 8), top_mlp=(16, 1)), config,
                          (3, 50, 7, 1000))
  layout = model.layout
  assert layout.field_dims == (8, 3, 6, 1)
  variables = model.init(jax.random.key(0))
  assert {k: v.shape for k, v in variables["tables"].items()} == {
      "embedding": (3, 8), "embedding_dim6": (7, 6), "embedding_dim3": (50, 3),
      "embedding_dim1": (1000, 1), "first_order": (1060, 1)}
  projections = variables["params"]["embedding"]
  assert {k: v.shape for k, v in projections.items()} == layout.projection_shapes() == {
      "projection_dim6": (1, 6, 8), "projection_dim3": (1, 3, 8), "projection_dim1": (1, 1, 8)}
  assert layout.param_count() == 3 * 8 + 7 * 6 + 50 * 3 + 1000 + 1060 + (6 + 3 + 1) * 8
  cat = np.array([[1, 49, 6, 999], [2, 0, 3, 5]])
  out = _field_vectors(layout, variables["tables"], cat, {"params": projections})
  t = variables["tables"]
  np.testing.assert_allclose(out[0, 0], t["embedding"][1])
  np.testing.assert_allclose(out[0, 1], t["embedding_dim3"][49] @ projections["projection_dim3"][0],
                             rtol=1e-6)
  np.testing.assert_allclose(out[1, 2], t["embedding_dim6"][3] @ projections["projection_dim6"][0],
                             rtol=1e-6)
  np.testing.assert_allclose(out[0, 3],
                             t["embedding_dim1"][999] * projections["projection_dim1"][0, 0],
                             rtol=1e-6)


@pytest.mark.parametrize("kind", ["hash", "qr", "mixed_dim"])  # full: tests/test_train.py
def test_every_kind_trains_with_first_order_rows(kind):
  from jaxrec.train.step import create_train_state, dense_optimizer, make_train_step
  config = EmbeddingConfig(kind=kind, dim=4, hash_buckets=20, first_order=True, qr_threshold=5,
                           md_threshold=5)
  model = CTRModel.create(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)), config, (3, 50, 400))
  rows = lookup(model.layout.init_tables(jax.random.key(0)),
                model.layout.row_ids(np.array([[0, 1, 2], [2, 49, 399]])))
  assert rows["first_order"].shape == (2, 3, 1)
  tx, table_opt = dense_optimizer("adam", 0.01), sparse.rowwise_adagrad(0.1)
  state = create_train_state(model, jax.random.key(0), tx, table_opt)
  before = jax.tree_util.tree_map(np.asarray, state.tables)
  step = make_train_step(model, tx, table_opt, jax.random.key(1))
  batch = {"dense": jnp.ones((4, 13)), "cat": jnp.array([[0, 1, 2], [2, 49, 399]] * 2),
           "label": jnp.array([1.0, 0.0, 1.0, 0.0]), "mask": jnp.ones(4)}
  state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss_sum"]))
  for name, table in state.tables.items():
    changed = np.any(np.asarray(table) != before[name], axis=1)
    if name == "first_order":  # DLRM does not use first-order terms: no gradient
      assert changed.sum() == 0
    else:
      assert 0 < changed.sum() <= 6, name  # only touched rows move


def test_model_size_counts_kaggle_and_terabyte_from_shapes():
  from jaxrec.models import size as model_size
  from jaxrec.models.ctr_model import param_count
  size = model_size.model_size(ModelConfig(), EmbeddingConfig(dim=16), KAGGLE_CARDINALITIES)
  # 33,762,577 rows x 16 plus DLRM's MLPs (13-512-256-64-16, 367-512-256-1)
  assert size["embedding_param_count"] == 540_201_232
  assert size["param_count"] == 540_201_232 + 475_985
  assert size["param_bytes"] == 4 * size["param_count"]
  small = CTRModel.create(ModelConfig(), EmbeddingConfig(dim=16), (5, 7) * 13)
  assert param_count(small.init(jax.random.key(0))["params"]) == 475_985
  tb = model_size.model_size(ModelConfig(bottom_mlp=(512, 256, 64), top_mlp=(512, 512, 256, 1)),
                             EmbeddingConfig(kind="qr", dim=64),
                             model_size.TERABYTE_10M_CARDINALITIES)
  assert tb["table_shapes"]["remainder"] == (4 * 18, 64)  # 18 of 26 tables have > 200 rows
  assert model_size.equal_memory_hash_buckets((10, 300, 1001), 10 + 100 + 100) == 100
