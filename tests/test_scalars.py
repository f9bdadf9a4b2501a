"""Scalar logs: train/validation records in history.jsonl and TensorBoard events, curves.png."""

import glob
import json
import os
import struct

import numpy as np

from jaxrec.data.sources import DataConfig
from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.train import schedules
from jaxrec.train.loop import TrainConfig, train_and_evaluate
from jaxrec.train.scalars import ScalarLog
from jaxrec.train.schedules import ScheduleConfig


def read_events(directory: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} from every TensorBoard event file in `directory`.

  Event files are TFRecords: length (uint64), its CRC, an `Event` proto, its CRC.
  """
  from tensorboardX.proto import event_pb2
  scalars = {}
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_scalar_log_writes_both_and_skips_non_finite(tmp_path):
  log = ScalarLog(str(tmp_path / "history.jsonl"), str(tmp_path / "tb"))
  log.write(3, "train", {"epoch": 0.5, "loss": 0.25, "learning_rate": float("nan")})
  log.close()
  (record,) = [json.loads(line) for line in open(tmp_path / "history.jsonl")]
  assert record["step"] == 3 and record["split"] == "train" and record["loss"] == 0.25
  assert np.isnan(record["learning_rate"])
  assert read_events(str(tmp_path / "tb")) == {"train/loss": [(3, 0.25)]}


def test_training_writes_loss_lr_and_validation_scalars(tmp_path):
  config = TrainConfig(
      model=ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)), embedding=EmbeddingConfig(dim=4),
      data=DataConfig(synthetic_rows=1000, synthetic_max_vocab=100), batch_size=64, epochs=2,
      log_every=5, learning_rate=0.2,
      lr_schedule=ScheduleConfig("warmup_cosine", warmup_steps=4))
  run = str(tmp_path / "run")
  report = train_and_evaluate(config, run)
  history = [json.loads(line) for line in open(os.path.join(run, "history.jsonl"))]
  train = [h for h in history if h["split"] == "train"]
  validation = [h for h in history if h["split"] == "validation"]
  assert [h["step"] for h in train] == [5, 10, 15, 20, 25, 26]  # every 5, and the last
  assert [h["step"] for h in validation] == [13, 26]
  rate = schedules.build(config.lr_schedule, 0.2, report["steps"])
  for h in train:
    np.testing.assert_allclose(h["learning_rate"], rate(h["step"] - 1), rtol=1e-6)
    assert h["embedding_learning_rate"] == h["learning_rate"] and 0 < h["loss"] < 2
    assert h["examples_per_sec"] > 0
  assert all("calibration" in h and "normalized_entropy" in h for h in validation)
  events = read_events(run)  # --tensorboard_dir defaults to the run directory
  assert [s for s, _ in events["train/loss"]] == [h["step"] for h in train]
  np.testing.assert_allclose([v for _, v in events["train/loss"]], [h["loss"] for h in train],
                             rtol=1e-6)
  np.testing.assert_allclose([v for _, v in events["train/learning_rate"]],
                             [h["learning_rate"] for h in train], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in events["validation/auc"]],
                             [h["auc"] for h in validation], rtol=1e-6)
  assert "validation/calibration" in events and "train/examples_per_sec" in events

  from experiments.plot_run import plot_curves
  png = plot_curves(run, os.path.join(run, "curves.png"))
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000
