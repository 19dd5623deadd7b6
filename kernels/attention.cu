// Fused multi-head self-attention with a key-padding mask, forward and backward, on tensor cores.
//
// Fuses, per (sequence, head): S = Q K^T * 1/sqrt(D), the key-padding mask, the softmax and
// O = P V (forward), and their backward, without ever storing S or P. Only the log-sum-exp of each
// query row (f32 [batch, heads, seq]) is saved; the backward recomputes P from it
// (P = exp(S - lse)), flash-attention style. All products run on mma.sync.m16n8k16 (bf16 in, f32
// accumulate), fed by ldmatrix from padded shared-memory tiles (row stride D + 8 bf16: the eight
// rows an ldmatrix reads fall in distinct banks). The softmax statistics are f32.
//
// Layout: Q, K, V are read in place from the fused projection qkv bf16 [batch*seq, 3H]
// (H = heads * D): row r holds [q heads | k heads | v heads], head h at columns h*D of each third.
// The gradients go to dqkv in the same layout; ctx/dctx are bf16 [batch*seq, H]; key_mask u32
// [batch*seq], 1 = real token. Keys whose mask is 0 get probability 0; a sequence with no real
// token at all attends uniformly, as HF's additive mask of the most negative float makes it and
// the CPU reference does: its scores are scaled by 0 (so its q and k get no gradient). Queries are
// never masked.
//
// Kernels, all 128 threads (4 warps x 16 rows), grid (ceil(seq / 64), heads, batch), static shared
// memory under 48 KB, for head sizes D = 16, 32, 64 (`_d16`, `_d32`, `_d64`):
//   attention_fwd_dD       ctx, lse from qkv. A block owns 64 queries; keys stream through shared
//                          memory 64 at a time with an online softmax, so any seq length works
//                          (the model's is <= 512).
//   attention_bwd_dq_dD    first: delta = rowsum(dO * O) for its 64 queries (saved for the next
//                          kernel), then dQ = sum over key tiles of dS K, with dS = P * (dP - delta)
//                          and dP = dO V^T recomputed.
//   attention_bwd_dkdv_dD  then: a block owns 64 keys and sweeps every query tile:
//                          dV = sum P^T dO, dK = sum dS^T Q.
// dQ and dK/dV are computed by different blocks, so no block ever adds into another's output: no
// atomics, deterministic, at the price of recomputing S and dP once more than a fused kernel would.
// Dropout on the probabilities (optional, backend::Dropout's mask over [batch, heads, seq, seq])
// is drawn in-kernel from Philox by the forward, which stores it as bits (keep_bits, 1/32 of the
// probabilities' size) for both backward kernels: ctx = (P o M) V; dV = (P o M)^T dO;
// dS = P o ((dO V^T) o M - delta), delta = rowsum(dO * O) unchanged. The row sums l of the
// softmax use the undropped P.
// `accumulate`: 0 overwrites the dqkv columns of the head, 1 adds to them.
// The fragment index math was checked without a GPU by the warp-level emulation in
// emulate/attention.py, against a float64 reference of the CPU semantics; the dropout mask's
// drawing, bits and their reads by emulate/attention_dropout_words.py.
// Requirements (host-checked): H % 8 == 0 and 16-byte aligned qkv/dqkv/ctx/dctx bases, for the
// 16-byte asynchronous copies; batch*seq*3H < 2^31.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_TILE 64  // queries per block (fwd, dq), keys per block (dkdv), keys/queries per step
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

#ifndef ELECTRA_HOST_DEVICE
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16* p) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16* p) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
#endif

// Fragment conventions (PTX ISA, mma.m16n8k16 with .bf16), lane = 4*g + t:
//   A (16x16, row-major) a0:(g, 2t..2t+1) a1:(g+8, 2t..) a2:(g, 8+2t..) a3:(g+8, 8+2t..)
//   B (16x8, k x n)      b0:(k=2t..2t+1, n=g) b1:(k=8+2t.., n=g)
//   C (16x8)             c0,c1:(g, 2t..2t+1)  c2,c3:(g+8, 2t..2t+1)
// Hence a C tile pair (n-tiles 2k, 2k+1) of a product is, packed to bf16, the A fragment of k-step
// k of the next product: no shared-memory round trip for P or dS.

// A fragments of the 16 x D tile whose rows start at `rows` (row stride LDS): frag[kk] covers
// columns [16kk, 16kk + 16).
template <int D, int LDS>
__device__ __forceinline__ void load_a_frags(uint32_t frag[D / 16][4], const bf16* rows, int lane) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        ldsm_x4(frag[kk], rows + (lane & 15) * LDS + kk * 16 + (lane >> 4) * 8);
}

