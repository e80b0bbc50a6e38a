#!/usr/bin/env bash
# The one command to run on a GPU machine: every full recipe's training and inference images/s
# (bench/bench_gpu.py, costliest first, within --budget-s), the loaders' CPU cost per image
# (bench/bench_train.py --loader-only) and the plan of the full profile on 8 such GPUs from what was
# measured, in under 8 minutes. Needs only the repo and torch, torchvision, timm, opencv, numpy,
# pandas, PyYAML (no pymongo, no xgboost, no registry access, no virtual environment):
#
#   bench/gpu_check.sh OUTDIR [--budget-s 390] [any other bench/bench_gpu.py argument]
#
# OUTDIR gets gpu_throughput.json (what `python -m common.plan --throughput` reads), gpu_throughput.md
# (the table), loader_cpu_us.txt, plan_8gpus.txt and device.txt. Copy gpu_throughput.json to
# bench/results/ to make it the plan's default (README "GPU figures"). PYTHON picks the interpreter
# (default python3); the bench BSON goes to $TMPDIR.
set -euo pipefail
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { echo "usage: bench/gpu_check.sh OUTDIR [bench_gpu.py arguments]" >&2; exit 2; }
OUT="$1"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SCRATCH="${TMPDIR:-/tmp}/cdiscount_gpu_check"
mkdir -p "$OUT" "$SCRATCH"
export HF_HUB_OFFLINE=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
start=$SECONDS
"$PY" - <<'EOF' > "$OUT/device.txt"
import os, platform, torch
print(f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'}; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}; {os.cpu_count()} cores ({platform.processor() or platform.machine()})")
EOF
cat "$OUT/device.txt"
"$PY" bench/bench_gpu.py --out "$OUT/gpu_throughput.json" --markdown "$OUT/gpu_throughput.md" --work "$SCRATCH" "$@"
"$PY" bench/bench_train.py --loader-only --size 180 --batch 128 --workers 2 --images 2048 --work "$SCRATCH/loader" | tee "$OUT/loader_cpu_us.txt"
"$PY" -m common.plan --profile full --gpus 8 --throughput "$OUT/gpu_throughput.json" --work "$SCRATCH/plan" > "$OUT/plan_8gpus.txt"
grep "^TOTAL" "$OUT/plan_8gpus.txt"
echo "gpu_check: wrote $OUT in $((SECONDS - start)) s"
