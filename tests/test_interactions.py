import numpy as np
import jax
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


def autodiff_dot(x, fields, self_interaction):
  """The plain formulation (autodiff through a static gather): the VJP reference."""
  t = jnp.concatenate([x[:, None, :], fields], axis=1)
  n = t.shape[1]
  li, lj = interactions.pair_indices(n, self_interaction)
  gram = jnp.einsum("bid,bjd->bij", t, t)
  return jnp.concatenate([x, gram.reshape(t.shape[0], n * n)[:, li * n + lj]], axis=1)


def test_dot_interaction_gradient_matches_autodiff_of_the_plain_formulation():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  fields = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3 + 21 + 7,)), jnp.float32)
  for itself in (False, True):
    width = 3 + (28 if itself else 21)
    loss = lambda f: lambda x, e: jnp.sum(jnp.tanh(f(x, e, itself)) * w[:width])
    want = jax.grad(loss(autodiff_dot), argnums=(0, 1))(x, fields)
    got = jax.jit(jax.grad(loss(interactions.dot_interaction), argnums=(0, 1)))(x, fields)
    for g, r in zip(got, want):
      assert float(jnp.max(jnp.abs(r))) > 0.1  # a gradient that can be wrong
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
