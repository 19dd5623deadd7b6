// Bias + exact (erf) GELU, forward and backward: the epilogue of the FFN's first matrix product
// (and of the heads' dense layers) for when cuBLASLt's GELU_AUX_BIAS / DGELU_BGRAD epilogues are
// not used.
//
// Forward fuses the bias add and the GELU in one pass over the product: pre = x + bias is saved
// (bf16, for the backward) and y = gelu(pre) = pre * Phi(pre) written, both from the f32 value.
// Backward fuses dpre = dy * gelu'(pre) with the bias gradient dbias += sum_rows dpre, summed from
// the f32 dpre before it is rounded, deterministically (each block's column sums over its rows, in
// order, into its row of partials, which sum_partial_rows in partial_sums.cu then adds up).
// `bias_bwd` is the same kernel without the GELU: the bias gradient of a plain linear layer.
//
// Layout: x, pre, y, dy, dpre bf16 row-major [rows, width]; bias, dbias f32 [width]. A thread owns
// 8 consecutive columns (one 16-byte access when width % 8 == 0) of a strided set of rows, so the
// backward's column sums stay in registers across rows and a warp reads 512 contiguous bytes of a
// row at a time.
//
// GELU is the exact erf form (BERT/ELECTRA), computed with the precise erff/expf: build.rs does
// not use --use_fast_math, to stay within f32 rounding of the CPU reference.
#include "common.cuh"

#define BG_THREADS 128
#define BG_COLS (BG_THREADS * 8)  // columns per block

__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

// d gelu / dx = Phi(x) + x * phi(x).
__device__ __forceinline__ float gelu_erf_grad(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    return cdf + x * 0.3989422804014327f * expf(-0.5f * x * x);
}

// pre = x + bias (saved when `pre` is non-null; it may alias x), y = gelu(pre) (may alias x).
// `bias` may be null (no bias). Launch: BG_THREADS threads, grid (ceil(width / BG_COLS), any):
// blockIdx.y strides over rows. `dev_rows` (nullable) caps `rows` from the device.
extern "C" __global__ void __launch_bounds__(BG_THREADS)
bias_gelu_fwd(const bf16* x, const float* __restrict__ bias, bf16* pre, bf16* y, int rows, int width,
              const unsigned* __restrict__ dev_rows) {
    if (dev_rows) rows = min(rows, (int)*dev_rows);
    const int col0 = blockIdx.x * BG_COLS + threadIdx.x * 8;
    if (col0 >= width) return;
    const int n = width - col0;
    const bool vec = (width % 8) == 0 && aligned16(x) && aligned16(y) && (!pre || aligned16(pre));
    float b[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (bias) load8f(bias + col0, n, (width % 8) == 0 && aligned16(bias), b);
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const size_t at = (size_t)r * width + col0;
        float v[8], g[8];
        load8(x + at, n, vec, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] += b[i];
            g[i] = gelu_erf(v[i]);
        }
        if (pre) store8(pre + at, n, vec, v, false);
        store8(y + at, n, vec, g, false);
    }
}

// One row of the backward: d *= gelu'(p) when `gelu`, stored to dpre + at when dpre is non-null,
// and added to the column sums.
__device__ __forceinline__ void bias_grad_row(float d[8], const float p[8], bool gelu, bf16* dpre,
                                              size_t at, int n, bool vec, float sum[8]) {
    if (gelu) {
#pragma unroll
        for (int i = 0; i < 8; ++i) d[i] *= gelu_erf_grad(p[i]);
    }
    if (dpre) store8(dpre + at, n, vec, d, false);
#pragma unroll
    for (int i = 0; i < 8; ++i) sum[i] += d[i];
}

