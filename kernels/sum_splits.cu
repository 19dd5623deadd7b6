// The second half of a split-K weight gradient: dw += sum over chunks of the chunks' products.
//
// dW = dyᵀ·x sums over every token of the batch (16k at 128 × 128) into a small matrix (64 × 64
// for the generator's attention, 256 × 1024 for the discriminator's FFN). Left to one product, such
// a matrix has a handful of output tiles, each running a k-loop over all the tokens on one SM while
// the rest of the GPU idles. The backend instead splits the tokens into chunks, has cuBLASLt write
// each chunk's product as one strided batch into f32 scratch, and this kernel adds the chunks into
// the gradient in chunk order, so that the sum stays deterministic (no atomics).
//
// Layout: parts f32 [splits, n] (chunk-major); dw f32 [n], added to.
// Launch: 256 threads, any grid; each thread owns a strided set of elements (coalesced reads of
// every chunk).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
sum_splits(const float* __restrict__ parts, float* __restrict__ dw, int splits, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float s = dw[i];
        for (int p = 0; p < splits; ++p) s += parts[(size_t)p * n + i];
        dw[i] = s;
    }
}
