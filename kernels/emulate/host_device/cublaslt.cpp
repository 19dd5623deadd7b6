// The host device's cuBLASLt: a CPU stand-in for the part of libcublasLt that the CUDA backend
// calls (src/backend/cuda/blas.rs through cudarc's cublaslt::result), so that the backend and its
// parity tests run without a GPU. Device pointers are host addresses; a product goes onto its
// stream through the host device's cuLaunchHostFunc, so it runs when the stream reaches it, or is
// recorded into the graph of a captured stream.
//
// It implements column-major D = alpha·op(A)·op(B) + beta·C with A and B bf16, C and D both bf16
// or both f32, compute type CUBLAS_COMPUTE_32F, scale type CUDA_R_32F, alpha and beta on the host,
// batch count 1, and the epilogues DEFAULT, BIAS and BGRADB as the cuBLASLt documentation states
// them (see `run`). Every other type, attribute, epilogue or mode is refused with
// CUBLAS_STATUS_NOT_SUPPORTED (or INVALID_VALUE where the real library calls it invalid), never
// computed approximately. Each element of D accumulates its k products in f32 in increasing k
// order, so results do not depend on the algorithm, the thread count or the blocking.
//
// Built by scripts/build-host-device.sh, against its libcuda.so.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#include "bf16_bits.h"

// The host device's driver (driver.cpp, libcuda.so), which orders a product on its stream.
extern "C" int cuLaunchHostFunc(void* stream, void (*fn)(void*), void* data);
extern "C" int cuStreamIsCapturing(void* stream, int* status);

