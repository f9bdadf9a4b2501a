"""Fused CPU kernels for the pairwise layers, as XLA FFI custom calls.

`interactions.cc` holds per-example kernels for DLRM's dot interaction and AFM's
pair scores and attention-weighted pair sum (each forward and backward). XLA:CPU
runs these layers as batched tiny matmuls and element-wise passes over [B·P, k]
tensors at memory speed; the kernels keep each example's pair work in registers and L1.

The kernels are written for 16-lane float vectors and are used only on CPUs with
AVX-512 (built for AVX2 they were slower than XLA), which is checked before
anything is compiled. ``python -m jaxrec.kernels.build`` compiles the source
ahead of time with the system C++ compiler (``$CXX``, else ``c++``/``g++``) for
this host (``-O3 -march=native``) into a cache directory
(``$JAXREC_KERNEL_CACHE``, else ``~/.cache/jaxrec/kernels``) under a name keyed by
the source, the compiler, the flags, the host CPU and jaxlib; otherwise the first
`available()` call builds it. Where that cannot happen (no AVX-512, no compiler,
a build error, ``JAXREC_CPU_KERNELS=0``) `available()` is False, one message is
logged, and the layers use their XLA formulation, which GPUs always use.

Whether a layer uses the kernels is a static field of the layer (``kernels``),
set from the model config's ``cpu_kernels`` by `resolve` when the network is
built: outside any jit trace, and part of the jitted function's identity (no
global switch read at trace time). Layers only call the registered targets;
nothing is compiled while a function is traced.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import numpy as np

from jaxrec.layers.varying import vary_like

SOURCE = os.path.join(os.path.dirname(__file__), "interactions.cc")
ENABLE_ENV = "JAXREC_CPU_KERNELS"  # "0" turns the kernels off
CACHE_ENV = "JAXREC_KERNEL_CACHE"
COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
# The kernels use 16-lane float vectors; built for narrower ones (AVX2: GCC splits
# them) they lose to XLA's formulation, so they are used only with AVX-512.
REQUIRED_VECTOR_BITS = 512

# FFI target name -> exported handler symbol in interactions.cc.
TARGETS = {
    "jaxrec_dot_interaction_fwd": "JaxrecDotInteractionForward",
    "jaxrec_dot_interaction_bwd": "JaxrecDotInteractionBackward",
    "jaxrec_afm_scores_fwd": "JaxrecAfmScores",
    "jaxrec_afm_scores_bwd": "JaxrecAfmScoresBackward",
    "jaxrec_afm_weighted_sum_fwd": "JaxrecAfmWeightedSum",
    "jaxrec_afm_weighted_sum_bwd": "JaxrecAfmWeightedSumBackward",
}
# Compile-time widths instantiated in interactions.cc (JAXREC_FOR_*WIDTHS).
DOT_WIDTHS = frozenset({4, 8, 16, 32, 64, 128})
WEIGHTED_SUM_WIDTHS = frozenset({4, 8, 16, 32, 64})
AFM_WIDTHS = frozenset({(8, 8), (8, 16), (16, 8), (16, 16), (16, 32), (32, 16), (32, 32)})


def _dot_gram_flops(in_shapes, out_shapes) -> int:
  del out_shapes
  batch, num_fields, dim = in_shapes[1]
  return 2 * batch * (num_fields + 1) ** 2 * dim  # the batched Gram matmul (or G @ t)


def _afm_scores_flops(in_shapes, out_shapes, passes: int) -> int:
  del out_shapes
  batch, num_fields, k = in_shapes[0]
  t = in_shapes[1][1]
  rows = batch * num_fields * (num_fields - 1) // 2
  # Forward: the [N, k] x [k, t] attention matmul and the scores' [N, t] x [t] product;
  # backward: Xᵀ E and E (W diag h)ᵀ, as in the XLA formulation.
  return 2 * rows * k * t * passes + (2 * rows * t if passes == 1 else 0)


def _weighted_sum_flops(in_shapes, out_shapes, passes: int) -> int:
  del out_shapes
  batch, num_fields, k = in_shapes[1]
  # The XLA formulation's batched [F, F] x [F, k] matmuls: one forward, two backward.
  return 2 * batch * num_fields * num_fields * k * passes


# Matmul FLOPs each target stands for (the XLA formulation's dot_generals), read by
# `jaxrec.train.profiling.matmul_flops`: (input shapes, output shapes) -> FLOPs.
MATMUL_FLOPS = {
    "jaxrec_dot_interaction_fwd": _dot_gram_flops,
    "jaxrec_dot_interaction_bwd": _dot_gram_flops,
    "jaxrec_afm_scores_fwd": lambda i, o: _afm_scores_flops(i, o, 1),
    "jaxrec_afm_scores_bwd": lambda i, o: _afm_scores_flops(i, o, 2),
    "jaxrec_afm_weighted_sum_fwd": lambda i, o: _weighted_sum_flops(i, o, 1),
    "jaxrec_afm_weighted_sum_bwd": lambda i, o: _weighted_sum_flops(i, o, 2),
}

_lock = threading.Lock()
_available: bool | None = None  # decided by the first `available()` call
_reason = ""  # why the kernels are unavailable, once decided


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _host_cpu_key() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [line for line in f if line.startswith(("model name", "flags"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return jax.__version__


def avx512_supported() -> bool | None:
  """Whether the host CPU has AVX-512F (from /proc/cpuinfo); None where it cannot tell."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = next((line for line in f if line.startswith("flags")), None)
  except OSError:
    return None
  return None if flags is None else "avx512f" in flags.split()


