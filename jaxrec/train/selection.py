"""Model selection on the validation split, and early stopping.

Each validation evaluation either improves the selected metric (logloss:
strictly lower; auc: strictly higher) — the model at that step becomes the
selected one, and the loop checkpoints it tagged as selected — or counts one
evaluation without improvement; `patience` such evaluations in a row stop
training. The state is a few numbers that travel in each checkpoint's
metadata, so a resumed run keeps its best-so-far exactly.
"""

from __future__ import annotations

import dataclasses
import math

SELECT_METRICS = ("logloss", "auc", "last")  # last: no selection, the final model


@dataclasses.dataclass
class Selection:
  """Best-so-far validation result.

  Attributes:
    metric: "logloss" (lower is better), "auc" (higher is better), or "last"
      (no selection: the final model; no early stopping).
    patience: evaluations without improvement that stop training (0: never stop).
    best_step: step of the selected model (None: no finite evaluation yet).
    best_value: its validation `metric`.
    best_metrics: all its validation metrics (name -> float).
    evals_since_best: evaluations since the last improvement.
  """

  metric: str = "logloss"
  patience: int = 0
  best_step: int | None = None
  best_value: float | None = None
  best_metrics: dict = dataclasses.field(default_factory=dict)
  evals_since_best: int = 0

  def __post_init__(self):
    if self.metric not in SELECT_METRICS:
      raise ValueError(f"select_metric={self.metric!r}: choose from {', '.join(SELECT_METRICS)}")
    if self.patience < 0:
      raise ValueError(f"early_stopping_patience={self.patience}: must be >= 0")
    if self.metric == "last" and self.patience:
      raise ValueError("early_stopping_patience needs select_metric logloss or auc (not last)")

  def _better(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best_value is None:
      return True
    return value < self.best_value if self.metric == "logloss" else value > self.best_value

  def update(self, step: int, metrics: dict) -> bool:
    """Records one validation evaluation at `step`; True when it is the new best."""
    if self.metric == "last":
      return False
    value = float(metrics[self.metric])
    if self._better(value):
      self.best_step, self.best_value, self.evals_since_best = step, value, 0
      self.best_metrics = {k: float(v) for k, v in metrics.items()
                           if isinstance(v, (int, float))}
      return True
    self.evals_since_best += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.evals_since_best >= self.patience

  def to_meta(self) -> dict:
    """The resumable state (JSON; floats round-trip exactly)."""
    return {"best_step": self.best_step, "best_value": self.best_value,
            "best_metrics": self.best_metrics, "evals_since_best": self.evals_since_best}

  def restore(self, meta: dict) -> None:
    """Continues from `to_meta()`'s record (absent in old checkpoints: a fresh start)."""
    self.best_step = meta.get("best_step")
    self.best_value = meta.get("best_value")
    self.best_metrics = dict(meta.get("best_metrics") or {})
    self.evals_since_best = int(meta.get("evals_since_best", 0))

  def report(self) -> dict:
    """metrics.json's selection fields: best_step and best_validation_<metric>."""
    if self.best_step is None:
      return {"select_metric": self.metric, "best_step": None}
    keys = ("auc", "logloss", "accuracy", "normalized_entropy", "calibration", "auc_over_bayes")
    return {"select_metric": self.metric, "best_step": self.best_step,
            **{f"best_validation_{k}": self.best_metrics[k] for k in keys
               if k in self.best_metrics}}
