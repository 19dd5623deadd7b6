/* The C ABI's device ops against its host ops, on a GPU: each electra_cuda_* op runs on device
 * memory (cuMemAlloc) on a stream of this program's, and each host op (electra_*) on the same
 * random inputs rounded to bf16 on the host; outputs are poisoned (NaN, or a random base for the
 * accumulated gradients) before each run and compared as ||device - host|| / ||host||, the added
 * part for accumulated outputs, within the kernels' bf16 tolerance. Odd sizes are included.
 *
 * libcuda.so.1 is opened at run time (dlopen), so this compiles wherever cuda.h is (the pip nvcc
 * install's include folder) and, with no driver or no GPU, prints "skipped: no CUDA device" and
 * succeeds; with a library built without CUDA it prints "skipped: built without CUDA".
 * Run by scripts/gpu-checks.sh on a GPU machine (built by scripts/bundle-capi-cuda-test.sh) and
 * compiled and run by tests/capi.rs wherever cuda.h is found. Usage: capi_cuda_test [seed]. */
#define _POSIX_C_SOURCE 200809L
#include "electra.h"
#include "check.h"

#include <cuda.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The driver entry points this program uses, resolved from libcuda.so.1. */
static CUresult (*d_init)(unsigned);
static CUresult (*d_device_get)(CUdevice *, int);
static CUresult (*d_device_count)(int *);
static CUresult (*d_primary_retain)(CUcontext *, CUdevice);
static CUresult (*d_primary_release)(CUdevice);
static CUresult (*d_ctx_set_current)(CUcontext);
static CUresult (*d_alloc)(CUdeviceptr *, size_t);
static CUresult (*d_free)(CUdeviceptr);
static CUresult (*d_htod)(CUdeviceptr, const void *, size_t);
static CUresult (*d_dtoh)(void *, CUdeviceptr, size_t);
static CUresult (*d_stream_create)(CUstream *, unsigned);
static CUresult (*d_stream_sync)(CUstream);
static CUresult (*d_stream_destroy)(CUstream);

/* Resolves `name` into the function pointer at `fp` (memcpy: ISO C has no cast from void * to a
 * function pointer). */
static int resolve(void *lib, const char *name, void *fp, size_t size) {
    void *sym = dlsym(lib, name);
    if (!sym) return 0;
    memcpy(fp, &sym, size);
    return 1;
}
#define RESOLVE(lib, fp, name) resolve((lib), (name), (void *)&(fp), sizeof(fp))

static void cu(CUresult r, const char *what) {
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "CUDA driver call %s failed: %d\n", what, (int)r);
        exit(1);
    }
}

static uint64_t rng_state = 0x2545F4914F6CDD1Du;
static float uniform(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
    return lo + (hi - lo) * (float)(rng_state >> 40) / (float)(1u << 24);
}

/* bf16 <-> f32, rounding to nearest even as the kernels' conversions do. */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0; /* NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A tensor on both sides: host f32 (or u32) values and a device copy (bf16, f32 or u32). */
typedef struct {
    size_t n;
    uint32_t dtype; /* the device's */
    float *host;    /* f32 values (u32 bits for u32 tensors) */
    CUdeviceptr dev;
} Pair;

static size_t dtype_bytes(uint32_t dtype) { return dtype == ELECTRA_DTYPE_BF16 ? 2 : 4; }

/* Uploads `p.host` to the device in its dtype. */
static void upload(Pair *p) {
    size_t bytes = p->n * dtype_bytes(p->dtype);
    void *buf = malloc(bytes ? bytes : 1);
    if (p->dtype == ELECTRA_DTYPE_BF16) {
        uint16_t *h = buf;
        for (size_t i = 0; i < p->n; i++) h[i] = to_bf16(p->host[i]);
    } else {
        memcpy(buf, p->host, bytes);
    }
    cu(d_htod(p->dev, buf, bytes), "cuMemcpyHtoD");
    free(buf);
}

