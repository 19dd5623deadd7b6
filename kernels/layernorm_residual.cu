// Dropout + residual add + LayerNorm (BERT's post-LN "LN(dropout(x) + residual)"), forward and
// backward.
//
// Fuses: the branch's hidden dropout, the residual add, the row statistics, the normalisation,
// the affine gain/bias and the saving of what the backward needs, in one read of x (and the
// residual) and one write of y and xhat. Backward fuses the input gradient (written to the
// residual stream and, through the same dropout mask, to the branch) with the deterministic
// gain/bias gradient reduction. The dropout mask is drawn again in the backward pass (Philox, as
// dropout.cu draws it for a tensor of `drop_per_seq` elements per sequence): neither the dropped
// branch nor its gradient is ever written.
//
// Layout: x, residual, y, xhat, dy, dx, dres are bf16 row-major [rows, width]; gain, bias are f32
// [width] (master weights), partials f32 [gridDim.x, 2 * width]; rstd (and the optional mean) are
// f32 [rows]. One warp per row holding the row in registers (see layernorm.cuh): rows are short
// (H = 256 for ELECTRA-Small), so a block-per-row layout would leave most threads idle and need
// block-wide barriers for every statistic.
//
// Entry points: `_w256` for width <= 256, `_w1024` for width <= 1024 (same arguments).
// Launch (all): blockDim = 256 (LN_THREADS: 8 warps, one row per warp per step); any grid; no
// dynamic shared memory. The forward is given ceil(rows / 8) blocks, one row per warp: no sum
// crosses rows, and a warp's next row would wait on this one's statistics. The backward is given
// min(ceil(rows / 8), 2 * SMs) and then sum_partial_rows: each block leaves one partial row of
// the gain/bias sums, which depend only on the grid size: keep it fixed for a given shape and
// results are bitwise reproducible.
#include "layernorm.cuh"

// y = LN(dropout(x) + residual) * gain + bias; saves xhat (bf16) and rstd (f32), and the mean
// when `mean` is non-null. `residual` may be null; `drop.p` 0 for no dropout. `dev_rows`, when
// non-null, is read on the device and caps `rows` (row counts that only the device knows, under
// graph replay).
template <int CH>
__device__ __forceinline__ void layernorm_residual_fwd_body(
    const bf16* __restrict__ x, const bf16* __restrict__ residual, const float* __restrict__ gain,
    const float* __restrict__ bias, bf16* __restrict__ y, bf16* __restrict__ xhat,
    float* __restrict__ rstd, float* __restrict__ mean, int rows, int width, float eps,
    const DropoutSite& drop, const unsigned* __restrict__ dev_rows) {
    if (dev_rows) rows = min(rows, (int)*dev_rows);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool vec = (width % 8) == 0 && aligned16(x) && aligned16(y) && aligned16(xhat) &&
                     (residual == nullptr || aligned16(residual));
    const bool vecf = (width % 8) == 0 && aligned16(gain) && aligned16(bias);
    const int stride = gridDim.x * LN_WARPS;
    for (int r = blockIdx.x * LN_WARPS + warp; r < rows; r += stride) {
        const size_t base = (size_t)r * width;
        float v[CH][8];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const int col0 = c * 256 + lane * 8;
            const int n = width - col0;
            if (n > 0) {
                load8(x + base + col0, n, vec, v[c]);
                if (drop.p > 0.f) {
                    float s[8];
                    dropout_scales8(drop, base + col0, n, s);
#pragma unroll
                    for (int i = 0; i < 8; ++i) v[c][i] *= s[i];
                }
                if (residual) {
                    float rv[8];
                    load8(residual + base + col0, n, vec, rv);
#pragma unroll
                    for (int i = 0; i < 8; ++i) v[c][i] += rv[i];
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) v[c][i] = 0.f;
            }
        }
        float mu;
        const float rs = ln_normalize<CH>(v, lane, width, eps, &mu);
        ln_store_row<CH>(v, lane, width, gain, bias, y + base, xhat ? xhat + base : nullptr, vec,
                         vecf);
        if (lane == 0) {
            rstd[r] = rs;
            if (mean) mean[r] = mu;
        }
    }
}

// The dropout arguments, in every entry: drop_p (0 for none), drop_per_seq (x's elements per
// sequence), drop_site, step (the step memory: the seed and the first sequence; not read, and
// may be null, without dropout).
#define LN_FWD(NAME, CH)                                                                          \
    extern "C" __global__ void __launch_bounds__(LN_THREADS)                                      \
        NAME(const bf16* __restrict__ x, const bf16* __restrict__ residual,                       \
             const float* __restrict__ gain, const float* __restrict__ bias, bf16* __restrict__ y, \
             bf16* __restrict__ xhat, float* __restrict__ rstd, float* __restrict__ mean,         \
             int rows, int width, float eps, float drop_p, unsigned long long drop_per_seq,       \
             unsigned drop_site, const StepValues* __restrict__ step,                             \
             const unsigned* __restrict__ dev_rows) {                                             \
        layernorm_residual_fwd_body<CH>(x, residual, gain, bias, y, xhat, rstd, mean, rows,       \
                                        width, eps,                                               \
                                        make_optional_dropout(drop_p, drop_per_seq, drop_site,    \
                                                              step),                              \
                                        dev_rows);                                                \
    }
LN_FWD(layernorm_residual_fwd_w256, 1)
LN_FWD(layernorm_residual_fwd_w1024, 4)

// g = LN backward of dy: dres = g (when non-null), dx = g * the forward's dropout mask; each
// block's sums of dy*xhat and dy into its row of `partials` (gridDim.x * 2 * width floats), which
// sum_partial_rows then adds into dgain and dbias. `accumulate_dx`, `accumulate_dres`: 0
// overwrites dx (dres), 1 adds to it.
#define LN_BWD(NAME, CH)                                                                           \
    extern "C" __global__ void __launch_bounds__(LN_THREADS)                                       \
        NAME(const bf16* __restrict__ dy, const bf16* __restrict__ xhat,                           \
             const float* __restrict__ rstd, const float* __restrict__ gain, bf16* dx, bf16* dres, \
             float* __restrict__ partials, int rows, int width, int accumulate_dx,                 \
             int accumulate_dres, float drop_p, unsigned long long drop_per_seq,                   \
             unsigned drop_site, const StepValues* __restrict__ step,                              \
             const unsigned* __restrict__ dev_rows) {                                              \
        if (dev_rows) rows = min(rows, (int)*dev_rows);                                            \
        ln_backward<CH, bf16>(dy, xhat, rstd, gain, dx, dres, partials, rows, width,               \
                              accumulate_dx != 0, accumulate_dres != 0,                            \
                              make_optional_dropout(drop_p, drop_per_seq, drop_site, step));       \
    }
LN_BWD(layernorm_residual_bwd_w256, 1)
LN_BWD(layernorm_residual_bwd_w1024, 4)
