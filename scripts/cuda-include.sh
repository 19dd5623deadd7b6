#!/usr/bin/env bash
# Sourced from the repository root by the scripts that compile against cuda.h: sets `include` to
# its folder, CUDA_HOME's or the pip install of scripts/install-cuda-compiler.sh in .cuda/, or
# exits naming what is missing. $1: the sourcing script's name, for the message.
include=.cuda/site-packages/nvidia/cu13/include
if [ -n "${CUDA_HOME:-}" ] && [ -f "$CUDA_HOME/include/cuda.h" ]; then
    include=$CUDA_HOME/include
fi
[ -f "$include/cuda.h" ] || {
    echo "$1: no cuda.h (set CUDA_HOME or run scripts/install-cuda-compiler.sh)" >&2
    exit 1
}