def _cache_dir() -> str:
  default = os.path.join(os.path.expanduser("~"), ".cache", "jaxrec", "kernels")
  return os.environ.get(CACHE_ENV) or default


def build(compiler: str | None = None, cache_dir: str | None = None) -> str:
  """Compiles interactions.cc for this host (once per cache key); returns the .so path.

  Raises RuntimeError with the compiler's output when the build fails.
  """
  compiler = compiler or _compiler()
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set $CXX or install g++)")
  with open(SOURCE, "rb") as f:
    source = f.read()
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           check=False).stdout
  key = hashlib.sha256(b"\0".join([
      source, version.encode(), " ".join(COMPILE_FLAGS).encode(), _host_cpu_key().encode(),
      _jaxlib_version().encode()])).hexdigest()[:16]
  cache_dir = cache_dir or _cache_dir()
  path = os.path.join(cache_dir, f"interactions-{key}.so")
  if os.path.exists(path):
    return path
  os.makedirs(cache_dir, exist_ok=True)
  # Built under a temporary name and renamed, so concurrent builders never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
  os.close(fd)
  command = [compiler, *COMPILE_FLAGS, "-isystem", jax.ffi.include_dir(), SOURCE, "-o", tmp]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f"building {SOURCE} failed ({' '.join(command)}):\n{result.stderr}")
  os.replace(tmp, path)
  return path


def available() -> bool:
  """Builds (if needed) and registers the kernels once per process; False if impossible.

  Call it outside jit (model builders do, through `resolve`): it may compile.
  """
  global _available, _reason
  with _lock:  # one build and one registration, also when threads build at once
    if _available is None:
      _reason = _load()
      _available = not _reason
      if _reason:
        logging.info("jaxrec CPU kernels unavailable, using the XLA formulation: %s", _reason)
    return _available


def unavailable_reason() -> str:
  """Why `available()` is False ("" when the kernels are loaded)."""
  available()
  return _reason


def _load() -> str:
  """Loads and registers the kernels; "" on success, else the reason they are not used."""
  if os.environ.get(ENABLE_ENV, "1") == "0":
    return f"switched off by {ENABLE_ENV}=0"
  if avx512_supported() is False:  # checked before compiling anything
    return "the CPU has no AVX-512 (the kernels use 16-lane vectors)"
  try:
    library = ctypes.cdll.LoadLibrary(build())
    bits = library.JaxrecVectorBits()
    if bits < REQUIRED_VECTOR_BITS:
      return f"they need AVX-512 (this build targets {bits}-bit vectors)"
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
  except Exception as error:  # noqa: BLE001 - any failure means "use XLA"
    return str(error)
  return ""


def resolve(requested: bool | None) -> bool:
  """A config's ``cpu_kernels`` -> the layers' static ``kernels`` field (call outside jit).

  None: the kernels where they can run (a CPU default backend, built and loaded);
  False: the XLA formulation; True: the kernels, or ValueError saying why not.
  """
  if requested is None:
    return jax.default_backend() == "cpu" and available()
  if requested and not available():
    raise ValueError(f"cpu_kernels=True but the CPU kernels are unavailable: {_reason}")
  return bool(requested)


def _require_loaded() -> None:
  """Layers call this while tracing a kernel call: it never builds."""
  if not _available:
    raise RuntimeError("a layer was built with kernels=True but the CPU kernels are not loaded:"
                       " build models with jaxrec.kernels.cpu.resolve (outside jit)")