/* A tensor of `n` values of device dtype `dtype`, each host value from `init` (NULL: `fill`),
 * rounded to bf16 on the host when the device holds bf16, so both sides start equal. */
static Pair pair(size_t n, uint32_t dtype, float lo, float hi) {
    Pair p;
    p.n = n;
    p.dtype = dtype;
    p.host = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float v = uniform(lo, hi);
        p.host[i] = dtype == ELECTRA_DTYPE_BF16 ? from_bf16(to_bf16(v)) : v;
    }
    cu(d_alloc(&p.dev, (n ? n : 1) * dtype_bytes(dtype) + 16), "cuMemAlloc");
    upload(&p);
    return p;
}

/* An output filled with NaN on both sides: a value the op does not write stays NaN. */
static Pair poisoned(size_t n, uint32_t dtype) {
    Pair p = pair(n, dtype, 0, 0);
    for (size_t i = 0; i < n; i++) p.host[i] = NAN;
    upload(&p);
    return p;
}

/* u32 values on both sides. */
static Pair ints(size_t n, const uint32_t *v) {
    Pair p = pair(n, ELECTRA_DTYPE_U32, 0, 0);
    memcpy(p.host, v, n * 4);
    upload(&p);
    return p;
}

/* The device's values as f32. */
static float *download(const Pair *p) {
    size_t bytes = p->n * dtype_bytes(p->dtype);
    void *buf = malloc(bytes ? bytes : 1);
    float *out = malloc((p->n ? p->n : 1) * sizeof(float));
    cu(d_dtoh(buf, p->dev, bytes), "cuMemcpyDtoH");
    for (size_t i = 0; i < p->n; i++) {
        if (p->dtype == ELECTRA_DTYPE_BF16) out[i] = from_bf16(((uint16_t *)buf)[i]);
        else memcpy(&out[i], (char *)buf + 4 * i, 4);
    }
    free(buf);
    return out;
}

static void release(Pair *p) {
    free(p->host);
    d_free(p->dev);
}

static ElectraTensor desc(void *data, uint32_t dtype, uint32_t rank, size_t d0, size_t d1, size_t d2) {
    ElectraTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = rank;
    t.shape[0] = d0;
    t.shape[1] = d1;
    t.shape[2] = d2;
    return t;
}
/* The host op's f32 (or u32) view and the device op's view of a pair. */
static ElectraTensor host_t(const Pair *p, uint32_t rank, size_t d0, size_t d1, size_t d2) {
    uint32_t dtype = p->dtype == ELECTRA_DTYPE_U32 ? ELECTRA_DTYPE_U32 : ELECTRA_DTYPE_F32;
    return desc(p->host, dtype, rank, d0, d1, d2);
}
static ElectraTensor dev_t(const Pair *p, uint32_t rank, size_t d0, size_t d1, size_t d2) {
    return desc((void *)(uintptr_t)p->dev, p->dtype, rank, d0, d1, d2);
}

/* ||device - host|| / ||host|| over `rows` rows of `width` values `stride` apart (what the op
 * wrote; minus `base` for accumulated outputs), NaN anywhere failing. */
static void compare_rows(const char *what, const Pair *p, const float *base, size_t rows, size_t width,
                         size_t stride, double tol) {
    float *got = download(p);
    double num = 0, den = 0;
    int nan = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < width; c++) {
            size_t i = r * stride + c;
            double b = base ? base[i] : 0;
            double g = got[i] - b, h = p->host[i] - b;
            if (isnan(got[i]) || isnan(p->host[i])) nan = 1;
            num += (g - h) * (g - h);
            den += h * h;
        }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("%-24s rel err %.3e (tol %.0e)%s\n", what, rel, tol, nan ? " NaN" : "");
    CHECK(!nan && rel <= tol, "%s: rel err %.3e > %.0e or NaN", what, rel, tol);
    free(got);
}

/* compare_rows over the whole tensor. */
static void compare(const char *what, const Pair *p, const float *base, double tol) {
    compare_rows(what, p, base, 1, p->n, p->n, tol);
}

