// LayerNorm row math shared by layernorm_residual.cu and embedding.cu.
//
// One warp owns one row at a time and holds it in registers: lane l covers columns
// [c*256 + 8l, c*256 + 8l + 8) for chunks c < CH, so a row of up to 256*CH columns is read from
// memory exactly once, with 16-byte loads when the width is a multiple of 8. Each kernel comes in
// two register budgets, `_w256` (CH = 1: ELECTRA-Small's E and H, the tiny presets) and `_w1024`
// (CH = 4: Base and Large), because the row and the backward's per-lane gain/bias sums live in
// registers: one generic version would pay the 1024-wide register cost at every width. Statistics are f32 and two-pass over the registers (mean, then the
// mean squared deviation), the same formula as the CPU's `normalize_row`.
//
// Backward, per row: g = dy*gain, dx = rstd*(g - mean(g) - xhat*mean(g*xhat)); the parameter
// gradients dgain += sum_rows dy*xhat and dbias += sum_rows dy are reduced deterministically:
// each lane keeps its columns' running sums over the rows its warp visits (a fixed stride set by
// the grid), the warps of a block are added in warp order through shared memory, and each block
// writes one partial row [dgain | dbias], which sum_partial_rows (partial_sums.cu) adds up.
#pragma once

#include "common.cuh"

#define LN_WARPS 8
#define LN_THREADS (LN_WARPS * 32)

__device__ __forceinline__ void store8f(float* p, int n, bool vec, const float v[8], bool accumulate) {
    if (vec) {
        float4* q = reinterpret_cast<float4*>(p);
        float4 a = make_float4(v[0], v[1], v[2], v[3]), b = make_float4(v[4], v[5], v[6], v[7]);
        if (accumulate) {
            float4 oa = q[0], ob = q[1];
            a.x += oa.x; a.y += oa.y; a.z += oa.z; a.w += oa.w;
            b.x += ob.x; b.y += ob.y; b.z += ob.z; b.w += ob.w;
        }
        q[0] = a;
        q[1] = b;
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i)
            if (i < n) p[i] = accumulate ? p[i] + v[i] : v[i];
    }
}

__device__ __forceinline__ void store8_any(bf16* p, int n, bool vec, const float v[8], bool acc) {
    store8(p, n, vec, v, acc);
}
__device__ __forceinline__ void store8_any(float* p, int n, bool vec, const float v[8], bool acc) {
    store8f(p, n, vec, v, acc);
}

// Normalises the row held in `v` (zeros past the width) in place to xhat and returns rstd;
// `mean_out` gets the mean. Every lane of the warp must call it.
template <int CH>
__device__ __forceinline__ float ln_normalize(float v[CH][8], int lane, int width, float eps,
                                              float* mean_out) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) s += v[c][i];
    const float n = (float)width;
    const float mean = warp_sum(s) / n;
    float q = 0.f;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const int col0 = c * 256 + lane * 8;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float d = col0 + i < width ? v[c][i] - mean : 0.f;
            q += d * d;
        }
    }
    const float var = warp_sum(q) / n;
    const float rstd = 1.0f / sqrtf(var + eps);
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) v[c][i] = (v[c][i] - mean) * rstd;
    *mean_out = mean;
    return rstd;
}

// Writes y = xhat*gain + bias (bf16) and the saved xhat (bf16, when non-null) for one row.
template <int CH>
__device__ __forceinline__ void ln_store_row(const float v[CH][8], int lane, int width,
                                             const float* __restrict__ gain,
                                             const float* __restrict__ bias, bf16* y_row,
                                             bf16* xhat_row, bool vec, bool vecf) {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const int col0 = c * 256 + lane * 8;
        if (col0 >= width) break;
        const int n = width - col0;
        float g[8], b[8], out[8];
        load8f(gain + col0, n, vecf, g);
        load8f(bias + col0, n, vecf, b);
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = v[c][i] * g[i] + b[i];
        store8(y_row + col0, n, vec, out, false);
        if (xhat_row) store8(xhat_row + col0, n, vec, v[c], false);
    }
}

