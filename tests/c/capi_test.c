/* Drives the C ABI as an embedding program would; run by tests/capi.rs (under valgrind when
 * present). Usage: capi_test FIXTURES OUT. FIXTURES holds what the Rust side prepared
 * (model.json, train.json, batches.bin, vocab.txt); OUT receives a run directory, an HF export,
 * the encoder's inputs and outputs, and each op's inputs and outputs, which tests/capi.rs checks
 * against the Rust API. Every error path is checked here: its status and its message. */
#include "electra.h"
#include "check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A failing call: its status and a substring of its message. */
#define FAILS(call, status, text)                                                   \
    do {                                                                            \
        ElectraStatus s_ = (call);                                                  \
        CHECK(s_ == (status), "%s returned %d, expected %d", #call, (int)s_, (int)(status)); \
        CHECK(strstr(electra_last_error(), (text)) != NULL,                         \
              "%s: message lacks \"%s\"", #call, (text));                          \
    } while (0)

static char *read_text(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    if (fread(text, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    text[n] = 0;
    fclose(f);
    return text;
}

static FILE *open_out(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    return f;
}

/* Raw little-endian arrays, one file per tensor, read back by tests/capi.rs. */
static void dump(const char *dir, const char *name, const void *data, size_t bytes) {
    FILE *f = open_out(dir, name);
    fwrite(data, 1, bytes, f);
    fclose(f);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static float uniform(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
    return lo + (hi - lo) * (float)(rng_state >> 40) / (float)(1u << 24);
}
static float *random_floats(size_t n, float lo, float hi) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = uniform(lo, hi);
    return v;
}

static ElectraTensor tensor(void *data, uint32_t dtype, uint32_t rank, size_t d0, size_t d1, size_t d2, size_t d3) {
    ElectraTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = rank;
    t.shape[0] = d0; t.shape[1] = d1; t.shape[2] = d2; t.shape[3] = d3;
    t.row_stride = 0;
    return t;
}
#define F32(p, r, a, b, c, d) tensor((p), ELECTRA_DTYPE_F32, (r), (a), (b), (c), (d))
#define U32(p, r, a, b, c, d) tensor((p), ELECTRA_DTYPE_U32, (r), (a), (b), (c), (d))

static void trainer_section(const char *fx, const char *out) {
    char *model_json = read_text(fx, "model.json");
    char *train_json = read_text(fx, "train.json");
    char path[4096];
    snprintf(path, sizeof path, "%s/batches.bin", fx);
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    uint64_t head[3];
    if (fread(head, sizeof head[0], 3, f) != 3) exit(2);
    size_t steps = head[0], batch = head[1], seq = head[2], n = batch * seq;
    uint32_t *ids = malloc(n * 4), *mask = malloc(n * 4), *types = malloc(n * 4);

    ElectraTrainerOptions o;
    OK(electra_trainer_options_default(&o));
    o.preset = NULL;
    o.model_json = model_json;
    o.train_json = train_json; /* the run's whole recipe, seed included */
    ElectraTrainer *t = NULL;
    OK(electra_trainer_create(&o, &t));
    ElectraStepMetrics m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    for (size_t s = 0; s < steps; s++) {
        if (fread(ids, 4, n, f) != n || fread(mask, 4, n, f) != n || fread(types, 4, n, f) != n) exit(2);
        OK(electra_trainer_step(t, ids, mask, types, batch, seq, &m));
        CHECK(m.step == s + 1, "step %llu after %zu calls", (unsigned long long)m.step, s + 1);
        CHECK(isfinite(m.gen_loss) && isfinite(m.disc_loss) && m.masked > 0, "metrics of step %zu", s + 1);
        printf("step %llu: gen %.4f disc %.4f lr %.2e grad_norm %.3f\n", (unsigned long long)m.step,
               m.gen_loss, m.disc_loss, m.lr, m.grad_norm);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/run", out);
    OK(electra_trainer_save(t, path));

    /* Errors of a step: nothing changes. */
    uint64_t step = 0;
    FAILS(electra_trainer_step(NULL, ids, mask, types, batch, seq, &m), ELECTRA_STATUS_NULL_POINTER, "trainer is NULL");
    FAILS(electra_trainer_step(t, NULL, mask, types, batch, seq, &m), ELECTRA_STATUS_NULL_POINTER, "input_ids is NULL");
    FAILS(electra_trainer_step(t, ids, mask, types, 0, seq, &m), ELECTRA_STATUS_SHAPE, "batch is 0");
    uint32_t saved = ids[1];
    ids[1] = 1000000;
    FAILS(electra_trainer_step(t, ids, mask, types, batch, seq, &m), ELECTRA_STATUS_INVALID_ARGUMENT, "outside the vocabulary");
    ids[1] = saved;
    mask[0] = 7;
    FAILS(electra_trainer_step(t, ids, mask, types, batch, seq, &m), ELECTRA_STATUS_INVALID_ARGUMENT, "attention_mask must hold only 0 and 1");
    mask[0] = 1;
    m.struct_size = 3;
    FAILS(electra_trainer_step(t, ids, mask, types, batch, seq, &m), ELECTRA_STATUS_INVALID_ARGUMENT, "metrics.struct_size is 3, smaller than its first version's");
    m.struct_size = sizeof m + 8; /* a newer header's struct: refused, not guessed at */
    FAILS(electra_trainer_step(t, ids, mask, types, batch, seq, &m), ELECTRA_STATUS_INVALID_ARGUMENT, "a newer header than the library");
    OK(electra_trainer_get_step(t, &step));
    CHECK(step == steps, "a refused step changed the step count to %llu", (unsigned long long)step);
    FAILS(electra_trainer_get_step(t, NULL), ELECTRA_STATUS_NULL_POINTER, "step is NULL");
    FAILS(electra_trainer_save(t, NULL), ELECTRA_STATUS_NULL_POINTER, "run_dir is NULL");
    snprintf(path, sizeof path, "%s/vocab.txt", fx);
    char export_dir[4096];
    snprintf(export_dir, sizeof export_dir, "%s/hf", out);
    OK(electra_trainer_export(t, export_dir, path));
    FAILS(electra_trainer_export(t, export_dir, path), ELECTRA_STATUS_IO, "not empty");
    electra_trainer_destroy(t);

    /* Resume continues at the saved step, and holds the run's lock. */
    snprintf(path, sizeof path, "%s/run", out);
    t = NULL;
    OK(electra_trainer_resume(path, "cpu", &t));
    OK(electra_trainer_get_step(t, &step));
    CHECK(step == steps, "resumed at step %llu, expected %zu", (unsigned long long)step, steps);
    ElectraTrainer *second = NULL;
    FAILS(electra_trainer_resume(path, "cpu", &second), ELECTRA_STATUS_IO, "held by another process");
    CHECK(second == NULL, "a failed resume wrote a handle");
    electra_trainer_destroy(t);

    /* Creation errors: each leaves *out untouched. */
    ElectraTrainer *none = NULL;
    OK(electra_trainer_options_default(&o));
    o.preset = "huge";
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_UNKNOWN_PRESET, "unknown preset `huge`");
    o.preset = NULL;
    o.model_json = "{\"vocab_size\": 12,";
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_CONFIG, "options.model_json");
    o.model_json = model_json;
    o.train_json = "{\"peak_lr\": -1}";
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_CONFIG, "peak_lr");
    o.train_json = "{\"learning_rate\": 0.1}";
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_CONFIG, "unknown field `learning_rate`");
    o.train_json = NULL;
    o.preset = "tiny";
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_INVALID_ARGUMENT, "exactly one of");
    o.model_json = NULL;
    o.device = "tpu";
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_DEVICE, "unknown device `tpu`");
    o.device = NULL;
    o.struct_size = 8;
    FAILS(electra_trainer_create(&o, &none), ELECTRA_STATUS_INVALID_ARGUMENT, "options.struct_size is 8, smaller than its first version's");
    FAILS(electra_trainer_create(NULL, &none), ELECTRA_STATUS_NULL_POINTER, "options is NULL");
    OK(electra_trainer_options_default(&o));
    FAILS(electra_trainer_create(&o, NULL), ELECTRA_STATUS_NULL_POINTER, "out is NULL");
    FAILS(electra_trainer_resume("/nonexistent/run", NULL, &none), ELECTRA_STATUS_IO, "/nonexistent/run");
    CHECK(none == NULL, "a failed create wrote a handle");
    /* A success clears the message. */
    OK(electra_trainer_options_default(&o));
    CHECK(electra_last_error()[0] == 0, "a success left the message \"%s\"", electra_last_error());

    /* The preset path: tiny with a small vocabulary takes a step on the fixture's batch. */
    o.vocab_size = 1000;
    o.seed = 3;
    m.struct_size = sizeof m;
    OK(electra_trainer_create(&o, &t));
    OK(electra_trainer_step(t, ids, mask, types, batch, seq, &m) );
    electra_trainer_destroy(t);
    electra_trainer_destroy(NULL);
    free(ids); free(mask); free(types); free(model_json); free(train_json);
}

