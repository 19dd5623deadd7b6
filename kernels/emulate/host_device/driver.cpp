// libcuda.so of the host device: the part of the CUDA driver API that the engine and cudarc call,
// on the host. Device memory is host memory (a CUdeviceptr is its address), filled with 0xff
// bytes when allocated (NaN as bf16 and f32) so that a read of what was never written shows, and
// ending at a page that faults; a stream's work runs only when something needs it, the other
// streams' ready work first, so that a missing wait between streams shows (see Stream), and the
// legacy stream's runs at the call; a captured stream records its work into a graph that
// cuGraphLaunch replays, with the kernel parameters
// copied at capture as the driver does; cuLaunchKernel runs the kernel's own source (compiled
// with shim.h) on threads.cpp's fibers. Anything else returns CUDA_ERROR_NOT_SUPPORTED, so that
// a change that needs more than this shows at once. See README.md.
#include <cuda.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "registry.h"
#include "threads.h"

namespace hd {
namespace {
std::map<std::string, Kernel>& kernels() {
    static std::map<std::string, Kernel> k;
    return k;
}
}  // namespace

void register_kernel(const Kernel& k) { kernels()[k.name] = k; }

const Kernel* find_kernel(const char* name) {
    auto it = kernels().find(name);
    return it == kernels().end() ? nullptr : &it->second;
}
}  // namespace hd