// This lane's columns of row r of dy and xhat as bf16 bits (zeros past the width, and for a row
// past the last).
template <int CH>
__device__ __forceinline__ void ln_load_row(const bf16* __restrict__ dy,
                                            const bf16* __restrict__ xhat, int r, int rows,
                                            int width, int lane, bool vec, uint4 dy_bits[CH],
                                            uint4 xhat_bits[CH]) {
    const size_t base = (size_t)r * width;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const int col0 = c * 256 + lane * 8;
        const int n = width - col0;
        if (r < rows && n > 0) {
            dy_bits[c] = load8_bits(dy + base + col0, n, vec);
            xhat_bits[c] = load8_bits(xhat + base + col0, n, vec);
        } else {
            dy_bits[c] = xhat_bits[c] = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// The LayerNorm backward over rows: g = LN'(dy), written (or added, with `acc_dx`) to `dx` through
// the dropout `drop` (g times the forward's mask; `drop.p` 0 for none) and, when non-null, to
// `dres` (added with `acc_dres`); block b's sums of dy*xhat and dy over its rows go to row b of
// `partials` (2 * width floats: gain's, then bias's), for sum_partial_rows to add into dgain and
// dbias. A thread stores dx before dres, so with dres == dx, no dropout and only `acc_dres` the
// row gets twice the gradient, as it should.
// Launch: LN_THREADS threads, any grid; `partials` holds gridDim.x * 2 * width floats.
template <int CH, typename OutT>
__device__ __forceinline__ void ln_backward(const bf16* __restrict__ dy, const bf16* __restrict__ xhat,
                                            const float* __restrict__ rstd,
                                            const float* __restrict__ gain, OutT* dx, OutT* dres,
                                            float* __restrict__ partials, int rows, int width,
                                            bool acc_dx, bool acc_dres,
                                            const DropoutSite& drop) {
    __shared__ float acc[2 * CH * 256];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool vec = (width % 8) == 0 && aligned16(dy) && aligned16(xhat) && aligned16(dx) &&
                     (dres == nullptr || aligned16(dres));
    const bool vecf = (width % 8) == 0 && aligned16(gain);
    float pg[CH][8], pb[CH][8];
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) pg[c][i] = pb[c][i] = 0.f;

    const int stride = gridDim.x * LN_WARPS;
    // Row r's dy and xhat as bf16 bits, loaded while the row before is worked on: a warp's row
    // waits twice on shuffles (its two sums), and without this its next loads would wait behind.
    uint4 next_dy[CH], next_xh[CH];
    int r = blockIdx.x * LN_WARPS + warp;
    ln_load_row<CH>(dy, xhat, r, rows, width, lane, vec, next_dy, next_xh);
    for (; r < rows; r += stride) {
        const size_t base = (size_t)r * width;
        float d[CH][8], xh[CH][8];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            unpack8(next_dy[c], d[c]);
            unpack8(next_xh[c], xh[c]);
        }
        ln_load_row<CH>(dy, xhat, r + stride, rows, width, lane, vec, next_dy, next_xh);
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const int col0 = c * 256 + lane * 8;
            const int n = width - col0;
            if (n <= 0) break;
            float gn[8];
            load8f(gain + col0, n, vecf, gn);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float g = d[c][i] * gn[i];
                sg += g;
                sgx += g * xh[c][i];
            }
        }
        const float inv_n = 1.0f / (float)width;
        const float mean_g = warp_sum(sg) * inv_n;
        const float mean_gx = warp_sum(sgx) * inv_n;
        const float rs = rstd[r];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const int col0 = c * 256 + lane * 8;
            const int n = width - col0;
            if (n <= 0) break;
            float gn[8], out[8];
            load8f(gain + col0, n, vecf, gn);  // an L1 hit: re-reading beats holding g live
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                out[i] = rs * (d[c][i] * gn[i] - mean_g - xh[c][i] * mean_gx);
                pg[c][i] += d[c][i] * xh[c][i];
                pb[c][i] += d[c][i];
            }
            if (drop.p > 0.f) {
                float s[8], dropped[8];
                dropout_scales8(drop, base + col0, n, s);
#pragma unroll
                for (int i = 0; i < 8; ++i) dropped[i] = out[i] * s[i];
                store8_any(dx + base + col0, n, vec, dropped, acc_dx);
            } else {
                store8_any(dx + base + col0, n, vec, out, acc_dx);
            }
            if (dres) store8_any(dres + base + col0, n, vec, out, acc_dres);
        }
    }

    // Warps in order into shared memory, then one partial row per block.
    for (int w = 0; w < LN_WARPS; ++w) {
        if (warp == w) {
#pragma unroll
            for (int c = 0; c < CH; ++c) {
                const int col0 = c * 256 + lane * 8;
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int col = col0 + i;
                    if (col < width) {
                        acc[col] = (w == 0 ? 0.f : acc[col]) + pg[c][i];
                        acc[width + col] = (w == 0 ? 0.f : acc[width + col]) + pb[c][i];
                    }
                }
            }
        }
        __syncthreads();
    }
    float* mine = partials + (size_t)blockIdx.x * 2 * width;
    for (int col = threadIdx.x; col < 2 * width; col += blockDim.x) mine[col] = acc[col];
}