// dpre = dy * gelu'(pre) (GELU skipped when `pre` is null; dpre skipped when null; it may alias
// dy), and row blockIdx.y of `partials` gets the block's column sums of dpre over its rows
// (skipped when `partials` is null), for dbias. Rows are `ld` values apart in every
// [rows, width] operand. With ld % 8 == 0 and 16-byte aligned rows, the vector path reads whole
// 8-column groups even past `width` (up to ld, inside the row), and keeps only columns < width:
// this is how the generator's logits, 30,522 wide in rows padded to 30,528, get 16-byte loads.
// A vector store would write past width, so with `dpre` the vector path needs width % 8 == 0.
// Launch: BG_THREADS threads, grid (ceil(width / BG_COLS), G) for any G, e.g. enough blocks for
// two per SM; then, for dbias, sum_partial_rows over the G partial rows (`partials` G * width
// floats). The sums depend only on G: keep it fixed for a given shape and they are bitwise
// reproducible.
__device__ __forceinline__ void bias_gelu_bwd_body(const bf16* dy, const bf16* __restrict__ pre,
                                                   bf16* dpre, float* __restrict__ partials,
                                                   int rows, int width, int ld) {
    const int col0 = blockIdx.x * BG_COLS + threadIdx.x * 8;
    const int n = width - col0;
    const bool vec = (ld % 8) == 0 && (!dpre || (width % 8) == 0) && aligned16(dy) &&
                     (!pre || aligned16(pre)) && (!dpre || aligned16(dpre));
    float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (n > 0) {
        const int step = gridDim.y;
        int r = blockIdx.y;
        // Four rows at a time, every load issued before any is used: with one load in flight per
        // thread this pass would wait on memory latency, not bandwidth. Rows are still summed in
        // order. (When dpre aliases dy, each row is read before it is overwritten.)
        for (; r + 3 * step < rows; r += 4 * step) {
            size_t at[4];
            float d[4][8], p[4][8];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                at[u] = (size_t)(r + u * step) * ld + col0;
                load8(dy + at[u], n, vec, d[u]);
            }
            if (pre) {
#pragma unroll
                for (int u = 0; u < 4; ++u) load8(pre + at[u], n, vec, p[u]);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u)
                bias_grad_row(d[u], p[u], pre != nullptr, dpre, at[u], n, vec, sum);
        }
        for (; r < rows; r += step) {
            const size_t at = (size_t)r * ld + col0;
            float d[8], p[8];
            load8(dy + at, n, vec, d);
            if (pre) load8(pre + at, n, vec, p);
            bias_grad_row(d, p, pre != nullptr, dpre, at, n, vec, sum);
        }
    }
    if (!partials) return;
    float* mine = partials + (size_t)blockIdx.y * width;
#pragma unroll
    for (int i = 0; i < 8; ++i)
        if (i < n) mine[col0 + i] = sum[i];
}

extern "C" __global__ void __launch_bounds__(BG_THREADS)
bias_gelu_bwd(const bf16* dy, const bf16* __restrict__ pre, bf16* dpre,
              float* __restrict__ partials, int rows, int width,
              const unsigned* __restrict__ dev_rows) {
    if (dev_rows) rows = min(rows, (int)*dev_rows);
    bias_gelu_bwd_body(dy, pre, dpre, partials, rows, width, width);
}

// Column sums of dy over each block's rows into `partials`, for dbias += sum over rows of dy: the
// bias gradient of a linear layer without activation, whose rows may be padded (ld >= width).
// Same launch and scratch as bias_gelu_bwd. The launch gives two blocks per SM; saying so lets ptxas
// use the registers it needs (without it, nvcc 13.0 held sm_80 to 48 registers and spilled).
extern "C" __global__ void __launch_bounds__(BG_THREADS, 2)
bias_bwd(const bf16* __restrict__ dy, float* __restrict__ partials, int rows, int width, int ld,
         const unsigned* __restrict__ dev_rows) {
    if (dev_rows) rows = min(rows, (int)*dev_rows);
    bias_gelu_bwd_body(dy, nullptr, nullptr, partials, rows, width, ld);
}
