"""AutoInt: the registered model against a loop-by-loop numpy reference, and one train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers import embeddings
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models import CTRModel, ModelConfig
from jaxrec.models.registry import MODELS, default_optimizer

VOCAB = (5,) * 26


def _model(**kwargs):
  config = ModelConfig(name="autoint", attention_layers=2, attention_heads=2,
                       attention_head_dim=3, **kwargs)
  return CTRModel.create(config, EmbeddingConfig(dim=4), VOCAB)


def _inputs(n, seed=0):
  rng = np.random.default_rng(seed)
  dense = rng.exponential(size=(n, 13)).astype(np.float32)
  dense[rng.random((n, 13)) < 0.3] = 0.0
  return jnp.asarray(dense), jnp.asarray(rng.integers(0, 5, size=(n, 26)).astype(np.int32))


def _np_softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _np_autoint(params, dense, fields, heads, head_dim):
  """One example at a time, one head, field and key at a time (Song et al., eqs. 5-8)."""
  out = []
  for b in range(dense.shape[0]):
    x = np.concatenate([dense[b][:, None] * params["dense_embedding"], fields[b]])  # [F, d]
    layer = 0
    while f"interacting_{layer}" in params:
      p = params[f"interacting_{layer}"]
      q, k, v, r = (x @ p[name]["kernel"] for name in ("query", "key", "value", "residual"))
      new = np.zeros_like(r)
      for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        for m in range(x.shape[0]):
          a = _np_softmax(np.array([q[m, cols] @ k[j, cols] for j in range(x.shape[0])]))
          new[m, cols] = sum(a[j] * v[j, cols] for j in range(x.shape[0]))
      x = np.maximum(new + r, 0.0)
      layer += 1
    out.append(x.reshape(-1) @ params["output"]["kernel"][:, 0] + params["output"]["bias"][0])
  return np.array(out)


def test_autoint_matches_numpy_reference():
  model = _model()
  variables = model.init(jax.random.key(0))
  dense, cat = _inputs(3)
  logits = np.asarray(jax.jit(model.apply)(variables, dense, cat))
  rows = embeddings.lookup(variables["tables"], model.layout.row_ids(cat))
  fields = np.asarray(rows["embedding"])  # [3, 26, 4]: a full embedding's row per field
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  want = _np_autoint(params, np.asarray(dense), fields, heads=2, head_dim=3)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_autoint_is_registered_with_its_facts():
  assert "autoint" in MODELS and default_optimizer("autoint") == ("adam", 1e-3)
  assert ModelConfig(name="autoint").own().attention_heads == 2
  with pytest.raises(ValueError, match="attention_heads must be >= 1"):
    ModelConfig(name="autoint", attention_heads=0)


def test_autoint_trains():
  """The generic step lowers the loss on a tiny fixed batch (gradients reach every map)."""
  import optax
  from jaxrec.train import sparse
  from jaxrec.train.step import create_train_state, make_train_step

  model = _model()
  tx, table_opt = optax.adam(1e-2), sparse.create("rowwise_adagrad", 0.05)
  state = create_train_state(model, jax.random.key(1), tx, table_opt)
  dense, cat = _inputs(64, seed=1)
  label = (np.asarray(dense)[:, 0] > 0.7).astype(np.float32)
  batch = {"dense": dense, "cat": cat, "label": jnp.asarray(label), "mask": jnp.ones(64)}
  step = make_train_step(model, tx, table_opt, jax.random.key(2))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss_sum"]) / 64)
  assert losses[-1] < 0.8 * losses[0], losses
