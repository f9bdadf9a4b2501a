"""Writes a trained AFM's mean attention per field pair: a heat-map PNG and a JSON table.

Used by ``python -m experiments.train --model=afm --attention_heatmap`` (the
test split of the run) and by `experiments.compare_models`.
"""

from __future__ import annotations

import json
import os

from jaxrec.data.dataset import CTRDataset
from jaxrec.models.attention_map import mean_attention, save_heatmap
from jaxrec.models.ctr_model import CTRModel


def write_attention_report(model: CTRModel, variables: dict, dataset: CTRDataset,
                           output_dir: str, batch_size: int = 8192, title: str = "") -> str:
  """Writes attention_heatmap.png and attention.json to `output_dir`; returns the PNG path."""
  attention = mean_attention(model, variables, dataset, batch_size)
  png = os.path.join(output_dir, "attention_heatmap.png")
  save_heatmap(attention, png, title)
  with open(os.path.join(output_dir, "attention.json"), "w") as f:
    json.dump({"names": list(attention.names),
               "num_examples": attention.num_examples,
               "top_pairs": attention.top_pairs(20),
               "pair_weights": attention.pair_weights.tolist()}, f, indent=1)
  print(f"attention heat-map: {png}; top pairs: "
        + ", ".join(f"{a}x{b} {w:.4f}" for a, b, w in attention.top_pairs(5)))
  return png
