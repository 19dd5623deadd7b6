// The discriminator's loss: per-token sigmoid binary cross-entropy, forward and backward at once,
// over every non-padding token ([CLS] and [SEP] included).
//
// sigmoid_bce_head_fwd_bwd_w{256,1024} fuses the head's last projection (H -> 1) with the loss:
// one warp per token forms logit = h . w + b (f32), the loss
// max(x, 0) - x*y + log1p(exp(-|x|)), and dlogit = grad_scale * (sigmoid(x) - y) (0 on padding);
// then, with the row still in registers, the projection's backward: dh = dlogit * w (bf16, the
// gradient flowing into the head's dense+GELU), dw += sum_tokens dlogit * h and db += sum dlogit,
// reduced deterministically (per-lane sums over the warp's tokens, warps in order through shared
// memory, one partial row [dw | db] per block, which sum_partial_rows in partial_sums.cu then adds
// into dw and db). The H -> 1
// product would waste a whole matrix-product launch (and a [tokens] round trip through memory) on
// a matrix with one column.
//
// This is the Backend trait's `bce_head`.
//
// Layout: h, dh bf16 [tokens, H]; w, dw f32 [H]; b, db f32 [1]; labels f32 [tokens] (0 or 1);
// mask u32 [tokens] (1 = real token); logits, row_loss f32 [tokens].
// grad_scale (the caller's disc_weight / real_tokens) is multiplied by *dev_scale when dev_scale is
// non-null, for a scale computed on the device.
#include "common.cuh"

#define BCE_WARPS 8
#define BCE_THREADS (BCE_WARPS * 32)

__device__ __forceinline__ void bce_point(float x, float y, float scale, float* loss, float* d) {
    *loss = fmaxf(x, 0.f) - x * y + log1pf(expf(-fabsf(x)));
    *d = scale * (1.0f / (1.0f + expf(-x)) - y);
}

// `logits` (nullable) receives the logits, for metrics. `accumulate`: 0 overwrites dh, 1 adds.
// Launch: BCE_THREADS (256) threads, any grid (e.g. min(ceil(tokens / 8), 2 * SMs)); scratch
// `partials` gridDim.x * (H + 1) floats, row b the block's [dw | db] sums. The dw/db sums depend
// only on the grid size.
template <int CH>
__device__ __forceinline__ void bce_head_body(
    const bf16* __restrict__ h, const float* __restrict__ w, const float* __restrict__ b,
    const float* __restrict__ labels, const unsigned* __restrict__ mask, float* __restrict__ logits,
    float* __restrict__ row_loss, bf16* __restrict__ dh, float* __restrict__ partials,
    float grad_scale, int tokens, int hidden, int accumulate,
    const float* __restrict__ dev_scale) {
    __shared__ float acc[CH * 256 + 1];
    if (dev_scale) grad_scale *= *dev_scale;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool vec = (hidden % 8) == 0 && aligned16(h) && aligned16(dh);
    const bool vecf = (hidden % 8) == 0 && aligned16(w);
    const float bias = *b;
    float wr[CH][8], pw[CH][8], pb = 0.f;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const int col0 = c * 256 + lane * 8;
        if (col0 < hidden) {
            load8f(w + col0, hidden - col0, vecf, wr[c]);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) wr[c][i] = 0.f;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) pw[c][i] = 0.f;
    }
    const int stride = gridDim.x * BCE_WARPS;
    for (int t = blockIdx.x * BCE_WARPS + warp; t < tokens; t += stride) {
        const size_t base = (size_t)t * hidden;
        float x[CH][8];
        float dot = 0.f;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const int col0 = c * 256 + lane * 8;
            if (col0 < hidden) {
                load8(h + base + col0, hidden - col0, vec, x[c]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) x[c][i] = 0.f;
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) dot += x[c][i] * wr[c][i];
        }
        const float logit = warp_sum(dot) + bias;
        float loss = 0.f, d = 0.f;
        if (mask[t] != 0) bce_point(logit, labels[t], grad_scale, &loss, &d);
        if (lane == 0) {
            row_loss[t] = loss;
            if (logits) logits[t] = logit;
            pb += d;
        }
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const int col0 = c * 256 + lane * 8;
            if (col0 < hidden) {
                float g[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    g[i] = d * wr[c][i];
                    pw[c][i] += d * x[c][i];
                }
                store8(dh + base + col0, hidden - col0, vec, g, accumulate != 0);
            }
        }
    }

    // Warps in order into shared memory, then one partial row [dw | db] per block.
    for (int wp = 0; wp < BCE_WARPS; ++wp) {
        if (warp == wp) {
#pragma unroll
            for (int c = 0; c < CH; ++c) {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int col = c * 256 + lane * 8 + i;
                    if (col < hidden) acc[col] = (wp == 0 ? 0.f : acc[col]) + pw[c][i];
                }
            }
            if (lane == 0) acc[hidden] = (wp == 0 ? 0.f : acc[hidden]) + pb;
        }
        __syncthreads();
    }
    float* mine = partials + (size_t)blockIdx.x * (hidden + 1);
    for (int col = threadIdx.x; col <= hidden; col += blockDim.x) mine[col] = acc[col];
}

#define BCE_HEAD(NAME, CH)                                                                         \
    extern "C" __global__ void __launch_bounds__(BCE_THREADS)                                      \
        NAME(const bf16* __restrict__ h, const float* __restrict__ w, const float* __restrict__ b,  \
             const float* __restrict__ labels, const unsigned* __restrict__ mask,                  \
             float* __restrict__ logits, float* __restrict__ row_loss, bf16* __restrict__ dh,      \
             float* __restrict__ partials, float grad_scale, int tokens, int hidden,               \
             int accumulate, const float* __restrict__ dev_scale) {                                \
        bce_head_body<CH>(h, w, b, labels, mask, logits, row_loss, dh, partials, grad_scale,       \
                          tokens, hidden, accumulate, dev_scale);                                  \
    }
BCE_HEAD(sigmoid_bce_head_fwd_bwd_w256, 1)
BCE_HEAD(sigmoid_bce_head_fwd_bwd_w1024, 4)
