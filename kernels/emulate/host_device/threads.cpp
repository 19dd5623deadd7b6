// The threads of a kernel launch on the host device: each block's threads are fibers on the
// launching OS thread, run one after another in thread order, each until it reaches a barrier
// (__syncthreads, a warp collective) or returns; blocks run one at a time in grid order. A fiber
// switch saves only the registers the System V x86-64 ABI asks a callee to keep (a few
// nanoseconds, where swapcontext's signal-mask system calls cost ~0.5 us: shuffle-heavy kernels
// switch millions of times).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "shim.h"
#include "threads.h"

#if !defined(__x86_64__)
#error "the host device's fiber switch is written for x86-64"
#endif

// hd_switch(&save, next): pushes the callee-saved registers and the SSE/x87 control words,
// stores the stack pointer in *save, and resumes the fiber whose stack pointer is `next`.
extern "C" void hd_switch(void** save, void* next);
asm(R"(
    .text
    .globl hd_switch
    .type hd_switch, @function
hd_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size hd_switch, .-hd_switch
)");

namespace hd {
thread_local Thread* current;
thread_local uint3 block_idx, block_dim, grid_dim;

namespace {
constexpr size_t STACK_BYTES = 256 << 10;
constexpr size_t MAX_DEPOSIT = 64;

struct Fiber {
    Thread t;  // first, so that `current` is also the fiber
    void* sp;
    bool done;
    const char* waiting;  // the barrier it waits at, for a deadlock's report
};

struct Warp {
    unsigned exists, live;  // lanes of the block's size; those not returned
    unsigned named;         // the lanes of the collective under way (0: none)
    unsigned arrived;
    uint64_t generation;
    bool deposited[32];
    unsigned char deposits[32][MAX_DEPOSIT];
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    int live, arrived;
    uint64_t generation;
    int or_sum, or_result;
    uint64_t progress;  // bumped by every arrival and return: a pass without it is a deadlock
    void* scheduler_sp;
    const char* kernel;
    void (*body)(void*);
    void* ctx;
};

thread_local Block* block;
// Stacks, kept for the next launch on this OS thread.
thread_local std::vector<unsigned char*> stacks;

unsigned char* stack_top(size_t i) {
    while (stacks.size() <= i) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void* m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            perror("host device: a fiber's stack");
            abort();
        }
        mprotect(m, page, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
        stacks.push_back(static_cast<unsigned char*>(m) + page + STACK_BYTES);
    }
    return stacks[i];
}

Fiber* me() { return reinterpret_cast<Fiber*>(current); }

void yield(const char* waiting) {
    Fiber* f = me();
    f->waiting = waiting;
    hd_switch(&f->sp, block->scheduler_sp);
    f->waiting = nullptr;
}

void release_block(Block& b) {
    b.or_result = b.or_sum;
    b.or_sum = 0;
    b.arrived = 0;
    ++b.generation;
}

void release_warp(Warp& w) {
    w.arrived = 0;
    ++w.generation;
}

// Waits until every lane `w.named` names has arrived; true in the lane that arrived last, which
// runs on before the others.
bool warp_barrier(Warp& w, const char* what) {
    ++w.arrived;
    ++block->progress;
    if (w.arrived == (unsigned)__builtin_popcount(w.named)) {
        release_warp(w);
        return true;
    }
    const uint64_t g = w.generation;
    while (w.generation == g) yield(what);
    return false;
}

extern "C" void hd_fiber_main() {
    Block& b = *block;
    b.body(b.ctx);
    Fiber* f = me();
    if (f->t.async_copies) fail("cp.async", "copies were never waited for");
    f->done = true;
    --b.live;
    ++b.progress;
    Warp& w = b.warps[(size_t)f->t.warp];
    w.live &= ~(1u << f->t.lane);
    if (b.arrived > 0 && b.arrived == b.live) release_block(b);
    hd_switch(&f->sp, b.scheduler_sp);
    fail("a finished thread", "was resumed");
}

void start_fiber(Fiber& f, size_t i) {
    uint64_t* sp = reinterpret_cast<uint64_t*>(stack_top(i));
    *--sp = 0;  // hd_fiber_main's return address: it never returns
    *--sp = reinterpret_cast<uint64_t>(&hd_fiber_main);
    for (int r = 0; r < 6; ++r) *--sp = 0;
    *--sp = 0x1f80ull | 0x037full << 32;  // MXCSR and x87 control word at their defaults
    f.sp = sp;
}

bool reverse_order() {
    static const bool reverse = [] {
        const char* o = getenv("ELECTRA_HOST_DEVICE_ORDER");
        return o && std::string(o) == "reverse";
    }();
    return reverse;
}

[[noreturn]] void deadlock(Block& b) {
    fprintf(stderr, "host device: kernel %s, block (%u, %u, %u) deadlocks:", b.kernel, block_idx.x,
            block_idx.y, block_idx.z);
    for (const Fiber& f : b.fibers)
        if (!f.done)
            fprintf(stderr, " thread %u at %s;", f.t.idx.x + block_dim.x * (f.t.idx.y + block_dim.y * f.t.idx.z),
                    f.waiting ? f.waiting : "?");
    fprintf(stderr, "\n");
    abort();
}

void run_block(Block& b) {
    const bool reverse = reverse_order();
    const size_t n = b.fibers.size();
    for (;;) {
        const uint64_t before = b.progress;
        bool any = false;
        for (size_t k = 0; k < n; ++k) {
            Fiber& f = b.fibers[reverse ? n - 1 - k : k];
            if (f.done) continue;
            any = true;
            current = &f.t;
            hd_switch(&b.scheduler_sp, f.sp);
        }
        current = nullptr;
        if (!any) return;
        if (b.progress == before) deadlock(b);
    }
}
struct sigaction previous_fault_action;

// A fault inside a kernel (a read or write past an allocation's guard page, driver.cpp, or past
// a fiber's stack) is reported with the kernel, block and thread; any other goes to whoever
// handled faults before (the Rust runtime's stack-overflow report, say).
void on_fault(int sig, siginfo_t* info, void*) {
    if (!block || !current) {
        sigaction(SIGSEGV, &previous_fault_action, nullptr);
        return;  // the faulting instruction runs again, into the previous handler
    }
    char text[512];
    const int n = snprintf(text, sizeof text,
                           "host device: kernel %s, block (%u, %u, %u), thread (%u, %u, %u): "
                           "signal %d at address %p, past the end of a device allocation or of "
                           "the thread's stack\n",
                           block->kernel, block_idx.x, block_idx.y, block_idx.z, current->idx.x,
                           current->idx.y, current->idx.z, sig, info->si_addr);
    if (n > 0) (void)!write(2, text, (size_t)n);
    signal(sig, SIG_DFL);
    raise(sig);
}

// Installs on_fault once per process, and on this OS thread an alternate signal stack where
// there is none, so that a fiber's overflowed stack can still be reported.
void watch_faults() {
    static thread_local bool watched = false;
    if (watched) return;
    watched = true;
    stack_t current_stack;
    if (sigaltstack(nullptr, &current_stack) == 0 && (current_stack.ss_flags & SS_DISABLE)) {
        stack_t alt{};
        alt.ss_size = 64 << 10;
        alt.ss_sp = malloc(alt.ss_size);  // kept for the thread's life
        if (alt.ss_sp) sigaltstack(&alt, nullptr);
    }
    static const bool installed = [] {
        struct sigaction a {};
        a.sa_sigaction = on_fault;
        a.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&a.sa_mask);
        return sigaction(SIGSEGV, &a, &previous_fault_action) == 0;
    }();
    (void)installed;
}
}  // namespace

