// The host device's launch of a grid (threads.cpp), for driver.cpp.
#pragma once

#include "shim.h"

namespace hd {
// Runs `body(ctx)` once in every thread of a `grid` of `block` threads (one kernel launch).
void run_grid(const char* kernel, uint3 grid, uint3 block, void (*body)(void*), void* ctx);
}  // namespace hd
