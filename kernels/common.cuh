// Shared device helpers of the ELECTRA kernels: bf16 <-> f32 conversions and 16-byte vectors,
// warp and block reductions, the "last block to arrive" pattern behind the deterministic
// cross-block reductions that sum_partial_rows does not finish, and Philox4x32-10 exactly as
// src/rng.rs draws it.
//
// Conventions of every kernel in this folder (the Rust backend relies on them):
// - Activations and their gradients are bf16 (`bf16`), row-major `[rows, width]`. Statistics,
//   losses, log-sum-exps, master weights, their gradients and the Adam moments are f32.
// - Integer inputs (token ids, masks, positions) are u32, as in the backend's integer space.
// - A backward kernel that produces an activation gradient takes `accumulate`: 0 overwrites the
//   destination, 1 adds to it (the trait's `+=` semantics). Parameter gradients (f32) are always
//   accumulated (`+=`), and always in an order fixed by the launch shape only, never by timing:
//   no floating-point atomics anywhere, so every result is bitwise reproducible.
// - Cross-block sums write one partial per block to a scratch buffer, added up in a fixed order
//   either by a second kernel, sum_partial_rows (partial_sums.cu: wide rows of column sums, the
//   bias and LayerNorm parameter gradients), or by the last block to finish (counted on a u32
//   `counter` that must be zero before the first launch and that the kernel leaves at zero
//   again, so a CUDA graph can replay it: the few sums of grad_norm and the BCE head).
// - Kernels index with 32-bit ints: every tensor must have fewer than 2^31 elements.
// - Vector (16-byte) paths are taken only when the pointers and row strides allow them; each
//   kernel checks at run time and falls back to scalar accesses, so any size is correct.
#pragma once

#include <cuda_bf16.h>
#include <stddef.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------
// bf16 <-> f32

__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }

// Unpacks 8 bf16 held in a 16-byte vector. The vector is taken by value and its four 32-bit
// words decoded with shifts (a bf16 is the top half of the f32 with the same value, so this is
// exact): reading it through a `bf162*` to the caller's memory made nvcc split the 16-byte load
// into four 4-byte ones.
__device__ __forceinline__ void unpack8(uint4 v, float out[8]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// Packs 8 floats into 8 bf16 (round to nearest even) in a 16-byte vector.
__device__ __forceinline__ uint4 pack8(const float in[8]) {
    uint4 v;
    bf162* h = reinterpret_cast<bf162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
    return v;
}

// Two floats as one bf16x2 register (the low half holds `lo`), the operand format of mma.sync.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    bf162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// The 8 consecutive bf16 starting at p[0] as a 16-byte vector of their bits; elements at or past
// `n` read as 0. `vec` says p is 16-byte aligned and all 8 are in range (a uniform run-time
// choice). Kept as bits, a load can be issued one row ahead of its use (unpack8 decodes it).
__device__ __forceinline__ uint4 load8_bits(const bf16* p, int n, bool vec) {
    if (vec) return *reinterpret_cast<const uint4*>(p);
    uint32_t h[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = i < n ? (uint32_t)__bfloat16_as_ushort(p[i]) : 0u;
    return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
}

// load8_bits' values as floats.
__device__ __forceinline__ void load8(const bf16* p, int n, bool vec, float out[8]) {
    unpack8(load8_bits(p, n, vec), out);
}

// Stores the first min(8, n) values; with `accumulate`, adds to what is there.
__device__ __forceinline__ void store8(bf16* p, int n, bool vec, const float v[8], bool accumulate) {
    if (vec) {
        float o[8];
        if (accumulate) {
            unpack8(*reinterpret_cast<const uint4*>(p), o);
#pragma unroll
            for (int i = 0; i < 8; ++i) o[i] += v[i];
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) o[i] = v[i];
        }
        *reinterpret_cast<uint4*>(p) = pack8(o);
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i)
            if (i < n) p[i] = f2bf(accumulate ? bf2f(p[i]) + v[i] : v[i]);
    }
}