// acc[j] (j < 8, eight n-tiles of 8 columns = 64 rows of `tile`) += A(16 x D) * tile^T, where
// `tile` is a 64 x D row-major shared-memory tile: the B operand with k = the D columns.
template <int D, int LDS>
__device__ __forceinline__ void mma_a_bt(float acc[8][4], const uint32_t a[D / 16][4],
                                         const bf16* tile, int lane) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
            uint32_t b[4];
            ldsm_x4(b, tile + (jp * 16 + (lane >> 4) * 8 + (lane & 7)) * LDS + kk * 16 +
                           ((lane >> 3) & 1) * 8);
            mma_16816(acc[2 * jp], a[kk], b[0], b[1]);
            mma_16816(acc[2 * jp + 1], a[kk], b[2], b[3]);
        }
    }
}

// acc[j] (j < D/8) += P(16 x 64, as C tiles p[8][4]) * tile, where `tile` is a 64 x D row-major
// shared-memory tile: the B operand with k = its 64 rows.
template <int D, int LDS>
__device__ __forceinline__ void mma_p_b(float acc[D / 8][4], const float p[8][4], const bf16* tile,
                                        int lane) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        a[0] = pack_bf16x2(p[2 * kk][0], p[2 * kk][1]);
        a[1] = pack_bf16x2(p[2 * kk][2], p[2 * kk][3]);
        a[2] = pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int jp = 0; jp < D / 16; ++jp) {
            uint32_t b[4];
            ldsm_x4_trans(b, tile + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + jp * 16 +
                                 (lane >> 4) * 8);
            mma_16816(acc[2 * jp], a, b[0], b[1]);
            mma_16816(acc[2 * jp + 1], a, b[2], b[3]);
        }
    }
}

// Copies rows [row0, row0 + 64) x D columns of a row-major bf16 matrix (row stride ld, first
// column at src) into a shared tile; rows at or past `rows` are zero-filled. Asynchronous: wait
// with cp_async_wait_all() and a barrier.
template <int D, int LDS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int ld, int row0,
                                                int rows) {
    constexpr int CHUNKS = D / 8;  // 16-byte pieces per row
    static_assert((ATT_TILE * CHUNKS) % ATT_THREADS == 0, "whole copies per thread");
#pragma unroll
    for (int i = 0; i < ATT_TILE * CHUNKS / ATT_THREADS; ++i) {
        const int c = threadIdx.x + i * ATT_THREADS;  // blockDim.x == ATT_THREADS
        const int r = c / CHUNKS, cc = c % CHUNKS;
        const bool valid = row0 + r < rows;
        const bf16* from = valid ? src + (size_t)(row0 + r) * ld + cc * 8 : src;
        cp_async16(tile + r * LDS + cc * 8, from, valid);
    }
}

// Whether sequence `seq_mask` has any real token (when it has none, every key counts, all alike).
__device__ __forceinline__ bool any_real_key(const unsigned* seq_mask, int T) {
    int any = 0;
    for (int j = threadIdx.x; j < T; j += blockDim.x) any |= seq_mask[j] != 0;
    return __syncthreads_or(any) != 0;
}

// Stores two adjacent values of row `row` of a bf16 matrix at column `col`.
__device__ __forceinline__ void store_pair(bf16* p, float a, float b, bool accumulate) {
    bf162* q = reinterpret_cast<bf162*>(p);
    if (accumulate) {
        const float2 o = __bfloat1622float2(*q);
        a += o.x;
        b += o.y;
    }
    *q = __floats2bfloat162_rn(a, b);
}

// The dropout mask of the probabilities [batch, heads, seq, seq] (element
// ((b * heads + h) * T + q) * T + k, as the CPU's attention dropout draws it) is drawn from
// Philox once, by the forward kernel, which stores it as bits for the backward kernels:
// keep_bits[((b * heads + h) * T + q) * W + k / 32] holds key k's bit k % 32, 1 = kept,
// W = ceil(T / 32) words a row. dkdv's transposed tiles would otherwise draw one Philox call for
// each probability.
__device__ __forceinline__ int keep_words(int T) { return (T + 31) >> 5; }

