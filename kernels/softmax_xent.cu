// The generator's loss and the replacement it drives.
//
// softmax_xent_fwd_bwd fuses, in ONE block per masked row and one read of the row's logits:
//   - the softmax cross-entropy against the row's target: row_loss = logsumexp(x) - x[target];
//   - its gradient, grad_scale * (softmax(x) - onehot(target)), written as bf16 over the logits
//     themselves (dlogits may alias logits): the probabilities are never stored;
//   - the replacement pick: the first index of the largest logit (`argmax`), or of the largest
//     logit + Gumbel noise (`sample`: Gumbel-max sampling at temperature 1), the noise
//     -log(-log(u + 1e-9) + 1e-9) with u drawn by Philox4x32-10 exactly as the CPU's
//     losses::gumbel_noise (same key, counter and bits). The two logs are computed in f64 and
//     rounded once (correctly rounded f32). The CPU calls glibc's logf, which is off by one ulp
//     on about 1% of these arguments, so about 1% of noise values differ from the CPU's in the last
//     bit; a pick can differ only where the two best noisy logits are within one ulp.
// The row is read from memory once: each thread keeps its slice in registers (SX_CACHE 16-byte
// vectors: rows up to 512 * 8 * 8 = 32768 logits, enough for BERT's 30522) across the three
// sweeps (max and pick, sum of exponentials, gradient). Longer rows re-read the rest (an L2 hit).
//
// Layout: logits/dlogits bf16 [rows, ld] (ld >= vocab; ld % 8 == 0 with a 16-byte aligned base
// takes the vector path, which is what the LM-head product should produce: pad the vocabulary to
// a multiple of 8 in the row stride; any other ld is handled by a scalar path). Columns in
// [vocab, ld) are neither read into the result nor written. targets, picks u32 [rows];
// row_loss f32 [rows].
//
// replace_tokens writes the discriminator's input and labels.
#include "common.cuh"

#define SX_THREADS 512
#define SX_CACHE 8

// (value, index) with the CPU's tie-break: larger value wins, equal values go to the smaller index,
// and a row with no value above -inf picks index 0.
__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

__device__ __forceinline__ void block_argmax(float& v, int& i, float* sv, int* si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, v, o);
        const int oi = __shfl_xor_sync(FULL_MASK, i, o);
        argmax_merge(v, i, ov, oi);
    }
    __syncthreads();
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    v = lane < warps ? sv[lane] : -INFINITY;
    i = lane < warps ? si[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, v, o);
        const int oi = __shfl_xor_sync(FULL_MASK, i, o);
        argmax_merge(v, i, ov, oi);
    }
}

// pick_mode: 0 = no pick (picks untouched), 1 = argmax, 2 = Gumbel-max with the step's sample
// seed, the noise of row r keyed by step->first_pick + r (the row's place among the masked
// positions of the step's global batch), both read from the step memory.
// grad_scale is multiplied by *dev_scale when dev_scale is non-null; dev_rows (nullable) caps
// rows from the device (blocks past it exit).
// Launch: SX_THREADS (512) threads, one block per row: grid = rows (the capacity, under graph
// replay with dev_rows). No dynamic shared memory.
extern "C" __global__ void __launch_bounds__(SX_THREADS)
softmax_xent_fwd_bwd(const bf16* logits, bf16* dlogits, int ld, const unsigned* __restrict__ targets,
                     float* __restrict__ row_loss, float grad_scale, int pick_mode,
                     unsigned* __restrict__ picks, int rows, int vocab,
                     const float* __restrict__ dev_scale, const unsigned* __restrict__ dev_rows,
                     const StepValues* __restrict__ step) {
    __shared__ float sv[32];
    __shared__ int si[32];
    if (dev_rows) rows = min(rows, (int)*dev_rows);
    const int row = blockIdx.x;
    if (row >= rows) return;
    if (dev_scale) grad_scale *= *dev_scale;
    const unsigned long long seed = step->sample_seed, gumbel_row = step->first_pick + row;
    const bf16* x = logits + (size_t)row * ld;
    bf16* dx = dlogits + (size_t)row * ld;
    const int target = (int)targets[row];
    // Before any barrier, hence before any thread overwrites it in place.
    const float x_target = bf2f(x[target]);
    const bool pick = pick_mode != 0;

    float m = -INFINITY, best = -INFINITY;
    int best_i = 0;
    // The first sweep takes the max and, for `argmax`, the pick. With `sample` the pick is a
    // separate plain loop (below): Philox and two double-precision logs per logit, inlined into
    // every unrolled element of the cached sweep, would bloat the code and its registers.
    const bool plain_pick = pick_mode == 1;
    auto visit = [&](float v, int j) {
        m = fmaxf(m, v);
        if (plain_pick && v > best) {  // strict: the first of equal values in this thread's order
            best = v;
            best_i = j;
        }
    };
    if (pick_mode == 2) {
#pragma unroll 1
        for (int j = threadIdx.x; j < vocab; j += SX_THREADS) {
            const float v = bf2f(x[j]) + gumbel_noise(seed, gumbel_row, (uint32_t)j);
            if (v > best) {
                best = v;
                best_i = j;
            }
        }
    }

    const bool vec = (ld % 8) == 0 && aligned16(logits) && aligned16(dlogits);
    if (vec) {
        const int nv = (vocab + 7) / 8;
        uint4 cache[SX_CACHE];
        // Sweep 1: max and pick.
#pragma unroll
        for (int k = 0; k < SX_CACHE; ++k) {
            const int v = threadIdx.x + k * SX_THREADS;
            if (v < nv) {
                cache[k] = reinterpret_cast<const uint4*>(x)[v];
                float f[8];
                unpack8(cache[k], f);
#pragma unroll
                for (int i = 0; i < 8; ++i)
                    if (v * 8 + i < vocab) visit(f[i], v * 8 + i);
            }
        }
        for (int v = threadIdx.x + SX_CACHE * SX_THREADS; v < nv; v += SX_THREADS) {
            float f[8];
            unpack8(reinterpret_cast<const uint4*>(x)[v], f);
#pragma unroll
            for (int i = 0; i < 8; ++i)
                if (v * 8 + i < vocab) visit(f[i], v * 8 + i);
        }
        m = block_max(m, sv);
        if (pick) block_argmax(best, best_i, sv, si);
        // Sweep 2: the partition function.
        float sum = 0.f;
#pragma unroll
        for (int k = 0; k < SX_CACHE; ++k) {
            const int v = threadIdx.x + k * SX_THREADS;
            if (v < nv) {
                float f[8];
                unpack8(cache[k], f);
#pragma unroll
                for (int i = 0; i < 8; ++i)
                    if (v * 8 + i < vocab) sum += expf(f[i] - m);
            }
        }
        for (int v = threadIdx.x + SX_CACHE * SX_THREADS; v < nv; v += SX_THREADS) {
            float f[8];
            unpack8(reinterpret_cast<const uint4*>(x)[v], f);
#pragma unroll
            for (int i = 0; i < 8; ++i)
                if (v * 8 + i < vocab) sum += expf(f[i] - m);
        }
        sum = block_sum(sum, sv);
        const float log_z = m + logf(sum);
        // Sweep 3: the gradient, over the logits.
        auto grad8 = [&](float f[8], int v) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int j = v * 8 + i;
                f[i] = grad_scale * (expf(f[i] - log_z) - (j == target ? 1.f : 0.f));
            }
            store8(dx + v * 8, vocab - v * 8, v * 8 + 8 <= vocab, f, false);
        };