static void encoder_section(const char *out) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/hf", out);
    ElectraTokenizer *tok = NULL;
    char tok_dir[4096];
    snprintf(tok_dir, sizeof tok_dir, "%s/hf/discriminator", out);
    OK(electra_tokenizer_load(tok_dir, &tok));
    size_t vocab = 0;
    OK(electra_tokenizer_vocab_size(tok, &vocab));
    CHECK(vocab > 5, "vocabulary of %zu tokens", vocab);
    enum { B = 3, T = 16 };
    const char *a[B] = {"the people of the nation", "we shall work for peace and a better world, for all of us", "congress"};
    const char *b[B] = {NULL, NULL, "the states"};
    uint32_t ids[B * T], mask[B * T], types[B * T];
    for (int i = 0; i < B; i++) {
        size_t len = 0;
        OK(electra_tokenizer_encode(tok, a[i], b[i], T, ids + i * T, mask + i * T, types + i * T, &len));
        CHECK(len >= 3 && len <= T, "row %d has %zu tokens", i, len);
    }
    CHECK(mask[1 * T + T - 1] == 1, "the long sentence was cut to fill the row");
    CHECK(types[2 * T + 4] == 1 || types[2 * T + 3] == 1, "the pair's second text has type 1");
    FAILS(electra_tokenizer_encode(tok, "x", "y", 2, ids, mask, types, NULL), ELECTRA_STATUS_SHAPE, "expected at least 3");
    FAILS(electra_tokenizer_encode(tok, NULL, NULL, T, ids, mask, types, NULL), ELECTRA_STATUS_NULL_POINTER, "text_a is NULL");

    ElectraEncoder *enc = NULL;
    OK(electra_encoder_load(dir, NULL, &enc));
    size_t hidden = 0, max_seq = 0;
    OK(electra_encoder_sizes(enc, &hidden, &max_seq));
    float *h = malloc(B * T * hidden * sizeof *h);
    float logits[B * T];
    OK(electra_encoder_forward(enc, ids, mask, types, B, T, h, B * T * hidden, logits, B * T));
    printf("encoder: hidden states [%d, %d, %zu], logit[0] %.4f\n", B, T, hidden, logits[0]);
    dump(out, "enc_ids.bin", ids, sizeof ids);
    dump(out, "enc_mask.bin", mask, sizeof mask);
    dump(out, "enc_types.bin", types, sizeof types);
    dump(out, "enc_hidden.bin", h, B * T * hidden * sizeof *h);
    dump(out, "enc_logits.bin", logits, sizeof logits);

    /* Too small a buffer: an error, and the buffer is untouched. */
    float sentinel[4] = {7, 7, 7, 7};
    FAILS(electra_encoder_forward(enc, ids, mask, types, B, T, sentinel, 4, NULL, 0), ELECTRA_STATUS_BUFFER_TOO_SMALL, "hidden_len holds 4");
    CHECK(sentinel[0] == 7 && sentinel[3] == 7, "a refused call wrote the caller's buffer");
    FAILS(electra_encoder_forward(enc, NULL, mask, types, B, T, NULL, 0, NULL, 0), ELECTRA_STATUS_NULL_POINTER, "input_ids is NULL");
    uint32_t *long_row = calloc(max_seq + 1, sizeof *long_row); /* ids, mask and types all 0 */
    FAILS(electra_encoder_forward(enc, long_row, long_row, long_row, 1, max_seq + 1, NULL, 0, NULL, 0), ELECTRA_STATUS_SHAPE, "positions");
    free(long_row);
    FAILS(electra_encoder_forward(NULL, ids, mask, types, B, T, h, B * T * hidden, NULL, 0), ELECTRA_STATUS_NULL_POINTER, "encoder is NULL");
    ElectraEncoder *none = NULL;
    FAILS(electra_encoder_load("/nonexistent/model", NULL, &none), ELECTRA_STATUS_IO, "/nonexistent/model");
    FAILS(electra_encoder_load(dir, "cuda:0", &none), ELECTRA_STATUS_DEVICE, "");
    FAILS(electra_tokenizer_load("/nonexistent/vocab.txt", NULL), ELECTRA_STATUS_NULL_POINTER, "out is NULL");
    CHECK(none == NULL, "a failed load wrote a handle");
    free(h);
    electra_encoder_destroy(enc);
    electra_tokenizer_destroy(tok);
}