namespace {

// Values from cudarc 0.19.10's cublaslt bindings for CUDA 13.0 (cublasLt.h's enums).
enum Status : int32_t { OK = 0, NOT_INITIALIZED = 1, ALLOC_FAILED = 3, INVALID = 7, NOT_SUPPORTED = 15 };
constexpr int32_t R_32F = 0, R_16BF = 14;
constexpr int32_t COMPUTE_32F = 68;
constexpr uint32_t DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7, DESC_BIAS_POINTER = 8,
                   DESC_BIAS_DATA_TYPE = 26;
constexpr uint32_t EPI_DEFAULT = 1, EPI_BIAS = 4, EPI_BGRADB = 512;
constexpr uint32_t PREF_MAX_WORKSPACE_BYTES = 1, PREF_MIN_ALIGNMENT_A = 5, PREF_MIN_ALIGNMENT_D = 8;

// The cublasLtEpilogue_t values: any may be set on a descriptor, as with the real library; the
// heuristic refuses all but DEFAULT, BIAS and BGRADB.
bool known_epilogue(uint32_t e) {
    static const uint32_t all[] = {1, 2, 130, 4, 6, 134, 136, 152, 32, 160, 36, 164, 192, 208, 256, 512};
    return std::find(std::begin(all), std::end(all), e) != std::end(all);
}

// Tags make a stale or foreign handle an error rather than a silent misread.
constexpr uint32_t HANDLE_TAG = 0x4c544831, LAYOUT_TAG = 0x4c544c31, DESC_TAG = 0x4c544431,
                   PREF_TAG = 0x4c545031;
constexpr uint64_t ALGO_TAG = 0x686f73744c74616cull;  // data[1] of every algorithm handed out
constexpr int ALGOS = 3;

struct Handle { uint32_t tag = HANDLE_TAG; };
struct Layout {
    uint32_t tag = LAYOUT_TAG;
    int32_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Desc {
    uint32_t tag = DESC_TAG;
    int32_t trans_a = 0, trans_b = 0;
    uint32_t epilogue = EPI_DEFAULT;
    uint64_t bias = 0;
    int32_t bias_type = -1;  // -1: D's type, as the documentation's default
};
struct Pref {
    uint32_t tag = PREF_TAG;
    uint64_t max_workspace = 0;
    uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: the documented defaults
};

struct Algo { uint64_t data[8]; };
struct HeuristicResult {
    Algo algo;
    size_t workspaceSize;
    int32_t state;
    float wavesCount;
    int32_t reserved[4];
};
static_assert(sizeof(HeuristicResult) == 96, "layout of cublasLtMatmulHeuristicResult_t");

size_t type_bytes(int32_t t) { return t == R_16BF ? 2 : 4; }

float load(const void* p, int32_t type, size_t i) {
    if (type == R_16BF) return hd::bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    return static_cast<const float*>(p)[i];
}

void store(void* p, int32_t type, size_t i, float v) {
    if (type == R_16BF) static_cast<uint16_t*>(p)[i] = hd::float_to_bf16_bits(v);
    else static_cast<float*>(p)[i] = v;
}

// The largest power of two (at most 256) dividing an address; a null pointer counts as aligned.
uint32_t alignment_of(uint64_t p) {
    return p == 0 ? 256 : uint32_t(1) << std::min(__builtin_ctzll(p), 8);
}

// What a checked problem is: op(A) m×k, op(B) k×n, C and D m×n.
struct Problem {
    uint64_t m, n, k;
    int32_t d_type, bias_type;
    uint32_t epilogue;
};

bool valid(const Layout* l) { return l && l->tag == LAYOUT_TAG; }

// The checks shared by the heuristic and the product: everything a real algorithm would need
// from the descriptors, none of the pointers except the bias's (read for its alignment only).
Status check(const Handle* h, const Desc* d, const Layout* a, const Layout* b, const Layout* c,
             const Layout* dl, Problem* p) {
    if (!h || h->tag != HANDLE_TAG) return NOT_INITIALIZED;
    if (!d || d->tag != DESC_TAG || !valid(a) || !valid(b) || !valid(c) || !valid(dl)) return INVALID;
    // The supported row of cublasLtMatmul's type table: COMPUTE_32F, scale 32F, A/B 16BF, C 16BF
    // or 32F (D the same), bias of C's type.
    if (a->type != R_16BF || b->type != R_16BF) return NOT_SUPPORTED;
    if (dl->type != R_16BF && dl->type != R_32F) return NOT_SUPPORTED;
    if (c->type != dl->type) return NOT_SUPPORTED;
    uint64_t m = d->trans_a ? a->cols : a->rows, k = d->trans_a ? a->rows : a->cols;
    uint64_t kb = d->trans_b ? b->cols : b->rows, n = d->trans_b ? b->rows : b->cols;
    if (k != kb || dl->rows != m || dl->cols != n || c->rows != m || c->cols != n) return INVALID;
    for (const Layout* l : {a, b, c, dl})
        if (l->ld < int64_t(std::max<uint64_t>(l->rows, 1))) return INVALID;
    // Empty products and sizes whose offsets could overflow are not what the engine issues.
    const uint64_t limit = uint64_t(1) << 31;
    if (m == 0 || n == 0 || k == 0 || m >= limit || n >= limit || k >= limit) return NOT_SUPPORTED;
    for (const Layout* l : {a, b, c, dl})
        if (uint64_t(l->ld) >= limit || l->cols >= limit || uint64_t(l->ld) * l->cols >> 40)
            return NOT_SUPPORTED;
    int32_t bias_type = d->bias_type == -1 ? dl->type : d->bias_type;
    switch (d->epilogue) {
    case EPI_DEFAULT: break;
    case EPI_BIAS:
    case EPI_BGRADB:
        if (bias_type != dl->type) return NOT_SUPPORTED;
        if (d->bias % type_bytes(bias_type)) return INVALID;
        break;
    default: return NOT_SUPPORTED;
    }
    *p = Problem{m, n, k, dl->type, bias_type, d->epilogue};
    return OK;
}

// An algorithm records what it was chosen for, so that cublasLtMatmul can refuse one used for
// another kind of product or on operands less aligned than the heuristic was promised.
// data: [0] variant 1..ALGOS, [1] ALGO_TAG, [2] epilogue | D type << 32, [3] bias alignment,
// [4..7] the alignments A, B, C, D are required to have. This catches a plan reused on operands
// less aligned than the ones it was made for; it assumes no real algorithm needs more than 16
// bytes (the widest vector load), so a larger promise is recorded as 16.
Algo make_algo(int variant, const Problem& p, const Pref& pref, uint64_t bias) {
    Algo a{};
    a.data[0] = uint64_t(variant);
    a.data[1] = ALGO_TAG;
    a.data[2] = p.epilogue | uint64_t(uint32_t(p.d_type)) << 32;
    a.data[3] = p.epilogue == EPI_DEFAULT ? 1 : std::min<uint32_t>(alignment_of(bias), 16);
    for (int i = 0; i < 4; i++) a.data[4 + i] = std::min<uint32_t>(pref.align[i], 16);
    return a;
}

// Whether byte ranges [p, p + pb) and [q, q + qb) meet.
bool overlap(uint64_t p, uint64_t pb, uint64_t q, uint64_t qb) { return p < q + qb && q < p + pb; }

uint64_t span(const Layout* l) {  // bytes a matrix covers
    return (uint64_t(l->ld) * (l->cols - 1) + l->rows) * type_bytes(l->type);
}

// op(X) copied to f32, k-major: out[kk * width + i] = op(X)(i, kk) for X = A (width m), and
// out[kk * width + j] = op(B)(kk, j) for X = B (width n). `x_by_k`: X is stored with k along its
// columns (A without transpose, B transposed).
void unpack(const uint16_t* x, const Layout* l, bool x_by_k, uint64_t width, uint64_t k,
            uint64_t padded, float* out) {
    const uint64_t ld = uint64_t(l->ld);
    for (uint64_t kk = 0; kk < k; kk++) {
        float* row = out + kk * padded;
        if (x_by_k)
            for (uint64_t i = 0; i < width; i++) row[i] = hd::bf16_bits_to_float(x[kk * ld + i]);
        else
            for (uint64_t i = 0; i < width; i++) row[i] = hd::bf16_bits_to_float(x[i * ld + kk]);
    }
}

constexpr uint64_t MR = 4, NR = 8;  // a block of D: MR rows by NR columns, MR·NR accumulators

struct Run {
    const float *a, *b;  // unpacked op(A), op(B), rows padded to mp and np
    uint64_t m, n, k, mp, np;
    float alpha, beta;
    const void* c;
    const Layout* cl;
    void* d;
    const Layout* dl;
    const void* bias;  // BIAS only
    int32_t bias_type;
};

// Columns [j0, j1) of D, j0 and j1 multiples of NR (or n). Each element has its own accumulator
// fed in increasing k order, so the blocking changes nothing but speed.
void columns(const Run& r, uint64_t j0, uint64_t j1) {
    const uint64_t ldc = uint64_t(r.cl->ld), ldd = uint64_t(r.dl->ld);
    for (uint64_t j = j0; j < j1; j += NR)
        for (uint64_t i = 0; i < r.m; i += MR) {
            float acc[MR][NR] = {};
            const float* pa = r.a + i;
            const float* pb = r.b + j;
            for (uint64_t kk = 0; kk < r.k; kk++, pa += r.mp, pb += r.np)
                for (uint64_t x = 0; x < MR; x++)
                    for (uint64_t y = 0; y < NR; y++) acc[x][y] += pa[x] * pb[y];
            for (uint64_t y = 0; y < NR && j + y < r.n; y++)
                for (uint64_t x = 0; x < MR && i + x < r.m; x++) {
                    const uint64_t row = i + x, col = j + y;
                    // C is read before D is written, element by element: C may be D itself.
                    float v = r.alpha * acc[x][y];
                    if (r.beta != 0.0f) v = v + r.beta * load(r.c, r.cl->type, col * ldc + row);
                    if (r.bias) v = v + load(r.bias, r.bias_type, row);
                    store(r.d, r.dl->type, col * ldd + row, v);
                }
        }
}

unsigned thread_count(double work) {
    if (work < double(1 << 20)) return 1;  // a thread costs more than a small product
    unsigned t = std::thread::hardware_concurrency();
    return std::max(1u, std::min(t, 16u));
}

// D = alpha·op(A)·op(B) + beta·C, then the epilogue:
// - BIAS: D(i, j) += bias[i], the bias of length m (D's rows) in BIAS_DATA_TYPE (D's type by
//   default), added in f32 after alpha and beta scaling, before the one rounding to D's type.
// - BGRADB: bias[j] = Σ_k op(B)(k, j), one value per column of D (length n), summed in f32 in
//   increasing k and rounded to BIAS_DATA_TYPE; written, never accumulated, and not scaled.
Status run(const Problem& p, const Desc* desc, float alpha, float beta, const void* A,
           const Layout* al, const void* B, const Layout* bl, const void* C, const Layout* cl,
           void* D, const Layout* dl) {
    const uint64_t mp = (p.m + MR - 1) / MR * MR, np = (p.n + NR - 1) / NR * NR;
    std::vector<float> a(mp * p.k, 0.0f), b(np * p.k, 0.0f);
    unpack(static_cast<const uint16_t*>(A), al, !desc->trans_a, p.m, p.k, mp, a.data());
    unpack(static_cast<const uint16_t*>(B), bl, desc->trans_b != 0, p.n, p.k, np, b.data());
    if (p.epilogue == EPI_BGRADB) {
        // From the unpacked copy of B, so the vector is right even where it would alias D.
        std::vector<float> g(p.n, 0.0f);
        for (uint64_t kk = 0; kk < p.k; kk++)
            for (uint64_t j = 0; j < p.n; j++) g[j] += b[kk * np + j];
        for (uint64_t j = 0; j < p.n; j++)
            store(reinterpret_cast<void*>(desc->bias), p.bias_type, j, g[j]);
    }
    Run r{a.data(), b.data(), p.m, p.n, p.k, mp, np, alpha, beta, C, cl, D, dl,
          p.epilogue == EPI_BIAS ? reinterpret_cast<const void*>(desc->bias) : nullptr,
          p.bias_type};
    const uint64_t blocks = np / NR;
    unsigned threads = std::min<uint64_t>(thread_count(double(p.m) * double(p.n) * double(p.k)), blocks);
    std::vector<std::thread> pool;
    uint64_t start = 0;
    for (unsigned t = 0; t < threads; t++) {
        const uint64_t end = blocks * (t + 1) / threads;
        const uint64_t j0 = start * NR, j1 = std::min(end * NR, p.n);
        start = end;
        if (t + 1 == threads) {
            columns(r, j0, j1);  // the calling thread takes the last share
            break;
        }
        try {
            pool.emplace_back(columns, std::cref(r), j0, j1);
        } catch (...) {
            columns(r, j0, j1);  // no thread to be had: do this share here
        }
    }
    for (auto& t : pool) t.join();
    return OK;
}

// A product waiting on its stream.
struct Queued {
    Problem p;
    Desc desc;
    float alpha, beta;
    const void* a;
    Layout al;
    const void* b;
    Layout bl;
    const void* c;
    Layout cl;
    void* d;
    Layout dl;
};

void run_queued(void* q) {
    const Queued& w = *static_cast<const Queued*>(q);
    run(w.p, &w.desc, w.alpha, w.beta, w.a, &w.al, w.b, &w.bl, w.c, &w.cl, w.d, &w.dl);
}

// A product issued outside a capture runs once, when its stream reaches it.
void run_queued_once(void* q) {
    run_queued(q);
    delete static_cast<Queued*>(q);
}

template <class T>
Status read_attr(const void* buf, size_t size, T* out) {
    if (!buf || size != sizeof(T)) return INVALID;
    std::memcpy(out, buf, sizeof(T));
    return OK;
}

}  // namespace

extern "C" {

Status cublasLtCreate(Handle** handle) {
    if (!handle) return INVALID;
    *handle = new (std::nothrow) Handle;
    return *handle ? OK : ALLOC_FAILED;
}

Status cublasLtDestroy(Handle* handle) {
    if (!handle || handle->tag != HANDLE_TAG) return NOT_INITIALIZED;
    handle->tag = 0;
    delete handle;
    return OK;
}

Status cublasLtMatrixLayoutCreate(Layout** layout, int32_t type, uint64_t rows, uint64_t cols,
                                  int64_t ld) {
    if (!layout) return INVALID;
    // Any type is a valid layout; the heuristic and the product refuse what they cannot run.
    *layout = new (std::nothrow) Layout{LAYOUT_TAG, type, rows, cols, ld};
    return *layout ? OK : ALLOC_FAILED;
}

Status cublasLtMatrixLayoutDestroy(Layout* layout) {
    if (!valid(layout)) return INVALID;
    layout->tag = 0;
    delete layout;
    return OK;
}

// The engine sets no layout attribute: the defaults (column-major, one matrix) are all there is.
Status cublasLtMatrixLayoutSetAttribute(Layout* layout, uint32_t, const void*, size_t) {
    return valid(layout) ? NOT_SUPPORTED : INVALID;
}

Status cublasLtMatmulDescCreate(Desc** desc, int32_t compute_type, int32_t scale_type) {
    if (!desc) return INVALID;
    if (compute_type != COMPUTE_32F || scale_type != R_32F) return NOT_SUPPORTED;
    *desc = new (std::nothrow) Desc;
    return *desc ? OK : ALLOC_FAILED;
}

Status cublasLtMatmulDescDestroy(Desc* desc) {
    if (!desc || desc->tag != DESC_TAG) return INVALID;
    desc->tag = 0;
    delete desc;
    return OK;
}

Status cublasLtMatmulDescSetAttribute(Desc* desc, uint32_t attr, const void* buf, size_t size) {
    if (!desc || desc->tag != DESC_TAG) return INVALID;
    Status s;
    switch (attr) {
    case DESC_TRANSA:
    case DESC_TRANSB: {
        int32_t op;
        if ((s = read_attr(buf, size, &op)) != OK) return s;
        if (op == 2) return NOT_SUPPORTED;  // CUBLAS_OP_C: not for real types here
        if (op != 0 && op != 1) return INVALID;
        (attr == DESC_TRANSA ? desc->trans_a : desc->trans_b) = op;
        return OK;
    }
    case DESC_EPILOGUE: {
        uint32_t e;
        if ((s = read_attr(buf, size, &e)) != OK) return s;
        if (!known_epilogue(e)) return INVALID;
        desc->epilogue = e;
        return OK;
    }
    case DESC_BIAS_POINTER: return read_attr(buf, size, &desc->bias);
    case DESC_BIAS_DATA_TYPE: return read_attr(buf, size, &desc->bias_type);
    default: return NOT_SUPPORTED;
    }
}

Status cublasLtMatmulPreferenceCreate(Pref** pref) {
    if (!pref) return INVALID;
    *pref = new (std::nothrow) Pref;
    return *pref ? OK : ALLOC_FAILED;
}

Status cublasLtMatmulPreferenceDestroy(Pref* pref) {
    if (!pref || pref->tag != PREF_TAG) return INVALID;
    pref->tag = 0;
    delete pref;
    return OK;
}

Status cublasLtMatmulPreferenceSetAttribute(Pref* pref, uint32_t attr, const void* buf,
                                            size_t size) {
    if (!pref || pref->tag != PREF_TAG) return INVALID;
    if (attr == PREF_MAX_WORKSPACE_BYTES) return read_attr(buf, size, &pref->max_workspace);
    if (attr >= PREF_MIN_ALIGNMENT_A && attr <= PREF_MIN_ALIGNMENT_D)
        return read_attr(buf, size, &pref->align[attr - PREF_MIN_ALIGNMENT_A]);
    return NOT_SUPPORTED;
}

Status cublasLtMatmulAlgoGetHeuristic(Handle* handle, Desc* desc, Layout* a, Layout* b, Layout* c,
                                      Layout* d, Pref* pref, int requested,
                                      HeuristicResult* results, int* returned) {
    if (returned) *returned = 0;
    if (!pref || pref->tag != PREF_TAG || !results || !returned || requested <= 0) return INVALID;
    Problem p;
    Status s = check(handle, desc, a, b, c, d, &p);
    if (s != OK) return s;
    // An operand promised less alignment than one element is one no kernel can read.
    const size_t bytes[4] = {2, 2, type_bytes(c->type), type_bytes(d->type)};
    for (int i = 0; i < 4; i++)
        if (pref->align[i] < bytes[i]) return NOT_SUPPORTED;
    const int count = std::min(requested, ALGOS);
    for (int i = 0; i < count; i++) {
        results[i] = HeuristicResult{};
        results[i].algo = make_algo(i + 1, p, *pref, desc->bias);
        results[i].workspaceSize = 0;
        results[i].state = OK;
        results[i].wavesCount = 1.0f;
    }
    *returned = count;
    return OK;
}

Status cublasLtMatmul(Handle* handle, Desc* desc, const void* alpha, const void* A, Layout* al,
                      const void* B, Layout* bl, const void* beta, const void* C, Layout* cl,
                      void* D, Layout* dl, const Algo* algo, void* workspace, size_t ws_bytes,
                      void* stream) {
    try {
        Problem p;
        Status s = check(handle, desc, al, bl, cl, dl, &p);
        if (s != OK) return s;
        if (!alpha || !beta || !A || !B || !D) return INVALID;
        if (!algo) return NOT_SUPPORTED;  // the implicit heuristic query is not emulated
        if (algo->data[1] != ALGO_TAG || algo->data[0] < 1 || algo->data[0] > ALGOS ||
            algo->data[2] != (p.epilogue | uint64_t(uint32_t(p.d_type)) << 32))
            return INVALID;
        if (ws_bytes && (!workspace || reinterpret_cast<uint64_t>(workspace) % 256)) return INVALID;
        float fa, fb;
        std::memcpy(&fa, alpha, 4);
        std::memcpy(&fb, beta, 4);
        if (fb != 0.0f && !C) return INVALID;
        const uint64_t pa = uint64_t(A), pb = uint64_t(B), pc = uint64_t(C), pd = uint64_t(D);
        const uint64_t ptrs[4] = {pa, pb, fb != 0.0f ? pc : 0, pd};
        for (int i = 0; i < 4; i++)
            if (ptrs[i] % algo->data[4 + i]) return INVALID;
        const uint64_t sa = span(al), sb = span(bl), sc = span(cl), sd = span(dl);
        if (overlap(pd, sd, pa, sa) || overlap(pd, sd, pb, sb)) return INVALID;
        if (fb != 0.0f && pc != pd && overlap(pd, sd, pc, sc)) return INVALID;
        if (fb != 0.0f && pc == pd && cl->ld != dl->ld) return INVALID;  // in place: one layout
        if (p.epilogue != EPI_DEFAULT) {
            const uint64_t v = desc->bias;
            if (!v || v % algo->data[3]) return INVALID;
            if (p.epilogue == EPI_BGRADB) {
                // Whether alpha scales the bias gradient is not documented; the engine uses 1.
                if (fa != 1.0f) return NOT_SUPPORTED;
                const uint64_t vb = p.n * type_bytes(p.bias_type);
                if (overlap(v, vb, pa, sa) || overlap(v, vb, pb, sb) || overlap(v, vb, pd, sd) ||
                    (fb != 0.0f && overlap(v, vb, pc, sc)))
                    return INVALID;
            }
        }
        // Onto the stream, through the host device's driver, so that a product takes its
        // place among the kernels and is recorded into a captured graph as they are; what the
        // call passed (the descriptor's bias pointer, alpha and beta) is copied now, as the
        // real library reads it at the call.
        auto* q = new Queued{p, *desc, fa, fb, A, *al, B, *bl, fb != 0.0f ? C : nullptr, *cl, D, *dl};
        // A graph keeps its products for every replay (and never frees them).
        int capturing = 0;
        if (cuStreamIsCapturing(stream, &capturing) != 0 ||
            cuLaunchHostFunc(stream, capturing ? run_queued : run_queued_once, q) != 0) {
            delete q;
            return INVALID;
        }
        return OK;
    } catch (const std::bad_alloc&) {
        return ALLOC_FAILED;
    } catch (...) {
        return INVALID;
    }
}

}  // extern "C"
