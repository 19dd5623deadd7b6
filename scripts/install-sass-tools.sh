#!/usr/bin/env bash
# Installs cuobjdump and nvdisasm (13.2, from PyPI; they read nvcc 13.0's cubins) into
# .cuda/sass-tools/ at the repository root, which git ignores, for scripts/check-kernels.py.
# Idempotent. Prints the folder holding the two tools.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.cuda/sass-tools"
BIN="$PREFIX/nvidia/cu13/bin"
PACKAGES=(nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86)
if [[ ! -x "$BIN/cuobjdump" || ! -x "$BIN/nvdisasm" ]]; then
    "${PYTHON:-python3}" -m pip install --quiet --no-deps --target "$PREFIX" "${PACKAGES[@]}" >&2
fi
"$BIN/cuobjdump" --version >/dev/null
echo "$BIN"