#pragma unroll
        for (int k = 0; k < SX_CACHE; ++k) {
            const int v = threadIdx.x + k * SX_THREADS;
            if (v < nv) {
                float f[8];
                unpack8(cache[k], f);
                grad8(f, v);
            }
        }
        for (int v = threadIdx.x + SX_CACHE * SX_THREADS; v < nv; v += SX_THREADS) {
            float f[8];
            unpack8(reinterpret_cast<const uint4*>(x)[v], f);
            grad8(f, v);
        }
        if (threadIdx.x == 0) row_loss[row] = log_z - x_target;
    } else {
        for (int j = threadIdx.x; j < vocab; j += SX_THREADS) visit(bf2f(x[j]), j);
        m = block_max(m, sv);
        if (pick) block_argmax(best, best_i, sv, si);
        float sum = 0.f;
        for (int j = threadIdx.x; j < vocab; j += SX_THREADS) sum += expf(bf2f(x[j]) - m);
        sum = block_sum(sum, sv);
        const float log_z = m + logf(sum);
        for (int j = threadIdx.x; j < vocab; j += SX_THREADS) {
            const float p = expf(bf2f(x[j]) - log_z);
            dx[j] = f2bf(grad_scale * (p - (j == target ? 1.f : 0.f)));
        }
        if (threadIdx.x == 0) row_loss[row] = log_z - x_target;
    }
    if (pick && threadIdx.x == 0) picks[row] = (unsigned)best_i;
}

// corrupted = original, then corrupted[positions[i]] = picks[i]; is_replaced = 1.0 where the pick
// differs from the original token, else 0.0 (a pick equal to the original counts as original).
// original, corrupted u32 [tokens]; is_replaced f32 [tokens]; positions, picks u32 [n], the
// positions distinct (the masked positions of a batch). `dev_n` (nullable) caps n from the device.
// Launch: ONE block of 1024 threads (the copy must finish before the scatter: one barrier, instead
// of a second launch; a batch is at most a few tens of thousands of tokens).
extern "C" __global__ void __launch_bounds__(1024)
replace_tokens(const unsigned* __restrict__ original, const unsigned* __restrict__ positions,
               const unsigned* __restrict__ picks, unsigned* __restrict__ corrupted,
               float* __restrict__ is_replaced, int tokens, int n,
               const unsigned* __restrict__ dev_n) {
    if (dev_n) n = min(n, (int)*dev_n);
    for (int i = threadIdx.x; i < tokens; i += blockDim.x) {
        corrupted[i] = original[i];
        is_replaced[i] = 0.f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const unsigned p = positions[i], t = picks[i];
        corrupted[p] = t;
        is_replaced[p] = t != original[p] ? 1.f : 0.f;
    }
}
