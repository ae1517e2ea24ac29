#!/usr/bin/env bash
# rung's GPU checks, in well under 5 minutes on an H100/H200 (and a
# "no CUDA device" JSON on a machine without one). Usage: benchmarks/gpu.sh [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 280 "$PY" -m benchmarks.gpu "$@"
