#!/usr/bin/env bash
# The GPU check: our pre-training step at ViT-B/16 and ViT-L/16 in bf16, eager and compiled;
# images/s, TFLOP/s and MFU against the device's bf16 peak. Installs nothing: it runs the
# project's own environment (.venv, or $PYTHON).
#   benchmarks/gpu_check.sh            on a CUDA machine
#   benchmarks/gpu_check.sh --dry      the same code at the micro config on the CPU (tests)
# Further arguments go to `python -m benchmarks.gpu` (e.g. --batch 256 --configs vit_b16).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--dry" ]; then
    shift
    set -- --device cpu --configs micro --batch 2 --steps 1 --reps 1 --warmup 0 \
        --peak-size 256 --compile-backend eager "$@"
else
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        { echo "no CUDA device visible to torch; --dry runs the CPU dry run" >&2; exit 2; }
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
fi
exec "$PY" -m benchmarks.gpu "$@"
