"""The fused CPU kernels (jaxrec.kernels.cpu) against the layers' XLA formulation.

Each kernel's forward values and VJP are compared with the same layer traced
under `cpu_kernels.disabled()`, over widths, field counts (including the AFM
path for more than 32 fields) and batch sizes that do not fill the kernels'
64-example chunks.
"""

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import cpu as cpu_kernels
from jaxrec.layers import afm, interactions
from jaxrec.train import profiling

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="no C++ compiler: the fused CPU kernels are not built")


def _fresh(fn):
  """A new function object: JAX caches traces per function, and the kernel switches
  act when a function is traced."""
  return lambda *args: fn(*args)


def _ffi_targets(fn, *args) -> set[str]:
  """Names of the FFI custom calls in the jaxpr of fn(*args) (traced afresh)."""
  found = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "ffi_call":
        found.add(eqn.params["target_name"])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(_fresh(fn))(*args).jaxpr)
  return found


def _value_and_vjp(fn, args, cotangent_seed=0):
  out, vjp = jax.vjp(fn, *args)
  leaves = jax.tree_util.tree_leaves(out)
  rng = np.random.default_rng(cotangent_seed)
  cotangents = jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(out),
      [jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype) for leaf in leaves])
  return out, vjp(cotangents)


def _compare(fn, args, rtol=2e-5, atol=2e-5, expect_targets=True):
  """fn's values and VJP with the kernels equal those of its XLA formulation.

  Up to float32 rounding: the absolute tolerance scales with each output's largest
  entry (parameter gradients sum thousands of pair terms in another order).
  """
  targets = _ffi_targets(lambda *a: _value_and_vjp(fn, a), *args)  # forward and backward
  assert bool(targets) == expect_targets, targets
  fused = _value_and_vjp(jax.jit(_fresh(fn)), args)
  with cpu_kernels.disabled():
    assert not _ffi_targets(fn, *args)
    reference = _value_and_vjp(jax.jit(_fresh(fn)), args)
  for got, want in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(reference)):
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol * scale)
  return targets


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("batch,num_fields,dim", [(70, 26, 16), (1, 3, 8), (130, 5, 32)])
def test_dot_interaction_matches_xla(self_interaction, batch, num_fields, dim):
  rng = np.random.default_rng(batch + dim)
  x = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
  fields = jnp.asarray(rng.normal(size=(batch, num_fields, dim)), jnp.float32)
  targets = _compare(lambda x, f: interactions.dot_interaction(x, f, self_interaction),
                     (x, fields))
  assert targets == {"jaxrec_dot_interaction_fwd", "jaxrec_dot_interaction_bwd"}


def test_dot_interaction_unsupported_width_uses_xla():
  x = jnp.ones((4, 12), jnp.float32)
  fields = jnp.ones((4, 3, 12), jnp.float32)
  _compare(lambda x, f: interactions.dot_interaction(x, f), (x, fields), expect_targets=False)


def _afm_inputs(batch, num_fields, k, t, seed=0):
  rng = np.random.default_rng(seed)
  fields = jnp.asarray(rng.normal(size=(batch, num_fields, k)) * 0.5, jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, t)) * 0.3, jnp.float32)
  bias = jnp.asarray(rng.normal(size=(t,)) * 0.1, jnp.float32)
  h = jnp.asarray(rng.normal(size=(t,)), jnp.float32)
  return fields, kernel, bias, h


# 27 fields: DLRM's 26 + the bottom-MLP vector (afm); 39: afm_classic, past the
# 32-field permute path; 2: a single pair.
@pytest.mark.parametrize("batch,num_fields,k,t",
                         [(70, 27, 16, 16), (65, 39, 16, 16), (3, 2, 8, 16), (20, 9, 32, 32)])
def test_afm_pair_scores_match_xla(batch, num_fields, k, t):
  args = _afm_inputs(batch, num_fields, k, t)
  targets = _compare(afm.pair_scores, args)
  assert targets == {"jaxrec_afm_scores_fwd", "jaxrec_afm_scores_bwd"}