/* A copy of the host values (the base of an accumulated output). */
static float *copy_of(const Pair *p) {
    float *c = malloc((p->n ? p->n : 1) * sizeof(float));
    memcpy(c, p->host, p->n * sizeof(float));
    return c;
}

#define TOL 1e-2
/* The base of an accumulated bf16 output: small, since the device rounds base + gradient to bf16
 * (an error of about |base| / 256) and the comparison is of the gradient alone. f32 outputs
 * accumulate from a base of +-1. */
#define ACC 0.05f

static void attention(ElectraCudaOps *ops, CUstream s) {
    /* Batch 3, seq 37 (not a tile multiple), 2 heads of 32; the last sequence has 9 pads. */
    enum { B = 3, T = 37, NH = 2, H = 64 };
    uint32_t mask[B * T];
    for (int i = 0; i < B * T; i++) mask[i] = !(i / T == B - 1 && i % T >= T - 9);
    Pair qkv = pair(B * T * 3 * H, ELECTRA_DTYPE_BF16, -2, 2), km = ints(B * T, mask);
    Pair ctx = poisoned(B * T * H, ELECTRA_DTYPE_BF16), lse = poisoned(B * NH * T, ELECTRA_DTYPE_F32);
    Pair dctx = pair(B * T * H, ELECTRA_DTYPE_BF16, -1, 1);
    Pair dqkv = pair(B * T * 3 * H, ELECTRA_DTYPE_BF16, -ACC, ACC);
    float *dqkv_base = copy_of(&dqkv);
    float *probs = malloc(sizeof(float) * B * NH * T * T);
    ElectraDropout drop = {0.1f, 1234, 5};
    ElectraTensor hp = desc(probs, ELECTRA_DTYPE_F32, 4, B, NH, T);
    hp.shape[3] = T;

    ElectraTensor a = host_t(&qkv, 3, B, T, 3 * H), m = host_t(&km, 2, B, T, 0);
    ElectraTensor c = host_t(&ctx, 3, B, T, H), dc = host_t(&dctx, 3, B, T, H), dq = host_t(&dqkv, 3, B, T, 3 * H);
    OK(electra_attention_forward(&a, &m, &c, &hp, NH, &drop));
    OK(electra_attention_backward(&a, &m, &hp, &dc, &dq, NH, &drop));

    ElectraTensor ga = dev_t(&qkv, 3, B, T, 3 * H), gm = dev_t(&km, 2, B, T, 0), gc = dev_t(&ctx, 3, B, T, H);
    ElectraTensor gl = dev_t(&lse, 3, B, NH, T), gdc = dev_t(&dctx, 3, B, T, H), gdq = dev_t(&dqkv, 3, B, T, 3 * H);
    /* The dropout mask as bits: ceil(37 / 32) = 2 words a query row. */
    Pair keep = poisoned(B * NH * T * 2, ELECTRA_DTYPE_U32);
    ElectraTensor gk = dev_t(&keep, 4, B, NH, T);
    gk.shape[3] = 2;
    OK(electra_cuda_attention_forward(ops, &ga, &gm, &gc, &gl, &gk, NH, &drop, s));
    OK(electra_cuda_attention_backward(ops, &ga, &gm, &gc, &gl, &gk, &gdc, &gdq, NH, &drop, s));
    cu(d_stream_sync(s), "cuStreamSynchronize (attention)");
    compare("attention ctx", &ctx, NULL, TOL);
    compare("attention dqkv (added)", &dqkv, dqkv_base, 2 * TOL);
    /* The log-sum-exp has no host counterpart; it must be finite for every row. */
    float *l = download(&lse);
    int finite = 1;
    for (size_t i = 0; i < lse.n; i++) finite &= isfinite(l[i]) != 0;
    CHECK(finite, "attention lse holds a non-finite value");
    free(l);
    free(probs);
    free(dqkv_base);
    release(&qkv); release(&km); release(&ctx); release(&lse); release(&dctx); release(&dqkv);
    release(&keep);
}

