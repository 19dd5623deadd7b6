// Checks the host device's cuBLASLt (cublaslt.cpp) on every kind of product the CUDA backend
// issues: transposes N/T for A and B, D bf16 or f32, beta 0 or 1 with C = D, leading dimensions
// beyond the rows, the BIAS and BGRADB epilogues; and that what it does not implement is refused.
// Each D is compared with a double-precision reference (f32: within 1e-5 of the sum of the
// magnitudes of what adds up to it; bf16: also within one bf16 ulp of the reference) and, bit for
// bit, with a plain f32 loop in the order the library promises (k increasing).
//
// Built by scripts/build-host-device.sh beside the libraries; CI runs it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" {
int cublasLtCreate(void** handle);
int cublasLtDestroy(void* handle);
int cublasLtMatrixLayoutCreate(void** layout, int32_t type, uint64_t rows, uint64_t cols, int64_t ld);
int cublasLtMatrixLayoutDestroy(void* layout);
int cublasLtMatrixLayoutSetAttribute(void* layout, uint32_t attr, const void* buf, size_t size);
int cublasLtMatmulDescCreate(void** desc, int32_t compute, int32_t scale);
int cublasLtMatmulDescDestroy(void* desc);
int cublasLtMatmulDescSetAttribute(void* desc, uint32_t attr, const void* buf, size_t size);
int cublasLtMatmulPreferenceCreate(void** pref);
int cublasLtMatmulPreferenceDestroy(void* pref);
int cublasLtMatmulPreferenceSetAttribute(void* pref, uint32_t attr, const void* buf, size_t size);
struct Algo { uint64_t data[8]; };
struct Heuristic {
    Algo algo;
    size_t workspaceSize;
    int32_t state;
    float wavesCount;
    int32_t reserved[4];
};
int cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* a, void* b, void* c, void* d,
                                   void* pref, int requested, Heuristic* results, int* returned);
int cublasLtMatmul(void* handle, void* desc, const void* alpha, const void* A, void* al,
                   const void* B, void* bl, const void* beta, const void* C, void* cl, void* D,
                   void* dl, const Algo* algo, void* workspace, size_t ws, void* stream);
}

