"""Tests for jaxrec.train.profiling: matmul FLOP counts and compile counting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.ctr_model import CTRModel
from jaxrec.models.registry import ModelConfig
from jaxrec.train import profiling, sparse
from jaxrec.train.step import create_train_state, make_train_step


def test_matmul_flops_counts_plain_batched_and_nested_dots():
  a, b = jnp.ones((4, 5)), jnp.ones((5, 6))
  assert profiling.matmul_flops(lambda a, b: a @ b, a, b) == 2 * 4 * 5 * 6
  t = jnp.ones((3, 7, 2))
  assert profiling.matmul_flops(lambda t: jnp.einsum("bid,bjd->bij", t, t), t) == 2 * 3 * 7 * 7 * 2
  nested = jax.jit(lambda a, b: jax.jit(lambda a, b: a @ b)(a, b) @ jnp.ones((6, 2)))
  assert profiling.matmul_flops(nested, a, b) == 2 * 4 * 5 * 6 + 2 * 4 * 6 * 2
  assert profiling.matmul_flops(lambda a: a * 2.0, a) == 0


def test_dlrm_criteo_forward_flops_match_the_layer_shapes():
  model = CTRModel.create(ModelConfig(), EmbeddingConfig(dim=16), (50,) * 26)
  variables = jax.eval_shape(model.init, jax.random.key(0))
  dense = jnp.zeros((8, 13))
  cat = jnp.zeros((8, 26), jnp.int32)
  flops = profiling.matmul_flops(model.apply, variables, dense, cat) / 8
  mlp = 13 * 512 + 512 * 256 + 256 * 64 + 64 * 16 + 367 * 512 + 512 * 256 + 256 * 1
  assert flops == 2 * mlp + 2 * 27 * 27 * 16  # 972,064: the "about 0.95 MFLOP"


def test_train_step_compiles_once_per_batch_shape():
  model = CTRModel.create(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)), EmbeddingConfig(dim=4),
                          (10, 7, 5))
  tx, table_opt = optax.sgd(0.1), sparse.sgd(0.1)
  state = create_train_state(model, jax.random.key(0), tx, table_opt)
  step = make_train_step(model, tx, table_opt, jax.random.key(1))
  rng = np.random.default_rng(0)

  def batch(n):
    return jax.device_put({"dense": rng.random((n, 13), np.float32),
                           "cat": rng.integers(0, 5, (n, 3)).astype(np.int32),
                           "label": (rng.random(n) < 0.5).astype(np.float32),
                           "mask": np.ones(n, np.float32)})

  batches = [batch(6) for _ in range(3)] + [batch(4)]
  with profiling.count_compiles() as compiles:
    for b in batches[:3]:
      state, _ = step(state, b)
    jax.block_until_ready(state)
  assert compiles.count == 1
  with profiling.count_compiles() as compiles:
    state, _ = step(state, batches[3])
    state, _ = step(state, batches[3])
    jax.block_until_ready(state)
  assert compiles.count == 1


def test_cpu_shaped_ops_compute_their_value_and_count_as_the_matmul_they_stand_for():
  from jaxrec.layers import fusion
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  np.testing.assert_allclose(fusion.unrolled_matmul(x, w), x @ w, rtol=1e-5, atol=1e-6)
  odd = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)  # 21 elements: width 1
  np.testing.assert_array_equal(fusion.materialized(odd), odd)
  np.testing.assert_array_equal(fusion.materialized(x), x)
  assert profiling.matmul_flops(fusion.unrolled_matmul, x, w) == 2 * 12 * 5 * 3
  assert profiling.matmul_flops(fusion.materialized, x) == 0
  assert profiling.matmul_flops(lambda a, b: fusion.materialized(a @ b), x, w) == 2 * 12 * 5 * 3
