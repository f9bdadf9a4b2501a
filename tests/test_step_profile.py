"""experiments.step_profile: HLO op categories and trace parsing."""

import gzip
import json

import jax
import jax.numpy as jnp

from experiments import step_profile as sp


def test_compiled_ops_get_their_categories():
  def f(table, ids, x, w):
    rows = jnp.take(table, ids, axis=0)
    table = table.at[ids].add(rows)
    return table, jnp.sort(x[:, 0]), jnp.tanh(x @ w).sum()

  args = (jnp.ones((100, 8)), jnp.arange(16) % 7, jnp.ones((64, 32)), jnp.ones((32, 32)))
  instructions, bodies = sp.parse_hlo(jax.jit(f).lower(*args).compile().as_text())
  categories = {sp.categorize(name, instructions, bodies) for name in instructions}
  assert {"matmul", "gather", "scatter", "sort"} <= categories
  assert all(c in sp.CATEGORIES for c in categories)


def test_op_times_sum_xla_thread_events_only(tmp_path):
  events = [{"ph": "M", "name": "thread_name", "pid": 1, "tid": 1,
             "args": {"name": "tf_XLAPjRtCpuClient/1"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "python"}},
            {"ph": "X", "name": "dot.1", "pid": 1, "tid": 1, "dur": 5.0},
            {"ph": "X", "name": "dot.1", "pid": 1, "tid": 1, "dur": 7.0},
            {"ph": "X", "name": "end: dot.1", "pid": 1, "tid": 1, "dur": 1.0},
            {"ph": "X", "name": "PjitFunction(f)", "pid": 1, "tid": 2, "dur": 50.0}]
  (tmp_path / "plugins").mkdir()
  with gzip.open(tmp_path / "plugins" / "x.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  times = sp.op_times(str(tmp_path))
  assert times == {"dot.1": [5.0, 7.0]}
  assert sp.per_step([5.0, 7.0, 100.0], steps=3) == 7.0  # a preempted run does not count
  assert sp.per_step([5.0, 7.0], steps=1) == 12.0  # two runs per step