// This lane's keep bits of the C tiles p[8][4] (rows qa = q0 + 16w + g and qa + 8, columns
// k0 + 8j + 2t and + 1), placed in the words of the tile's two 32-key groups: kw[0], kw[1] for
// row qa, kw[2], kw[3] for row qb, bits 8 (j % 4) + 2t and + 1 of word j / 4 (k0 is a multiple of
// 64). The lane's other bits, and those of keys and queries past the sequence, are 0; OR-ing the
// four lanes of a quad (quad_or) gives whole words.
//
// With T % 4 == 0 (and so the tensor's offset, first_sequence * heads * T * T, a multiple of four
// too) a block of four mask elements (one Philox call) is four columns of one row, starting at a
// multiple of four, and lanes t and t ^ 1 hold those four columns in both of their rows: the even
// lane draws row qa's block, the odd lane row qb's, and each sends the other the two words it
// needs, one Philox call per lane and column pair instead of two (kernels/emulate/
// attention_dropout_words.py checks the lanes' words and bits against the CPU's). Every lane of
// the warp must call it.
__device__ __forceinline__ void draw_keep_bits(const DropoutSite& drop, int b, int h, int heads,
                                               int T, int qa, int k0, int t, uint32_t kw[4]) {
    const unsigned long long base = ((unsigned long long)b * heads + h) * T;
    const int qb = qa + 8;
    kw[0] = kw[1] = kw[2] = kw[3] = 0u;
    const bool shared_words = (T & 3) == 0 && (drop.offset & 3) == 0;
    const bool odd = t & 1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int k = k0 + 8 * j + 2 * t;
        uint32_t a0, a1, b0, b1;  // the Philox words of (qa, k), (qa, k + 1), (qb, k), (qb, k + 1)
        if (shared_words) {
            const unsigned long long row = (base + (odd ? qb : qa)) * T;
            const Philox4 r = dropout_words(drop, (drop.offset + row + (k & ~3)) >> 2);
            // The even lane holds words 0, 1 of each row's block, the odd lane words 2, 3.
            const uint32_t give0 = odd ? r.x : r.z, give1 = odd ? r.y : r.w;
            const uint32_t got0 = __shfl_xor_sync(FULL_MASK, give0, 1);
            const uint32_t got1 = __shfl_xor_sync(FULL_MASK, give1, 1);
            a0 = odd ? got0 : r.x;
            a1 = odd ? got1 : r.y;
            b0 = odd ? r.z : got0;
            b1 = odd ? r.w : got1;
        } else {
            a0 = a1 = b0 = b1 = 0u;
            if (k < T && qa < T) pair_words(drop, (base + qa) * T + k, a0, a1);
            if (k < T && qb < T) pair_words(drop, (base + qb) * T + k, b0, b1);
        }
        const int bit = 8 * (j & 3) + 2 * t;
        const uint32_t a = keep_bit(drop, a0) << bit | keep_bit(drop, a1) << (bit + 1);
        const uint32_t b = keep_bit(drop, b0) << bit | keep_bit(drop, b1) << (bit + 1);
        kw[j >> 2] |= k < T && qa < T ? a : 0u;
        kw[2 + (j >> 2)] |= k < T && qb < T ? b : 0u;
    }
}

// Whole words from the four lanes of each quad (lanes 4g .. 4g + 3 share their rows).
__device__ __forceinline__ void quad_or(uint32_t kw[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        kw[i] |= __shfl_xor_sync(FULL_MASK, kw[i], 1);
        kw[i] |= __shfl_xor_sync(FULL_MASK, kw[i], 2);
    }
}

// Multiplies this lane's elements of the C tiles p[8][4] (see draw_keep_bits) by 1/(1 - p) where
// the quad's words kw keep them and by 0 where they drop them, as the CPU's mask does. Keys and
// queries past the sequence are left alone (multiplied by 1, exactly: their P is 0 or never
// stored), by selects rather than branches.
__device__ __forceinline__ void apply_keep_bits(float p[8][4], const uint32_t kw[4], float scale,
                                                int T, int qa, int k0, int t) {
    const bool a_in = qa < T, b_in = qa + 8 < T;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const bool k_in = k0 + 8 * j + 2 * t < T;
        const int bit = 8 * (j & 3) + 2 * t;
        const uint32_t wa = kw[j >> 2], wb = kw[2 + (j >> 2)];
        const auto factor = [&](bool in, uint32_t w, int b) {
            return in && k_in ? ((w >> b & 1u) ? scale : 0.f) : 1.f;
        };
        p[j][0] *= factor(a_in, wa, bit);
        p[j][1] *= factor(a_in, wa, bit + 1);
        p[j][2] *= factor(b_in, wb, bit);
        p[j][3] *= factor(b_in, wb, bit + 1);
    }
}