namespace {

constexpr int OK = 0, INVALID = 7, NOT_SUPPORTED = 15;
constexpr int32_t R_32F = 0, R_16F = 2, R_16BF = 14, COMPUTE_32F = 68;
constexpr uint32_t TRANSA = 3, TRANSB = 4, EPILOGUE = 7, BIAS_POINTER = 8, BIAS_DATA_TYPE = 26,
                   POINTER_MODE = 2;
constexpr uint32_t EPI_DEFAULT = 1, EPI_BIAS = 4, EPI_GELU = 32, EPI_BGRADB = 512;

int failures = 0, checks = 0;

void expect(bool ok, const std::string& what) {
    checks++;
    if (!ok) {
        failures++;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

float bf(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Round to nearest even, written independently of the library's.
uint16_t to_bf(float f) {
    if (std::isnan(f)) return 0x7fc0;
    uint32_t u = bits(f), lower = u & 0xffff, keep = u >> 16;
    if (lower > 0x8000 || (lower == 0x8000 && (keep & 1))) keep++;
    return uint16_t(keep);
}

// The spacing of bf16 values at |x| (8 significant bits).
double bf_ulp(double x) {
    int e;
    std::frexp(x == 0 ? 1e-38 : x, &e);
    return std::ldexp(1.0, e - 8);
}

// Raw device memory: a buffer padded so that pointers into it can be placed at chosen alignments.
struct Buf {
    std::vector<unsigned char> raw;
    unsigned char* p;
    Buf(size_t bytes, size_t offset = 0) : raw(bytes + 512 + offset) {
        uintptr_t base = (reinterpret_cast<uintptr_t>(raw.data()) + 255) & ~uintptr_t(255);
        p = reinterpret_cast<unsigned char*>(base) + offset;
    }
    uint16_t* h() { return reinterpret_cast<uint16_t*>(p); }
    float* f() { return reinterpret_cast<float*>(p); }
};

struct Case {
    uint64_t m, n, k;
    bool ta, tb;
    int32_t d_type;
    float beta;
    uint32_t epilogue;
    int32_t bias_type;  // -1: unset (D's type)
    uint64_t pad;       // leading dimensions exceed the rows by this much
};

std::string name(const Case& c) {
    char s[200];
    const char* epi = c.epilogue == EPI_BIAS ? "BIAS" : c.epilogue == EPI_BGRADB ? "BGRADB" : "-";
    std::snprintf(s, sizeof s, "%llux%llux%llu %c%c D=%s beta=%g epilogue=%s%s ld+%llu",
                  (unsigned long long)c.m, (unsigned long long)c.n, (unsigned long long)c.k,
                  c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', c.d_type == R_16BF ? "bf16" : "f32", c.beta,
                  epi, c.bias_type == -1 ? "" : c.bias_type == R_32F ? " (bias type f32)" : " (bias type bf16)",
                  (unsigned long long)c.pad);
    return s;
}

struct Lt {
    void *handle = nullptr, *desc = nullptr, *pref = nullptr, *la = nullptr, *lb = nullptr,
         *ld = nullptr;
    ~Lt() {
        for (void* l : {la, lb, ld})
            if (l) cublasLtMatrixLayoutDestroy(l);
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (desc) cublasLtMatmulDescDestroy(desc);
        if (handle) cublasLtDestroy(handle);
    }
};

// Describes `c` as blas.rs does; returns the heuristic's status and fills `found`.
int describe(Lt& lt, const Case& c, uint64_t bias, int requested, std::vector<Heuristic>& found,
             uint32_t align = 16) {
    expect(cublasLtCreate(&lt.handle) == OK, "create handle");
    expect(cublasLtMatmulDescCreate(&lt.desc, COMPUTE_32F, R_32F) == OK, "create desc");
    int32_t ta = c.ta, tb = c.tb;
    expect(cublasLtMatmulDescSetAttribute(lt.desc, TRANSA, &ta, 4) == OK, "set TRANSA");
    expect(cublasLtMatmulDescSetAttribute(lt.desc, TRANSB, &tb, 4) == OK, "set TRANSB");
    if (c.bias_type != -1)
        expect(cublasLtMatmulDescSetAttribute(lt.desc, BIAS_DATA_TYPE, &c.bias_type, 4) == OK,
               "set BIAS_DATA_TYPE");
    if (c.epilogue != EPI_DEFAULT) {
        expect(cublasLtMatmulDescSetAttribute(lt.desc, EPILOGUE, &c.epilogue, 4) == OK, "set EPILOGUE");
        expect(cublasLtMatmulDescSetAttribute(lt.desc, BIAS_POINTER, &bias, 8) == OK, "set BIAS_POINTER");
    }
    uint64_t ar = c.ta ? c.k : c.m, ac = c.ta ? c.m : c.k;
    uint64_t br = c.tb ? c.n : c.k, bc = c.tb ? c.k : c.n;
    expect(cublasLtMatrixLayoutCreate(&lt.la, R_16BF, ar, ac, ar + c.pad) == OK, "layout A");
    expect(cublasLtMatrixLayoutCreate(&lt.lb, R_16BF, br, bc, br + c.pad) == OK, "layout B");
    expect(cublasLtMatrixLayoutCreate(&lt.ld, c.d_type, c.m, c.n, c.m + c.pad) == OK, "layout D");
    expect(cublasLtMatmulPreferenceCreate(&lt.pref) == OK, "create pref");
    uint64_t ws = 1 << 20;
    expect(cublasLtMatmulPreferenceSetAttribute(lt.pref, 1, &ws, 8) == OK, "set workspace");
    for (uint32_t attr = 5; attr <= 8; attr++)
        expect(cublasLtMatmulPreferenceSetAttribute(lt.pref, attr, &align, 4) == OK, "set alignment");
    found.assign(requested, Heuristic{});
    int returned = -1;
    int s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, lt.lb, lt.ld, lt.ld, lt.pref,
                                           requested, found.data(), &returned);
    found.resize(returned < 0 ? 0 : returned);
    return s;
}

void run_case(const Case& c, std::mt19937& rng) {
    const std::string what = name(c);
    const int failed_before = failures;
    const uint64_t ar = c.ta ? c.k : c.m, ac = c.ta ? c.m : c.k;
    const uint64_t br = c.tb ? c.n : c.k, bc = c.tb ? c.k : c.n;
    const uint64_t lda = ar + c.pad, ldb = br + c.pad, ldd = c.m + c.pad;
    const bool d_bf = c.d_type == R_16BF;
    const int32_t bias_type = c.bias_type == -1 ? c.d_type : c.bias_type;
    const size_t dsize = d_bf ? 2 : 4, bsize = bias_type == R_16BF ? 2 : 4;
    Buf A(lda * ac * 2), B(ldb * bc * 2), D(ldd * c.n * dsize), V(std::max(c.m, c.n) * bsize + 64);
    // Values of varied magnitude and sign, some exactly zero.
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::uniform_int_distribution<int> e(-4, 3);
    auto value = [&] { float x = u(rng); return std::fabs(x) < 0.05f ? 0.0f : std::ldexp(x, e(rng)); };
    for (uint64_t i = 0; i < lda * ac; i++) A.h()[i] = to_bf(value());
    for (uint64_t i = 0; i < ldb * bc; i++) B.h()[i] = to_bf(value());
    // D's padding rows hold a sentinel that must survive; with beta 1, D holds C.
    std::vector<float> c_val(ldd * c.n);
    for (uint64_t i = 0; i < ldd * c.n; i++) {
        const bool padding = i % ldd >= c.m;
        float x = padding ? 12345.0f : c.beta != 0 ? value() : std::nanf("");  // beta 0: C unread
        if (d_bf) { D.h()[i] = to_bf(x); x = bf(D.h()[i]); } else D.f()[i] = x;
        c_val[i] = x;
    }
    std::vector<float> bias(c.m);
    if (c.epilogue == EPI_BIAS)
        for (uint64_t i = 0; i < c.m; i++) {
            float x = value();
            if (bias_type == R_16BF) { V.h()[i] = to_bf(x); bias[i] = bf(V.h()[i]); }
            else { V.f()[i] = x; bias[i] = x; }
        }
    if (c.epilogue == EPI_BGRADB)
        for (uint64_t j = 0; j < c.n; j++) { if (bsize == 2) V.h()[j] = 0x7fc0; else V.f()[j] = std::nanf(""); }

    Lt lt;
    std::vector<Heuristic> found;
    int s = describe(lt, c, uint64_t(V.p), 8, found);
    expect(s == OK && found.size() == 3, what + ": heuristic offers 3 algorithms");
    if (found.size() < 3) return;
    expect(found[0].algo.data[0] != found[1].algo.data[0] && found[1].algo.data[0] != found[2].algo.data[0],
           what + ": the algorithms differ");
    for (auto& h : found)
        expect(h.state == OK && h.workspaceSize == 0 && h.wavesCount == 1.0f, what + ": heuristic fields");
    static Buf workspace(1 << 20);
    const float alpha = 1.0f, beta = c.beta;
    // Run with the last algorithm, as tuning may choose it.
    s = cublasLtMatmul(lt.handle, lt.desc, &alpha, A.p, lt.la, B.p, lt.lb, &beta, D.p, lt.ld, D.p,
                       lt.ld, &found[2].algo, workspace.p, 1 << 20, nullptr);
    expect(s == OK, what + ": cublasLtMatmul succeeds");
    if (s != OK) return;

    auto opA = [&](uint64_t i, uint64_t kk) { return bf(c.ta ? A.h()[i * lda + kk] : A.h()[kk * lda + i]); };
    auto opB = [&](uint64_t kk, uint64_t j) { return bf(c.tb ? B.h()[kk * ldb + j] : B.h()[j * ldb + kk]); };
    int bad = 0, inexact = 0;
    double worst = 0;
    for (uint64_t j = 0; j < c.n; j++)
        for (uint64_t i = 0; i < ldd; i++) {
            const uint64_t at = j * ldd + i;
            const float got = d_bf ? bf(D.h()[at]) : D.f()[at];
            if (i >= c.m) {
                if (bits(got) != bits(c_val[at])) bad++;
                continue;
            }
            double ref = 0, mag = 0;
            float seq = 0;
            for (uint64_t kk = 0; kk < c.k; kk++) {
                double p = double(opA(i, kk)) * opB(kk, j);
                ref += p;
                mag += std::fabs(p);
                seq += opA(i, kk) * opB(kk, j);
            }
            if (c.beta != 0) { ref += c.beta * double(c_val[at]); mag += std::fabs(c.beta * c_val[at]); seq = seq + c.beta * c_val[at]; }
            if (c.epilogue == EPI_BIAS) { ref += bias[i]; mag += std::fabs(bias[i]); seq = seq + bias[i]; }
            const double err = std::fabs(got - ref);
            const double tol = 1e-5 * mag + (d_bf ? bf_ulp(std::max(std::fabs(ref), std::fabs(double(got)))) : 0.0);
            if (!(err <= tol)) bad++;
            worst = std::max(worst, mag > 0 ? err / mag : err);
            const float want = d_bf ? bf(to_bf(seq)) : seq;
            if (bits(got) != bits(want)) inexact++;
        }
    expect(bad == 0, what + ": D within tolerance of the double reference (" + std::to_string(bad) + " off)");
    expect(inexact == 0, what + ": D bitwise equal to the ordered f32 loop (" + std::to_string(inexact) + " differ)");
    if (c.epilogue == EPI_BGRADB) {
        int gbad = 0, ginexact = 0;
        for (uint64_t j = 0; j < c.n; j++) {
            double ref = 0, mag = 0;
            float seq = 0;
            for (uint64_t kk = 0; kk < c.k; kk++) {
                ref += opB(kk, j);
                mag += std::fabs(opB(kk, j));
                seq += opB(kk, j);
            }
            const float got = bsize == 2 ? bf(V.h()[j]) : V.f()[j];
            const double tol = 1e-5 * mag + (bsize == 2 ? bf_ulp(std::fabs(ref)) : 0.0);
            if (!(std::fabs(got - ref) <= tol)) gbad++;
            if (bits(got) != bits(bsize == 2 ? bf(to_bf(seq)) : seq)) ginexact++;
        }
        expect(gbad == 0, what + ": bias gradient = column sums of op(B) over k (" + std::to_string(gbad) + " off)");
        expect(ginexact == 0, what + ": bias gradient bitwise equal to the ordered f32 sum");
    }
    std::printf("%s %-70s max |err|/sum|terms| %.2e\n", failures == failed_before ? "ok  " : "FAIL",
                what.c_str(), worst);
}

// A small product of given values, for exact checks of rounding and NaN.
std::vector<float> tiny(const std::vector<float>& a_row, const std::vector<float>& b_col, int32_t d_type) {
    const uint64_t k = a_row.size();
    Case c{1, 1, k, false, false, d_type, 0.0f, EPI_DEFAULT, -1, 0};
    Buf A(k * 2), B(k * 2), D(4);
    for (uint64_t i = 0; i < k; i++) { A.h()[i] = to_bf(a_row[i]); B.h()[i] = to_bf(b_col[i]); }
    Lt lt;
    std::vector<Heuristic> found;
    describe(lt, c, 0, 1, found);
    const float one = 1, zero = 0;
    if (found.size() != 1 || cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero,
                                            D.p, lt.ld, D.p, lt.ld, &found[0].algo, nullptr, 0, nullptr) != OK)
        return {};
    return {d_type == R_16BF ? bf(D.h()[0]) : D.f()[0]};
}

void exact_cases() {
    auto r = tiny({1.0f, 1.0f}, {1.0f, std::ldexp(1.0f, -8)}, R_16BF);  // halfway, even below
    expect(!r.empty() && r[0] == 1.0f, "bf16 rounding: 1 + 2^-8 ties to 1");
    r = tiny({1.0f, 1.0f, 1.0f}, {1.0f, std::ldexp(1.0f, -7), std::ldexp(1.0f, -8)}, R_16BF);
    expect(!r.empty() && r[0] == 1.0f + std::ldexp(1.0f, -6), "bf16 rounding: 1 + 2^-7 + 2^-8 ties up to even");
    r = tiny({1.0f, 1.0f}, {1.0f, std::ldexp(1.0f, -8) + std::ldexp(1.0f, -15)}, R_16BF);
    expect(!r.empty() && r[0] == 1.0f + std::ldexp(1.0f, -7), "bf16 rounding: above halfway rounds up");
    r = tiny({1.0f, std::nanf("")}, {1.0f, 1.0f}, R_16BF);
    expect(!r.empty() && std::isnan(r[0]), "bf16: NaN stays NaN");
    r = tiny({std::ldexp(1.0f, 100)}, {std::ldexp(1.0f, 100)}, R_16BF);
    expect(!r.empty() && std::isinf(r[0]), "bf16: overflow gives infinity");
    r = tiny({1.0f, 1.0f}, {std::ldexp(1.0f, 30), -std::ldexp(1.0f, 30)}, R_32F);
    expect(!r.empty() && r[0] == 0.0f, "f32: exact products cancel");
    std::printf("done exact rounding and NaN cases\n");
}

void error_cases() {
    const Case base{16, 8, 24, true, false, R_16BF, 0.0f, EPI_DEFAULT, -1, 0};
    std::vector<Heuristic> found;
    int s;
    {   // A not bf16
        Lt lt;
        describe(lt, base, 0, 1, found);
        void* f16;
        cublasLtMatrixLayoutCreate(&f16, R_16F, 24, 16, 24);
        Heuristic h[4];
        int n = -1;
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, f16, lt.lb, lt.ld, lt.ld, lt.pref, 4, h, &n);
        expect(s == NOT_SUPPORTED && n == 0, "f16 A: NOT_SUPPORTED, no algorithm");
        // C bf16 with D f32
        void* df32;
        cublasLtMatrixLayoutCreate(&df32, R_32F, 16, 8, 16);
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, lt.lb, lt.ld, df32, lt.pref, 4, h, &n);
        expect(s == NOT_SUPPORTED && n == 0, "C bf16, D f32: NOT_SUPPORTED");
        // k of A against k of B
        void* b_wrong;
        cublasLtMatrixLayoutCreate(&b_wrong, R_16BF, 25, 8, 25);
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, b_wrong, lt.ld, lt.ld, lt.pref, 4, h, &n);
        expect(s == INVALID && n == 0, "k mismatch: INVALID_VALUE");
        // D's rows against m
        void* d_wrong;
        cublasLtMatrixLayoutCreate(&d_wrong, R_16BF, 15, 8, 16);
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, lt.lb, d_wrong, d_wrong, lt.pref, 4, h, &n);
        expect(s == INVALID && n == 0, "D rows != m: INVALID_VALUE");
        // ld below the rows
        void* d_short;
        cublasLtMatrixLayoutCreate(&d_short, R_16BF, 16, 8, 15);
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, lt.lb, d_short, d_short, lt.pref, 4, h, &n);
        expect(s == INVALID && n == 0, "ld < rows: INVALID_VALUE");
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, lt.lb, lt.ld, lt.ld, lt.pref, 0, h, &n);
        expect(s == INVALID, "requested count 0: INVALID_VALUE");
        int32_t order = 1;
        expect(cublasLtMatrixLayoutSetAttribute(lt.ld, 1, &order, 4) == NOT_SUPPORTED, "layout attribute: NOT_SUPPORTED");
        int32_t mode = 1;
        expect(cublasLtMatmulDescSetAttribute(lt.desc, POINTER_MODE, &mode, 4) == NOT_SUPPORTED, "POINTER_MODE: NOT_SUPPORTED");
        int64_t wide = 1;
        expect(cublasLtMatmulDescSetAttribute(lt.desc, TRANSA, &wide, 8) == INVALID, "TRANSA of 8 bytes: INVALID_VALUE");
        uint32_t searchmode = 0;
        expect(cublasLtMatmulPreferenceSetAttribute(lt.pref, 0, &searchmode, 4) == NOT_SUPPORTED, "SEARCH_MODE: NOT_SUPPORTED");
        for (void* l : {f16, df32, b_wrong, d_wrong, d_short}) cublasLtMatrixLayoutDestroy(l);
    }
    void* desc;
    expect(cublasLtMatmulDescCreate(&desc, 77, R_32F) == NOT_SUPPORTED, "COMPUTE_32F_FAST_TF32: NOT_SUPPORTED");
    expect(cublasLtMatmulDescCreate(&desc, COMPUTE_32F, R_16BF) == NOT_SUPPORTED, "scale type bf16: NOT_SUPPORTED");
    {   // GELU epilogue
        Case c = base;
        c.epilogue = EPI_GELU;
        Lt lt;
        s = describe(lt, c, 256, 4, found);
        expect(s == NOT_SUPPORTED && found.empty(), "GELU epilogue: NOT_SUPPORTED");
    }
    {   // f32 bias on a bf16 D, which the type table does not list
        Case c = base;
        c.epilogue = EPI_BIAS;
        c.bias_type = R_32F;
        Lt lt;
        s = describe(lt, c, 256, 4, found);
        expect(s == NOT_SUPPORTED && found.empty(), "BIAS f32 on D bf16: NOT_SUPPORTED");
    }
    {   // algorithms: foreign ones, another product's, operands less aligned than promised
        Lt lt, other;
        describe(lt, base, 0, 1, found);
        std::vector<Heuristic> bias_found;
        Case cb = base;
        cb.epilogue = EPI_BIAS;
        describe(other, cb, 256, 1, bias_found);
        Buf A(24 * 16 * 2), B(24 * 8 * 2), D(16 * 8 * 2), Dodd(16 * 8 * 2, 2), W(256);
        const float one = 1, zero = 0;
        Algo fake{};
        fake.data[0] = 1;
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero, D.p, lt.ld, D.p, lt.ld,
                           &fake, nullptr, 0, nullptr);
        expect(s == INVALID, "algorithm not from the heuristic: INVALID_VALUE");
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero, D.p, lt.ld, D.p, lt.ld,
                           &bias_found[0].algo, nullptr, 0, nullptr);
        expect(s == INVALID, "a BIAS product's algorithm on a plain product: INVALID_VALUE");
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero, Dodd.p, lt.ld, Dodd.p,
                           lt.ld, &found[0].algo, nullptr, 0, nullptr);
        expect(s == INVALID, "D 2-byte aligned where 16 was promised: INVALID_VALUE");
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero, D.p, lt.ld, D.p, lt.ld,
                           &found[0].algo, W.p + 16, 64, nullptr);
        expect(s == INVALID, "workspace not 256-byte aligned: INVALID_VALUE");
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero, D.p, lt.ld, D.p, lt.ld,
                           nullptr, nullptr, 0, nullptr);
        expect(s == NOT_SUPPORTED, "no algorithm: NOT_SUPPORTED");
        // D over A
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &zero, A.p, lt.ld, A.p, lt.ld,
                           &found[0].algo, nullptr, 0, nullptr);
        expect(s == INVALID, "D overlapping A: INVALID_VALUE");
        // C partly over D
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &one, D.p + 16, lt.ld, D.p,
                           lt.ld, &found[0].algo, nullptr, 0, nullptr);
        expect(s == INVALID, "C partly overlapping D: INVALID_VALUE");
        // Alignment promised below one element
        void* pref;
        cublasLtMatmulPreferenceCreate(&pref);
        uint32_t one_byte = 1;
        cublasLtMatmulPreferenceSetAttribute(pref, 5, &one_byte, 4);
        Heuristic h[1];
        int n = -1;
        s = cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.desc, lt.la, lt.lb, lt.ld, lt.ld, pref, 1, h, &n);
        expect(s == NOT_SUPPORTED && n == 0, "A aligned to 1 byte: NOT_SUPPORTED");
        cublasLtMatmulPreferenceDestroy(pref);
    }
    {   // BGRADB: alpha other than 1 and a null vector
        Case c{16, 8, 24, false, true, R_32F, 1.0f, EPI_BGRADB, R_32F, 0};
        Lt lt;
        Buf A(16 * 24 * 2), B(8 * 24 * 2), D(16 * 8 * 4), V(64);
        describe(lt, c, uint64_t(V.p), 1, found);
        const float two = 2, one = 1;
        s = cublasLtMatmul(lt.handle, lt.desc, &two, A.p, lt.la, B.p, lt.lb, &one, D.p, lt.ld, D.p, lt.ld,
                           &found[0].algo, nullptr, 0, nullptr);
        expect(s == NOT_SUPPORTED, "BGRADB with alpha 2: NOT_SUPPORTED");
        uint64_t null = 0;
        cublasLtMatmulDescSetAttribute(lt.desc, BIAS_POINTER, &null, 8);
        s = cublasLtMatmul(lt.handle, lt.desc, &one, A.p, lt.la, B.p, lt.lb, &one, D.p, lt.ld, D.p, lt.ld,
                           &found[0].algo, nullptr, 0, nullptr);
        expect(s == INVALID, "BGRADB with a null vector: INVALID_VALUE");
    }
    std::printf("done refusals of what is not implemented\n");
}

}  // namespace

