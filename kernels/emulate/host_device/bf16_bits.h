// bf16 as its 16 bits, for the host device's kernels (shim.h) and products (cublaslt.cpp): one
// conversion each way, round to nearest even as __float2bfloat16_rn, a NaN kept a (quiet) NaN.
#pragma once

#include <stdint.h>
#include <string.h>

namespace hd {
inline float bf16_bits_to_float(uint16_t bits) {
    const uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline uint16_t float_to_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
}  // namespace hd