void syncthreads() {
    Block& b = *block;
    ++b.arrived;
    ++b.progress;
    if (b.arrived == b.live) {
        release_block(b);
        return;
    }
    const uint64_t g = b.generation;
    while (b.generation == g) yield("__syncthreads");
}

int syncthreads_or(int predicate) {
    block->or_sum |= predicate != 0;
    syncthreads();
    return block->or_result;
}

void warp_collective(unsigned mask, const void* mine, size_t bytes,
                     void (*take)(const unsigned char* const* deposits, void* ctx), void* ctx,
                     const char* what) {
    if (bytes > MAX_DEPOSIT) fail(what, "deposits more than the host device's lane slot");
    Fiber* f = me();
    Warp& w = block->warps[(size_t)f->t.warp];
    const int lane = f->t.lane;
    const unsigned named = mask & w.exists;
    if (!(named >> lane & 1)) fail(what, "is called by a lane its mask leaves out");
    if (named & ~w.live) fail(what, "names a lane that has returned");
    if (w.arrived == 0 && w.named == 0)
        w.named = named;
    else if (w.named != named)
        fail(what, "is called with different masks by the lanes of one warp");
    memcpy(w.deposits[lane], mine, bytes);
    w.deposited[lane] = true;
    warp_barrier(w, what);
    const unsigned char* deposits[32];
    for (int l = 0; l < 32; ++l) deposits[l] = w.deposited[l] ? w.deposits[l] : nullptr;
    take(deposits, ctx);
    // No lane deposits again before every lane has taken; the last to take clears the slots
    // before any other lane runs on.
    if (warp_barrier(w, what)) {
        for (bool& d : w.deposited) d = false;
        w.named = 0;
    }
}

void run_grid(const char* kernel, uint3 grid, uint3 dim, void (*body)(void*), void* ctx) {
    watch_faults();
    const unsigned threads = dim.x * dim.y * dim.z;
    Block b{};
    b.kernel = kernel;
    b.body = body;
    b.ctx = ctx;
    b.fibers.resize(threads);
    b.warps.resize((threads + 31) / 32);
    Block* outer = block;
    block = &b;
    block_dim = dim;
    grid_dim = grid;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                block_idx = {x, y, z};
                for (unsigned i = 0; i < threads; ++i) {
                    Fiber& f = b.fibers[i];
                    f.t.idx = {i % dim.x, i / dim.x % dim.y, i / (dim.x * dim.y)};
                    f.t.lane = (int)(i & 31);
                    f.t.warp = (int)(i >> 5);
                    f.t.async_copies = 0;
                    f.done = false;
                    f.waiting = nullptr;
                    start_fiber(f, i);
                }
                for (size_t k = 0; k < b.warps.size(); ++k) {
                    Warp& w = b.warps[k];
                    const unsigned lanes = threads - 32 * (unsigned)k;
                    w = Warp{};
                    w.exists = w.live = lanes >= 32 ? 0xffffffffu : (1u << lanes) - 1u;
                }
                b.live = (int)threads;
                b.arrived = 0;
                b.or_sum = 0;
                run_block(b);
            }
    block = outer;
}

void fail(const char* what, const char* why) {
    if (block && current)
        fprintf(stderr, "host device: kernel %s, block (%u, %u, %u), thread (%u, %u, %u): %s %s\n",
                block->kernel, block_idx.x, block_idx.y, block_idx.z, current->idx.x,
                current->idx.y, current->idx.z, what, why);
    else
        fprintf(stderr, "host device: %s %s\n", what, why);
    abort();
}
}  // namespace hd
