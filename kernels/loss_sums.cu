// The sums a step's metrics are made of, formed on the device so that reading a step's report
// costs one 40-byte copy instead of copying back every token's loss, logit, label, pick and
// target (five copies of up to 64 KB at 128 x 128, each one a synchronisation).
//
//   sums[0] = sum of gen_row_loss[i],                          i < masked
//   sums[1] = sum of disc_row_loss[i],                         i < tokens (0 on padding)
//   sums[2] = count of real i with (logits[i] > 0) == (labels[i] > 0.5)   (right)
//   sums[3] = count of real i with labels[i] > 0.5                        (replaced)
//   sums[4] = count of i < masked with picks[i] == targets[i]  (hits; 0 when picks is null)
//
// with add != 0 each is added to what sums holds (the micro-batches of one optimizer step, in
// order), else sums is overwritten. The CPU's losses::loss_sums is the reference: it sums the
// losses one after another in f64; here each thread sums a fixed stride in f64, the warps' sums
// go through warp_sum_f64 and then the warps are added in order by one thread, so the result is
// bitwise reproducible and differs from the CPU's in the last bits of the loss sums only (the
// counts are exact integers in f64).
//
// Layout: gen_row_loss f32 [masked]; disc_row_loss, logits, labels f32 [tokens]; mask u32
// [tokens] (1 for a real token); picks, targets u32 [masked]; sums f64 [5].
// Launch: ONE block of LS_THREADS threads (a step holds at most tens of thousands of tokens:
// a few microseconds, against one launch per reduction stage).
#include "common.cuh"

#define LS_THREADS 512
#define LS_SUMS 5

extern "C" __global__ void __launch_bounds__(LS_THREADS)
loss_sums(const float* __restrict__ gen_row_loss, const float* __restrict__ disc_row_loss,
          const float* __restrict__ logits, const float* __restrict__ labels,
          const unsigned* __restrict__ mask, const unsigned* __restrict__ picks,
          const unsigned* __restrict__ targets, int masked, int tokens, int add,
          double* __restrict__ sums) {
    __shared__ double warp_sums[LS_THREADS / 32][LS_SUMS];
    double s[LS_SUMS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int i = threadIdx.x; i < masked; i += blockDim.x) {
        s[0] += gen_row_loss[i];
        if (picks) s[4] += picks[i] == targets[i] ? 1.0 : 0.0;
    }
    for (int i = threadIdx.x; i < tokens; i += blockDim.x) {
        s[1] += disc_row_loss[i];
        if (mask[i] != 0) {
            const bool replaced = labels[i] > 0.5f;
            s[2] += (logits[i] > 0.f) == replaced ? 1.0 : 0.0;
            s[3] += replaced ? 1.0 : 0.0;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int k = 0; k < LS_SUMS; ++k) {
        const double w = warp_sum_f64(s[k]);
        if (lane == 0) warp_sums[warp][k] = w;
    }
    __syncthreads();
    if (threadIdx.x < LS_SUMS) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += warp_sums[w][threadIdx.x];
        sums[threadIdx.x] = add ? sums[threadIdx.x] + t : t;
    }
}
