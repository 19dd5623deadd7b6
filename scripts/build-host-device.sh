#!/usr/bin/env bash
# Builds the host device (kernels/emulate/host_device/README.md) into OUT (default
# target/host-device): libcuda.so, the driver API on the CPU with every kernel of kernels/
# compiled from its own source, libcublasLt.so, the matrix products, and libnccl.so, NCCL for
# the ranks of a job on this machine. With OUT on LD_LIBRARY_PATH, the CUDA backend and its GPU
# tests run on a machine with no GPU. Needs g++ and cuda.h: CUDA_HOME, or the pip install of
# scripts/install-cuda-compiler.sh in .cuda/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/host-device}
# shellcheck source=scripts/cuda-include.sh
source scripts/cuda-include.sh build-host-device
src=kernels/emulate/host_device
obj=$out/obj
mkdir -p "$obj"
# The kernels pun types through pointers (bf16 pairs as words, 16-byte vectors) as nvcc allows.
cxx=(g++ -std=c++17 -O2 -fPIC -g -fno-strict-aliasing -Wall -Wno-unused-function -Wno-unknown-pragmas -Wno-sign-compare -I"$src")
kernel_objects=()
for cu in kernels/*.cu; do
    name=$(basename "$cu" .cu)
    # The kernels a file defines: its exported functions with C names (nm), found on a quick
    # build; then the file again with one registration per kernel after it.
    "${cxx[@]}" -O0 -DELECTRA_HOST_DEVICE -Ikernels -x c++ -c "$cu" -o "$obj/$name.names.o"
    wrap=$obj/$name.wrap.cpp
    {
        echo "#include \"$PWD/$cu\""
        echo '#include "registry.h"'
        nm -g --defined-only "$obj/$name.names.o" | awk '$2 == "T" && $3 !~ /^_Z/ { print "HD_KERNEL(" $3 ")" }'
    } >"$wrap"
    "${cxx[@]}" -DELECTRA_HOST_DEVICE -Ikernels -c "$wrap" -o "$obj/$name.o"
    kernel_objects+=("$obj/$name.o")
done
"${cxx[@]}" -c "$src/threads.cpp" -o "$obj/threads.o"
"${cxx[@]}" -isystem "$include" -c "$src/driver.cpp" -o "$obj/driver.o"
"${cxx[@]}" -shared -o "$out/libcuda.so" "$obj/driver.o" "$obj/threads.o" "${kernel_objects[@]}"
# The C ABI's device test opens the driver by its soname, as programs linked to it do.
ln -sf libcuda.so "$out/libcuda.so.1"
# The products join the streams of that libcuda.so (cuLaunchHostFunc).
# shellcheck disable=SC2016,SC2054 # $ORIGIN is the dynamic linker's; the commas are ld's
link=(-L"$out" -Wl,-rpath,'$ORIGIN')
"${cxx[@]}" -shared -o "$out/libcublasLt.so" "$src/cublaslt.cpp" "${link[@]}" -lcuda -pthread
"${cxx[@]}" -o "$out/cublaslt_test" "$src/cublaslt_test.cpp" "${link[@]}" -lcublasLt -lcuda
"${cxx[@]}" -isystem "$include" -shared -o "$out/libnccl.so" "$src/nccl.cpp" "${link[@]}" -lcuda
echo "build-host-device: $out/libcuda.so ($(grep -ho 'HD_KERNEL' "$obj"/*.wrap.cpp | wc -l) kernels), $out/libcublasLt.so, $out/libnccl.so, $out/cublaslt_test"
