import numpy as np
import jax.numpy as jnp

from jaxrec.layers import interactions


def naive_dot(x, fields, self_interaction):
  t = np.concatenate([x[:, None], fields], axis=1)
  out = []
  for b in range(t.shape[0]):
    row = [t[b, i] @ t[b, j] for i in range(t.shape[1])
           for j in range(i + (1 if self_interaction else 0))]
    out.append(np.concatenate([x[b], row]))
  return np.stack(out)


def test_dot_interaction_matches_naive_reference_order():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4)).astype(np.float32)
  fields = rng.normal(size=(3, 5, 4)).astype(np.float32)
  for itself in (False, True):
    got = interactions.dot_interaction(jnp.asarray(x), jnp.asarray(fields), itself)
    np.testing.assert_allclose(got, naive_dot(x, fields, itself), rtol=1e-5, atol=1e-5)


def test_dot_interaction_width_is_367_for_criteo():
  x = jnp.ones((2, 16))
  fields = jnp.ones((2, 26, 16))
  assert interactions.dot_interaction(x, fields).shape == (2, 16 + 351)
  assert interactions.cat_interaction(x, fields).shape == (2, 16 + 26 * 16)