static void layernorm(ElectraCudaOps *ops, CUstream s) {
    enum { R = 33, W = 200 };
    Pair x = pair(R * W, ELECTRA_DTYPE_BF16, -2, 2), res = pair(R * W, ELECTRA_DTYPE_BF16, -1, 1);
    Pair gain = pair(W, ELECTRA_DTYPE_F32, 0.5f, 1.5f), bias = pair(W, ELECTRA_DTYPE_F32, -0.5f, 0.5f);
    Pair y = poisoned(R * W, ELECTRA_DTYPE_BF16), xhat = poisoned(R * W, ELECTRA_DTYPE_BF16);
    Pair rstd = poisoned(R, ELECTRA_DTYPE_F32), dy = pair(R * W, ELECTRA_DTYPE_BF16, -1, 1);
    Pair dx = pair(R * W, ELECTRA_DTYPE_BF16, -ACC, ACC), dres = pair(R * W, ELECTRA_DTYPE_BF16, -ACC, ACC);
    Pair dgain = pair(W, ELECTRA_DTYPE_F32, -1, 1), dbias = pair(W, ELECTRA_DTYPE_F32, -1, 1);
    float *bdx = copy_of(&dx), *bdres = copy_of(&dres), *bdg = copy_of(&dgain), *bdb = copy_of(&dbias);
    /* The host's backward reads the host's saved xhat and rstd; the device's its own. */
    ElectraTensor hx = host_t(&x, 2, R, W, 0), hr = host_t(&res, 2, R, W, 0), hg = host_t(&gain, 1, W, 0, 0);
    ElectraTensor hb = host_t(&bias, 1, W, 0, 0), hy = host_t(&y, 2, R, W, 0), hxh = host_t(&xhat, 2, R, W, 0);
    ElectraTensor hrs = host_t(&rstd, 1, R, 0, 0), hdy = host_t(&dy, 2, R, W, 0), hdx = host_t(&dx, 2, R, W, 0);
    ElectraTensor hdr = host_t(&dres, 2, R, W, 0), hdg = host_t(&dgain, 1, W, 0, 0), hdb = host_t(&dbias, 1, W, 0, 0);
    OK(electra_layernorm_forward(&hx, &hr, &hg, &hb, 1e-12f, &hy, &hxh, &hrs));
    OK(electra_layernorm_backward(&hdy, &hg, &hxh, &hrs, &hdx, &hdr, &hdg, &hdb));
    ElectraTensor gx = dev_t(&x, 2, R, W, 0), gr = dev_t(&res, 2, R, W, 0), gg = dev_t(&gain, 1, W, 0, 0);
    ElectraTensor gb = dev_t(&bias, 1, W, 0, 0), gy = dev_t(&y, 2, R, W, 0), gxh = dev_t(&xhat, 2, R, W, 0);
    ElectraTensor grs = dev_t(&rstd, 1, R, 0, 0), gdy = dev_t(&dy, 2, R, W, 0), gdx = dev_t(&dx, 2, R, W, 0);
    ElectraTensor gdr = dev_t(&dres, 2, R, W, 0), gdg = dev_t(&dgain, 1, W, 0, 0), gdb = dev_t(&dbias, 1, W, 0, 0);
    OK(electra_cuda_layernorm_forward(ops, &gx, &gr, &gg, &gb, 1e-12f, &gy, &gxh, &grs, s));
    OK(electra_cuda_layernorm_backward(ops, &gdy, &gg, &gxh, &grs, &gdx, &gdr, &gdg, &gdb, s));
    cu(d_stream_sync(s), "cuStreamSynchronize (layernorm)");
    compare("layernorm y", &y, NULL, TOL);
    compare("layernorm xhat", &xhat, NULL, TOL);
    compare("layernorm rstd", &rstd, NULL, TOL);
    compare("layernorm dx (added)", &dx, bdx, TOL);
    compare("layernorm dres (added)", &dres, bdres, TOL);
    compare("layernorm dgain (added)", &dgain, bdg, TOL);
    compare("layernorm dbias (added)", &dbias, bdb, TOL);
    free(bdx); free(bdres); free(bdg); free(bdb);
    release(&x); release(&res); release(&gain); release(&bias); release(&y); release(&xhat);
    release(&rstd); release(&dy); release(&dx); release(&dres); release(&dgain); release(&dbias);
}