@pytest.mark.parametrize("num_fields,k", [(27, 16), (39, 8), (2, 4)])
def test_afm_weighted_pair_sum_matches_xla(num_fields, k):
  rng = np.random.default_rng(num_fields)
  pairs = num_fields * (num_fields - 1) // 2
  weights = jax.nn.softmax(jnp.asarray(rng.normal(size=(67, pairs)), jnp.float32))
  fields = jnp.asarray(rng.normal(size=(67, num_fields, k)), jnp.float32)
  targets = _compare(afm.weighted_pair_sum, (weights, fields))
  assert targets == {"jaxrec_afm_weighted_sum_fwd", "jaxrec_afm_weighted_sum_bwd"}


def test_attention_pool_with_mask_matches_xla():
  fields, kernel, bias, h = _afm_inputs(66, 12, 16, 16, seed=3)
  mask = jnp.asarray(np.random.default_rng(4).random((66, 12)) > 0.3, jnp.float32)
  mask = mask.at[0].set(0.0)  # an example with no present pair: all weights 0
  i, j = afm.upper_pairs(12)
  pair_mask = mask[:, i] * mask[:, j]

  def pool(fields, kernel, bias, h):
    return afm.attention_pool(fields, kernel, bias, h, pair_mask)

  _compare(pool, (fields, kernel, bias, h))
  pooled, weights = jax.jit(pool)(fields, kernel, bias, h)
  assert float(jnp.max(jnp.abs(weights[0]))) == 0.0 and float(jnp.max(jnp.abs(pooled[0]))) == 0.0
  np.testing.assert_array_equal(np.asarray(weights)[np.asarray(pair_mask) == 0], 0.0)


def test_kernels_are_deterministic():
  """Chunked over threads, the parameter gradients are summed in a fixed order."""
  args = _afm_inputs(300, 27, 16, 16, seed=5)
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(afm.pair_scores(*a))), argnums=(0, 1, 2, 3)))
  first, second = grad(*args), grad(*args)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_switches_select_the_xla_formulation():
  x = jnp.ones((4, 16), jnp.float32)
  fields = jnp.ones((4, 26, 16), jnp.float32)
  fn = lambda x, f: interactions.dot_interaction(x, f)
  assert _ffi_targets(fn, x, fields)
  with cpu_kernels.disabled():
    assert not _ffi_targets(fn, x, fields)
  cpu_kernels.set_enabled(False)
  try:
    assert not _ffi_targets(fn, x, fields)
  finally:
    cpu_kernels.set_enabled(True)
  assert _ffi_targets(fn, x, fields)


def test_matmul_flops_count_kernels_as_their_matmuls():
  fields, kernel, bias, h = _afm_inputs(8, 27, 16, 16)
  x = fields[:, 0]

  def loss(x, fields, kernel, bias, h):
    pooled, _ = afm.attention_pool(fields, kernel, bias, h)
    return jnp.sum(interactions.dot_interaction(x, fields[:, 1:])) + jnp.sum(pooled)

  grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
  args = (x, fields, kernel, bias, h)
  fused = profiling.matmul_flops(_fresh(grad), *args)
  with cpu_kernels.disabled():
    xla = profiling.matmul_flops(_fresh(grad), *args)
  assert fused == xla > 0


def test_build_failure_is_reported(tmp_path):
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler|failed"):
    cpu_kernels.build(compiler="/bin/false", cache_dir=str(tmp_path))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_kernels_need_avx512(tmp_path):
  """Built for AVX2 (16-lane vectors split in two, slower than XLA) they stay unused."""
  code = (
      "import logging, sys\n"
      "import jaxrec.kernels.cpu as c\n"
      "c.COMPILE_FLAGS = tuple('-march=x86-64-v3' if f == '-march=native' else f"
      " for f in c.COMPILE_FLAGS)\n"
      "sys.exit(0 if c.available() is False and c.use_kernels() is False else 1)\n")
  env = dict(os.environ, JAXREC_KERNEL_CACHE=str(tmp_path))
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert any(name.endswith(".so") for name in os.listdir(tmp_path))  # it was built