namespace {
// The device's figures: an H200's where the engine sizes grids by them.
int multiprocessors() {
    static const int n = [] {
        const char* s = getenv("ELECTRA_HOST_DEVICE_SMS");
        return s ? atoi(s) : 132;
    }();
    return n;
}
// The machine has ELECTRA_HOST_DEVICE_COUNT devices (default 1), so that the ranks of a job can
// each take their own, as on a machine of N GPUs. A process sees those CUDA_VISIBLE_DEVICES
// lists, numbered from 0 in its order, as the driver reads it: indices up to the first that is
// not one of the machine's (or repeats one); all of them when it is unset.
constexpr int MAX_DEVICES = 16;
const std::vector<int>& visible() {
    static const std::vector<int> v = [] {
        const char* s = getenv("ELECTRA_HOST_DEVICE_COUNT");
        int machine = s ? atoi(s) : 1;
        machine = machine < 1 ? 1 : machine > MAX_DEVICES ? MAX_DEVICES : machine;
        std::vector<int> seen;
        const char* list = getenv("CUDA_VISIBLE_DEVICES");
        for (int i = 0; !list && i < machine; ++i) seen.push_back(i);
        for (const char* p = list; p && *p;) {
            char* end;
            long i = strtol(p, &end, 10);
            bool repeat = std::find(seen.begin(), seen.end(), (int)i) != seen.end();
            if (end == p || i < 0 || i >= machine || repeat) break;
            seen.push_back((int)i);
            p = *end == ',' ? end + 1 : end;
        }
        return seen;
    }();
    return v;
}
int device_count() { return (int)visible().size(); }
constexpr size_t TOTAL_MEMORY = size_t(16) << 30;
constexpr int MAX_THREADS = 1024;
constexpr int STATIC_SHARED = 48 << 10;

struct Launch {
    const hd::Kernel* kernel;
    uint3 grid, block;
    std::vector<unsigned char> params;  // the parameters' bytes, at the kernel's offsets
};

void run(const Launch& l) {
    std::vector<void*> addresses;
    for (size_t offset : l.kernel->offsets)
        addresses.push_back(const_cast<unsigned char*>(l.params.data()) + offset);
    struct Ctx {
        const hd::Kernel* k;
        void* const* params;
    } ctx{l.kernel, addresses.data()};
    hd::run_grid(
        l.kernel->name, l.grid, l.block,
        [](void* p) {
            auto* c = static_cast<Ctx*>(p);
            c->k->invoke(c->k->fn, c->params);
        },
        &ctx);
}

// What an event's record has seen: whether it has run, and when.
struct Mark {
    bool done = false;
    std::chrono::steady_clock::time_point at;
};

struct Graph;

// One piece of a stream's work, waiting on its stream, recorded into a graph, or run.
struct Work {
    enum Kind { KERNEL, COPY, SET, HOST, WAIT, RECORD, GRAPH, FREE } kind;
    Launch launch;
    CUhostFn host;  // with `dst` its argument; the way libcublasLt.so's products join a stream
    void* dst;
    const void* src;
    size_t bytes;
    unsigned value, width, count;
    uint64_t stream, ticket;    // WAIT: until that stream has run this many pieces
    std::shared_ptr<Mark> mark;  // RECORD
    std::shared_ptr<std::vector<unsigned char>> staged;  // COPY from host memory: its bytes
    const Graph* graph;          // GRAPH: a launch of it
    void operator()() const;
};

struct Stream;

struct Graph {
    std::vector<Work> work;
    std::vector<Stream*> joined;  // streams forked into the capture, released at its end
};

// A stream's work waits in `pending` until something needs it done: a synchronisation, a
// stream that waits on one of its events, or work on the legacy stream; then the other streams'
// work that waits for nothing runs first (run_until). Where a wait between two streams is
// missing, either way, their work runs in the wrong order here.
struct Stream {
    uint64_t id = 0;        // never reused, so a wait outlives the stream it names
    bool blocking = false;  // ordered with the legacy (null) stream
    Graph* capture = nullptr;  // the graph being recorded through this stream
    bool joined = false;       // into another stream's capture
    std::deque<Work> pending;
    uint64_t issued = 0, done = 0;
    bool running = false;
};

struct Event {
    Graph* capture = nullptr;  // recorded during that capture
    uint64_t stream = 0, ticket = 0;  // its last record: that stream's piece number
    std::shared_ptr<Mark> mark;       // of that record
};

struct Module {};
struct Context {
    CUdevice device;
};

Context primary[MAX_DEVICES];
Stream null_stream;
std::map<uint64_t, Stream*> live_streams;  // by id
uint64_t next_stream_id = 1;
// One host thread at a time issues or runs device work: a thread may run the streams of
// another (a synchronisation of the whole device does), and the device has one set of streams.
std::recursive_mutex device_mutex;
using DeviceLock = std::lock_guard<std::recursive_mutex>;
thread_local CUcontext current_ctx = nullptr;
struct Allocation {
    void* base;
    size_t mapped, bytes;
};
std::mutex allocations_lock;
std::map<uintptr_t, Allocation> allocations;

Stream* stream_of(CUstream s) { return s ? reinterpret_cast<Stream*>(s) : &null_stream; }

CUresult release(CUdeviceptr p) {
    Allocation a;
    {
        std::lock_guard<std::mutex> g(allocations_lock);
        auto it = allocations.find(p);
        if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
        a = it->second;
        allocations.erase(it);
    }
    munmap(a.base, a.mapped);
    return CUDA_SUCCESS;
}

bool ready(const Work& w);

void run_front(Stream* st) {
    Work w = std::move(st->pending.front());
    st->pending.pop_front();
    w();
    ++st->done;
}

// Runs, on every stream but `st`, the work that waits for nothing not yet done.
void run_others_first(const Stream* st) {
    for (auto& s : live_streams) {
        Stream* other = s.second;
        if (other == st || other->running) continue;
        other->running = true;
        while (!other->pending.empty() && ready(other->pending.front())) run_front(other);
        other->running = false;
    }
}

// Runs stream `id`'s pending work until it has run `ticket` pieces (a WAIT among them runs what
// it waits for), after the other streams' ready work: so work of theirs that should wait for
// this stream's, and does not, runs before it.
void run_until(uint64_t id, uint64_t ticket) {
    DeviceLock lock(device_mutex);
    auto it = live_streams.find(id);
    if (it == live_streams.end()) return;  // destroyed, after running everything
    Stream* st = it->second;
    if (st->done >= ticket) return;
    run_others_first(st);
    if (st->running) {
        fprintf(stderr, "host device: streams wait on each other's later work (a deadlock on a GPU)\n");
        abort();
    }
    st->running = true;
    while (st->done < ticket) run_front(st);
    st->running = false;
}

void finish(const Stream* st) { run_until(st->id, st->issued); }

bool ready(const Work& w) {
    if (w.kind != Work::WAIT) return true;
    auto it = live_streams.find(w.stream);
    return it == live_streams.end() || it->second->done >= w.ticket;
}

// Everything issued to the streams that the legacy stream is ordered with (or to all).
void finish_streams(bool blocking_only) {
    DeviceLock lock(device_mutex);
    std::vector<const Stream*> streams;
    for (auto& s : live_streams)
        if (s.second->blocking || !blocking_only) streams.push_back(s.second);
    for (const Stream* st : streams) finish(st);
}

void Work::operator()() const {
    switch (kind) {
        case KERNEL:
            run(launch);
            break;
        case COPY:
            memmove(dst, src, bytes);
            break;
        case SET:
            for (unsigned i = 0; i < count; ++i)
                memcpy(static_cast<unsigned char*>(dst) + (size_t)i * width, &value, width);
            break;
        case HOST:
            host(dst);
            break;
        case WAIT:
            run_until(stream, ticket);
            break;
        case RECORD:
            mark->at = std::chrono::steady_clock::now();
            mark->done = true;
            break;
        case GRAPH:
            for (const Work& w : graph->work) w();
            break;
        case FREE:
            release(reinterpret_cast<CUdeviceptr>(dst));
            break;
    }
}

// Work on the legacy stream runs at the call, after all that the blocking streams were given.
CUresult enqueue(CUstream s, Work w) {
    DeviceLock lock(device_mutex);
    Stream* st = stream_of(s);
    if (st->capture) {
        st->capture->work.push_back(std::move(w));
    } else if (st == &null_stream) {
        finish_streams(true);
        w();
    } else {
        st->pending.push_back(std::move(w));
        ++st->issued;
    }
    return CUDA_SUCCESS;
}

CUresult set(CUdeviceptr dst, unsigned value, unsigned width, size_t count, CUstream s) {
    Work w{};
    w.kind = Work::SET;
    w.dst = reinterpret_cast<void*>(dst);
    w.value = value;
    w.width = width;
    w.count = (unsigned)count;
    return enqueue(s, std::move(w));
}

// Host memory here is pageable (the driver's pinned allocations are not emulated), and the
// driver treats copies from it as the engine counts on: one to the device stages its source
// before the call returns, so the caller may reuse it at once; one to the host returns once
// the stream has reached it and it is done. In a capture the pointers are kept for each replay,
// and on the legacy stream, whose work runs at the call, nothing need be staged.
enum class Direction { TO_DEVICE, TO_HOST, ON_DEVICE };

CUresult copy(void* dst, const void* src, size_t bytes, CUstream s, Direction d) {
    Work w{};
    w.kind = Work::COPY;
    w.dst = dst;
    w.src = src;
    w.bytes = bytes;
    Stream* st = stream_of(s);
    const bool deferred = !st->capture && st != &null_stream;
    if (deferred && d == Direction::TO_DEVICE) {
        const auto* from = static_cast<const unsigned char*>(src);
        w.staged = std::make_shared<std::vector<unsigned char>>(from, from + bytes);
        w.src = w.staged->data();
    }
    if (deferred && d == Direction::TO_HOST) {
        DeviceLock lock(device_mutex);
        finish(st);
        w();
        return CUDA_SUCCESS;
    }
    return enqueue(s, std::move(w));
}

void* device(CUdeviceptr p) { return reinterpret_cast<void*>(p); }
}  // namespace

