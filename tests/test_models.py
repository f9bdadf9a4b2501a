import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.embeddings import EmbeddingConfig, EmbeddingLayout
from jaxrec.models import CTRModel, ModelConfig


def test_dlrm_shapes_and_param_tree():
  model = CTRModel.create(ModelConfig(), EmbeddingConfig(dim=16), (7,) * 26)
  variables = model.init(jax.random.key(0))
  assert variables["tables"]["embedding"].shape == (7 * 26, 16)
  assert variables["params"]["top"]["layers_0"]["kernel"].shape == (367, 512)
  assert variables["params"]["bottom"]["layers_0"]["kernel"].shape == (13, 512)
  logits = model.apply(variables, jnp.ones((5, 13)), jnp.zeros((5, 26), jnp.int32))
  assert logits.shape == (5,)


def test_stacked_offsets_select_each_columns_rows():
  layout = EmbeddingLayout(EmbeddingConfig(dim=2), (3, 5, 2))
  ids = layout.row_ids(jnp.array([[2, 4, 1]]))["embedding"]
  np.testing.assert_array_equal(ids, [[2, 3 + 4, 8 + 1]])


def test_hash_embedding_rows():
  layout = EmbeddingLayout(EmbeddingConfig(kind="hash", dim=2, hash_buckets=4), (3, 10))
  assert layout.table_shapes()["embedding"] == (3 + 4, 2)
  np.testing.assert_array_equal(layout.row_ids(jnp.array([[2, 9]]))["embedding"], [[2, 3 + 1]])


def test_cat_interaction_dlrm():
  model = CTRModel.create(ModelConfig(interaction="cat", bottom_mlp=(8, 4)),
                          EmbeddingConfig(dim=4), (3,) * 26)
  variables = model.init(jax.random.key(1))
  assert variables["params"]["top"]["layers_0"]["kernel"].shape == (4 + 26 * 4, 512)