static void ops_section(const char *out) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/ops", out);
    /* Attention: batch 2, seq 5, 2 heads of 4; the second sequence has 2 padding tokens. */
    enum { B = 2, T = 5, NH = 2, H = 8 };
    float *qkv = random_floats(B * T * 3 * H, -1, 1);
    uint32_t key_mask[B * T] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    float ctx[B * T * H], probs[B * NH * T * T], dctx_v[B * T * H], dqkv[B * T * 3 * H];
    float *dctx = random_floats(B * T * H, -1, 1);
    memcpy(dctx_v, dctx, sizeof dctx_v);
    memset(dqkv, 0, sizeof dqkv);
    ElectraTensor tq = F32(qkv, 3, B, T, 3 * H, 0), tm = U32(key_mask, 2, B, T, 0, 0);
    ElectraTensor tc = F32(ctx, 3, B, T, H, 0), tp = F32(probs, 4, B, NH, T, T);
    ElectraTensor tdc = F32(dctx_v, 3, B, T, H, 0), tdq = F32(dqkv, 3, B, T, 3 * H, 0);
    ElectraDropout drop = {0.1f, 42, 3};
    OK(electra_attention_forward(&tq, &tm, &tc, &tp, NH, &drop));
    OK(electra_attention_backward(&tq, &tm, &tp, &tdc, &tdq, NH, &drop));
    dump(dir, "attn.qkv", qkv, sizeof(float) * B * T * 3 * H);
    dump(dir, "attn.mask", key_mask, sizeof key_mask);
    dump(dir, "attn.dctx", dctx, sizeof dctx_v);
    dump(dir, "attn.ctx", ctx, sizeof ctx);
    dump(dir, "attn.probs", probs, sizeof probs);
    dump(dir, "attn.dqkv", dqkv, sizeof dqkv);
    FAILS(electra_attention_forward(&tq, &tm, &tc, &tp, 3, NULL), ELECTRA_STATUS_SHAPE, "a multiple of heads = 3");
    ElectraTensor bad_mask = F32(key_mask, 2, B, T, 0, 0);
    FAILS(electra_attention_forward(&tq, &bad_mask, &tc, &tp, NH, NULL), ELECTRA_STATUS_DTYPE, "key_mask has dtype f32, expected u32");
    drop.p = 1.5f;
    FAILS(electra_attention_forward(&tq, &tm, &tc, &tp, NH, &drop), ELECTRA_STATUS_INVALID_ARGUMENT, "dropout.p is 1.5");

    /* Residual + LayerNorm, with x in rows padded to a stride of 9. */
    enum { R = 3, W = 6, S = 9 };
    float xs[R * S], res[R * W], y[R * W], xhat[R * W], rstd[R], dy[R * W];
    float dx[R * W] = {0}, dres[R * W] = {0}, dgain[W] = {0}, dbias[W] = {0};
    for (int i = 0; i < R * S; i++) xs[i] = (i % S) < W ? uniform(-2, 2) : NAN; /* padding is never read */
    float x[R * W];
    for (int r = 0; r < R; r++) memcpy(x + r * W, xs + r * S, W * sizeof(float));
    float *gain = random_floats(W, 0.5f, 1.5f), *bias = random_floats(W, -0.5f, 0.5f), *g = random_floats(R * W, -1, 1);
    for (int i = 0; i < R * W; i++) { res[i] = uniform(-1, 1); dy[i] = g[i]; }
    ElectraTensor tx = F32(xs, 2, R, W, 0, 0);
    tx.row_stride = S;
    ElectraTensor tr = F32(res, 2, R, W, 0, 0), tg = F32(gain, 1, W, 0, 0, 0), tb = F32(bias, 1, W, 0, 0, 0);
    ElectraTensor ty = F32(y, 2, R, W, 0, 0), txh = F32(xhat, 2, R, W, 0, 0), trs = F32(rstd, 1, R, 0, 0, 0);
    ElectraTensor tdy = F32(dy, 2, R, W, 0, 0), tdx = F32(dx, 2, R, W, 0, 0), tdr = F32(dres, 2, R, W, 0, 0);
    ElectraTensor tdg = F32(dgain, 1, W, 0, 0, 0), tdb = F32(dbias, 1, W, 0, 0, 0);
    OK(electra_layernorm_forward(&tx, &tr, &tg, &tb, 1e-12f, &ty, &txh, &trs));
    OK(electra_layernorm_backward(&tdy, &tg, &txh, &trs, &tdx, &tdr, &tdg, &tdb));
    dump(dir, "ln.x", x, sizeof x);
    dump(dir, "ln.residual", res, sizeof res);
    dump(dir, "ln.gain", gain, W * sizeof(float));
    dump(dir, "ln.bias", bias, W * sizeof(float));
    dump(dir, "ln.dy", dy, sizeof dy);
    dump(dir, "ln.y", y, sizeof y);
    dump(dir, "ln.dx", dx, sizeof dx);
    dump(dir, "ln.dresidual", dres, sizeof dres);
    dump(dir, "ln.dgain", dgain, sizeof dgain);
    dump(dir, "ln.dbias", dbias, sizeof dbias);
    ElectraTensor short_y = F32(y, 2, R, W - 1, 0, 0);
    float y_before = y[0];
    FAILS(electra_layernorm_forward(&tx, &tr, &tg, &tb, 1e-12f, &short_y, &txh, &trs), ELECTRA_STATUS_SHAPE, "y has shape [3, 5]");
    CHECK(y[0] == y_before, "a refused op wrote its output");
    FAILS(electra_layernorm_forward(&tx, &tr, &tg, &tb, 1e-12f, &ty, &txh, NULL), ELECTRA_STATUS_NULL_POINTER, "rstd is NULL");

    /* Linear + bias + GELU: 4 rows, 6 → 5. */
    enum { LR = 4, LI = 6, LO = 5 };
    float *lx = random_floats(LR * LI, -1, 1), *lw = random_floats(LO * LI, -1, 1), *lb = random_floats(LO, -1, 1);
    float *ldy = random_floats(LR * LO, -1, 1);
    float ly[LR * LO], lpre[LR * LO], ldx[LR * LI] = {0}, ldw[LO * LI] = {0}, ldb[LO] = {0};
    ElectraTensor tlx = F32(lx, 2, LR, LI, 0, 0), tlw = F32(lw, 2, LO, LI, 0, 0), tlb = F32(lb, 1, LO, 0, 0, 0);
    ElectraTensor tly = F32(ly, 2, LR, LO, 0, 0), tlp = F32(lpre, 2, LR, LO, 0, 0), tldy = F32(ldy, 2, LR, LO, 0, 0);
    ElectraTensor tldx = F32(ldx, 2, LR, LI, 0, 0), tldw = F32(ldw, 2, LO, LI, 0, 0), tldb = F32(ldb, 1, LO, 0, 0, 0);
    OK(electra_linear_forward(&tlx, &tlw, &tlb, &tly, &tlp));
    OK(electra_linear_backward(&tlx, &tlw, &tldy, &tlp, &tldx, &tldw, &tldb));
    dump(dir, "lin.x", lx, LR * LI * sizeof(float));
    dump(dir, "lin.w", lw, LO * LI * sizeof(float));
    dump(dir, "lin.b", lb, LO * sizeof(float));
    dump(dir, "lin.dy", ldy, LR * LO * sizeof(float));
    dump(dir, "lin.y", ly, sizeof ly);
    dump(dir, "lin.pre", lpre, sizeof lpre);
    dump(dir, "lin.dx", ldx, sizeof ldx);
    dump(dir, "lin.dw", ldw, sizeof ldw);
    dump(dir, "lin.db", ldb, sizeof ldb);
    ElectraTensor u32x = U32(lx, 2, LR, LI, 0, 0);
    FAILS(electra_linear_forward(&u32x, &tlw, &tlb, &tly, &tlp), ELECTRA_STATUS_DTYPE, "x has dtype u32, expected f32");
    ElectraTensor tall_b = F32(lb, 1, LO + 1, 0, 0, 0);
    FAILS(electra_linear_forward(&tlx, &tlw, &tall_b, &tly, NULL), ELECTRA_STATUS_SHAPE, "b has shape [6]");
    ElectraTensor narrow = F32(lx, 2, LR, LI, 0, 0);
    narrow.row_stride = 2;
    FAILS(electra_linear_forward(&narrow, &tlw, &tlb, &tly, NULL), ELECTRA_STATUS_SHAPE, "row_stride 2");
    ElectraTensor null_data = F32(NULL, 2, LR, LI, 0, 0);
    FAILS(electra_linear_forward(&null_data, &tlw, &tlb, &tly, NULL), ELECTRA_STATUS_NULL_POINTER, "x.data is NULL");

    /* Generator loss with argmax picks: 3 rows over 7 classes. */
    enum { GR = 3, GV = 7 };
    float *gl = random_floats(GR * GV, -3, 3);
    uint32_t targets[GR] = {1, 6, 0}, picks[GR];
    float row_loss[GR], dlogits[GR * GV];
    ElectraTensor tgl = F32(gl, 2, GR, GV, 0, 0), tgt = U32(targets, 1, GR, 0, 0, 0);
    ElectraTensor tgrl = F32(row_loss, 1, GR, 0, 0, 0), tgd = F32(dlogits, 2, GR, GV, 0, 0), tgp = U32(picks, 1, GR, 0, 0, 0);
    OK(electra_generator_loss(&tgl, &tgt, 1.0f / GR, &tgrl, &tgd, &tgp));
    dump(dir, "gen.logits", gl, GR * GV * sizeof(float));
    dump(dir, "gen.targets", targets, sizeof targets);
    dump(dir, "gen.row_loss", row_loss, sizeof row_loss);
    dump(dir, "gen.dlogits", dlogits, sizeof dlogits);
    dump(dir, "gen.picks", picks, sizeof picks);
    targets[2] = GV;
    FAILS(electra_generator_loss(&tgl, &tgt, 1.0f, &tgrl, &tgd, &tgp), ELECTRA_STATUS_INVALID_ARGUMENT, "targets holds 7");

    /* BCE head: 6 tokens of width 4, the last one padding. */
    enum { BT = 6, BH = 4 };
    float *bh = random_floats(BT * BH, -1, 1), *bw = random_floats(BH, -1, 1), bb[1] = {0.25f};
    float blabels[BT] = {1, 0, 0, 1, 0, 1};
    uint32_t bmask[BT] = {1, 1, 1, 1, 1, 0};
    float blog[BT], bloss[BT], bdh[BT * BH] = {0}, bdw[BH] = {0}, bdb[1] = {0};
    ElectraTensor tbh = F32(bh, 2, BT, BH, 0, 0), tbw = F32(bw, 1, BH, 0, 0, 0), tbb = F32(bb, 1, 1, 0, 0, 0);
    ElectraTensor tbl = F32(blabels, 1, BT, 0, 0, 0), tbm = U32(bmask, 1, BT, 0, 0, 0);
    ElectraTensor tblog = F32(blog, 1, BT, 0, 0, 0), tbloss = F32(bloss, 1, BT, 0, 0, 0);
    ElectraTensor tbdh = F32(bdh, 2, BT, BH, 0, 0), tbdw = F32(bdw, 1, BH, 0, 0, 0), tbdb = F32(bdb, 1, 1, 0, 0, 0);
    OK(electra_bce_head(&tbh, &tbw, &tbb, &tbl, &tbm, 50.0f / 5, &tblog, &tbloss, &tbdh, &tbdw, &tbdb));
    dump(dir, "bce.h", bh, BT * BH * sizeof(float));
    dump(dir, "bce.w", bw, BH * sizeof(float));
    dump(dir, "bce.logits", blog, sizeof blog);
    dump(dir, "bce.row_loss", bloss, sizeof bloss);
    dump(dir, "bce.dh", bdh, sizeof bdh);
    dump(dir, "bce.dw", bdw, sizeof bdw);
    dump(dir, "bce.db", bdb, sizeof bdb);
    ElectraTensor rank5 = tbh;
    rank5.rank = 5;
    FAILS(electra_bce_head(&rank5, &tbw, &tbb, &tbl, &tbm, 1, &tblog, &tbloss, &tbdh, &tbdw, &tbdb), ELECTRA_STATUS_SHAPE, "h has rank 5");

    free(qkv); free(dctx); free(gain); free(bias); free(g); free(lx); free(lw); free(lb); free(ldy);
    free(gl); free(bh); free(bw);
}

