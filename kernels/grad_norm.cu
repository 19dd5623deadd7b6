// The global gradient norm, deterministic, with the clipping factor left on the device.
//
// Fuses the sum of squares over the whole flat gradient buffer (every unique tensor of both
// networks once), the square root and the clipping decision into one launch: each block sums a
// fixed contiguous slice (f64, like the CPU's per-block f64 sums), writes one f64 partial, and the
// last block to finish adds the partials (its first warp, lane l taking partials l, l + 32, ...
// with all of its loads in flight, then the warp's fixed shuffle tree) and writes
//   out[0] = norm = sqrt(sum g^2)             (f32, as the CPU's global_norm returns it)
//   out[1] = clip = max_norm / norm if norm > max_norm, else 1   (the trainer's rule, in f32);
//            NaN when the norm is not finite, which makes adamw skip the update
// out[1] is what adamw reads as `dev_clip`, so clipping costs no host synchronisation; the host
// reads out[0] only when it logs.
//
// The slices depend on n and the grid only: keep the grid fixed and the norm is bitwise
// reproducible (it differs from the CPU's in the last bits only, by summation order).
// Layout: g f32 [n]; partials f64 [gridDim.x]; counter one u32, zero before the first launch
// (left at zero); out f32 [2]. Launch: 512 threads, any grid (e.g. 2 * SMs).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(512)
grad_norm(const float* __restrict__ g, unsigned long long n, double* __restrict__ partials,
          unsigned* counter, float max_norm, float* __restrict__ out) {
    __shared__ double warp_sums[16];
    const size_t per = ((n + gridDim.x - 1) / gridDim.x + 3) / 4 * 4;  // a multiple of 4
    const size_t lo = min((size_t)n, (size_t)blockIdx.x * per);
    const size_t hi = min((size_t)n, lo + per);
    double s = 0.0;
    const bool vec = aligned16(g);  // lo is a multiple of 4, so g + lo stays aligned
    size_t i = lo + threadIdx.x * 4;
    if (vec) {
        for (; i + 3 < hi; i += blockDim.x * 4) {
            const float4 v = *reinterpret_cast<const float4*>(g + i);
            s += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
        // The last partial vector of the slice (hi not a multiple of 4).
        if (i < hi)
            for (size_t j = i; j < hi; ++j) s += (double)g[j] * g[j];
    } else {
        for (size_t j = lo + threadIdx.x; j < hi; j += blockDim.x) s += (double)g[j] * g[j];
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    s = warp_sum_f64(s);
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += warp_sums[w];
        partials[blockIdx.x] = t;
    }
    if (last_block_arrives(counter, gridDim.x)) {
        if (warp == 0) {
            double t = 0.0;
            for (int b = lane; b < (int)gridDim.x; b += 32) t += __ldcg(partials + b);
            t = warp_sum_f64(t);
            if (lane == 0) {
                const float norm = (float)sqrt(t);
                out[0] = norm;
                // NaN marks a non-finite norm: adamw then leaves every weight and moment as it was.
                out[1] = !isfinite(norm) ? __int_as_float(0x7fc00000)
                         : norm > max_norm ? max_norm / norm : 1.0f;
            }
        }
        reset_counter(counter);
    }
}