int main() {
    std::mt19937 rng(20240611);
    std::vector<Case> cases;
    // Every combination the engine's products can take, on odd sizes (blocks with tails).
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int32_t d : {R_16BF, R_32F})
                for (float beta : {0.0f, 1.0f}) {
                    cases.push_back({37, 29, 53, bool(ta), bool(tb), d, beta, EPI_DEFAULT, -1, 3});
                    cases.push_back({37, 29, 53, bool(ta), bool(tb), d, beta, EPI_BIAS, -1, 5});
                    cases.push_back({37, 29, 53, bool(ta), bool(tb), d, beta, EPI_BIAS, d, 0});
                    cases.push_back({37, 29, 53, bool(ta), bool(tb), d, beta, EPI_BGRADB, -1, 2});
                    cases.push_back({37, 29, 53, bool(ta), bool(tb), d, beta, EPI_BGRADB, d, 1});
                }
    // The engine's three products of a linear layer (rows 96, inp 72, out 40), dy padded, and one
    // large enough to be split between threads.
    cases.push_back({40, 96, 72, true, false, R_16BF, 0.0f, EPI_BIAS, -1, 0});        // forward
    cases.push_back({1, 96, 72, true, false, R_32F, 0.0f, EPI_BIAS, -1, 0});          // one-column output
    cases.push_back({72, 96, 40, false, false, R_16BF, 1.0f, EPI_DEFAULT, -1, 0});    // dx += dy·w
    cases.push_back({72, 40, 96, false, true, R_32F, 1.0f, EPI_BGRADB, R_32F, 0});    // dw += dyᵀ·x, dbias
    cases.push_back({200, 150, 260, true, false, R_16BF, 1.0f, EPI_BIAS, -1, 8});
    cases.push_back({130, 260, 150, false, true, R_32F, 1.0f, EPI_BGRADB, R_32F, 4});
    for (const Case& c : cases) run_case(c, rng);
    exact_cases();
    error_cases();
    std::printf("%d checks, %d failed (%zu products)\n", checks, failures, cases.size());
    return failures == 0 ? 0 : 1;
}