/* Linear with GELU (bf16 output, f32 bias) and without (f32 one-column output, f32 bias). */
static void linear(ElectraCudaOps *ops, CUstream s, int gelu) {
    size_t R = 37, I = 96, O = gelu ? 130 : 1;
    uint32_t ydt = gelu ? ELECTRA_DTYPE_BF16 : ELECTRA_DTYPE_F32;
    Pair x = pair(R * I, ELECTRA_DTYPE_BF16, -1, 1), w = pair(O * I, ELECTRA_DTYPE_BF16, -0.2f, 0.2f);
    Pair b = pair(O, ELECTRA_DTYPE_F32, -0.5f, 0.5f), y = poisoned(R * O, ydt);
    Pair pre = poisoned(R * O, ELECTRA_DTYPE_BF16), dy = pair(R * O, ELECTRA_DTYPE_BF16, -1, 1);
    Pair dx = pair(R * I, ELECTRA_DTYPE_BF16, -ACC, ACC), dw = pair(O * I, ELECTRA_DTYPE_F32, -1, 1);
    Pair db = pair(O, ELECTRA_DTYPE_F32, -1, 1);
    float *bdx = copy_of(&dx), *bdw = copy_of(&dw), *bdb = copy_of(&db);
    ElectraTensor hx = host_t(&x, 2, R, I, 0), hw = host_t(&w, 2, O, I, 0), hb = host_t(&b, 1, O, 0, 0);
    ElectraTensor hy = host_t(&y, 2, R, O, 0), hp = host_t(&pre, 2, R, O, 0), hdy = host_t(&dy, 2, R, O, 0);
    ElectraTensor hdx = host_t(&dx, 2, R, I, 0), hdw = host_t(&dw, 2, O, I, 0), hdb = host_t(&db, 1, O, 0, 0);
    OK(electra_linear_forward(&hx, &hw, &hb, &hy, gelu ? &hp : NULL));
    OK(electra_linear_backward(&hx, &hw, &hdy, gelu ? &hp : NULL, &hdx, &hdw, &hdb));
    ElectraTensor gx = dev_t(&x, 2, R, I, 0), gw = dev_t(&w, 2, O, I, 0), gb = dev_t(&b, 1, O, 0, 0);
    ElectraTensor gy = dev_t(&y, 2, R, O, 0), gp = dev_t(&pre, 2, R, O, 0), gdy = dev_t(&dy, 2, R, O, 0);
    ElectraTensor gdx = dev_t(&dx, 2, R, I, 0), gdw = dev_t(&dw, 2, O, I, 0), gdb = dev_t(&db, 1, O, 0, 0);
    OK(electra_cuda_linear_forward(ops, &gx, &gw, &gb, &gy, gelu ? &gp : NULL, s));
    OK(electra_cuda_linear_backward(ops, &gx, &gw, &gdy, gelu ? &gp : NULL, &gdx, &gdw, &gdb, s));
    cu(d_stream_sync(s), "cuStreamSynchronize (linear)");
    compare(gelu ? "linear+gelu y" : "linear y (f32)", &y, NULL, TOL);
    if (gelu) compare("linear+gelu pre", &pre, NULL, TOL);
    compare(gelu ? "linear+gelu dx" : "linear dx", &dx, bdx, TOL);
    compare(gelu ? "linear+gelu dw" : "linear dw", &dw, bdw, TOL);
    compare(gelu ? "linear+gelu db" : "linear db", &db, bdb, TOL);
    free(bdx); free(bdw); free(bdb);
    release(&x); release(&w); release(&b); release(&y); release(&pre); release(&dy);
    release(&dx); release(&dw); release(&db);
}

