"""experiments.bf16_quality: the paired table and its verdict."""

from experiments import bf16_quality


def test_render_reports_each_pair_and_the_largest_change():
  rows = [{"data": "real sample", "seed": 0, "float32": 0.70, "bfloat16": 0.7015},
          {"data": "synthetic", "seed": 1, "float32": 0.80, "bfloat16": 0.7990}]
  body = bf16_quality.render(rows, 0.002)
  assert "| real sample | 0 | 0.70000 | 0.70150 | +0.00150 |" in body
  assert "| synthetic | 1 | 0.80000 | 0.79900 | -0.00100 |" in body
  assert "Largest |ΔAUC|: 0.00150, within ±0.002." in body
  assert "outside ±0.001" in bf16_quality.render(rows, 0.001)
