# shellcheck shell=bash
# Sourced by the scripts that run on a lent GPU machine: makes the CUDA 13 libraries findable and
# keeps the toolkit's libcuda stub out of cudarc's way. Sets $driver (the driver's libcuda.so.1)
# and $libs (the folders added to LD_LIBRARY_PATH).

# CUDA 13 libraries: the toolkit's and those inside the image's Python packages (as the runner does).
libs=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib/python3* \
  \( -name 'libcublasLt.so*' -o -name 'libnccl.so*' \) -printf '%h\n' 2>/dev/null | sort -u | tr '\n' :)
# cudarc opens libcuda.so before libcuda.so.1, and a toolkit folder may hold a stub under that name:
# a folder with only a libcuda.so link to the driver goes first.
driver=$(ldconfig -p | awk '/libcuda\.so\.1 / && !/stubs/ {print $NF; exit}')
[ -n "$driver" ] || driver=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 -name libcuda.so.1 \
  -not -path '*stubs*' 2>/dev/null | head -n 1)
[ -n "$driver" ] && mkdir -p /tmp/cuda-driver && ln -sf "$driver" /tmp/cuda-driver/libcuda.so
# cudarc opens libnccl.so, and the Python packages ship only libnccl.so.2: link it there too.
nccl=$(find ${libs//:/ } -maxdepth 1 -name 'libnccl.so.2' 2>/dev/null | head -n 1)
[ -n "$nccl" ] && mkdir -p /tmp/cuda-driver && ln -sf "$nccl" /tmp/cuda-driver/libnccl.so
export LD_LIBRARY_PATH="/tmp/cuda-driver:${libs}${LD_LIBRARY_PATH:-}"