def dot_interaction_supported(x: jax.Array, fields: jax.Array) -> bool:
  return (x.dtype == np.float32 and fields.dtype == np.float32 and fields.ndim == 3
          and fields.shape[2] in DOT_WIDTHS)


def afm_scores_supported(fields: jax.Array, kernel: jax.Array) -> bool:
  return (fields.dtype == np.float32 and kernel.dtype == np.float32 and fields.ndim == 3
          and fields.shape[1] >= 2 and (fields.shape[2], kernel.shape[1]) in AFM_WIDTHS)


def weighted_sum_supported(weights: jax.Array, fields: jax.Array) -> bool:
  return (weights.dtype == np.float32 and fields.dtype == np.float32 and fields.ndim == 3
          and fields.shape[1] >= 2 and fields.shape[2] in WEIGHTED_SUM_WIDTHS)


def _struct(shape, dtype=np.float32) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _ffi_call(target: str, result_shapes):
  _require_loaded()
  return jax.ffi.ffi_call(target, result_shapes, vmap_method="sequential")


def _varying(out: jax.Array, *like: jax.Array) -> jax.Array:
  """Inside shard_map, an FFI result varies over the mesh axes its inputs vary over
  (a custom VJP's cotangents must match its inputs' types); a no-op elsewhere."""
  for x in like:
    out = vary_like(out, x)
  return out


def dot_interaction_forward(x: jax.Array, fields: jax.Array, self_interaction: bool) -> jax.Array:
  """[x, lower-triangle Gram of (x, fields...)] -> [B, d + P], as `layers.interactions`."""
  batch, num_fields, dim = fields.shape
  n = num_fields + 1
  pairs = n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2
  call = _ffi_call("jaxrec_dot_interaction_fwd", _struct((batch, dim + pairs)))
  return _varying(call(x, fields, self_interaction=np.int64(self_interaction)), x, fields)


def dot_interaction_backward(x: jax.Array, fields: jax.Array, g: jax.Array,
                             self_interaction: bool) -> tuple[jax.Array, jax.Array]:
  """Cotangents (dx, dfields) of `dot_interaction_forward` for output cotangent g."""
  call = _ffi_call("jaxrec_dot_interaction_bwd", (_struct(x.shape), _struct(fields.shape)))
  dx, dfields = call(x, fields, g, self_interaction=np.int64(self_interaction))
  return _varying(dx, x), _varying(dfields, fields)


def afm_scores_forward(fields: jax.Array, kernel: jax.Array, bias: jax.Array,
                       h: jax.Array) -> jax.Array:
  """Attention scores hᵀ ReLU(Wᵀ(v_i ⊙ v_j) + b) of the pairs i < j (row-major): [B, P]."""
  batch, num_fields, _ = fields.shape
  call = _ffi_call("jaxrec_afm_scores_fwd", _struct((batch, num_fields * (num_fields - 1) // 2)))
  return _varying(call(fields, kernel, bias, h), fields)


def afm_scores_backward(fields: jax.Array, kernel: jax.Array, bias: jax.Array, h: jax.Array,
                        d_scores: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Cotangents (fields, kernel, bias, h) of `afm_scores_forward` for score cotangents [B, P]."""
  call = _ffi_call("jaxrec_afm_scores_bwd",
                   tuple(_struct(x.shape) for x in (fields, kernel, bias, h)))
  grads = call(fields, kernel, bias, h, d_scores)
  return tuple(_varying(g, x) for g, x in zip(grads, (fields, kernel, bias, h)))


def afm_weighted_sum_forward(weights: jax.Array, fields: jax.Array) -> jax.Array:
  """Σ_{i<j} a_ij (v_i ⊙ v_j) for weights [B, P] and fields [B, F, k]: [B, k]."""
  call = _ffi_call("jaxrec_afm_weighted_sum_fwd", _struct((fields.shape[0], fields.shape[2])))
  return _varying(call(weights, fields), weights, fields)


def afm_weighted_sum_backward(weights: jax.Array, fields: jax.Array, g: jax.Array
                              ) -> tuple[jax.Array, jax.Array]:
  """Cotangents (weights, fields) of `afm_weighted_sum_forward` for g [B, k]."""
  call = _ffi_call("jaxrec_afm_weighted_sum_bwd", (_struct(weights.shape), _struct(fields.shape)))
  d_weights, d_fields = call(weights, fields, g)
  return _varying(d_weights, weights), _varying(d_fields, fields)
