// libnccl.so of the host device: NCCL's communicator and its f32 sum for the ranks of a job, each a
// process on this machine with a device of its own (the driver reports ELECTRA_HOST_DEVICE_COUNT
// devices). The ranks meet in a POSIX shared-memory segment named by the unique id, which rank 0
// draws and the job carries to the others (over MPI, as with NCCL). An all-reduce is work on the
// caller's stream: piece by piece, each rank copies its piece into its own slot, and after a
// barrier every rank adds the slots in rank order, so every rank gets the same bits, and two
// ranks give a + b, what one process adding two micro-batches' gradients gives.
//
// Like NCCL, it refuses two ranks on one device, and it sums f32 only (all the engine sums).
// Unlike NCCL, a rank left waiting at a barrier for WAIT_SECONDS (a peer died or never came)
// aborts, naming where, instead of hanging: a test should fail, not stop CI.
#include <cuda.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

namespace {
// Values from cudarc 0.19.10's NCCL bindings.
enum Result : int { SUCCESS = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, INVALID_USAGE = 5 };
constexpr int FLOAT32 = 7, SUM = 0;

constexpr int MAX_RANKS = 16;
// Values a rank's slot holds: 1 MB, so that 16 ranks fit a container's 64 MB /dev/shm.
constexpr size_t PIECE = size_t(1) << 18;
constexpr int WAIT_SECONDS = 300;
constexpr char TAG[] = "electra host device";

struct UniqueId {
    char internal[128];  // TAG, then 8 random bytes that name the segment
};

// The segment's head; the slots follow at HEAD_BYTES, PIECE floats a rank.
struct Shared {
    std::atomic<unsigned> arrived;     // at the barrier, this generation
    std::atomic<unsigned> generation;  // of the barrier, bumped by the last to arrive
    CUuuid device[MAX_RANKS];
    size_t count[MAX_RANKS];  // of the all-reduce each rank is in
};
constexpr size_t HEAD_BYTES = 4096;
static_assert(sizeof(Shared) <= HEAD_BYTES, "the head fits before the slots");
static_assert(std::atomic<unsigned>::is_always_lock_free, "the barrier works across processes");

struct Call;

struct Comm {
    int ranks, rank;
    Shared* shared;  // null for a world of one
    size_t bytes;
    std::vector<std::unique_ptr<Call>> captured;  // all-reduces a graph may replay

