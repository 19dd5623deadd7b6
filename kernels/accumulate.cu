// The sum of an optimizer step's micro-batch gradients: dst = src, or dst += src, in f32.
//
// Gradient accumulation computes each micro-batch's gradients alone (the backward pass zeroes
// and fills the Grad space) and then adds them into a running sum, so that the sum is formed as
// an all-reduce over ranks would form it from the same gradients: the CPU's optim::accumulate,
// bit for bit (one f32 add per element, no reassociation).
//
// Layout: src, dst f32 [n], views of the parameter-shaped spaces (Grad and GradSum) at the same
// offsets, or (with ELECTRA_FOLD_BIAS_GRADS=1) a bias gradient that cuBLASLt's BGRADB epilogue
// left in scratch and the bias's gradient it adds to; they do not overlap. overwrite != 0 copies
// (the first micro-batch's term).
// 16-byte vectors when both pointers are 16-byte aligned (the spaces' bases are, and the trainer
// passes whole spaces), a scalar loop otherwise and for the tail.
// Launch: 256 threads, any grid (a grid-stride loop; e.g. 4 * SMs blocks).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
accumulate_f32(const float* __restrict__ src, float* __restrict__ dst, unsigned long long n,
               int overwrite) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = ((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) & 15) == 0;
    size_t done = 0;
    if (vec) {
        const size_t quads = n / 4;
        const float4* s4 = reinterpret_cast<const float4*>(src);
        float4* d4 = reinterpret_cast<float4*>(dst);
        for (size_t i = first; i < quads; i += stride) {
            const float4 s = s4[i];
            if (overwrite) {
                d4[i] = s;
            } else {
                float4 d = d4[i];
                d.x += s.x;
                d.y += s.y;
                d.z += s.z;
                d.w += s.w;
                d4[i] = d;
            }
        }
        done = quads * 4;
    }
    for (size_t i = done + first; i < n; i += stride) {
        dst[i] = overwrite ? src[i] : dst[i] + src[i];
    }
}
