// AdamW over the flat parameter buffer: the whole optimizer step in one pass.
//
// Fuses, per parameter: the gradient scale (which folds in the global-norm clipping, read from the
// device where grad_norm left it, so the step needs no host round trip and can be replayed as a
// graph), both moment updates, the decoupled weight decay, the f32 master-weight update and the
// bf16 copy of the new weight that the matrix products read. One read of w, g, m, v and one write
// of w, m, v (+ the bf16 copy): the optimizer is pure bandwidth, so nothing else matters.
//
// The original ELECTRA optimizer, exactly as the CPU's optim::adamw: Adam WITHOUT bias correction,
//   g' = g * scale;  m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'^2;
//   w -= lr * (m / (sqrt(v) + eps) + wd * w)
// called twice by the trainer: once over the decayed run of the buffer, once (wd = 0) over the
// LayerNorm and bias run.
//
// Layout: w, g, m, v f32 [n] (views of the Param, Grad, AdamM, AdamV spaces at the same offset);
// w_bf16 bf16 [n] (nullable; the same offset in the bf16 parameter copy).
// scale = grad_scale * (*dev_clip if non-null): dev_clip is grad_norm's out + 1 (NaN: no update).
// lr = lr * (*dev_lr if non-null): a learning rate (or factor) written to the device each step.
// Launch: 256 threads, any grid (a grid-stride loop; e.g. 4 * SMs blocks).
#include "common.cuh"

__device__ __forceinline__ float adamw_one(float& w, float g, float& m, float& v, float lr, float b1,
                                           float b2, float eps, float wd, float scale) {
    g *= scale;
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g * g;
    w -= lr * (m / (sqrtf(v) + eps) + wd * w);
    return w;
}

extern "C" __global__ void __launch_bounds__(256)
adamw(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
      float* __restrict__ v, bf16* __restrict__ w_bf16, unsigned long long n, float lr, float beta1,
      float beta2, float eps, float weight_decay, float grad_scale,
      const float* __restrict__ dev_lr, const float* __restrict__ dev_clip) {
    if (dev_lr) lr *= *dev_lr;
    if (dev_clip) {
        // grad_norm's mark of a non-finite norm: the step is skipped, the model stays as it was.
        if (isnan(*dev_clip)) return;
        grad_scale *= *dev_clip;
    }
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t threads = (size_t)gridDim.x * blockDim.x;
    const bool vec = aligned16(w) && aligned16(g) && aligned16(m) && aligned16(v) &&
                     (w_bf16 == nullptr || (reinterpret_cast<uintptr_t>(w_bf16) & 7) == 0);
    size_t done = 0;
    if (vec) {
        const size_t n4 = n / 4;
        for (size_t i = tid; i < n4; i += threads) {
            float4 wv = reinterpret_cast<float4*>(w)[i];
            const float4 gv = reinterpret_cast<const float4*>(g)[i];
            float4 mv = reinterpret_cast<float4*>(m)[i];
            float4 vv = reinterpret_cast<float4*>(v)[i];
            adamw_one(wv.x, gv.x, mv.x, vv.x, lr, beta1, beta2, eps, weight_decay, grad_scale);
            adamw_one(wv.y, gv.y, mv.y, vv.y, lr, beta1, beta2, eps, weight_decay, grad_scale);
            adamw_one(wv.z, gv.z, mv.z, vv.z, lr, beta1, beta2, eps, weight_decay, grad_scale);
            adamw_one(wv.w, gv.w, mv.w, vv.w, lr, beta1, beta2, eps, weight_decay, grad_scale);
            reinterpret_cast<float4*>(w)[i] = wv;
            reinterpret_cast<float4*>(m)[i] = mv;
            reinterpret_cast<float4*>(v)[i] = vv;
            if (w_bf16) {
                uint2 packed;
                packed.x = pack_bf16x2(wv.x, wv.y);
                packed.y = pack_bf16x2(wv.z, wv.w);
                reinterpret_cast<uint2*>(w_bf16)[i] = packed;
            }
        }
        done = n4 * 4;
    }
    for (size_t i = done + tid; i < n; i += threads) {
        float wi = w[i], mi = m[i], vi = v[i];
        adamw_one(wi, g[i], mi, vi, lr, beta1, beta2, eps, weight_decay, grad_scale);
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
        if (w_bf16) w_bf16[i] = f2bf(wi);
    }
}

// The bf16 copy alone (after loading a checkpoint or initialising): w_bf16 = bf16(w).
// Launch: 256 threads, any grid.
extern "C" __global__ void __launch_bounds__(256)
params_to_bf16(const float* __restrict__ w, bf16* __restrict__ w_bf16, unsigned long long n) {
    const size_t threads = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += threads)
        w_bf16[i] = f2bf(w[i]);
}
