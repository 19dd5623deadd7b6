// The inline PTX of the kernels, as host code for the host device (shim.h): the tensor-core
// product mma.sync.m16n8k16 (bf16 in, f32 accumulate), ldmatrix x4 (plain and transposed), the
// asynchronous global-to-shared copy and %lanemask_lt. The fragment layouts are the PTX ISA's,
// as attention.cu's comment states them (lane = 4g + t). A copy lands when its thread waits
// (cp_async_wait_all), the latest a GPU may make it land: a thread that reads its own copies
// before waiting reads the old contents, and copies never waited for abort the run. (Another
// thread's copies have landed by the time a barrier lets a reader on, whatever the order.)
#pragma once

inline unsigned lanemask_lt() { return (1u << hd::current->lane) - 1u; }

inline void cp_async16(void* smem, const void* gmem, bool valid) {
    hd::Thread& t = *hd::current;
    if (t.async_copies == hd::MAX_ASYNC_COPIES)
        hd::fail("cp.async", "has more copies in flight than the host device keeps");
    t.pending[t.async_copies++] = {smem, gmem, valid};
}

inline void cp_async_wait_all() {
    hd::Thread& t = *hd::current;
    for (int i = 0; i < t.async_copies; ++i) {
        const hd::AsyncCopy& c = t.pending[i];
        if (c.valid)
            memcpy(c.dst, c.src, 16);
        else
            memset(c.dst, 0, 16);
    }
    t.async_copies = 0;
}

namespace hd {
struct MmaIn {
    uint32_t a[4], b[2];
};
struct MmaCtx {
    int lane;
    float c[4];
};

// The 16 x 16 A and 16 x 8 B of the warp's product from its lanes' fragments.
inline void mma_operands(const unsigned char* const* deposits, float A[16][16], float B[16][8]) {
    for (int l = 0; l < 32; ++l) {
        if (!deposits[l]) fail("mma.sync", "a lane of the warp did not take part");
        MmaIn in;
        memcpy(&in, deposits[l], sizeof in);
        const int g = l >> 2, t = l & 3;
        for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = bf16_bits_to_float(in.a[0] >> (16 * h) & 0xffffu);
            A[g + 8][2 * t + h] = bf16_bits_to_float(in.a[1] >> (16 * h) & 0xffffu);
            A[g][8 + 2 * t + h] = bf16_bits_to_float(in.a[2] >> (16 * h) & 0xffffu);
            A[g + 8][8 + 2 * t + h] = bf16_bits_to_float(in.a[3] >> (16 * h) & 0xffffu);
            B[2 * t + h][g] = bf16_bits_to_float(in.b[0] >> (16 * h) & 0xffffu);
            B[8 + 2 * t + h][g] = bf16_bits_to_float(in.b[1] >> (16 * h) & 0xffffu);
        }
    }
}
}  // namespace hd

// c (16 x 8, this lane's four) += A (16 x 16) * B (16 x 8): the 16 products of a dot, exact in
// double, added to c in one rounding.
inline void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    hd::MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    hd::MmaCtx ctx{hd::current->lane, {c[0], c[1], c[2], c[3]}};
    hd::warp_collective(
        0xffffffffu, &in, sizeof in,
        [](const unsigned char* const* deposits, void* p) {
            auto* ctx = static_cast<hd::MmaCtx*>(p);
            float A[16][16], B[16][8];
            hd::mma_operands(deposits, A, B);
            const int g = ctx->lane >> 2, t = ctx->lane & 3;
            for (int i = 0; i < 4; ++i) {
                const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
                double dot = 0.0;
                for (int k = 0; k < 16; ++k) dot += (double)A[row][k] * (double)B[k][col];
                ctx->c[i] = (float)((double)ctx->c[i] + dot);
            }
        },
        &ctx, "mma.sync.m16n8k16");
    for (int i = 0; i < 4; ++i) c[i] = ctx.c[i];
}

namespace hd {
struct LdsmCtx {
    int lane;
    bool trans;
    uint32_t r[4];
};
// ldmatrix .x4: lanes 8i .. 8i + 7 give the row addresses of matrix i (8 x 8 bf16); lane l gets
// the 32-bit word (row l / 4, columns 2(l % 4), +1) of each, or of its transpose with .trans.
inline void ldsm(uint32_t r[4], const __nv_bfloat16* p, bool trans) {
    LdsmCtx ctx{current->lane, trans, {0, 0, 0, 0}};
    warp_collective(
        0xffffffffu, &p, sizeof p,
        [](const unsigned char* const* deposits, void* q) {
            auto* ctx = static_cast<LdsmCtx*>(q);
            const uint16_t* rows[32];
            for (int l = 0; l < 32; ++l) {
                if (!deposits[l]) fail("ldmatrix", "a lane of the warp did not take part");
                memcpy(&rows[l], deposits[l], sizeof rows[l]);
                if ((uintptr_t)rows[l] & 15) fail("ldmatrix", "a row address is not 16-byte aligned");
            }
            const int g = ctx->lane >> 2, t = ctx->lane & 3;
            for (int i = 0; i < 4; ++i) {
                const uint16_t* const* m = rows + 8 * i;
                const uint32_t lo = ctx->trans ? m[2 * t][g] : m[g][2 * t];
                const uint32_t hi = ctx->trans ? m[2 * t + 1][g] : m[g][2 * t + 1];
                ctx->r[i] = lo | hi << 16;
            }
        },
        &ctx, trans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
    for (int i = 0; i < 4; ++i) r[i] = ctx.r[i];
}
}  // namespace hd

inline void ldsm_x4(uint32_t r[4], const __nv_bfloat16* p) { hd::ldsm(r, p, false); }
inline void ldsm_x4_trans(uint32_t r[4], const __nv_bfloat16* p) { hd::ldsm(r, p, true); }