// The forward kernel's store of the quad's words: lane t writes kw[t], the word k0 / 32 + (t & 1)
// of row qa (t < 2) or qb, if it lies in the tensor.
__device__ __forceinline__ void store_keep_words(unsigned* __restrict__ keep_bits,
                                                 const uint32_t kw[4], size_t stat, int T, int qa,
                                                 int k0, int t) {
    const int row = t < 2 ? qa : qa + 8, word = (k0 >> 5) + (t & 1), W = keep_words(T);
    const uint32_t mine = t == 0 ? kw[0] : t == 1 ? kw[1] : t == 2 ? kw[2] : kw[3];
    if (row < T && word < W) keep_bits[(stat + row) * W + word] = mine;
}

// The backward's read of the words that store_keep_words wrote for query row q and the key tile
// at k0: words k0 / 32 and k0 / 32 + 1 of the row (0 where they lie outside the tensor).
__device__ __forceinline__ void load_keep_pair(const unsigned* __restrict__ keep_bits, size_t stat,
                                               int T, int q, int k0, uint32_t& w0, uint32_t& w1) {
    const int W = keep_words(T), word = k0 >> 5;
    const unsigned* row = keep_bits + (stat + q) * W + word;
    w0 = q < T ? row[0] : 0u;
    w1 = q < T && word + 1 < W ? row[1] : 0u;
}

// dq's words: those of rows qa (kw[0], kw[1]) and qa + 8 (kw[2], kw[3]), as draw_keep_bits
// leaves them after quad_or.
__device__ __forceinline__ void load_keep_words(const unsigned* __restrict__ keep_bits,
                                                size_t stat, int T, int qa, int k0, uint32_t kw[4]) {
    load_keep_pair(keep_bits, stat, T, qa, k0, kw[0], kw[1]);
    load_keep_pair(keep_bits, stat, T, qa + 8, k0, kw[2], kw[3]);
}

// ---------------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attention_fwd_body(const bf16* __restrict__ qkv,
                                                   const unsigned* __restrict__ key_mask,
                                                   bf16* __restrict__ ctx, float* __restrict__ lse,
                                                   unsigned* __restrict__ keep_bits, int T,
                                                   int heads, DropoutSite drop) {
    constexpr int LDS = D + 8;
    __shared__ __align__(16) bf16 Ks[ATT_TILE * LDS];
    __shared__ __align__(16) bf16 Vs[ATT_TILE * LDS];
    __shared__ float kbias[ATT_TILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_TILE;
    const int H = heads * D, ld = 3 * H;
    const bf16* seq = qkv + (size_t)b * T * ld;
    const bf16* Qg = seq + h * D;
    const bf16* Kg = seq + H + h * D;
    const bf16* Vg = seq + 2 * H + h * D;
    const unsigned* mask = key_mask + (size_t)b * T;
    const bool any = any_real_key(mask, T);
    // Scores in log2 units; all zero (uniform attention) in a sequence with no real token.
    const float sl2 = any ? rsqrtf((float)D) * LOG2E : 0.f;

    // Q through the K buffer into registers.
    load_tile_async<D, LDS>(Ks, Qg, ld, q0, T);
    cp_async_wait_all();
    __syncthreads();
    uint32_t qf[D / 16][4];
    load_a_frags<D, LDS>(qf, Ks + warp * 16 * LDS, lane);

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8

    for (int k0 = 0; k0 < T; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile (or Q) is no longer read
        load_tile_async<D, LDS>(Ks, Kg, ld, k0, T);
        load_tile_async<D, LDS>(Vs, Vg, ld, k0, T);
        if (threadIdx.x < ATT_TILE) {
            const int k = k0 + threadIdx.x;
            kbias[threadIdx.x] = k < T && (!any || mask[k] != 0) ? 0.f : -INFINITY;
        }
        cp_async_wait_all();
        __syncthreads();

        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        mma_a_bt<D, LDS>(s, qf, Ks, lane);

        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float kb0 = kbias[8 * j + 2 * t], kb1 = kbias[8 * j + 2 * t + 1];
            s[j][0] = s[j][0] * sl2 + kb0;
            s[j][1] = s[j][1] * sl2 + kb1;
            s[j][2] = s[j][2] * sl2 + kb0;
            s[j][3] = s[j][3] * sl2 + kb1;
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        // The four lanes of a quad share a row.
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        // A row with no valid key yet keeps m = -inf: use 0 as the base so no inf - inf appears.
        const float u0 = n0 == -INFINITY ? 0.f : n0, u1 = n1 == -INFINITY ? 0.f : n1;
        const float a0 = exp2f(m0 - u0), a1 = exp2f(m1 - u1);
        m0 = n0;
        m1 = n1;
        float r0 = 0.f, r1 = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            s[j][0] = exp2f(s[j][0] - u0);
            s[j][1] = exp2f(s[j][1] - u0);
            s[j][2] = exp2f(s[j][2] - u1);
            s[j][3] = exp2f(s[j][3] - u1);
            r0 += s[j][0] + s[j][1];
            r1 += s[j][2] + s[j][3];
        }
        l0 = l0 * a0 + r0;
        l1 = l1 * a1 + r1;
        // Dropout acts on the normalised probabilities, so on what P V sums, not on l.
        if (drop.p > 0.f) {
            const int qa = q0 + warp * 16 + g;
            uint32_t kw[4];
            draw_keep_bits(drop, b, h, heads, T, qa, k0, t, kw);
            quad_or(kw);
            store_keep_words(keep_bits, kw, ((size_t)b * heads + h) * T, T, qa, k0, t);
            apply_keep_bits(s, kw, drop.keep, T, qa, k0, t);
        }
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            o[j][0] *= a0;
            o[j][1] *= a0;
            o[j][2] *= a1;
            o[j][3] *= a1;
        }
        mma_p_b<D, LDS>(o, s, Vs, lane);
    }

    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    const int qa = q0 + warp * 16 + g, qb = qa + 8;
    bf16* out = ctx + (size_t)b * T * H + h * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
        const int col = 8 * j + 2 * t;
        if (qa < T) store_pair(out + (size_t)qa * H + col, o[j][0] * i0, o[j][1] * i0, false);
        if (qb < T) store_pair(out + (size_t)qb * H + col, o[j][2] * i1, o[j][3] * i1, false);
    }
    if (t == 0) {
        float* row_lse = lse + ((size_t)b * heads + h) * T;
        if (qa < T) row_lse[qa] = (m0 + log2f(l0)) * LN2;
        if (qb < T) row_lse[qb] = (m1 + log2f(l1)) * LN2;
    }
}

