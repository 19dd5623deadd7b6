#!/usr/bin/env bash
# Adds the C ABI's GPU test and the commit's name to .device/ (run after
# ../shared/tools/device-bundle, which empties .device/): libelectra.so built with --features cuda
# (release, stripped) in .device/lib, and tests/c/capi_cuda_test.c compiled against it into
# .device/bin/capi_cuda_test, which finds the library through its rpath ($ORIGIN/../lib).
# scripts/gpu-checks.sh runs it (step 1b); the GPU machine has no Rust toolchain, so both are
# built here. Needs nvcc and cuda.h: CUDA_HOME, or the pip install of
# scripts/install-cuda-compiler.sh in .cuda/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-include.sh
source scripts/cuda-include.sh bundle-capi-cuda-test
[ -n "${NVCC:-}" ] || [ ! -x .cuda/site-packages/nvidia/cu13/bin/nvcc ] || export NVCC=$PWD/.cuda/site-packages/nvidia/cu13/bin/nvcc
cargo build --release --features cuda --lib
mkdir -p .device/bin .device/lib
cp "${CARGO_TARGET_DIR:-target}/release/libelectra.so" .device/lib/
strip .device/lib/libelectra.so 2>/dev/null || true
# shellcheck disable=SC2016 # $ORIGIN is for the dynamic linker, not the shell
cc -std=c99 -O2 -Wall -Wextra -Werror -pedantic -Iinclude -isystem "$include" \
    tests/c/capi_cuda_test.c -L.device/lib -Wl,-rpath,'$ORIGIN/../lib' -lelectra -ldl -lm \
    -o .device/bin/capi_cuda_test
# The commit the bundle was built from, for the records of `electra bench` (ELECTRA_COMMIT) that
# gpu-checks.sh makes on a machine without the repository's history.
git describe --always --dirty --abbrev=12 >.device/commit
du -sh .device/lib/libelectra.so .device/bin/capi_cuda_test
