// libnccl.so of the host device: NCCL for a world of one rank (what `ELECTRA_NCCL=1` asks of a
// single process: the gradient sum over NCCL, which must equal the plain path bit for bit). The
// sum over one rank is the rank's own values, so an all-reduce copies its input to its output on
// the stream, in place doing nothing. A communicator of more ranks is refused: several processes
// would need a transport, and the host device has none.
#include <cuda.h>

#include <cstdint>
#include <cstring>

namespace {
// Values from cudarc 0.19.10's NCCL bindings.
enum Result : int { SUCCESS = 0, INVALID_ARGUMENT = 4, INVALID_USAGE = 5 };
constexpr int FLOAT32 = 7, SUM = 0;

struct UniqueId {
    char internal[128];
};
struct Comm {
    int ranks;
};
}  // namespace

extern "C" {
Result ncclGetUniqueId(UniqueId* id) {
    if (!id) return INVALID_ARGUMENT;
    memset(id->internal, 0, sizeof id->internal);
    memcpy(id->internal, "electra host device", 19);
    return SUCCESS;
}

Result ncclCommInitRank(Comm** comm, int ranks, UniqueId, int rank) {
    if (!comm) return INVALID_ARGUMENT;
    if (ranks != 1 || rank != 0) return INVALID_USAGE;
    *comm = new Comm{ranks};
    return SUCCESS;
}

Result ncclCommDestroy(Comm* comm) {
    delete comm;
    return SUCCESS;
}

Result ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* comm,
                     CUstream stream) {
    if (!comm || !send || !recv) return INVALID_ARGUMENT;
    if (type != FLOAT32 || op != SUM) return INVALID_USAGE;  // what the engine sums
    if (send == recv) return SUCCESS;
    return cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(recv),
                             reinterpret_cast<CUdeviceptr>(send), count * 4, stream) == CUDA_SUCCESS
               ? SUCCESS
               : INVALID_ARGUMENT;
}

const char* ncclGetErrorString(Result r) {
    switch (r) {
        case SUCCESS: return "no error (host device)";
        case INVALID_ARGUMENT: return "invalid argument (host device)";
        default: return "invalid usage: the host device's NCCL has one rank and sums f32";
    }
}
}  // extern "C"