    float* slot(int r) const {
        return reinterpret_cast<float*>(reinterpret_cast<char*>(shared) + HEAD_BYTES) + r * PIECE;
    }
};

struct Call {
    const Comm* comm;
    const float* send;
    float* recv;
    size_t count;
};

void barrier(const Comm& c, const char* where) {
    Shared* s = c.shared;
    unsigned generation = s->generation.load(std::memory_order_acquire);
    if (s->arrived.fetch_add(1, std::memory_order_acq_rel) == unsigned(c.ranks - 1)) {
        s->arrived.store(0, std::memory_order_relaxed);
        s->generation.fetch_add(1, std::memory_order_release);
        return;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(WAIT_SECONDS);
    for (unsigned spins = 0; s->generation.load(std::memory_order_acquire) == generation; ++spins) {
        if (spins < 1000) {
            sched_yield();
            continue;
        }
        if (std::chrono::steady_clock::now() > deadline) {
            fprintf(stderr,
                    "host device NCCL: rank %d of %d waited %d s for the others in %s; a rank "
                    "died or never came\n",
                    c.rank, c.ranks, WAIT_SECONDS, where);
            abort();
        }
        usleep(100);
    }
}

void all_reduce(const Comm& c, const float* send, float* recv, size_t count) {
    if (c.ranks == 1) {
        if (send != recv) memmove(recv, send, count * sizeof(float));
        return;
    }
    c.shared->count[c.rank] = count;
    for (size_t at = 0; at == 0 || at < count; at += PIECE) {
        size_t n = count - at < PIECE ? count - at : PIECE;
        memcpy(c.slot(c.rank), send + at, n * sizeof(float));
        barrier(c, "ncclAllReduce");
        for (int r = 0; at == 0 && r < c.ranks; ++r) {
            if (c.shared->count[r] != count) {
                fprintf(stderr, "host device NCCL: rank %d sums %zu values, rank %d %zu\n", c.rank,
                        count, r, c.shared->count[r]);
                abort();
            }
        }
        for (size_t i = 0; i < n; ++i) {
            float v = c.slot(0)[i];
            for (int r = 1; r < c.ranks; ++r) v += c.slot(r)[i];
            recv[at + i] = v;
        }
        barrier(c, "ncclAllReduce");  // no rank refills its slot before every rank has read it
    }
}

void run_call(void* p) {
    auto* call = static_cast<Call*>(p);
    all_reduce(*call->comm, call->send, call->recv, call->count);
}

// A sum issued outside a capture runs once, when its stream reaches it.
void run_call_once(void* p) {
    run_call(p);
    delete static_cast<Call*>(p);
}

void segment_name(const UniqueId& id, char* name, size_t len) {
    const auto* b = reinterpret_cast<const unsigned char*>(id.internal + sizeof TAG);
    snprintf(name, len, "/electra-hd-nccl-%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7]);
}
}  // namespace

extern "C" {
Result ncclGetUniqueId(UniqueId* id) {
    if (!id) return INVALID_ARGUMENT;
    memset(id->internal, 0, sizeof id->internal);
    memcpy(id->internal, TAG, sizeof TAG);
    std::random_device entropy;
    for (size_t i = 0; i < 8; i += 4) {
        uint32_t word = entropy() ^ (uint32_t)getpid();
        memcpy(id->internal + sizeof TAG + i, &word, 4);
    }
    return SUCCESS;
}

Result ncclCommInitRank(Comm** comm, int ranks, UniqueId id, int rank) {
    if (!comm || ranks < 1 || ranks > MAX_RANKS || rank < 0 || rank >= ranks ||
        memcmp(id.internal, TAG, sizeof TAG) != 0)
        return INVALID_ARGUMENT;
    CUdevice device;
    CUuuid uuid;
    if (cuCtxGetDevice(&device) != CUDA_SUCCESS || cuDeviceGetUuid_v2(&uuid, device) != CUDA_SUCCESS)
        return INVALID_USAGE;
    auto c = std::make_unique<Comm>();
    c->ranks = ranks;
    c->rank = rank;
    c->shared = nullptr;
    if (ranks > 1) {
        char name[64];
        segment_name(id, name, sizeof name);
        c->bytes = HEAD_BYTES + (size_t)ranks * PIECE * sizeof(float);
        int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
        if (fd < 0) return SYSTEM_ERROR;
        void* p = ftruncate(fd, (off_t)c->bytes) == 0
                      ? mmap(nullptr, c->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                      : MAP_FAILED;
        close(fd);
        if (p == MAP_FAILED) return SYSTEM_ERROR;
        c->shared = static_cast<Shared*>(p);
        c->shared->device[rank] = uuid;
        barrier(*c, "ncclCommInitRank");
        if (rank == 0) shm_unlink(name);  // every rank has it open: it goes with the last
        for (int r = 0; r < ranks; ++r) {
            if (r != rank && memcmp(&c->shared->device[r], &uuid, sizeof uuid) == 0) {
                fprintf(stderr,
                        "host device NCCL: ranks %d and %d are both on one device (NCCL allows "
                        "one rank a device)\n",
                        rank, r);
                munmap(c->shared, c->bytes);
                return INVALID_USAGE;
            }
        }
    }
    *comm = c.release();
    return SUCCESS;
}

Result ncclCommDestroy(Comm* comm) {
    if (comm && comm->shared) munmap(comm->shared, comm->bytes);
    delete comm;
    return SUCCESS;
}

Result ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* comm,
                     CUstream stream) {
    if (!comm || !send || !recv) return INVALID_ARGUMENT;
    if (type != FLOAT32 || op != SUM) return INVALID_USAGE;  // what the engine sums
    CUstreamCaptureStatus capturing;
    if (cuStreamIsCapturing(stream, &capturing) != CUDA_SUCCESS) return INVALID_ARGUMENT;
    auto call = std::make_unique<Call>(
        Call{comm, static_cast<const float*>(send), static_cast<float*>(recv), count});
    Call* p = call.get();
    CUresult r;
    if (capturing != CU_STREAM_CAPTURE_STATUS_NONE) {
        comm->captured.push_back(std::move(call));  // for every replay, freed with the comm
        r = cuLaunchHostFunc(stream, run_call, p);
    } else {
        r = cuLaunchHostFunc(stream, run_call_once, p);
        if (r == CUDA_SUCCESS) call.release();
    }
    return r == CUDA_SUCCESS ? SUCCESS : INVALID_ARGUMENT;
}

const char* ncclGetErrorString(Result r) {
    switch (r) {
        case SUCCESS: return "no error (host device)";
        case SYSTEM_ERROR: return "system error: the shared memory of the ranks (host device)";
        case INVALID_ARGUMENT: return "invalid argument (host device)";
        default: return "invalid usage: one rank a device, f32 sums (host device)";
    }
}
}  // extern "C"