// 8 consecutive f32 (two float4 when aligned).
__device__ __forceinline__ void load8f(const float* p, int n, bool vec, float out[8]) {
    if (vec) {
        float4 a = reinterpret_cast<const float4*>(p)[0];
        float4 b = reinterpret_cast<const float4*>(p)[1];
        out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
        out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = i < n ? p[i] : 0.f;
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the block, returned to every thread. `scratch` holds >= 32 floats; the block size is a
// multiple of 32. Ends with a barrier, so `scratch` can be reused right after.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    v = warp_sum(v);
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    v = warp_max(v);
    return v;
}

// Inline PTX here and in attention.cu: the host device (emulate/host_device/) has its own.
#ifndef ELECTRA_HOST_DEVICE
__device__ __forceinline__ unsigned lanemask_lt() {
    unsigned m;
    asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
    return m;
}
#endif

// ---------------------------------------------------------------------------------------------
// The last block to arrive
//
// Every block writes its partial results, then calls this; it returns true in exactly one block of
// the `expected` blocks that share `counter`, the last to arrive, and that block then sees every
// partial (read them with __ldcg, past the L1). That block must call `reset_counter` when done, so
// the counter is zero again for the next launch or graph replay.
__device__ __forceinline__ bool last_block_arrives(unsigned* counter, unsigned expected) {
    __shared__ bool is_last;
    __threadfence();  // publish this block's partials before counting it in
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned prev = atomicAdd(counter, 1u);
        is_last = prev == expected - 1;
    }
    __syncthreads();
    if (is_last) __threadfence();  // and see everyone else's
    return is_last;
}

__device__ __forceinline__ void reset_counter(unsigned* counter) {
    if (threadIdx.x == 0) *counter = 0u;
}

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., SC'11), bit for bit as src/rng.rs.

struct Philox4 {
    uint32_t x, y, z, w;
};

// __host__ too, so a host program can check it against the known-answer vectors.
__host__ __device__ __forceinline__ Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                 uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        const uint64_t p0 = (uint64_t)M0 * c0, p1 = (uint64_t)M1 * c2;  // one mul.wide.u32 each
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    }
    return Philox4{c0, c1, c2, c3};
}

// A uniform float in [0, 1) with 24 bits, as `rng::unit_f32`.
__host__ __device__ __forceinline__ float unit_f32(uint32_t word) {
    return (float)(word >> 8) * (1.0f / 16777216.0f);
}

// The purpose tag of the Gumbel noise stream (rng::Purpose::Gumbel; a test checks they agree).
#define GUMBEL_PURPOSE 3u

// log of a float, correctly rounded in all but vanishingly rare cases: computed in double and
// rounded once. The CPU reference uses glibc's logf (within 1 ulp, nearly always correctly
// rounded), so this gives the same float far more often than logf's own 1-ulp approximation.
__host__ __device__ __forceinline__ float log_cr(float x) { return (float)log((double)x); }

// The Gumbel noise of logit `col` of row `row`: -log(-log(u + 1e-9) + 1e-9), with u drawn by
// Stream::new(seed, Purpose::Gumbel, row).words(col)[0], exactly as losses::gumbel_noise.
__host__ __device__ __forceinline__ float gumbel_noise(unsigned long long seed, unsigned long long row,
                                              uint32_t col) {
    Philox4 r = philox4x32_10(col, GUMBEL_PURPOSE, (uint32_t)row, (uint32_t)(row >> 32),
                              (uint32_t)seed, (uint32_t)(seed >> 32));
    const float u = unit_f32(r.x);
    const float inner = -log_cr(u + 1e-9f) + 1e-9f;
    return -log_cr(inner);
}

// The purpose tag of the dropout masks (rng::Purpose::Dropout; a test checks they agree).
#define DROPOUT_PURPOSE 6u

// The step memory (backend::StepScalars, written by src/backend/cuda/step.rs at the STEP_*
// offsets, which a test checks against this layout): what changes from one step, or one
// micro-batch, to the next, read by the kernels so that one recorded step serves them all.
struct StepValues {
    unsigned long long dropout_seed;    // STEP_DROPOUT_SEED = 0
    unsigned long long sample_seed;     // STEP_SAMPLE_SEED = 8
    float lr;                           // STEP_LR = 16
    uint32_t unused;
    unsigned long long first_sequence;  // STEP_FIRST_SEQUENCE = 24
    unsigned long long first_pick;      // STEP_FIRST_PICK = 32
};
static_assert(offsetof(StepValues, lr) == 16 && offsetof(StepValues, first_sequence) == 24 &&
                  offsetof(StepValues, first_pick) == 32 && sizeof(StepValues) == 40,
              "StepValues must match the STEP_* offsets of src/backend/cuda/step.rs");

