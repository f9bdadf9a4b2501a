"""The rank rule, the factorization config and the per-layer plan.

A *layer* is any `jaxrec.layers.mlp.Dense` in a param tree: a dict holding a
2-D ``kernel`` (dense) or factors ``u [m, r]``, ``v [r, n]`` (low-rank). Layers
are named by their path in the tree ("top/layers_0"). Nothing here knows about
particular models: DLRM's MLPs, AFM's attention network and later models are
covered alike. `dense_layer_paths` lists the layers a network builds with
jaxrec's `Dense` (so a foreign module that happens to own a ``kernel`` is left
alone); without it, every dict with a 2-D ``kernel`` counts.

Rank rule (the study's equation 2): an m x n kernel at parameter fraction p
gets the largest integer r with r < p * m * n / (m + n); it stays dense when
r < 1 or when r * (m + n) >= m * n (factors would not be smaller).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec.layers.mlp import Dense, effective_kernel

Params = Mapping[str, Any]

METHODS = ("before", "svd", "nmf", "auto")


@dataclasses.dataclass(frozen=True)
class FactorizeConfig:
  """How to factorize the Dense layers of a model.

  Attributes:
    method: "before" (factors trained from scratch), "svd" or "nmf" (after
      training), "auto" (per-layer rank from validation logloss or energy).
    rank_fraction: p of the rank rule; for "auto" an upper bound on the
      ranks searched (1.0: any rank that saves parameters).
    finetune_epochs: epochs of training after an after-training transform.
    auto_tolerance: "auto" keeps validation logloss <= dense + this.
    auto_energy: if > 0, "auto" instead keeps this share of each kernel's
      spectral energy (sum of squared singular values); no evaluation needed.
    nmf_iterations: multiplicative-update iterations per NMF.
    seed: seed of the "before" factor init.
    layers: layer paths to consider (None: every 2-D kernel in the tree).
    ranks: per-layer ranks as ((path, rank or None), ...). Empty: the rank
      rule decides. Transforms return a config with the ranks they applied,
      so feeding it back reproduces the structure.
  """

  method: str = "svd"
  rank_fraction: float = 0.5
  finetune_epochs: int = 0
  auto_tolerance: float = 1e-3
  auto_energy: float = 0.0
  nmf_iterations: int = 300
  seed: int = 0
  layers: tuple[str, ...] | None = None
  ranks: tuple[tuple[str, int | None], ...] = ()

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"unknown factorize method {self.method!r}; choose from {METHODS}")
    if not 0.0 < self.rank_fraction <= 1.0:
      raise ValueError(f"rank_fraction must be in (0, 1], got {self.rank_fraction}")
    if not 0.0 <= self.auto_energy <= 1.0:
      raise ValueError(f"auto_energy must be in [0, 1], got {self.auto_energy}")


def rank_rule(m: int, n: int, fraction: float) -> int | None:
  """Largest integer r < fraction * m * n / (m + n), or None if the layer stays dense.

  Computed in exact rationals (fraction read from its decimal repr), so
  boundary cases such as p * m * n / (m + n) == 2 give r = 1, not 2.
  """
  p = fractions.Fraction(repr(float(fraction)))
  bound = p * m * n / (m + n)
  r = math.ceil(bound) - 1
  if r < 1 or r * (m + n) >= m * n:
    return None
  return r


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """One Dense layer: its kernel shape, rank (None = dense) and parameter counts."""

  name: str
  m: int
  n: int
  rank: int | None

  @property
  def params_before(self) -> int:
    return self.m * self.n

  @property
  def params_after(self) -> int:
    return self.params_before if self.rank is None else self.rank * (self.m + self.n)

  def to_json(self) -> dict:
    return {"name": self.name, "m": self.m, "n": self.n, "rank": self.rank,
            "params_before": self.params_before, "params_after": self.params_after}


def iter_layers(params: Params, prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
  """(path, layer dict) for every dict holding a 2-D kernel or factors u, v, in tree order."""
  for key, value in params.items():
    if not isinstance(value, Mapping):
      continue
    path = f"{prefix}/{key}" if prefix else str(key)
    kernel = value.get("kernel")
    if (kernel is not None and getattr(kernel, "ndim", 0) == 2) or ("u" in value and "v" in value):
      yield path, value
    else:
      yield from iter_layers(value, path)


def layer_ranks(params: Params) -> dict[str, int | None]:
  """{layer path: rank, or None for a dense layer} of a param tree."""
  return {path: layer_rank(layer) for path, layer in iter_layers(params)}


def layer_shape(layer: Mapping[str, Any]) -> tuple[int, int]:
  if "kernel" in layer:
    return tuple(layer["kernel"].shape)
  return layer["u"].shape[0], layer["v"].shape[1]


def layer_rank(layer: Mapping[str, Any]) -> int | None:
  return int(layer["u"].shape[1]) if "u" in layer else None


def plan(params: Params, config: FactorizeConfig) -> list[LayerPlan]:
  """The per-layer plan: explicit `config.ranks` if given, else the rank rule."""
  explicit = dict(config.ranks)
  out = []
  for path, layer in iter_layers(params):
    if config.layers is not None and path not in config.layers:
      continue
    m, n = layer_shape(layer)
    if explicit:
      rank = explicit.get(path)
      if rank is not None and not 1 <= rank <= min(m, n):
        raise ValueError(f"rank {rank} for layer {path} outside [1, {min(m, n)}]")
    else:
      rank = rank_rule(m, n, config.rank_fraction)
    out.append(LayerPlan(path, m, n, rank))
  return out


def get_layer(params: Params, path: str) -> Mapping[str, Any]:
  node = params
  for key in path.split("/"):
    node = node[key]
  return node


def replace_layer(params: Params, path: str, layer: Mapping[str, Any]) -> dict:
  """A new tree with `path` replaced; only the dicts on the path are copied."""
  head, _, rest = path.partition("/")
  out = dict(params)
  out[head] = replace_layer(params[head], rest, layer) if rest else dict(layer)
  return out


def with_ranks(config: FactorizeConfig, layers: list[LayerPlan]) -> FactorizeConfig:
  return dataclasses.replace(config, ranks=tuple((p.name, p.rank) for p in layers))


def dense_layer_paths(init_fn: Callable[[], Any]) -> tuple[str, ...]:
  """Paths of the jaxrec `Dense` modules that calling `init_fn` creates.

  `init_fn` initialises a network, e.g. ``lambda: model.init(key)``; it runs
  abstractly (`jax.eval_shape`: no FLOPs, no memory for the params) while
  module calls are intercepted. Paths are relative to the ``params`` tree.
  """
  found = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    # Every Dense creates its parameters in `weights` (called by `__call__`, or
    # directly by layers that apply the kernel with their own op, such as AFM's).
    if isinstance(context.module, Dense) and context.method_name == "weights":
      path = "/".join(context.module.path)
      if path not in found:
        found.append(path)
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(init_fn)
  return tuple(found)


def kernel_of(layer: Mapping[str, Any]) -> jax.Array:
  """The (possibly reconstructed) m x n kernel of a layer."""
  return effective_kernel({k: jnp.asarray(v) for k, v in layer.items() if k != "bias"})