extern "C" {
CUresult cuInit(unsigned int) { return CUDA_SUCCESS; }

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        case CUDA_ERROR_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case CUDA_ERROR_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case CUDA_ERROR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_NOT_READY: *s = "CUDA_ERROR_NOT_READY"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        default: *s = "CUDA_ERROR (host device)"; break;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

CUresult cuDeviceGetCount(int* n) {
    *n = device_count();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

// A device's UUID is the same in every process, whatever number it has there, as a GPU's is.
CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice d) {
    if (d < 0 || d >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    memset(uuid->bytes, 0, sizeof uuid->bytes);
    memcpy(uuid->bytes, "electra-hd-dev", 14);
    uuid->bytes[15] = (char)visible()[d];
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "electra host device (CPU)");
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
    switch (a) {
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = multiprocessors(); break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = MAX_THREADS; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = STATIC_SHARED; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 0; break;
        default: return CUDA_ERROR_NOT_SUPPORTED;
    }
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (d < 0 || d >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    primary[d].device = d;
    *c = reinterpret_cast<CUcontext>(&primary[d]);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }

CUresult cuCtxSetCurrent(CUcontext c) {
    current_ctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = current_ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* d) {
    if (!current_ctx) return CUDA_ERROR_INVALID_CONTEXT;
    *d = reinterpret_cast<Context*>(current_ctx)->device;
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent(CUcontext c) { return cuCtxSetCurrent(c); }

CUresult cuCtxPopCurrent(CUcontext* c) {
    if (c) *c = current_ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    finish_streams(false);
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo(size_t* free, size_t* total) {
    size_t used = 0;
    {
        std::lock_guard<std::mutex> g(allocations_lock);
        for (auto& a : allocations) used += a.second.bytes;
    }
    *total = TOTAL_MEMORY;
    *free = used < TOTAL_MEMORY ? TOTAL_MEMORY - used : 0;
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc(CUdeviceptr* p, size_t bytes) {
    // The block ends where a page that may not be touched begins, so a kernel that reads or
    // writes past an allocation by more than its rounding to 256 bytes faults (threads.cpp
    // names the kernel) instead of reaching a neighbour.
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t used = (bytes + 255) / 256 * 256;
    const size_t mapped = (used + page - 1) / page * page + page;
    void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    mprotect(static_cast<char*>(base) + mapped - page, page, PROT_NONE);
    char* m = static_cast<char*>(base) + mapped - page - used;
    memset(m, 0xff, used);
    {
        std::lock_guard<std::mutex> g(allocations_lock);
        allocations[reinterpret_cast<uintptr_t>(m)] = {base, mapped, bytes};
    }
    *p = reinterpret_cast<CUdeviceptr>(m);
    return CUDA_SUCCESS;
}

// As the driver, after the work issued so far, which may still use the memory.
CUresult cuMemFree(CUdeviceptr p) {
    finish_streams(false);
    return release(p);
}

// Stream-ordered: the memory is there at once, so for the stream's later work too; it goes
// when the stream reaches the free.
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
    if (stream_of(s)->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return cuMemAlloc(p, bytes);
}

CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    if (stream_of(s)->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    Work w{};
    w.kind = Work::FREE;
    w.dst = reinterpret_cast<void*>(p);
    return enqueue(s, std::move(w));
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return copy(device(dst), src, n, s, Direction::TO_DEVICE);
}
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy(dst, device(src), n, s, Direction::TO_HOST);
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy(device(dst), device(src), n, s, Direction::ON_DEVICE);
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
    return copy(device(dst), src, n, nullptr, Direction::TO_DEVICE);
}
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
    return copy(dst, device(src), n, nullptr, Direction::TO_HOST);
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) {
    return set(p, v, 1, n, s);
}
CUresult cuMemsetD16Async(CUdeviceptr p, unsigned short v, size_t n, CUstream s) {
    return set(p, v, 2, n, s);
}
CUresult cuMemsetD32Async(CUdeviceptr p, unsigned int v, size_t n, CUstream s) {
    return set(p, v, 4, n, s);
}
CUresult cuMemsetD8(CUdeviceptr p, unsigned char v, size_t n) { return set(p, v, 1, n, nullptr); }

CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* user_data) {
    Work w{};
    w.kind = Work::HOST;
    w.host = fn;
    w.dst = user_data;
    return enqueue(s, std::move(w));
}

CUresult cuStreamCreate(CUstream* s, unsigned int flags) {
    DeviceLock lock(device_mutex);
    Stream* st = new Stream;
    st->id = next_stream_id++;
    st->blocking = !(flags & CU_STREAM_NON_BLOCKING);
    live_streams[st->id] = st;
    *s = reinterpret_cast<CUstream>(st);
    return CUDA_SUCCESS;
}

// As the driver, the work already issued still runs.
CUresult cuStreamDestroy(CUstream s) {
    DeviceLock lock(device_mutex);
    Stream* st = reinterpret_cast<Stream*>(s);
    finish(st);
    live_streams.erase(st->id);
    delete st;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s) {
    Stream* st = stream_of(s);
    if (st->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (st == &null_stream)
        finish_streams(true);
    else
        finish(st);
    return CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int) {
    DeviceLock lock(device_mutex);
    Event* ev = reinterpret_cast<Event*>(e);
    Stream* st = stream_of(s);
    // A stream that waits on an event of a capture joins it, as the driver's fork does.
    if (ev->capture && !st->capture) {
        st->capture = ev->capture;
        st->joined = true;
        ev->capture->joined.push_back(st);
    }
    // Outside a capture, the stream's later work waits for the event's record (the one made
    // before this call: a later record of the event does not move the wait).
    if (!ev->capture && !st->capture && ev->mark) {
        Work w{};
        w.kind = Work::WAIT;
        w.stream = ev->stream;
        w.ticket = ev->ticket;
        return enqueue(s, std::move(w));
    }
    return CUDA_SUCCESS;
}

CUresult cuStreamBeginCapture(CUstream s, CUstreamCaptureMode) {
    Stream* st = stream_of(s);
    if (st->capture || st == &null_stream) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    st->capture = new Graph;
    return CUDA_SUCCESS;
}

CUresult cuStreamEndCapture(CUstream s, CUgraph* g) {
    Stream* st = stream_of(s);
    if (!st->capture || st->joined) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    for (Stream* forked : st->capture->joined) {
        forked->capture = nullptr;
        forked->joined = false;
    }
    st->capture->joined.clear();
    *g = reinterpret_cast<CUgraph>(st->capture);
    st->capture = nullptr;
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
    *status = stream_of(s)->capture ? CU_STREAM_CAPTURE_STATUS_ACTIVE
                                    : CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph g, unsigned long long) {
    *exec = reinterpret_cast<CUgraphExec>(new Graph(*reinterpret_cast<Graph*>(g)));
    return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
    if (stream_of(s)->capture) return CUDA_ERROR_NOT_SUPPORTED;
    Work w{};
    w.kind = Work::GRAPH;
    w.graph = reinterpret_cast<Graph*>(exec);
    return enqueue(s, std::move(w));
}

CUresult cuGraphDestroy(CUgraph g) {
    delete reinterpret_cast<Graph*>(g);
    return CUDA_SUCCESS;
}

CUresult cuGraphExecDestroy(CUgraphExec e) {
    finish_streams(false);  // its launches still run
    delete reinterpret_cast<Graph*>(e);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent* e, unsigned int) {
    *e = reinterpret_cast<CUevent>(new Event);
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent e) {
    delete reinterpret_cast<Event*>(e);
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
    DeviceLock lock(device_mutex);
    Event* ev = reinterpret_cast<Event*>(e);
    Stream* st = stream_of(s);
    ev->capture = st->capture;
    if (st->capture) return CUDA_SUCCESS;
    ev->mark = std::make_shared<Mark>();
    Work w{};
    w.kind = Work::RECORD;
    w.mark = ev->mark;
    ev->stream = st->id;  // 0, the legacy stream's, where it runs at the call
    enqueue(s, std::move(w));
    ev->ticket = st->issued;
    return CUDA_SUCCESS;
}

CUresult cuEventSynchronize(CUevent e) {
    DeviceLock lock(device_mutex);
    const Event* ev = reinterpret_cast<Event*>(e);
    if (ev->mark) run_until(ev->stream, ev->ticket);
    return CUDA_SUCCESS;
}

CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    DeviceLock lock(device_mutex);
    const Event* a = reinterpret_cast<Event*>(start);
    const Event* b = reinterpret_cast<Event*>(end);
    if (!a->mark || !b->mark) return CUDA_ERROR_INVALID_HANDLE;
    if (!a->mark->done || !b->mark->done) return CUDA_ERROR_NOT_READY;
    *ms = std::chrono::duration<float, std::milli>(b->mark->at - a->mark->at).count();
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule* m, const void*) {
    *m = reinterpret_cast<CUmodule>(new Module);
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
    delete reinterpret_cast<Module*>(m);
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    const hd::Kernel* k = hd::find_kernel(name);
    if (!k) return CUDA_ERROR_NOT_FOUND;
    *f = reinterpret_cast<CUfunction>(const_cast<hd::Kernel*>(k));
    return CUDA_SUCCESS;
}

CUresult cuFuncGetParamInfo(CUfunction f, size_t index, size_t* offset, size_t* size) {
    const hd::Kernel* k = reinterpret_cast<hd::Kernel*>(f);
    if (index >= k->sizes.size()) return CUDA_ERROR_INVALID_VALUE;
    *offset = k->offsets[index];
    *size = k->sizes[index];
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
                        CUstream s, void** params, void** extra) {
    const hd::Kernel* k = reinterpret_cast<hd::Kernel*>(f);
    if (extra || (!params && !k->sizes.empty())) return CUDA_ERROR_NOT_SUPPORTED;
    if (shared > 0) return CUDA_ERROR_NOT_SUPPORTED;  // the kernels' shared memory is static
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gy > 65535 ||
        gz > 65535 || (unsigned long long)bx * by * bz > MAX_THREADS || bz > 64)
        return CUDA_ERROR_INVALID_VALUE;
    Work w{};
    w.kind = Work::KERNEL;
    Launch& l = w.launch;
    l.kernel = k;
    l.grid = {gx, gy, gz};
    l.block = {bx, by, bz};
    // Copied now, as the driver does: the caller's parameters may change before a replay.
    const size_t n = k->sizes.size();
    const size_t bytes = n ? k->offsets[n - 1] + k->sizes[n - 1] : 0;
    l.params.resize(bytes);
    for (size_t i = 0; i < n; ++i) memcpy(&l.params[k->offsets[i]], params[i], k->sizes[i]);
    return enqueue(s, std::move(w));
}
}  // extern "C"