// Inverted dropout as backend::DropoutMask::scales: element `index` of dropout site `site` is
// element g = offset + index of the tensor over the step's global batch; it is kept, and scaled
// by keep = 1/(1-p), when unit_f32(word g % 4 of Stream::new(seed, DROPOUT_PURPOSE,
// site | (g / 4) >> 32 << 32).words(g / 4)) >= p; otherwise it becomes 0. One Philox call
// covers an aligned block of four elements of the global tensor.
struct DropoutSite {
    unsigned long long seed;
    unsigned long long offset;  // first_sequence * the tensor's elements per sequence
    uint32_t site;
    float p;     // 0 disables dropout
    float keep;  // 1 / (1 - p), in f32 as the CPU computes it
};

// The Philox words of global block `block` (elements 4·block .. 4·block + 3).
__host__ __device__ __forceinline__ Philox4 dropout_words(const DropoutSite& d,
                                                          unsigned long long block) {
    return philox4x32_10((uint32_t)block, DROPOUT_PURPOSE, d.site, (uint32_t)(block >> 32),
                         (uint32_t)d.seed, (uint32_t)(d.seed >> 32));
}

// Whether the element whose Philox word is `word` is kept (1) or dropped (0).
__host__ __device__ __forceinline__ uint32_t keep_bit(const DropoutSite& d, uint32_t word) {
    return unit_f32(word) >= d.p ? 1u : 0u;
}

__host__ __device__ __forceinline__ float dropout_scale_of(const DropoutSite& d, uint32_t word) {
    return keep_bit(d, word) ? d.keep : 0.f;
}

__host__ __device__ __forceinline__ uint32_t philox_word(const Philox4& r, int i) {
    return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}

// The Philox words of elements `index` and `index + 1` of this tensor (one Philox call, two when
// they straddle a block of four).
__device__ __forceinline__ void pair_words(const DropoutSite& d, unsigned long long index,
                                           uint32_t& w0, uint32_t& w1) {
    const unsigned long long g = d.offset + index;
    const int off = (int)(g & 3);
    const Philox4 r = dropout_words(d, g >> 2);
    w0 = philox_word(r, off);
    w1 = off < 3 ? philox_word(r, off + 1) : dropout_words(d, (g >> 2) + 1).x;
}

// The multiplier of element `index` of this tensor.
__device__ __forceinline__ float dropout_one(const DropoutSite& d, unsigned long long index) {
    const unsigned long long g = d.offset + index;
    return dropout_scale_of(d, philox_word(dropout_words(d, g >> 2), (int)(g & 3)));
}

// The multipliers of elements `index` .. `index + min(n, 8) - 1` of this tensor (0 past them):
// the eight lie in two blocks of four of the global tensor, or three when they start inside one,
// so two or three Philox calls, and each word is picked by selects (no indexed register array,
// which would go to local memory).
__device__ __forceinline__ void dropout_scales8(const DropoutSite& d, unsigned long long index,
                                                int n, float s[8]) {
    const unsigned long long g = d.offset + index;
    const int off = (int)(g & 3);
    const Philox4 a = dropout_words(d, g >> 2), b = dropout_words(d, (g >> 2) + 1);
    const Philox4 c = off != 0 ? dropout_words(d, (g >> 2) + 2) : a;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int j = off + i;  // the element's word among the three blocks' twelve
        const uint32_t w = j < 4 ? philox_word(a, j) : j < 8 ? philox_word(b, j - 4)
                                                             : philox_word(c, j - 8);
        s[i] = i < n ? dropout_scale_of(d, w) : 0.f;
    }
}

// The dropout of one launch: `per_sequence` elements of the tensor per sequence, the seed and
// the first sequence from the step memory (a recorded step serves every step and micro-batch).
__device__ __forceinline__ DropoutSite make_dropout(float p, unsigned long long per_sequence,
                                                    uint32_t site,
                                                    const StepValues* __restrict__ step) {
    DropoutSite d;
    d.seed = step->dropout_seed;
    d.offset = step->first_sequence * per_sequence;
    d.site = site;
    d.p = p;
    d.keep = 1.0f / (1.0f - p);
    return d;
}

// As make_dropout, for a launch whose dropout is optional: with p = 0 (none) `step` is not read,
// and may be null (the C ABI's device ops pass none).
__device__ __forceinline__ DropoutSite make_optional_dropout(float p, unsigned long long per_sequence,
                                                             uint32_t site,
                                                             const StepValues* __restrict__ step) {
    return p > 0.f ? make_dropout(p, per_sequence, site, step) : DropoutSite{};
}

// ---------------------------------------------------------------------------------------------
// Asynchronous 16-byte copies global -> shared (sm_80+). With `valid` false the 16 bytes are
// zero-filled and the source is not read.

#ifndef ELECTRA_HOST_DEVICE
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;\n" ::);
}
#endif