static void generator_loss(ElectraCudaOps *ops, CUstream s) {
    /* 7 rows of 1001 classes, rows padded to a stride of 1008 (the LM head's layout). */
    enum { R = 7, V = 1001, LD = 1008 };
    uint32_t targets[R] = {0, 1000, 17, 500, 3, 999, 42};
    Pair logits = pair(R * LD, ELECTRA_DTYPE_BF16, -4, 4), tg = ints(R, targets);
    Pair loss = poisoned(R, ELECTRA_DTYPE_F32), dl = poisoned(R * LD, ELECTRA_DTYPE_BF16);
    Pair picks = poisoned(R, ELECTRA_DTYPE_U32);
    ElectraTensor hl = host_t(&logits, 2, R, V, 0), ht = host_t(&tg, 1, R, 0, 0), hloss = host_t(&loss, 1, R, 0, 0);
    ElectraTensor hd = host_t(&dl, 2, R, V, 0), hp = host_t(&picks, 1, R, 0, 0);
    hl.row_stride = LD;
    hd.row_stride = LD;
    OK(electra_generator_loss(&hl, &ht, 1.0f / R, &hloss, &hd, &hp));
    ElectraTensor gl = dev_t(&logits, 2, R, V, 0), gt = dev_t(&tg, 1, R, 0, 0), gloss = dev_t(&loss, 1, R, 0, 0);
    ElectraTensor gd = dev_t(&dl, 2, R, V, 0), gp = dev_t(&picks, 1, R, 0, 0);
    gl.row_stride = LD;
    gd.row_stride = LD;
    OK(electra_cuda_generator_loss(ops, &gl, &gt, 1.0f / R, &gloss, &gd, &gp, s));
    cu(d_stream_sync(s), "cuStreamSynchronize (generator loss)");
    compare("generator row_loss", &loss, NULL, TOL);
    /* Only the columns below vocab are the result; the padding is neither read nor written. */
    compare_rows("generator dlogits", &dl, NULL, R, V, LD, TOL);
    float *gp_bits = download(&picks);
    CHECK(memcmp(gp_bits, picks.host, R * 4) == 0, "generator picks differ from the host's argmax");
    free(gp_bits);
    release(&logits); release(&tg); release(&loss); release(&dl); release(&picks);
}

static void bce_head(ElectraCudaOps *ops, CUstream s) {
    enum { N = 37, H = 128 };
    uint32_t mask[N];
    float lab[N];
    for (int i = 0; i < N; i++) { mask[i] = i < N - 5; lab[i] = (float)(i % 3 == 0); }
    Pair h = pair(N * H, ELECTRA_DTYPE_BF16, -1, 1), w = pair(H, ELECTRA_DTYPE_F32, -0.3f, 0.3f);
    Pair b = pair(1, ELECTRA_DTYPE_F32, -0.5f, 0.5f), labels = pair(N, ELECTRA_DTYPE_F32, 0, 0);
    memcpy(labels.host, lab, sizeof lab);
    upload(&labels);
    Pair m = ints(N, mask), logits = poisoned(N, ELECTRA_DTYPE_F32), loss = poisoned(N, ELECTRA_DTYPE_F32);
    Pair dh = pair(N * H, ELECTRA_DTYPE_BF16, -ACC, ACC), dw = pair(H, ELECTRA_DTYPE_F32, -1, 1);
    Pair db = pair(1, ELECTRA_DTYPE_F32, -1, 1);
    float *bdh = copy_of(&dh), *bdw = copy_of(&dw), *bdb = copy_of(&db);
    ElectraTensor a[10], g[10];
    Pair *all[11] = {&h, &w, &b, &labels, &m, &logits, &loss, &dh, &dw, &db, NULL};
    for (int i = 0; i < 10; i++) {
        size_t d0 = all[i]->n == N * H ? N : all[i]->n, d1 = all[i]->n == N * H ? H : 0;
        a[i] = host_t(all[i], d1 ? 2 : 1, d0, d1, 0);
        g[i] = dev_t(all[i], d1 ? 2 : 1, d0, d1, 0);
    }
    OK(electra_bce_head(&a[0], &a[1], &a[2], &a[3], &a[4], 50.0f / (N - 5), &a[5], &a[6], &a[7], &a[8], &a[9]));
    OK(electra_cuda_bce_head(ops, &g[0], &g[1], &g[2], &g[3], &g[4], 50.0f / (N - 5), &g[5], &g[6], &g[7], &g[8], &g[9], s));
    cu(d_stream_sync(s), "cuStreamSynchronize (bce head)");
    compare("bce logits", &logits, NULL, TOL);
    compare("bce row_loss", &loss, NULL, TOL);
    compare("bce dh (added)", &dh, bdh, TOL);
    compare("bce dw (added)", &dw, bdw, TOL);
    compare("bce db (added)", &db, bdb, TOL);
    free(bdh); free(bdw); free(bdb);
    for (int i = 0; i < 10; i++) release(all[i]);
}