/* The device ops' checks, which run on the host before the handle is used: every argument error
 * below is reported with a NULL handle, on any machine. The addresses are never dereferenced. */
static void cuda_ops_section(void) {
    ElectraCudaOps *ops = NULL;
    ElectraStatus st = electra_cuda_ops_create(0, &ops);
    /* A handle where there is a GPU; else ELECTRA_STATUS_DEVICE saying why: a library built without
     * CUDA (src/capi/cuda_ops.rs's unit test holds such a build to that message), or no device. */
    const char *why = electra_last_error();
    CHECK(st == ELECTRA_STATUS_OK || (st == ELECTRA_STATUS_DEVICE && (strstr(why, "CUDA device 0: built without CUDA") ||
                                                                     strstr(why, "CUDA device 0: no CUDA device"))),
          "electra_cuda_ops_create returned %d: %s", (int)st, why);
    CHECK((st == ELECTRA_STATUS_OK) == (ops != NULL), "create wrote a handle only on success");
    electra_cuda_ops_destroy(ops);
    ops = NULL;
    FAILS(electra_cuda_ops_create(-1, &ops), ELECTRA_STATUS_INVALID_ARGUMENT, "device is -1");
    FAILS(electra_cuda_ops_create(0, NULL), ELECTRA_STATUS_NULL_POINTER, "out is NULL");
    electra_cuda_ops_destroy(NULL);

    /* Attention: batch 2, seq 5, 2 heads of 16. */
    enum { B = 2, T = 5, NH = 2, H = 32 };
    char *base = (char *)(uintptr_t)0x100000; /* a 16-byte aligned "device" address */
    ElectraTensor qkv = tensor(base, ELECTRA_DTYPE_BF16, 3, B, T, 3 * H, 0);
    ElectraTensor km = tensor(base + 0x1000, ELECTRA_DTYPE_U32, 2, B, T, 0, 0);
    ElectraTensor ctx = tensor(base + 0x2000, ELECTRA_DTYPE_BF16, 3, B, T, H, 0);
    ElectraTensor lse = tensor(base + 0x3000, ELECTRA_DTYPE_F32, 3, B, NH, T, 0);
    ElectraTensor dctx = ctx, dqkv = qkv;
    dctx.data = base + 0x4000;
    dqkv.data = base + 0x5000;
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &lse, NULL, NH, NULL, NULL), ELECTRA_STATUS_NULL_POINTER, "ops is NULL");
    FAILS(electra_cuda_attention_backward(NULL, &qkv, &km, &ctx, &lse, NULL, &dctx, &dqkv, NH, NULL, NULL), ELECTRA_STATUS_NULL_POINTER, "ops is NULL");
    ElectraTensor f32_qkv = qkv;
    f32_qkv.dtype = ELECTRA_DTYPE_F32;
    FAILS(electra_cuda_attention_forward(NULL, &f32_qkv, &km, &ctx, &lse, NULL, NH, NULL, NULL), ELECTRA_STATUS_DTYPE, "qkv has dtype f32, expected bf16");
    ElectraTensor bf16_mask = km;
    bf16_mask.dtype = ELECTRA_DTYPE_BF16;
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &bf16_mask, &ctx, &lse, NULL, NH, NULL, NULL), ELECTRA_STATUS_DTYPE, "key_mask has dtype bf16, expected u32");
    ElectraTensor probs_shaped = tensor(base + 0x3000, ELECTRA_DTYPE_F32, 4, B, NH, T, T);
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &probs_shaped, NULL, NH, NULL, NULL), ELECTRA_STATUS_SHAPE, "lse has shape [2, 2, 5, 5] (rank 4), expected [2, 2, 5]");
    ElectraTensor odd_qkv = qkv;
    odd_qkv.data = base + 8; /* aligned to its bf16 elements, not to the kernels' 16 bytes */
    FAILS(electra_cuda_attention_forward(NULL, &odd_qkv, &km, &ctx, &lse, NULL, NH, NULL, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "qkv is at 0x100008, which is not 16-byte aligned");
    ElectraTensor odd_dctx = dctx;
    odd_dctx.data = base + 0x4000 + 4;
    FAILS(electra_cuda_attention_backward(NULL, &qkv, &km, &ctx, &lse, NULL, &odd_dctx, &dqkv, NH, NULL, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "dctx is at 0x104004, which is not 16-byte aligned");
    ElectraTensor half_ctx = ctx;
    half_ctx.data = base + 0x2000 + 1;
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &half_ctx, &lse, NULL, NH, NULL, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "ctx.data is at 0x102001, not aligned to its 2-byte elements");
    /* 4 heads of 8: a head size the kernels do not have. */
    ElectraTensor lse4 = tensor(base + 0x3000, ELECTRA_DTYPE_F32, 3, B, 4, T, 0);
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &lse4, NULL, 4, NULL, NULL), ELECTRA_STATUS_SHAPE, "head size 8 is not supported");
    ElectraTensor padded_ctx = ctx;
    padded_ctx.row_stride = H + 8;
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &padded_ctx, &lse, NULL, NH, NULL, NULL), ELECTRA_STATUS_SHAPE, "the CUDA kernels read contiguous rows");
    ElectraDropout bad_drop = {1.0f, 1, 0};
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &lse, NULL, NH, &bad_drop, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "dropout.p is 1");
    /* With dropout the forward stores its mask as bits, u32 [batch, heads, seq, ceil(seq / 32)]. */
    ElectraDropout drop = {0.1f, 1, 0};
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &lse, NULL, NH, &drop, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "dropout needs keep_bits");
    FAILS(electra_cuda_attention_backward(NULL, &qkv, &km, &ctx, &lse, NULL, &dctx, &dqkv, NH, &drop, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "dropout needs keep_bits");
    ElectraTensor keep3 = tensor(base + 0x6000, ELECTRA_DTYPE_U32, 3, B, NH, T, 0);
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &lse, &keep3, NH, &drop, NULL), ELECTRA_STATUS_SHAPE, "keep_bits has shape [2, 2, 5] (rank 3), expected [2, 2, 5, 1]");
    ElectraTensor f32_keep = tensor(base + 0x6000, ELECTRA_DTYPE_F32, 4, B, NH, T, 1);
    FAILS(electra_cuda_attention_forward(NULL, &qkv, &km, &ctx, &lse, &f32_keep, NH, &drop, NULL), ELECTRA_STATUS_DTYPE, "keep_bits has dtype f32, expected u32");

    /* LayerNorm: bf16 activations are required, f32 parameters. */
    enum { R = 4, W = 64 };
    ElectraTensor x = tensor(base, ELECTRA_DTYPE_BF16, 2, R, W, 0, 0), g = tensor(base + 0x1000, ELECTRA_DTYPE_F32, 1, W, 0, 0, 0);
    ElectraTensor bb = tensor(base + 0x2000, ELECTRA_DTYPE_F32, 1, W, 0, 0, 0), y = tensor(base + 0x3000, ELECTRA_DTYPE_BF16, 2, R, W, 0, 0);
    ElectraTensor xh = tensor(base + 0x4000, ELECTRA_DTYPE_BF16, 2, R, W, 0, 0), rs = tensor(base + 0x5000, ELECTRA_DTYPE_F32, 1, R, 0, 0, 0);
    FAILS(electra_cuda_layernorm_forward(NULL, &x, NULL, &g, &bb, 1e-12f, &y, &xh, &rs, NULL), ELECTRA_STATUS_NULL_POINTER, "ops is NULL");
    ElectraTensor f32_x = x;
    f32_x.dtype = ELECTRA_DTYPE_F32;
    FAILS(electra_cuda_layernorm_forward(NULL, &f32_x, NULL, &g, &bb, 1e-12f, &y, &xh, &rs, NULL), ELECTRA_STATUS_DTYPE, "x has dtype f32, expected bf16");
    ElectraTensor bf16_g = g;
    bf16_g.dtype = ELECTRA_DTYPE_BF16;
    FAILS(electra_cuda_layernorm_backward(NULL, &y, &bf16_g, &xh, &rs, &x, NULL, &g, &bb, NULL), ELECTRA_STATUS_DTYPE, "gain has dtype bf16, expected f32");
    ElectraTensor wide = tensor(base, ELECTRA_DTYPE_BF16, 2, R, 2000, 0, 0), wide_g = tensor(base, ELECTRA_DTYPE_F32, 1, 2000, 0, 0, 0);
    FAILS(electra_cuda_layernorm_forward(NULL, &wide, NULL, &wide_g, &wide_g, 1e-12f, &wide, &wide, &rs, NULL), ELECTRA_STATUS_SHAPE, "width 2000 is outside the CUDA kernels' 1..=1024");
    ElectraTensor short_rstd = tensor(base + 0x5000, ELECTRA_DTYPE_F32, 1, R - 1, 0, 0, 0);
    FAILS(electra_cuda_layernorm_backward(NULL, &y, &g, &xh, &short_rstd, &x, NULL, &g, &bb, NULL), ELECTRA_STATUS_SHAPE, "rstd has shape [3]");

    /* Linear: the bias epilogue's 16-byte alignment, and y's dtype with GELU. */
    ElectraTensor lx = tensor(base, ELECTRA_DTYPE_BF16, 2, R, W, 0, 0), lw = tensor(base + 0x1000, ELECTRA_DTYPE_BF16, 2, 8, W, 0, 0);
    ElectraTensor lb = tensor(base + 0x2004, ELECTRA_DTYPE_BF16, 1, 8, 0, 0, 0), ly = tensor(base + 0x3000, ELECTRA_DTYPE_BF16, 2, R, 8, 0, 0);
    FAILS(electra_cuda_linear_forward(NULL, &lx, &lw, &lb, &ly, NULL, NULL), ELECTRA_STATUS_INVALID_ARGUMENT, "b is at 0x102004, which is not 16-byte aligned");
    lb.data = base + 0x2000;
    FAILS(electra_cuda_linear_forward(NULL, &lx, &lw, &lb, &ly, NULL, NULL), ELECTRA_STATUS_NULL_POINTER, "ops is NULL");
    ElectraTensor lpre = tensor(base + 0x4000, ELECTRA_DTYPE_BF16, 2, R, 8, 0, 0), f32_y = ly;
    f32_y.dtype = ELECTRA_DTYPE_F32;
    FAILS(electra_cuda_linear_forward(NULL, &lx, &lw, NULL, &f32_y, &lpre, NULL), ELECTRA_STATUS_DTYPE, "y has dtype f32, expected bf16");
    FAILS(electra_cuda_linear_forward(NULL, &lx, &lw, &lb, &ly, &lpre, NULL), ELECTRA_STATUS_DTYPE, "b has dtype bf16, expected f32");
    ElectraTensor u32_y = ly;
    u32_y.dtype = ELECTRA_DTYPE_U32;
    FAILS(electra_cuda_linear_forward(NULL, &lx, &lw, NULL, &u32_y, NULL, NULL), ELECTRA_STATUS_DTYPE, "y has dtype u32, expected bf16 or f32");
    ElectraTensor ldw = tensor(base + 0x5000, ELECTRA_DTYPE_BF16, 2, 8, W, 0, 0);
    FAILS(electra_cuda_linear_backward(NULL, &lx, &lw, &ly, NULL, &lx, &ldw, NULL, NULL), ELECTRA_STATUS_DTYPE, "dw has dtype bf16, expected f32");

    /* Generator loss: dlogits shares the logits' row stride. */
    ElectraTensor lg = tensor(base, ELECTRA_DTYPE_BF16, 2, 3, 7, 0, 0), tg = tensor(base + 0x1000, ELECTRA_DTYPE_U32, 1, 3, 0, 0, 0);
    ElectraTensor rl = tensor(base + 0x2000, ELECTRA_DTYPE_F32, 1, 3, 0, 0, 0), dl = tensor(base + 0x3000, ELECTRA_DTYPE_BF16, 2, 3, 7, 0, 0);
    lg.row_stride = 8;
    FAILS(electra_cuda_generator_loss(NULL, &lg, &tg, 1.0f, &rl, &dl, NULL, NULL), ELECTRA_STATUS_SHAPE, "dlogits has row_stride 7, expected logits' 8");
    dl.row_stride = 8;
    FAILS(electra_cuda_generator_loss(NULL, &lg, &tg, 1.0f, &rl, &dl, NULL, NULL), ELECTRA_STATUS_NULL_POINTER, "ops is NULL");

    /* BCE head: hidden above the kernels' 1024. */
    ElectraTensor bh = tensor(base, ELECTRA_DTYPE_BF16, 2, 4, 1100, 0, 0), bw = tensor(base, ELECTRA_DTYPE_F32, 1, 1100, 0, 0, 0);
    ElectraTensor b1 = tensor(base, ELECTRA_DTYPE_F32, 1, 1, 0, 0, 0), b4 = tensor(base, ELECTRA_DTYPE_F32, 1, 4, 0, 0, 0);
    ElectraTensor m4 = tensor(base, ELECTRA_DTYPE_U32, 1, 4, 0, 0, 0);
    FAILS(electra_cuda_bce_head(NULL, &bh, &bw, &b1, &b4, &m4, 1.0f, &b4, &b4, &bh, &bw, &b1, NULL), ELECTRA_STATUS_SHAPE, "bce_head: width 1100");
    ElectraTensor f32_h = bh;
    f32_h.dtype = ELECTRA_DTYPE_F32;
    FAILS(electra_cuda_bce_head(NULL, &f32_h, &bw, &b1, &b4, &m4, 1.0f, &b4, &b4, &bh, &bw, &b1, NULL), ELECTRA_STATUS_DTYPE, "h has dtype f32, expected bf16");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FIXTURES OUT\n", argv[0]);
        return 2;
    }
    CHECK(electra_abi_version() == ELECTRA_ABI_VERSION, "ABI %u, header %u", electra_abi_version(), ELECTRA_ABI_VERSION);
    printf("electra %s\n", electra_version());
    trainer_section(argv[1], argv[2]);
    encoder_section(argv[2]);
    ops_section(argv[2]);
    cuda_ops_section();
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("all C API checks passed\n");
    return 0;
}
