#!/usr/bin/env bash
# The GPU check (issue #20): bash bench/gpu_check.sh on a machine with a CUDA GPU.
# Installs nothing beyond `make install`; writes bench/results/gpu_check.json; exits 2 at once where
# torch sees no GPU, and never runs longer than GPU_CHECK_TIMEOUT_S (default 900 s).
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
export RAY_TRAIN_V2_ENABLED=1 RAY_USAGE_STATS_ENABLED=0
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/atflrec/torch_extensions}"
exec timeout --kill-after=30 "${GPU_CHECK_TIMEOUT_S:-900}" .venv/bin/python bench/gpu_check.py "$@"
