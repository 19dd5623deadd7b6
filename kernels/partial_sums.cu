// The second half of the deterministic column sums over rows (the bias gradients of bias_gelu.cu,
// the gain and bias gradients of the LayerNorm backward in layernorm.cuh and embedding.cu): each
// block of those kernels leaves one row of partial sums, and this kernel adds up each column.
//
// Why a kernel of its own: when the last block of the first kernel did it, one multiprocessor
// read every partial row (264 rows of 512 floats for a LayerNorm of width 256, of 1024 for the
// FFN's bias) with a few loads in flight per thread, so each call ended with tens of µs of L2
// round trips on one SM. Here a block takes 32 columns and its 8 warps split the partial rows, so
// every multiprocessor's loads are in flight together.
//
// Order (fixed by `parts` alone, so results are bitwise reproducible): S(c) = sum over w = 0..7,
// in order, of the sum over k, in order, of partials[(w + 8k) * ld + c], each started from 0.
// out_a[c] += S(c) for c < split; out_b[c - split] += S(c) for split <= c < cols (out_b may be
// null when split == cols).
//
// Layout: partials f32 [parts, ld] (the first cols of each row are read), out_a, out_b f32.
// Launch: grid ceil(cols / 32), PS_THREADS threads: lane l of block b takes column 32b + l, warp w
// the partial rows w, w + 8, w + 16, ...; stream-ordered after the kernel that wrote the partials.
#include "common.cuh"

#define PS_WARPS 8
#define PS_THREADS (PS_WARPS * 32)

extern "C" __global__ void __launch_bounds__(PS_THREADS)
sum_partial_rows(const float* __restrict__ partials, int parts, int ld, int cols, int split,
                 float* __restrict__ out_a, float* __restrict__ out_b) {
    __shared__ float warp_sums[PS_WARPS][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = blockIdx.x * 32 + lane;
    float s = 0.f;
    if (c < cols) {
        const float* col = partials + c;
        // The adds are in order; the loads do not depend on them, so eight are in flight.
#pragma unroll 8
        for (int p = warp; p < parts; p += PS_WARPS) s += col[(size_t)p * ld];
    }
    warp_sums[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && c < cols) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < PS_WARPS; ++w) t += warp_sums[w][lane];
        if (c < split) out_a[c] += t;
        else out_b[c - split] += t;
    }
}