// ---------------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attention_bwd_dq_body(
    const bf16* __restrict__ qkv, const unsigned* __restrict__ key_mask,
    const bf16* __restrict__ ctx, const bf16* __restrict__ dctx, const float* __restrict__ lse,
    const unsigned* __restrict__ keep_bits, float* __restrict__ delta, bf16* __restrict__ dqkv,
    int T, int heads, int accumulate, DropoutSite drop) {
    constexpr int LDS = D + 8;
    __shared__ __align__(16) bf16 Ks[ATT_TILE * LDS];
    __shared__ __align__(16) bf16 Vs[ATT_TILE * LDS];
    __shared__ float kbias[ATT_TILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_TILE;
    const int H = heads * D, ld = 3 * H;
    const bf16* seq = qkv + (size_t)b * T * ld;
    const bf16* Qg = seq + h * D;
    const bf16* Kg = seq + H + h * D;
    const bf16* Vg = seq + 2 * H + h * D;
    const bf16* Og = ctx + (size_t)b * T * H + h * D;
    const bf16* dOg = dctx + (size_t)b * T * H + h * D;
    const unsigned* mask = key_mask + (size_t)b * T;
    const bool any = any_real_key(mask, T);
    // As in the forward pass: a sequence with no real token has constant scores.
    const float scale = any ? rsqrtf((float)D) : 0.f, sl2 = scale * LOG2E;
    const size_t stat = ((size_t)b * heads + h) * T;  // this (sequence, head)'s row statistics

    // Q (into Ks) and dO (into Vs) as A fragments.
    load_tile_async<D, LDS>(Ks, Qg, ld, q0, T);
    load_tile_async<D, LDS>(Vs, dOg, H, q0, T);
    cp_async_wait_all();
    __syncthreads();
    uint32_t qf[D / 16][4], dof[D / 16][4];
    load_a_frags<D, LDS>(qf, Ks + warp * 16 * LDS, lane);
    load_a_frags<D, LDS>(dof, Vs + warp * 16 * LDS, lane);
    __syncthreads();

    // delta = rowsum(dO * O) for the block's rows, O through Ks: lane pair (2i, 2i+1) sums the
    // two halves of the warp's row i.
    load_tile_async<D, LDS>(Ks, Og, H, q0, T);
    cp_async_wait_all();
    __syncthreads();
    float dsum = 0.f;
    {
        const int row = warp * 16 + (lane >> 1);
        const bf16* orow = Ks + row * LDS + (lane & 1) * (D / 2);
        const bf16* drow = Vs + row * LDS + (lane & 1) * (D / 2);
#pragma unroll
        for (int i = 0; i < D / 2; ++i) dsum += bf2f(orow[i]) * bf2f(drow[i]);
        dsum += __shfl_xor_sync(FULL_MASK, dsum, 1);
        const int q = q0 + row;
        if ((lane & 1) == 0 && q < T) delta[stat + q] = dsum;
    }
    const float dl0 = __shfl_sync(FULL_MASK, dsum, 2 * g), dl1 = __shfl_sync(FULL_MASK, dsum, 2 * (g + 8));
    const int qa = q0 + warp * 16 + g, qb = qa + 8;
    // Rows past the sequence: lse = +inf makes their P exactly 0.
    const float L0 = qa < T ? lse[stat + qa] * LOG2E : INFINITY;
    const float L1 = qb < T ? lse[stat + qb] * LOG2E : INFINITY;

    float dq[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

    for (int k0 = 0; k0 < T; k0 += ATT_TILE) {
        __syncthreads();
        load_tile_async<D, LDS>(Ks, Kg, ld, k0, T);
        load_tile_async<D, LDS>(Vs, Vg, ld, k0, T);
        if (threadIdx.x < ATT_TILE) {
            const int k = k0 + threadIdx.x;
            kbias[threadIdx.x] = k < T && (!any || mask[k] != 0) ? 0.f : -INFINITY;
        }
        // The tile's keep bits, loaded now so that they arrive while the tiles do.
        uint32_t kw[4];
        if (drop.p > 0.f) load_keep_words(keep_bits, stat, T, qa, k0, kw);
        cp_async_wait_all();
        __syncthreads();

        float s[8][4], dp[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
        mma_a_bt<D, LDS>(s, qf, Ks, lane);
        mma_a_bt<D, LDS>(dp, dof, Vs, lane);
        // With dropout, the gradient reaching P is dP o mask / (1 - p); delta = rowsum(dO * O)
        // is unchanged (O already holds the dropped probabilities).
        if (drop.p > 0.f) apply_keep_bits(dp, kw, drop.keep, T, qa, k0, t);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float kb0 = kbias[8 * j + 2 * t], kb1 = kbias[8 * j + 2 * t + 1];
            // dS = P * (dP - delta), P = exp2(S * scale * log2e - lse * log2e)
            s[j][0] = exp2f(s[j][0] * sl2 + kb0 - L0) * (dp[j][0] - dl0);
            s[j][1] = exp2f(s[j][1] * sl2 + kb1 - L0) * (dp[j][1] - dl0);
            s[j][2] = exp2f(s[j][2] * sl2 + kb0 - L1) * (dp[j][2] - dl1);
            s[j][3] = exp2f(s[j][3] * sl2 + kb1 - L1) * (dp[j][3] - dl1);
        }
        mma_p_b<D, LDS>(dq, s, Ks, lane);
    }

    bf16* out = dqkv + (size_t)b * T * ld + h * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
        const int col = 8 * j + 2 * t;
        if (qa < T) store_pair(out + (size_t)qa * ld + col, dq[j][0] * scale, dq[j][1] * scale, accumulate);
        if (qb < T) store_pair(out + (size_t)qb * ld + col, dq[j][2] * scale, dq[j][3] * scale, accumulate);
    }
}

// ---------------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attention_bwd_dkdv_body(
    const bf16* __restrict__ qkv, const unsigned* __restrict__ key_mask,
    const bf16* __restrict__ dctx, const float* __restrict__ lse,
    const unsigned* __restrict__ keep_bits, const float* __restrict__ delta,
    bf16* __restrict__ dqkv, int T, int heads, int accumulate, DropoutSite drop) {
    constexpr int LDS = D + 8;
    __shared__ __align__(16) bf16 Qs[ATT_TILE * LDS];
    __shared__ __align__(16) bf16 dOs[ATT_TILE * LDS];
    __shared__ float lse2s[ATT_TILE], deltas[ATT_TILE];
    // The keep bits of the tile's queries for this block's keys: word k0 / 32 + i in keeps[i].
    __shared__ uint32_t keeps[2][ATT_TILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * ATT_TILE;
    const int H = heads * D, ld = 3 * H;
    const bf16* seq = qkv + (size_t)b * T * ld;
    const bf16* Qg = seq + h * D;
    const bf16* Kg = seq + H + h * D;
    const bf16* Vg = seq + 2 * H + h * D;
    const bf16* dOg = dctx + (size_t)b * T * H + h * D;
    const unsigned* mask = key_mask + (size_t)b * T;
    const bool any = any_real_key(mask, T);
    // As in the forward pass: a sequence with no real token has constant scores.
    const float scale = any ? rsqrtf((float)D) : 0.f, sl2 = scale * LOG2E;
    const size_t stat = ((size_t)b * heads + h) * T;

    // This warp's 16 keys: K and V as A fragments (through the Q and dO buffers).
    load_tile_async<D, LDS>(Qs, Kg, ld, k0, T);
    load_tile_async<D, LDS>(dOs, Vg, ld, k0, T);
    cp_async_wait_all();
    __syncthreads();
    uint32_t kf[D / 16][4], vf[D / 16][4];
    load_a_frags<D, LDS>(kf, Qs + warp * 16 * LDS, lane);
    load_a_frags<D, LDS>(vf, dOs + warp * 16 * LDS, lane);
    const int ka = k0 + warp * 16 + g, kb = ka + 8;  // the rows of this lane's fragments
    // ka's and kb's bits in word k0 / 32 + warp / 2 of a query's row of keep_bits.
    const int bit_a = 16 * (warp & 1) + g, bit_b = bit_a + 8;
    const float kb0 = ka < T && (!any || mask[ka] != 0) ? 0.f : -INFINITY;
    const float kb1 = kb < T && (!any || mask[kb] != 0) ? 0.f : -INFINITY;

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
        dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = dv[j][0] = dv[j][1] = dv[j][2] = dv[j][3] = 0.f;

    for (int q0 = 0; q0 < T; q0 += ATT_TILE) {
        __syncthreads();  // the previous tile (or K/V) is no longer read
        load_tile_async<D, LDS>(Qs, Qg, ld, q0, T);
        load_tile_async<D, LDS>(dOs, dOg, H, q0, T);
        if (threadIdx.x < ATT_TILE) {
            const int q = q0 + threadIdx.x;
            lse2s[threadIdx.x] = q < T ? lse[stat + q] * LOG2E : INFINITY;  // P = 0 past the end
            deltas[threadIdx.x] = q < T ? delta[stat + q] : 0.f;
            if (drop.p > 0.f)
                load_keep_pair(keep_bits, stat, T, q, k0, keeps[0][threadIdx.x], keeps[1][threadIdx.x]);
        }
        cp_async_wait_all();
        __syncthreads();

        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x the tile's 64 queries.
        float s[8][4], dp[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
        mma_a_bt<D, LDS>(s, kf, Qs, lane);
        mma_a_bt<D, LDS>(dp, vf, dOs, lane);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int qc = 8 * j + 2 * t;  // this lane's two query columns qc, qc + 1
            const float La = lse2s[qc], Lb = lse2s[qc + 1];
            const float da = deltas[qc], db = deltas[qc + 1];
            s[j][0] = exp2f(s[j][0] * sl2 + kb0 - La);
            s[j][1] = exp2f(s[j][1] * sl2 + kb0 - Lb);
            s[j][2] = exp2f(s[j][2] * sl2 + kb1 - La);
            s[j][3] = exp2f(s[j][3] * sl2 + kb1 - Lb);
            if (drop.p > 0.f) {
                // Transposed tile: consecutive columns are queries, rows of keep_bits.
                const int q = q0 + qc;
                const uint32_t wq = keeps[warp >> 1][qc], wq1 = keeps[warp >> 1][qc + 1];
                const float keep = drop.keep;
                float m[4] = {1.f, 1.f, 1.f, 1.f};
                if (q < T) {
                    if (ka < T) m[0] = (wq >> bit_a & 1u) ? keep : 0.f;
                    if (kb < T) m[2] = (wq >> bit_b & 1u) ? keep : 0.f;
                }
                if (q + 1 < T) {
                    if (ka < T) m[1] = (wq1 >> bit_a & 1u) ? keep : 0.f;
                    if (kb < T) m[3] = (wq1 >> bit_b & 1u) ? keep : 0.f;
                }
#pragma unroll
                for (int e = 0; e < 4; ++e) dp[j][e] *= m[e];  // dP o mask
                dp[j][0] = s[j][0] * (dp[j][0] - da);
                dp[j][1] = s[j][1] * (dp[j][1] - db);
                dp[j][2] = s[j][2] * (dp[j][2] - da);
                dp[j][3] = s[j][3] * (dp[j][3] - db);
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] *= m[e];  // the dropped P, for dV
            } else {
                dp[j][0] = s[j][0] * (dp[j][0] - da);
                dp[j][1] = s[j][1] * (dp[j][1] - db);
                dp[j][2] = s[j][2] * (dp[j][2] - da);
                dp[j][3] = s[j][3] * (dp[j][3] - db);
            }
        }
        mma_p_b<D, LDS>(dv, s, dOs, lane);   // dV += P^T dO
        mma_p_b<D, LDS>(dk, dp, Qs, lane);   // dK += dS^T Q
    }

    bf16* outk = dqkv + (size_t)b * T * ld + H + h * D;
    bf16* outv = dqkv + (size_t)b * T * ld + 2 * H + h * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
        const int col = 8 * j + 2 * t;
        if (ka < T) {
            store_pair(outk + (size_t)ka * ld + col, dk[j][0] * scale, dk[j][1] * scale, accumulate);
            store_pair(outv + (size_t)ka * ld + col, dv[j][0], dv[j][1], accumulate);
        }
        if (kb < T) {
            store_pair(outk + (size_t)kb * ld + col, dk[j][2] * scale, dk[j][3] * scale, accumulate);
            store_pair(outv + (size_t)kb * ld + col, dv[j][2], dv[j][3], accumulate);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points. The register budgets (ptxas' -v report, sm_80/sm_90) are set by the minimum
// blocks per SM in __launch_bounds__: 3 for the forward (<= 170 registers), 2 for the backward
// (<= 255: dK and dV, or dQ, plus S and dP tiles stay in registers); without them ptxas picks
// tighter budgets and spills a few bytes. Arguments:
//   fwd:  qkv, key_mask, ctx (out), lse (out, f32 [batch, heads, seq]), keep_bits (out), seq,
//         heads, DROP
//   dq:   qkv, key_mask, ctx, dctx, lse, keep_bits, delta (out, f32 [batch, heads, seq]), dqkv,
//         seq, heads, accumulate, DROP
//   dkdv: qkv, key_mask, dctx, lse, keep_bits, delta (from dq), dqkv, seq, heads, accumulate,
//         DROP
// where keep_bits is the dropout mask as bits (u32 [batch, heads, seq, ceil(seq / 32)], see
// keep_words; read and written only with dropout), and DROP = drop_p (f32; 0 = no dropout),
// drop_per_seq (u64: heads·seq·seq, the probabilities per sequence), drop_site (u32), step (the
// step memory: the seed and the first sequence): the attention-probability dropout of
// backend::Dropout, the same values in all three launches. Launch each: grid (ceil(seq / 64),
// heads, batch), 128 threads; dq before dkdv.

#define ATTENTION_ENTRIES(D)                                                                    \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 3) attention_fwd_d##D(            \
        const bf16* __restrict__ qkv, const unsigned* __restrict__ key_mask,                    \
        bf16* __restrict__ ctx, float* __restrict__ lse, unsigned* __restrict__ keep_bits,      \
        int seq, int heads, float drop_p, unsigned long long drop_per_seq, unsigned drop_site,  \
        const StepValues* __restrict__ step) {                                                  \
        attention_fwd_body<D>(qkv, key_mask, ctx, lse, keep_bits, seq, heads,                   \
                              make_dropout(drop_p, drop_per_seq, drop_site, step));             \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 2) attention_bwd_dq_d##D(         \
        const bf16* __restrict__ qkv, const unsigned* __restrict__ key_mask,                    \
        const bf16* __restrict__ ctx, const bf16* __restrict__ dctx,                            \
        const float* __restrict__ lse, const unsigned* __restrict__ keep_bits,                  \
        float* __restrict__ delta, bf16* __restrict__ dqkv, int seq, int heads, int accumulate, \
        float drop_p, unsigned long long drop_per_seq, unsigned drop_site,                      \
        const StepValues* __restrict__ step) {                                                  \
        attention_bwd_dq_body<D>(qkv, key_mask, ctx, dctx, lse, keep_bits, delta, dqkv, seq,    \
                                 heads, accumulate,                                             \
                                 make_dropout(drop_p, drop_per_seq, drop_site, step));          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 2) attention_bwd_dkdv_d##D(       \
        const bf16* __restrict__ qkv, const unsigned* __restrict__ key_mask,                    \
        const bf16* __restrict__ dctx, const float* __restrict__ lse,                           \
        const unsigned* __restrict__ keep_bits, const float* __restrict__ delta,                \
        bf16* __restrict__ dqkv, int seq, int heads, int accumulate, float drop_p,              \
        unsigned long long drop_per_seq, unsigned drop_site,                                    \
        const StepValues* __restrict__ step) {                                                  \
        attention_bwd_dkdv_body<D>(qkv, key_mask, dctx, lse, keep_bits, delta, dqkv, seq, heads, \
                                   accumulate,                                                  \
                                   make_dropout(drop_p, drop_per_seq, drop_site, step));        \
    }

ATTENTION_ENTRIES(16)
ATTENTION_ENTRIES(32)
ATTENTION_ENTRIES(64)
