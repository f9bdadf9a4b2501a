#!/usr/bin/env bash
# One short, prepared check of jaxrec on an NVIDIA GPU (also runs on CPU as a dry run).
#
#   bash experiments/gpu_check.sh [OUT_DIR]                      # expects a GPU
#   JAX_PLATFORMS=cpu bash experiments/gpu_check.sh /tmp/check   # dry run on CPU
#
# Installs nothing: it uses the python on PATH (jax with CUDA, e.g. from
# `pip install -e '.[cuda12]'`). Runs `experiments.benchmark --quick` and one
# short synthetic training run, each under a timeout (about 5 minutes in all),
# and prints a short table. Exit status: 0 when both ran, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" -c "
import os, sys, jax
d = jax.devices()[0]
print('jax', jax.__version__, 'device', d.platform, d.device_kind)
sys.exit(0 if d.platform == 'gpu' or os.environ.get('JAX_PLATFORMS') == 'cpu' else 3)"; then
  echo "error: jax sees no GPU (install jax[cuda12], or set JAX_PLATFORMS=cpu for a dry run)" >&2
  exit 1
fi

status=0
echo "== benchmark --quick (limit 180 s)"
timeout 180 "$PY" -m experiments.benchmark --quick --output_dir="$OUT/benchmark" \
  > "$OUT/benchmark.log" 2>&1 || { echo "benchmark failed or timed out (exit $?): see $OUT/benchmark.log"; status=1; }
echo "== synthetic training, 40k rows, batch 2048, 1 epoch (limit 120 s)"
timeout 120 "$PY" -m experiments.train --synthetic_rows=40000 --batch_size=2048 --epochs=1 \
  --log_every=5 --output_dir="$OUT/train" > "$OUT/train.log" 2>&1 \
  || { echo "training failed or timed out (exit $?): see $OUT/train.log"; status=1; }

"$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
path = os.path.join(out, "benchmark", "benchmark.json")
if os.path.exists(path):
  records = json.load(open(path))
  if records:
    print(f"\ndevice {records[0]['device']}, matmul peak {records[0]['peak_flops_per_sec'] / 1e12:.2f} TFLOP/s")
  print(f"{'workload':9s} {'model':6s} {'rank':>4s} {'batch':>5s} {'examples/s':>11s} {'%peak':>6s} {'compile s':>9s}")
  for r in records:
    print(f"{r['workload']:9s} {r['model']:6s} {r['rank_fraction']:4g} {r['batch_size']:5d} "
          f"{r['examples_per_sec']:11,.0f} {100 * r['fraction_of_peak']:5.1f}% {r['compile_seconds']:9.2f}")
path = os.path.join(out, "train", "metrics.json")
if os.path.exists(path):
  m = json.load(open(path))
  print(f"\ntraining: {m['steps']} steps, test AUC {m['auc']:.4f}, logloss {m['logloss']:.4f},"
        f" {m['train_examples_per_sec']:,.0f} train / {m['eval_examples_per_sec']:,.0f} eval examples/s"
        f" on {m.get('device', '?')}")
PYEOF
exit $status
