#!/usr/bin/env bash
# Create .venv (if needed) and install hybridlm into it with the given extras.
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh test
# PyTorch is installed only when the venv has none: on CPU machines torch==2.13.0 (CPU build);
# set HYBRIDLM_TORCH_SPEC to choose another (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip=".venv/bin/python -m pip"
$pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  spec="${HYBRIDLM_TORCH_SPEC:-torch==2.13.0}"
  echo "[setup] installing $spec"
  $pip install --quiet "$spec"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "[setup] installing hybridlm $target"
$pip install --quiet -e "$target"
.venv/bin/python -c "import torch, hybridlm; print(f'[setup] ready: torch {torch.__version__}, hybridlm {hybridlm.__version__}')"
