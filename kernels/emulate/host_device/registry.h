// The kernels the host device can launch, by name: each kernel file is compiled with a list of
// HD_KERNEL(name) lines after it (scripts/build-host-device.sh finds the names with nm), which
// record the kernel's address, its parameters' offsets and sizes (what cuFuncGetParamInfo
// answers) and a function that calls it with cuLaunchKernel's array of parameter addresses.
#pragma once

#include <stddef.h>

#include <type_traits>
#include <utility>
#include <vector>

namespace hd {
struct Kernel {
    const char* name;
    void* fn;
    void (*invoke)(void* fn, void* const* params);
    std::vector<size_t> offsets, sizes;
};

void register_kernel(const Kernel& k);
// The kernel named `name`, or null.
const Kernel* find_kernel(const char* name);

template <class... A, size_t... I>
void call(void (*f)(A...), void* const* params, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(params[I])...);
}

template <class... A>
Kernel describe(const char* name, void (*f)(A...)) {
    Kernel k{name, reinterpret_cast<void*>(f),
             [](void* fn, void* const* params) {
                 call(reinterpret_cast<void (*)(A...)>(fn), params, std::index_sequence_for<A...>{});
             },
             {},
             {}};
    size_t offset = 0;
    // The parameter buffer's layout: each parameter at the next multiple of its alignment.
    for (auto [size, align] : {std::pair<size_t, size_t>{sizeof(A), alignof(A)}...}) {
        offset = (offset + align - 1) / align * align;
        k.offsets.push_back(offset);
        k.sizes.push_back(size);
        offset += size;
    }
    return k;
}

struct Registration {
    template <class F>
    Registration(const char* name, F f) {
        register_kernel(describe(name, f));
    }
};
}  // namespace hd

#define HD_KERNEL(name) static hd::Registration hd_registration_##name(#name, &name);
