"""The fused CPU kernels (jaxrec.kernels.cpu) against the layers' XLA formulation.

Each kernel's forward values and VJP (the layer called with ``kernels=True``)
are compared with the same layer's XLA formulation (``kernels=False``), over
widths, field counts (including the AFM path for more than 32 fields) and batch
sizes that do not fill the kernels' 64-example chunks.
"""

import functools
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


def _ffi_targets(fn, *args) -> set[str]:
  """Names of the FFI custom calls in the jaxpr of fn(*args) (traced afresh)."""
  found = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "ffi_call":
        found.add(eqn.params["target_name"])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
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
  """fn(*args, kernels=True)'s values and VJP equal those of fn(*args, kernels=False).

  Up to float32 rounding: the absolute tolerance scales with each output's largest
  entry (parameter gradients sum thousands of pair terms in another order).
  """
  fused_fn = functools.partial(fn, kernels=True)
  xla_fn = functools.partial(fn, kernels=False)
  targets = _ffi_targets(lambda *a: _value_and_vjp(fused_fn, a), *args)  # forward and backward
  assert bool(targets) == expect_targets, targets
  assert not _ffi_targets(lambda *a: _value_and_vjp(xla_fn, a), *args)
  fused = _value_and_vjp(jax.jit(fused_fn), args)
  reference = _value_and_vjp(jax.jit(xla_fn), args)
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
  targets = _compare(lambda x, f, kernels: interactions.dot_interaction(
      x, f, self_interaction, kernels), (x, fields))
  assert targets == {"jaxrec_dot_interaction_fwd", "jaxrec_dot_interaction_bwd"}


def test_dot_interaction_unsupported_width_uses_xla():
  x = jnp.ones((4, 12), jnp.float32)
  fields = jnp.ones((4, 3, 12), jnp.float32)
  _compare(interactions.dot_interaction, (x, fields), expect_targets=False)


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

  def pool(fields, kernel, bias, h, kernels):
    return afm.attention_pool(fields, kernel, bias, h, pair_mask, kernels=kernels)

  _compare(pool, (fields, kernel, bias, h))
  pooled, weights = jax.jit(functools.partial(pool, kernels=True))(fields, kernel, bias, h)
  assert float(jnp.max(jnp.abs(weights[0]))) == 0.0 and float(jnp.max(jnp.abs(pooled[0]))) == 0.0
  np.testing.assert_array_equal(np.asarray(weights)[np.asarray(pair_mask) == 0], 0.0)


def test_kernels_are_deterministic():
  """Chunked over threads, the parameter gradients are summed in a fixed order."""
  args = _afm_inputs(300, 27, 16, 16, seed=5)
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(afm.pair_scores(*a, kernels=True))),
                          argnums=(0, 1, 2, 3)))
  first, second = grad(*args), grad(*args)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_model_config_chooses_the_kernels():
  """cpu_kernels on the model config reaches the layers as a static field."""
  from jaxrec.layers.embeddings import EmbeddingConfig
  from jaxrec.models.ctr_model import CTRModel
  from jaxrec.models.registry import ModelConfig

  def targets(cpu_kernels):
    model = CTRModel.create(ModelConfig(bottom_mlp=(8, 16), top_mlp=(4, 1),
                                        cpu_kernels=cpu_kernels),
                            EmbeddingConfig(dim=16), (5,) * 26)
    variables = model.init(jax.random.key(0))
    return _ffi_targets(lambda v: model.apply(v, jnp.ones((4, 13)), jnp.zeros((4, 26), jnp.int32)),
                        variables)

  assert targets(None) == targets(True) == {"jaxrec_dot_interaction_fwd"}
  assert not targets(False)


def test_matmul_flops_count_kernels_as_their_matmuls():
  fields, kernel, bias, h = _afm_inputs(8, 27, 16, 16)
  x = fields[:, 0]

  def loss(x, fields, kernel, bias, h, kernels):
    pooled, _ = afm.attention_pool(fields, kernel, bias, h, kernels=kernels)
    dot = interactions.dot_interaction(x, fields[:, 1:], kernels=kernels)
    return jnp.sum(dot) + jnp.sum(pooled)

  grad = lambda kernels: jax.grad(functools.partial(loss, kernels=kernels),
                                  argnums=(0, 1, 2, 3, 4))
  args = (x, fields, kernel, bias, h)
  fused = profiling.matmul_flops(grad(True), *args)
  xla = profiling.matmul_flops(grad(False), *args)
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
      "c.avx512_supported = lambda: None\n"  # skip the cpuinfo check: build and probe
      "sys.exit(0 if c.available() is False and c.resolve(None) is False else 1)\n")
  env = dict(os.environ, JAXREC_KERNEL_CACHE=str(tmp_path))
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert any(name.endswith(".so") for name in os.listdir(tmp_path))  # it was built


def test_no_build_without_avx512(tmp_path):
  """On a CPU without AVX-512 nothing is compiled."""
  code = (
      "import sys\n"
      "import jaxrec.kernels.cpu as c\n"
      "c.avx512_supported = lambda: False\n"
      "c.build = lambda *a, **k: sys.exit(3)\n"
      "sys.exit(0 if c.available() is False and 'AVX-512' in c.unavailable_reason() else 1)\n")
  env = dict(os.environ, JAXREC_KERNEL_CACHE=str(tmp_path))
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert not os.listdir(tmp_path)


def test_no_build_while_tracing():
  """In a fresh process the kernels are built (or found built) when the model is built,
  never while a train step is traced and compiled."""
  code = (
      "import sys, jax, jax.numpy as jnp\n"
      "import jaxrec.kernels.cpu as c\n"
      "from jaxrec.layers.embeddings import EmbeddingConfig\n"
      "from jaxrec.models.ctr_model import CTRModel\n"
      "from jaxrec.models.registry import ModelConfig\n"
      "tracing, builds = [False], []\n"
      "real_build = c.build\n"
      "c.build = lambda *a, **k: builds.append(tracing[0]) or real_build(*a, **k)\n"
      "model = CTRModel.create(ModelConfig(bottom_mlp=(8, 16), top_mlp=(4, 1)),"
      " EmbeddingConfig(dim=16), (5,) * 26)\n"
      "assert model.network.kernels and builds == [False], builds\n"
      "variables = model.init(jax.random.key(0))\n"
      "loss = lambda v: jnp.sum(model.apply(v, jnp.ones((4, 13)), jnp.zeros((4, 26), jnp.int32)))\n"
      "tracing[0] = True\n"
      "jax.jit(jax.grad(loss)).lower(variables).compile()\n"
      "sys.exit(0 if builds == [False] else 1)\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
