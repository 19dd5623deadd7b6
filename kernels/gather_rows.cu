// Row gather and its scatter-back: the generator's hidden states at the masked positions (the
// generator head and its vocabulary-sized logits run only there, never for all tokens).
//
// Forward: out[i] = x[rows[i]]. Backward: dx[rows[i]] += dout[i] (or =, without `accumulate`).
// The backward is deterministic without any ordering work because the rows it is used with (the
// masked positions of a batch) are distinct: each destination row is written by exactly one
// thread group. A caller with repeated rows must not use it (their sum would race).
//
// Layout: x, dx bf16 [src_rows, width]; out, dout bf16 [n, width]; rows u32 [n], each < src_rows.
// A thread moves 8 consecutive columns (16 bytes when width % 8 == 0): the copy is pure bandwidth,
// so the only goal is wide, coalesced accesses.
// Launch (both): 128 threads, grid (ceil(width / 1024), any): blockIdx.y strides over the n rows.
// `dev_n` (nullable) caps n from the device (a masked count only the device knows).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(128)
gather_rows_fwd(const bf16* __restrict__ x, const unsigned* __restrict__ rows,
                bf16* __restrict__ out, int n, int width, const unsigned* __restrict__ dev_n) {
    if (dev_n) n = min(n, (int)*dev_n);
    const int col0 = blockIdx.x * 1024 + threadIdx.x * 8;
    if (col0 >= width) return;
    const int m = width - col0;
    const bool vec = (width % 8) == 0 && aligned16(x) && aligned16(out);
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        float v[8];
        load8(x + (size_t)rows[i] * width + col0, m, vec, v);
        store8(out + (size_t)i * width + col0, m, vec, v, false);
    }
}

extern "C" __global__ void __launch_bounds__(128)
gather_rows_bwd(const bf16* __restrict__ dout, const unsigned* __restrict__ rows,
                bf16* __restrict__ dx, int n, int width, int accumulate,
                const unsigned* __restrict__ dev_n) {
    if (dev_n) n = min(n, (int)*dev_n);
    const int col0 = blockIdx.x * 1024 + threadIdx.x * 8;
    if (col0 >= width) return;
    const int m = width - col0;
    const bool vec = (width % 8) == 0 && aligned16(dout) && aligned16(dx);
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        float v[8];
        load8(dout + (size_t)i * width + col0, m, vec, v);
        store8(dx + (size_t)rows[i] * width + col0, m, vec, v, accumulate != 0);
    }
}