int main(int argc, char **argv) {
    if (argc > 1) rng_state = strtoull(argv[1], NULL, 10);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib || !RESOLVE(lib, d_init, "cuInit") || d_init(0) != CUDA_SUCCESS) {
        printf("skipped: no CUDA device (no driver)\n");
        return 0;
    }
    int ok = RESOLVE(lib, d_device_get, "cuDeviceGet") && RESOLVE(lib, d_device_count, "cuDeviceGetCount") &&
             RESOLVE(lib, d_primary_retain, "cuDevicePrimaryCtxRetain") &&
             RESOLVE(lib, d_primary_release, "cuDevicePrimaryCtxRelease_v2") &&
             RESOLVE(lib, d_ctx_set_current, "cuCtxSetCurrent") && RESOLVE(lib, d_alloc, "cuMemAlloc_v2") &&
             RESOLVE(lib, d_free, "cuMemFree_v2") && RESOLVE(lib, d_htod, "cuMemcpyHtoD_v2") &&
             RESOLVE(lib, d_dtoh, "cuMemcpyDtoH_v2") && RESOLVE(lib, d_stream_create, "cuStreamCreate") &&
             RESOLVE(lib, d_stream_sync, "cuStreamSynchronize") && RESOLVE(lib, d_stream_destroy, "cuStreamDestroy_v2");
    int count = 0;
    if (!ok || d_device_count(&count) != CUDA_SUCCESS || count < 1) {
        printf("skipped: no CUDA device\n");
        return 0;
    }
    ElectraCudaOps *ops = NULL;
    ElectraStatus st = electra_cuda_ops_create(0, &ops);
    if (st == ELECTRA_STATUS_DEVICE && strstr(electra_last_error(), "built without CUDA")) {
        printf("skipped: built without CUDA (%s)\n", electra_last_error());
        return 0;
    }
    CHECK(st == ELECTRA_STATUS_OK, "electra_cuda_ops_create(0) returned %d", (int)st);
    if (st != ELECTRA_STATUS_OK) return 1;
    /* The caller's memory and stream, in the primary context the library uses too. */
    CUdevice dev;
    CUcontext ctx;
    cu(d_device_get(&dev, 0), "cuDeviceGet");
    cu(d_primary_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    cu(d_ctx_set_current(ctx), "cuCtxSetCurrent");
    CUstream s;
    cu(d_stream_create(&s, 0), "cuStreamCreate");
    attention(ops, s);
    layernorm(ops, s);
    linear(ops, s, 1);
    linear(ops, s, 0);
    generator_loss(ops, s);
    bce_head(ops, s);
    /* The legacy default stream (NULL) works as well. */
    linear(ops, NULL, 1);
    electra_cuda_ops_destroy(ops);
    d_stream_destroy(s);
    d_primary_release(dev);
    if (failures) {
        fprintf(stderr, "%d device op checks failed\n", failures);
        return 1;
    }
    printf("all device op checks passed\n");
    return 0;
}
