#!/usr/bin/env bash
# Installs NVIDIA's CUDA compiler (nvcc 13.0) from PyPI into .cuda/ at the repository root, which
# git ignores, so that `cargo build --features cuda` can compile kernels/*.cu on a machine with no
# CUDA toolkit and no GPU.
#
# The versions are pinned exactly: they are the CUDA 13.0 parts that install and compile together,
# and the GPU machines' driver (CUDA 13.0) rejects PTX from a newer nvcc. Unpinned, pip mixes 13.x
# parts in. Installed with --no-deps so that nothing else is pulled in.
#
# Idempotent: a second run checks the installed versions and the compiler, and installs nothing.
# Prints the path of nvcc and the line to export it. Needs python3 with pip, and a host C++
# compiler (g++ <= 14) for nvcc.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.cuda"
SITE="$PREFIX/site-packages"
CU="$SITE/nvidia/cu13"
NVCC="$CU/bin/nvcc"
PACKAGES=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
# Written last, once the compiler has been seen to work: its presence with the same pins means
# there is nothing to do.
STAMP="$PREFIX/installed.txt"
WANT="$(printf '%s\n' "${PACKAGES[@]}")"

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-cuda-compiler: $PYTHON not found; set PYTHON to a python3 with pip" >&2
    exit 1
fi

if [[ -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "install-cuda-compiler: nvcc 13.0 already installed in $PREFIX"
else
    echo "install-cuda-compiler: installing ${PACKAGES[*]} into $SITE"
    rm -rf "$SITE" "$STAMP"
    mkdir -p "$SITE"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --no-deps --no-cache-dir \
        --no-warn-script-location --disable-pip-version-check --target "$SITE" "${PACKAGES[@]}"
    if [[ ! -x "$NVCC" ]]; then
        echo "install-cuda-compiler: pip finished but $NVCC is missing" >&2
        exit 1
    fi
fi

# The wheels lay the toolkit out as nvcc.profile expects (bin/, nvvm/bin/cicc, nvvm/libdevice,
# include/ with crt/ and cccl/, lib/), so no file needs moving. Check that, then prove the
# compiler works end to end: a bf16 kernel through cicc and ptxas for sm_90.
for need in bin/ptxas bin/fatbinary bin/cudafe++ nvvm/bin/cicc nvvm/libdevice \
    include/cuda_runtime.h include/cuda_bf16.h include/crt/host_config.h include/cccl; do
    if [[ ! -e "$CU/$need" ]]; then
        echo "install-cuda-compiler: $CU/$need is missing; delete $PREFIX and rerun" >&2
        exit 1
    fi
done
VERSION="$("$NVCC" --version | grep -o 'release [0-9.]*, V[0-9.]*')"
if [[ "$VERSION" != "release 13.0, V13.0.88" ]]; then
    echo "install-cuda-compiler: unexpected nvcc version: $VERSION" >&2
    exit 1
fi
PROBE="$(mktemp -d)"
trap 'rm -rf "$PROBE"' EXIT
cat >"$PROBE/probe.cu" <<'EOF'
#include <cuda_bf16.h>
extern "C" __global__ void probe(const __nv_bfloat16* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = erff(__bfloat162float(x[i]));
}
EOF
if ! "$NVCC" -arch=sm_90 --cubin -o "$PROBE/probe.cubin" "$PROBE/probe.cu"; then
    echo "install-cuda-compiler: nvcc cannot compile a trivial kernel (is g++ installed?)" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"

echo "install-cuda-compiler: nvcc $VERSION works (probe kernel compiled for sm_90)"
echo "nvcc: $NVCC"
echo "To use it (build.rs also finds it there by itself):"
echo "  export NVCC=$NVCC"
