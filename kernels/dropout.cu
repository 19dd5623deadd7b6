// Inverted dropout, forward and backward, with the mask recomputed instead of stored.
//
// The mask is a pure function of (seed, site, element index in the step's global batch), drawn by
// Philox4x32-10 exactly as backend::DropoutMask::scales draws it (see DropoutSite in
// common.cuh; the offset of this tensor in the global one is step->first_sequence ·
// per_sequence): y = x * m / (1 - p) with
// m = [u >= p]. The backward draws the same mask again from the same arguments, so no mask
// tensor is written or read: dropout costs one read and one write of the activation each way,
// and the RNG (one Philox call per four elements) is far below the memory time.
//
// Layout: x, y, dy, dx bf16, flat [n] (the element index is the position in the flat buffer, as
// on the CPU). Each thread handles aligned blocks of four elements: one Philox call and, when
// the pointers are 8-byte aligned, one 8-byte access per block.
// dropout_fwd overwrites y (it may alias x); dropout_bwd adds into dx with `accumulate` (the
// trait's `+=`), or overwrites it.
// Launch: 256 threads, any grid (a grid-stride loop over blocks of four).
#include "common.cuh"

__device__ __forceinline__ void dropout_apply(const bf16* in, bf16* out, unsigned long long n,
                                              const DropoutSite& d, bool accumulate) {
    const unsigned long long blocks = (n + 3) / 4;
    const bool vec = (reinterpret_cast<uintptr_t>(in) & 7) == 0 &&
                     (reinterpret_cast<uintptr_t>(out) & 7) == 0;
    const size_t threads = (size_t)gridDim.x * blockDim.x;
    // With an offset that is not a multiple of four, a block of this tensor straddles two of the
    // global tensor: each element then draws its own word.
    const bool aligned = (d.offset & 3) == 0;
    for (size_t blk = (size_t)blockIdx.x * blockDim.x + threadIdx.x; blk < blocks; blk += threads) {
        const size_t i0 = blk * 4;
        float s[4];
        if (aligned) {
            const Philox4 r = dropout_words(d, (d.offset >> 2) + blk);
            s[0] = dropout_scale_of(d, r.x);
            s[1] = dropout_scale_of(d, r.y);
            s[2] = dropout_scale_of(d, r.z);
            s[3] = dropout_scale_of(d, r.w);
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k) s[k] = dropout_one(d, i0 + k);
        }
        if (vec && i0 + 4 <= n) {
            const uint2 raw = *reinterpret_cast<const uint2*>(in + i0);
            const bf162* h = reinterpret_cast<const bf162*>(&raw);
            float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
            a.x *= s[0];
            a.y *= s[1];
            b.x *= s[2];
            b.y *= s[3];
            if (accumulate) {
                const uint2 old = *reinterpret_cast<const uint2*>(out + i0);
                const bf162* o = reinterpret_cast<const bf162*>(&old);
                const float2 oa = __bfloat1622float2(o[0]), ob = __bfloat1622float2(o[1]);
                a.x += oa.x;
                a.y += oa.y;
                b.x += ob.x;
                b.y += ob.y;
            }
            uint2 res;
            res.x = pack_bf16x2(a.x, a.y);
            res.y = pack_bf16x2(b.x, b.y);
            *reinterpret_cast<uint2*>(out + i0) = res;
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                if (i0 + k < n) {
                    const float v = bf2f(in[i0 + k]) * s[k];
                    out[i0 + k] = f2bf(accumulate ? bf2f(out[i0 + k]) + v : v);
                }
            }
        }
    }
}

// y = x * mask / (1 - p).
extern "C" __global__ void __launch_bounds__(256)
dropout_fwd(const bf16* x, bf16* y, unsigned long long n, float p, unsigned long long per_sequence,
            unsigned site, const StepValues* __restrict__ step) {
    dropout_apply(x, y, n, make_dropout(p, per_sequence, site, step), false);
}

// dx (+)= dy * mask / (1 - p), the forward's mask (same p, per_sequence, site, step).
extern "C" __global__ void __launch_bounds__(256)
dropout_bwd(const bf16* dy, bf16* dx, unsigned long long n, float p,
            unsigned long long per_sequence, unsigned site, int accumulate,
            const StepValues* __restrict__ step) {
    dropout_apply(dy, dx, n, make_dropout(p, per_sequence, site, step), accumulate != 0);
}
