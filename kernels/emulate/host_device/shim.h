// What nvcc gives a kernel source, for compiling the kernels of kernels/ as host C++ (g++ -x c++
// -DELECTRA_HOST_DEVICE): the execution-space keywords, the thread indices, bf16, the vector types,
// the intrinsics the kernels call, and the warp- and block-level operations, which run on the
// fibers of threads.cpp. Together with driver.cpp it lets the CUDA backend, its launchers and its
// GPU tests run unchanged on a machine with no GPU (see README.md in this folder).
//
// Semantics kept: one block at a time, its threads as fibers that switch only at a barrier or a
// warp collective (so a missing __syncthreads gives a wrong result in thread order or in
// reverse order, ELECTRA_HOST_DEVICE_ORDER=reverse, not a pass by luck); shared
// memory one instance per OS thread (`__shared__` is a thread_local static); bf16 rounding to
// nearest even, as __float2bfloat16_rn; a warp collective must be reached by every live lane its
// mask names, and may not read a lane that has exited (both are undefined on a GPU; here they
// abort with the kernel's name). Not kept: timing, the memory model of concurrent blocks, and the
// device's approximate math (expf and friends are the host's, within 1 ulp where the device's
// may be 2).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "bf16_bits.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned x, y, z;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

namespace hd {
// A thread of the running block (threads.cpp).
// A cp.async copy issued and not yet waited for (warp_matrix.h).
struct AsyncCopy {
    void* dst;
    const void* src;
    bool valid;
};
constexpr int MAX_ASYNC_COPIES = 64;
struct Thread {
    uint3 idx;
    int lane, warp;
    int async_copies;  // pending in `pending`
    AsyncCopy pending[MAX_ASYNC_COPIES];
};
extern thread_local Thread* current;
extern thread_local uint3 block_idx, block_dim, grid_dim;

void syncthreads();
int syncthreads_or(int predicate);
// The warp collective at the heart of every other: each live lane of `mask` deposits `bytes`
// bytes of `mine`; `take` then runs in each lane with every lane's deposit (indexed by lane)
// while no lane of the warp has gone on, so it may also read memory the warp is about to write.
void warp_collective(unsigned mask, const void* mine, size_t bytes,
                     void (*take)(const unsigned char* const* deposits, void* ctx), void* ctx,
                     const char* what);
// Aborts the process, naming the kernel, its block and thread, `what` and `why`.
[[noreturn]] void fail(const char* what, const char* why);
}  // namespace hd

#define threadIdx (::hd::current->idx)
#define blockIdx (::hd::block_idx)
#define blockDim (::hd::block_dim)
#define gridDim (::hd::grid_dim)
#define warpSize 32

// ---------------------------------------------------------------------------------------------
// bf16, as cuda_bf16.h names it

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {hd::float_to_bf16_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return hd::bf16_bits_to_float(h.bits); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
    return {__bfloat162float(h.x), __bfloat162float(h.y)};
}

// ---------------------------------------------------------------------------------------------
// Intrinsics

// CUDA's min and max take any two arithmetic types, as their common type.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
    using T = std::common_type_t<A, B>;
    return (T)b < (T)a ? (T)b : (T)a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
    using T = std::common_type_t<A, B>;
    return (T)a < (T)b ? (T)b : (T)a;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}
// One block runs at a time, so every write of a finished block is seen by the next.
inline void __threadfence() {}
// Blocks run one after another on one OS thread: a plain add is atomic here.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
inline void __syncthreads() { hd::syncthreads(); }
inline int __syncthreads_or(int predicate) { return hd::syncthreads_or(predicate); }
inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }

namespace hd {
template <class T>
struct Shuffle {
    int (*source)(int lane, int arg);
    int arg;
    int lane;
    T out;
};
template <class T>
inline T shuffle(unsigned mask, T v, int arg, int (*source)(int, int), const char* what) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    Shuffle<T> s{source, arg, current->lane, T{}};
    warp_collective(
        mask, &v, sizeof(T),
        [](const unsigned char* const* deposits, void* ctx) {
            auto* s = static_cast<Shuffle<T>*>(ctx);
            const unsigned char* from = deposits[s->source(s->lane, s->arg) & 31];
            if (!from) fail("a shuffle", "reads a lane that is not in its mask or has exited");
            memcpy(&s->out, from, sizeof(T));
        },
        &s, what);
    return s.out;
}
}  // namespace hd

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return hd::shuffle(mask, v, lane_mask, [](int lane, int m) { return lane ^ m; },
                       "__shfl_xor_sync");
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
    return hd::shuffle(mask, v, src_lane, [](int, int src) { return src; }, "__shfl_sync");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    struct Ctx {
        unsigned out;
    } c{0};
    const int p = predicate != 0;
    hd::warp_collective(
        mask, &p, sizeof p,
        [](const unsigned char* const* deposits, void* ctx) {
            unsigned bits = 0;
            for (int l = 0; l < 32; ++l) {
                int v = 0;
                if (deposits[l]) memcpy(&v, deposits[l], sizeof v);
                if (v) bits |= 1u << l;
            }
            static_cast<Ctx*>(ctx)->out = bits;
        },
        &c, "__ballot_sync");
    return c.out;
}

inline unsigned __match_any_sync(unsigned mask, unsigned value) {
    struct Ctx {
        unsigned mine, out;
    } c{value, 0};
    hd::warp_collective(
        mask, &value, sizeof value,
        [](const unsigned char* const* deposits, void* ctx) {
            auto* c = static_cast<Ctx*>(ctx);
            for (int l = 0; l < 32; ++l) {
                unsigned v;
                if (!deposits[l]) continue;
                memcpy(&v, deposits[l], sizeof v);
                if (v == c->mine) c->out |= 1u << l;
            }
        },
        &c, "__match_any_sync");
    return c.out;
}

// The PTX the kernels write inline (`#ifndef ELECTRA_HOST_DEVICE` around it there): its
// semantics from the PTX ISA, in warp_matrix.h.
#include "warp_matrix.h"
