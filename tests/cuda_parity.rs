//! CUDA vs CPU parity: every fused operation of the CUDA backend against the CPU reference, and
//! the whole training step on the HF fixture model.
//!
//! The method (../shared/DESIGN.md §6): fresh random inputs on every run (the seed is printed in
//! every failure; set `ELECTRA_TEST_SEED` to replay one), rounded to bf16 so that both backends
//! see the same values; outputs poisoned with NaN before each run (a NaN that survives means an
//! unwritten element); odd sizes next to aligned ones, so both the vector and the scalar paths of
//! the kernels run; results compared as ‖gpu − cpu‖ / ‖cpu‖ with bf16 tolerances, never NaN.
//! Backward operations accumulate: gradients are pre-filled with random values, and parameter
//! gradients are compared by what was added.
//!
//! Without a device, or in a build without the `cuda` feature, each test prints
//! `skipped: no CUDA device` and returns.

use electra::backend::cpu::CpuBackend;
use electra::backend::cuda::CudaBackend;
use electra::backend::{
    AccumulateOp, AttentionDims, AttentionOp, Backend, BceHeadOp, Buf, Dropout, DropoutOp,
    EmbeddingOp, EmbeddingParams, GatherRowsOp, IBuf, LayerNormOp, LayerNormParams, LayerNormSaved,
    LinearDims, LinearOp, LossSumsOp, OptimizerStep, Pick, ReplaceTokensOp, Sizes, SoftmaxXentOp,
    Space, StepScalars,
};
use electra::tape::Arena;

mod common;
use common::{electra_group, Rng};

/// Tolerance of a bf16 result (an activation or activation gradient).
const BF16_TOL: f64 = 1e-2;
/// Tolerance of an f32 result computed from the same bf16 inputs.
const F32_TOL: f64 = 1e-4;

fn device() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) if e.is_no_device() => {
            println!("skipped: no CUDA device");
            None
        }
        Err(e) => panic!("the CUDA backend failed to start on a present device: {e}"),
    }
}

fn fresh_seed() -> u64 {
    if let Some(s) = std::env::var("ELECTRA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64) << 32
}

fn bf16_round(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// ‖got − want‖ / ‖want‖ in f64.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (diff / norm.max(1e-300)).sqrt()
}

/// Both backends with room for one small problem, allocators over their spaces, and a generator.
struct Lab {
    cpu: CpuBackend,
    gpu: CudaBackend,
    rng: Rng,
    seed: u64,
    arena: Arena,
    params: usize,
    sizes: Sizes,
    /// A step is open on both backends (`begin_step`).
    in_step: bool,
}

impl Lab {
    fn new(params: usize, acts: usize, ints: usize) -> Option<Lab> {
        let mut gpu = device()?;
        let sizes = Sizes {
            params,
            acts,
            ints,
            grad_sum: params,
        };
        let mut cpu = CpuBackend::new();
        cpu.reserve(sizes).unwrap();
        gpu.reserve(sizes).unwrap();
        let seed = fresh_seed();
        Some(Lab {
            cpu,
            gpu,
            rng: Rng(seed),
            seed,
            arena: Arena::default(),
            params: 0,
            sizes,
            in_step: false,
        })
    }

    fn small() -> Option<Lab> {
        Lab::new(1 << 20, 1 << 22, 1 << 16)
    }

    /// Forgets the buffers of the last case (the spaces keep their contents).
    fn reset(&mut self) {
        self.arena = Arena::default();
        self.params = 0;
    }

    /// Runs `f` on the CPU, then on the GPU.
    fn both(&mut self, f: impl Fn(&mut dyn Backend)) {
        f(&mut self.cpu);
        f(&mut self.gpu);
    }

    /// Sets the learning rate and seeds the operations of both backends read, as a slice of a
    /// global batch that starts at a random sequence and masked position, so that dropout and
    /// Gumbel noise are checked at offsets. Ends the step the last case opened.
    fn begin_step(&mut self, lr: f32, dropout_seed: u64, sample_seed: u64) {
        if self.in_step {
            self.both(|be| be.end_step());
        }
        self.in_step = true;
        let scalars = StepScalars {
            lr,
            dropout_seed,
            sample_seed,
            first_sequence: self.rng.next_u64() % 5,
            first_pick: self.rng.next_u64() % 40,
        };
        self.both(|be| assert!(!be.begin_step(scalars, None)));
    }

    fn values(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len)
            .map(|_| bf16_round(self.rng.uniform(lo, hi)))
            .collect()
    }

    fn set(&mut self, b: Buf, values: &[f32]) {
        self.cpu.write(b, values);
        self.gpu.write(b, values);
    }

    fn randomize(&mut self, b: Buf, lo: f32, hi: f32) -> Vec<f32> {
        let v = self.values(b.len, lo, hi);
        self.set(b, &v);
        v
    }

    fn param(&mut self, len: usize, lo: f32, hi: f32) -> Buf {
        let b = Buf {
            space: Space::Param,
            offset: self.params,
            len,
        };
        self.params += len;
        assert!(self.params <= self.sizes.params, "lab too small");
        self.randomize(b, lo, hi);
        b
    }

    fn alloc(&mut self, len: usize) -> Buf {
        let b = self.arena.acts(len);
        assert!(self.arena.used().0 <= self.sizes.acts, "lab too small");
        b
    }

    /// An activation written from the host (f32 on the GPU until a kernel reads it as bf16).
    fn act(&mut self, len: usize, lo: f32, hi: f32) -> Buf {
        let b = self.alloc(len);
        self.randomize(b, lo, hi);
        b
    }

    /// Random values written into `dst` by a kernel (an identity dropout), so that on the GPU it
    /// holds bf16 as a kernel's output would.
    fn by_kernel(&mut self, dst: Buf, lo: f32, hi: f32) {
        let src = self.act(dst.len, lo, hi);
        let identity = DropoutOp {
            x: src,
            y: dst,
            dropout: Dropout { p: 0.0, site: 0 },
            sequences: 1,
            overwrite_dx: false,
        };
        self.both(|be| be.dropout_fwd(&identity));
    }

    /// An output an operation must overwrite: NaN in either element type.
    fn output(&mut self, len: usize) -> Buf {
        let b = self.alloc(len);
        self.both(|be| be.fill(b, f32::NAN));
        b
    }

    fn ints(&mut self, values: &[u32]) -> IBuf {
        let b = self.arena.ints(values.len());
        assert!(self.arena.used().1 <= self.sizes.ints, "lab too small");
        self.cpu.write_ints(b, values);
        self.gpu.write_ints(b, values);
        b
    }

    fn read(&self, b: Buf) -> (Vec<f32>, Vec<f32>) {
        let (mut c, mut g) = (vec![0.0; b.len], vec![0.0; b.len]);
        self.cpu.read(b, &mut c);
        self.gpu.read(b, &mut g);
        (c, g)
    }

    fn check_values(&self, what: &str, cpu: &[f32], gpu: &[f32], tol: f64) {
        let seed = self.seed;
        if let Some(i) = gpu.iter().position(|v| !v.is_finite()) {
            panic!("{what}: the GPU left {} at {i} (seed {seed})", gpu[i]);
        }
        let err = rel_err(gpu, cpu);
        println!("{what}: rel err {err:.2e}");
        assert!(
            err <= tol,
            "{what}: rel err {err:.3e} > {tol:e} (seed {seed})"
        );
    }

    /// Compares a buffer of both backends.
    fn compare(&self, what: &str, b: Buf, tol: f64) {
        let (c, g) = self.read(b);
        self.check_values(what, &c, &g, tol);
    }

    /// Compares the first `width` values of each row of a buffer whose rows are `stride` apart
    /// (what lies between is padding no operation writes).
    fn compare_rows(&self, what: &str, b: Buf, (width, stride): (usize, usize), tol: f64) {
        let (c, g) = self.read(b);
        let rows = |v: &[f32]| -> Vec<f32> {
            v.chunks(stride)
                .flat_map(|r| &r[..width])
                .copied()
                .collect()
        };
        self.check_values(what, &rows(&c), &rows(&g), tol);
    }

    /// Runs a backward pass that is the first writer of the gradients `set` (the tape's overwrite
    /// flags) on both backends, with those gradients filled with NaN first: the kernels must set
    /// them without reading what they held. Then compares each.
    fn set_over_nan(&mut self, set: &[(String, Buf)], tol: f64, f: impl Fn(&mut dyn Backend)) {
        for &(_, grad) in set {
            self.both(|be| be.fill(grad, f32::NAN));
        }
        self.both(f);
        for (what, grad) in set {
            self.compare(&format!("{what} set"), *grad, tol);
        }
    }

    /// Compares what was added to a buffer that held `before` on both backends.
    fn compare_added(&self, what: &str, b: Buf, before: &[f32], tol: f64) {
        let (c, g) = self.read(b);
        let sub = |v: Vec<f32>| -> Vec<f32> { v.iter().zip(before).map(|(a, b)| a - b).collect() };
        self.check_values(what, &sub(c), &sub(g), tol);
    }

    fn read_ints(&self, b: IBuf) -> (Vec<u32>, Vec<u32>) {
        let (mut c, mut g) = (vec![0; b.len], vec![0; b.len]);
        self.cpu.read_ints(b, &mut c);
        self.gpu.read_ints(b, &mut g);
        (c, g)
    }
}

// ---- embedding ------------------------------------------------------------------------------

fn embedding_case(lab: &mut Lab, width: usize, vocab: usize, batch: usize, seq: usize) {
    lab.reset();
    let rows = batch * seq;
    let types = 2;
    let p = EmbeddingParams {
        word: lab.param(vocab * width, -1.0, 1.0),
        position: lab.param(seq * width, -0.5, 0.5),
        token_type: lab.param(types * width, -0.5, 0.5),
        norm: LayerNormParams {
            gain: lab.param(width, 0.5, 1.5),
            bias: lab.param(width, -0.5, 0.5),
            eps: 1e-12,
        },
    };
    // Random ids with many repeats, plus a run of one id longer than a sort chunk (16).
    let mut ids: Vec<u32> = (0..rows).map(|_| lab.rng.below(vocab) as u32).collect();
    for id in ids.iter_mut().skip(3).take(40.min(rows - 3)) {
        *id = (vocab - 1) as u32;
    }
    let tt: Vec<u32> = (0..rows).map(|_| lab.rng.below(types) as u32).collect();
    let (ids, tt) = (lab.ints(&ids), lab.ints(&tt));
    let out = lab.output(rows * width);
    let saved = LayerNormSaved {
        xhat: lab.output(rows * width),
        rstd: lab.output(rows),
    };
    let op = EmbeddingOp {
        ids,
        token_types: tt,
        seq,
        params: p,
        out,
        saved,
    };
    lab.both(|be| be.embedding_fwd(&op));
    let tag = format!("embedding w{width} v{vocab}");
    lab.compare(&format!("{tag} out"), out, BF16_TOL);
    lab.compare(&format!("{tag} xhat"), saved.xhat, BF16_TOL);
    lab.compare(&format!("{tag} rstd"), saved.rstd, F32_TOL);

    lab.by_kernel(out.grad(), -1.0, 1.0);
    let tables = [
        ("word", p.word),
        ("position", p.position),
        ("token_type", p.token_type),
        ("gain", p.norm.gain),
        ("bias", p.norm.bias),
    ];
    let before: Vec<Vec<f32>> = tables
        .iter()
        .map(|&(_, t)| lab.randomize(t.grad(), -1.0, 1.0))
        .collect();
    lab.both(|be| be.embedding_bwd(&op));
    for ((name, t), before) in tables.iter().zip(&before) {
        lab.compare_added(&format!("{tag} d{name}"), t.grad(), before, BF16_TOL);
    }
}

#[test]
fn embedding_narrow_odd_width_two_sort_passes() {
    let Some(mut lab) = Lab::small() else { return };
    embedding_case(&mut lab, 200, 300, 3, 37);
}

#[test]
fn embedding_aligned_width_one_sort_pass() {
    let Some(mut lab) = Lab::small() else { return };
    embedding_case(&mut lab, 128, 40, 4, 32);
}

#[test]
fn embedding_wide() {
    let Some(mut lab) = Lab::small() else { return };
    embedding_case(&mut lab, 768, 1000, 2, 29);
}

// ---- linear ---------------------------------------------------------------------------------

fn linear_case(lab: &mut Lab, rows: usize, inp: usize, out: usize, gelu: bool, bias: bool) {
    linear_case_padded(lab, (rows, inp, out), 0, gelu, bias)
}

/// A linear layer forward and backward on both backends, with `pad` values of padding after
/// each output row (as the generator's logits have): the products must write and read only the
/// `out` values of each row.
fn linear_case_padded(
    lab: &mut Lab,
    (rows, inp, out): (usize, usize, usize),
    pad: usize,
    gelu: bool,
    bias: bool,
) {
    lab.reset();
    let dims = LinearDims { rows, inp, out };
    let y_stride = out + pad;
    let x = lab.act(rows * inp, -1.0, 1.0);
    let w = lab.param(out * inp, -0.2, 0.2);
    let b = bias.then(|| lab.param(out, -0.5, 0.5));
    let y = lab.output(rows * y_stride);
    let pre = gelu.then(|| lab.output(rows * out));
    let op = LinearOp {
        x,
        w,
        b,
        y,
        y_stride,
        gelu_pre: pre,
        dims,
        overwrite_dx: false,
    };
    lab.both(|be| be.linear_fwd(&op));
    let tag = format!("linear {rows}x{inp}->{out} (+{pad}) gelu={gelu} bias={bias}");
    // A one-column output is f32 on the GPU.
    let tol = if out == 1 && !gelu { F32_TOL } else { BF16_TOL };
    lab.compare_rows(&format!("{tag} y"), y, (out, y_stride), tol);
    if let Some(pre) = pre {
        lab.compare(&format!("{tag} pre"), pre, BF16_TOL);
    }

    if out == 1 && !gelu {
        // As a loss computed on the host leaves it: f32.
        lab.randomize(y.grad(), -1.0, 1.0);
    } else {
        lab.by_kernel(y.grad(), -1.0, 1.0);
    }
    lab.randomize(x.grad(), -1.0, 1.0);
    let dw_before = lab.randomize(w.grad(), -1.0, 1.0);
    let db_before = b.map(|b| lab.randomize(b.grad(), -1.0, 1.0));
    lab.both(|be| be.linear_bwd(&op));
    lab.compare(&format!("{tag} dx"), x.grad(), BF16_TOL);
    lab.compare_added(&format!("{tag} dw"), w.grad(), &dw_before, BF16_TOL);
    if let (Some(b), Some(before)) = (b, db_before) {
        lab.compare_added(&format!("{tag} db"), b.grad(), &before, BF16_TOL);
    }
    if let Some(pre) = pre {
        lab.compare(&format!("{tag} dpre"), pre.grad(), BF16_TOL);
    }
    // As the first writer of dx (the tape's `overwrite_dx`), the layer sets it (cuBLASLt's
    // beta = 0).
    let first = LinearOp {
        overwrite_dx: true,
        ..op
    };
    let dx = [(format!("{tag} dx"), x.grad())];
    lab.set_over_nan(&dx, BF16_TOL, |be| be.linear_bwd(&first));
}

#[test]
fn linear_with_bias() {
    let Some(mut lab) = Lab::small() else { return };
    linear_case(&mut lab, 37, 200, 96, false, true);
    linear_case(&mut lab, 64, 128, 256, false, true);
}

#[test]
fn linear_gelu() {
    let Some(mut lab) = Lab::small() else { return };
    linear_case(&mut lab, 37, 96, 200, true, true);
    linear_case(&mut lab, 19, 64, 1000, true, false);
}

#[test]
fn linear_without_bias_and_odd_shapes() {
    let Some(mut lab) = Lab::small() else { return };
    linear_case(&mut lab, 19, 65, 333, false, false);
}

#[test]
fn linear_many_rows() {
    // More rows than the bias kernels' row groups (2 per SM): each thread sums several rows,
    // four at a time and then the rest, and the last block adds many partial rows.
    let Some(mut lab) = Lab::small() else { return };
    linear_case(&mut lab, 3001, 64, 96, true, true);
    linear_case(&mut lab, 2100, 200, 256, false, true);
}

#[test]
fn linear_with_padded_output_rows() {
    // The generator's output layer: BERT's vocabulary in rows padded to 16 bytes. The padding of
    // the output gradient is random, and must reach neither dx, dw nor the bias gradient.
    let Some(mut lab) = Lab::small() else { return };
    linear_case_padded(&mut lab, (19, 32, 30522), 6, false, true);
    linear_case_padded(&mut lab, (37, 64, 333), 3, false, true);
}

#[test]
fn linear_one_column_is_f32() {
    let Some(mut lab) = Lab::small() else { return };
    linear_case(&mut lab, 50, 64, 1, false, true);
    linear_case(&mut lab, 111, 256, 1, false, true);
}

// ---- layernorm ------------------------------------------------------------------------------

/// A LayerNorm of `rows` rows of `width`, with a residual or not, and with its branch's dropout
/// or not (rows of `sequences` sequences, at a random first sequence of the step's batch).
fn layernorm_case(lab: &mut Lab, rows: usize, width: usize, residual: bool, dropout: bool) {
    lab.reset();
    let dropout_seed = lab.rng.next_u64();
    lab.begin_step(0.0, dropout_seed, 0);
    let sequences = if rows.is_multiple_of(4) { 4 } else { 1 };
    let x = lab.act(rows * width, -2.0, 2.0);
    let res = residual.then(|| lab.act(rows * width, -2.0, 2.0));
    let p = LayerNormParams {
        gain: lab.param(width, 0.5, 1.5),
        bias: lab.param(width, -0.5, 0.5),
        eps: 1e-12,
    };
    let y = lab.output(rows * width);
    let saved = LayerNormSaved {
        xhat: lab.output(rows * width),
        rstd: lab.output(rows),
    };
    let op = LayerNormOp {
        x,
        residual: res,
        params: p,
        y,
        saved,
        rows,
        width,
        dropout: dropout.then_some(Dropout { p: 0.1, site: 7 }),
        sequences,
        overwrite_dx: false,
        overwrite_dresidual: false,
    };
    lab.both(|be| be.layernorm_fwd(&op));
    let tag = format!("layernorm {rows}x{width} residual={residual} dropout={dropout}");
    lab.compare(&format!("{tag} y"), y, BF16_TOL);
    lab.compare(&format!("{tag} xhat"), saved.xhat, BF16_TOL);
    lab.compare(&format!("{tag} rstd"), saved.rstd, F32_TOL);

    lab.by_kernel(y.grad(), -1.0, 1.0);
    lab.randomize(x.grad(), -1.0, 1.0);
    if let Some(r) = res {
        lab.randomize(r.grad(), -1.0, 1.0);
    }
    let dg = lab.randomize(p.gain.grad(), -1.0, 1.0);
    let db = lab.randomize(p.bias.grad(), -1.0, 1.0);
    lab.both(|be| be.layernorm_bwd(&op));
    lab.compare(&format!("{tag} dx"), x.grad(), BF16_TOL);
    if let Some(r) = res {
        lab.compare(&format!("{tag} dresidual"), r.grad(), BF16_TOL);
    }
    lab.compare_added(&format!("{tag} dgain"), p.gain.grad(), &dg, BF16_TOL);
    lab.compare_added(&format!("{tag} dbias"), p.bias.grad(), &db, BF16_TOL);

    // As the first writer of dx and dresidual (the tape's flags), the kernel sets them.
    let first = LayerNormOp {
        overwrite_dx: true,
        overwrite_dresidual: true,
        ..op
    };
    let mut set = vec![(format!("{tag} dx"), x.grad())];
    set.extend(res.map(|r| (format!("{tag} dresidual"), r.grad())));
    lab.set_over_nan(&set, BF16_TOL, |be| be.layernorm_bwd(&first));
    // Each flag on its own: dx set, the residual's gradient added to.
    if let Some(r) = res {
        let before = lab.randomize(r.grad(), -1.0, 1.0);
        let dx_only = LayerNormOp {
            overwrite_dresidual: false,
            ..first
        };
        lab.set_over_nan(&set[..1], BF16_TOL, |be| be.layernorm_bwd(&dx_only));
        lab.compare_added(
            &format!("{tag} dresidual added"),
            r.grad(),
            &before,
            BF16_TOL,
        );
    }
}

#[test]
fn layernorm_narrow() {
    let Some(mut lab) = Lab::small() else { return };
    layernorm_case(&mut lab, 37, 200, true, false);
    layernorm_case(&mut lab, 64, 256, false, false);
    layernorm_case(&mut lab, 5, 64, true, false);
}

#[test]
fn layernorm_of_a_dropped_out_branch() {
    // Each lane's eight columns on two whole blocks of four of the mask (widths 256 and 768), a
    // last lane with four columns (width 100), and rows and sequences that start inside a block
    // (width 90: odd rows, and sequences of 270 values at a random first sequence).
    let Some(mut lab) = Lab::small() else { return };
    layernorm_case(&mut lab, 64, 256, true, true);
    layernorm_case(&mut lab, 37, 100, true, true);
    layernorm_case(&mut lab, 36, 768, true, true);
    layernorm_case(&mut lab, 12, 90, false, true);
}

#[test]
fn layernorm_wide() {
    let Some(mut lab) = Lab::small() else { return };
    layernorm_case(&mut lab, 37, 768, true, false);
    layernorm_case(&mut lab, 23, 1000, false, false);
    layernorm_case(&mut lab, 300, 1024, true, false);
}

// ---- attention ------------------------------------------------------------------------------

fn attention_case(
    lab: &mut Lab,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    drop: bool,
) {
    lab.reset();
    let dims = AttentionDims {
        batch,
        seq,
        heads,
        head_dim,
    };
    let (tokens, h) = (batch * seq, dims.hidden());
    // Sequences of decreasing real length (never none: the kernels and the CPU disagree on a
    // sequence with no real token, see the report of this test file's author).
    let mask: Vec<u32> = (0..tokens)
        .map(|i| {
            let (b, t) = (i / seq, i % seq);
            let real = (seq - (b * 7) % seq).max(1);
            u32::from(t < real)
        })
        .collect();
    let mask = lab.ints(&mask);
    let qkv = lab.act(tokens * 3 * h, -1.5, 1.5);
    let ctx = lab.output(tokens * h);
    let probs = lab.output(dims.saved_len());
    let dropout_seed = lab.rng.next_u64();
    lab.begin_step(0.0, dropout_seed, 0);
    let op = AttentionOp {
        qkv,
        key_mask: mask,
        ctx,
        probs,
        dims,
        dropout: drop.then_some(Dropout { p: 0.1, site: 3 }),
        overwrite_dqkv: false,
    };
    lab.both(|be| be.attention_fwd(&op));
    let tag = format!("attention b{batch} t{seq} h{heads} d{head_dim} dropout={drop}");
    lab.compare(&format!("{tag} ctx"), ctx, BF16_TOL);

    lab.by_kernel(ctx.grad(), -1.0, 1.0);
    lab.randomize(qkv.grad(), -0.5, 0.5);
    lab.both(|be| be.attention_bwd(&op));
    // P is recomputed and dS rounded to bf16 before its two products: one rounding more.
    lab.compare(&format!("{tag} dqkv"), qkv.grad(), 2.0 * BF16_TOL);
    // As the first writer of dqkv (the tape's `overwrite_dqkv`), both kernels set their columns.
    let first = AttentionOp {
        overwrite_dqkv: true,
        ..op
    };
    let dqkv = [(format!("{tag} dqkv"), qkv.grad())];
    lab.set_over_nan(&dqkv, 2.0 * BF16_TOL, |be| be.attention_bwd(&first));
}

#[test]
fn attention_head_sizes() {
    let Some(mut lab) = Lab::small() else { return };
    attention_case(&mut lab, 2, 37, 3, 32, false);
    attention_case(&mut lab, 3, 24, 1, 16, false);
    attention_case(&mut lab, 2, 70, 2, 64, false);
}

#[test]
fn attention_long_sequences() {
    let Some(mut lab) = Lab::small() else { return };
    attention_case(&mut lab, 1, 128, 4, 64, false);
    attention_case(&mut lab, 2, 200, 2, 32, false);
}

#[test]
fn attention_with_dropout() {
    // Lengths that are not multiples of four draw each mask word alone; those that are (20, 36,
    // and ELECTRA-Small's 128 with heads of 64) share each Philox call between two lanes. The
    // forward keeps the mask as ceil(T / 32) words a query row: one (20), the second word of a
    // key tile partly (37) or wholly (70) past the row.
    let Some(mut lab) = Lab::small() else { return };
    attention_case(&mut lab, 3, 20, 2, 32, true);
    attention_case(&mut lab, 2, 37, 3, 32, true);
    attention_case(&mut lab, 2, 70, 2, 64, true);
    attention_case(&mut lab, 3, 36, 2, 16, true);
    attention_case(&mut lab, 2, 128, 4, 64, true);
}

// ---- gradient sums ------------------------------------------------------------------------

#[test]
fn accumulate_copies_then_adds_gradients_bit_for_bit() {
    let Some(mut lab) = Lab::small() else { return };
    // An odd length and offset: the kernel's 16-byte path and its scalar tail.
    let grads = Buf {
        space: Space::Grad,
        offset: 3,
        len: 10_001,
    };
    let sum = grads.in_space(Space::GradSum);
    lab.set(sum, &vec![f32::NAN; sum.len]);
    for overwrite in [true, false, false] {
        lab.randomize(grads, -1.0, 1.0);
        let op = AccumulateOp {
            src: grads,
            dst: sum,
            overwrite,
        };
        lab.both(|be| be.accumulate(&op));
        let (c, g) = lab.read(sum);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&c), bits(&g), "accumulate (overwrite {overwrite})");
    }
}

// ---- dropout, gather ------------------------------------------------------------------------

#[test]
fn dropout_forward_and_backward() {
    let Some(mut lab) = Lab::small() else { return };
    // 143 elements a sequence put the slice at an offset that is no multiple of four.
    for (n, sequences) in [(1001, 7), (4096, 4), (7, 7)] {
        let dropout_seed = lab.rng.next_u64();
        lab.begin_step(0.0, dropout_seed, 0);
        let x = lab.act(n, -1.0, 1.0);
        let y = lab.output(n);
        let op = DropoutOp {
            x,
            y,
            dropout: Dropout { p: 0.1, site: 5 },
            sequences,
            overwrite_dx: false,
        };
        lab.both(|be| be.dropout_fwd(&op));
        lab.compare(&format!("dropout n{n} y"), y, BF16_TOL);
        lab.by_kernel(y.grad(), -1.0, 1.0);
        lab.randomize(x.grad(), -1.0, 1.0);
        lab.both(|be| be.dropout_bwd(&op));
        lab.compare(&format!("dropout n{n} dx"), x.grad(), BF16_TOL);
        let first = DropoutOp {
            overwrite_dx: true,
            ..op
        };
        let dx = [(format!("dropout n{n} dx"), x.grad())];
        lab.set_over_nan(&dx, BF16_TOL, |be| be.dropout_bwd(&first));
    }
}

#[test]
fn gather_rows_forward_and_backward() {
    let Some(mut lab) = Lab::small() else { return };
    for width in [200, 256, 1030] {
        let src_rows = 50;
        let x = lab.act(src_rows * width, -1.0, 1.0);
        // 19 distinct rows in random order.
        let mut all: Vec<u32> = (0..src_rows as u32).collect();
        for i in (1..all.len()).rev() {
            let j = lab.rng.below(i + 1);
            all.swap(i, j);
        }
        let rows = lab.ints(&all[..19]);
        let out = lab.output(19 * width);
        let op = GatherRowsOp {
            x,
            rows,
            out,
            width,
        };
        lab.both(|be| be.gather_rows(&op));
        lab.compare(&format!("gather w{width} out"), out, BF16_TOL);
        lab.by_kernel(out.grad(), -1.0, 1.0);
        lab.randomize(x.grad(), -1.0, 1.0);
        lab.both(|be| be.gather_rows_bwd(&op));
        lab.compare(&format!("gather w{width} dx"), x.grad(), BF16_TOL);
    }
}

// ---- losses ---------------------------------------------------------------------------------

/// With `Pick::Gumbel`, the noise is that of the step the lab is in.
fn softmax_case(lab: &mut Lab, rows: usize, vocab: usize, pick: Option<Pick>) {
    let row_stride = vocab.next_multiple_of(8);
    lab.reset();
    let logits = lab.alloc(rows * row_stride);
    lab.by_kernel(logits, -4.0, 4.0);
    let targets: Vec<u32> = (0..rows).map(|_| lab.rng.below(vocab) as u32).collect();
    let targets = lab.ints(&targets);
    let picks = lab.ints(&vec![u32::MAX; rows]);
    let row_loss = lab.output(rows);
    lab.both(|be| be.fill(logits.grad(), f32::NAN));
    let pick = pick.map(|p| (p, picks));
    let op = SoftmaxXentOp {
        logits,
        row_stride,
        targets,
        row_loss,
        grad_scale: 1.0 / rows as f32,
        pick,
        rows,
        vocab,
    };
    lab.both(|be| be.softmax_xent(&op));
    let tag = format!("softmax_xent {rows}x{vocab} {pick:?}");
    lab.compare(&format!("{tag} loss"), row_loss, F32_TOL);
    let shape = (vocab, row_stride);
    lab.compare_rows(&format!("{tag} dlogits"), logits.grad(), shape, BF16_TOL);
    if let Some((mode, picks)) = pick {
        let (c, g) = lab.read_ints(picks);
        let same = c.iter().zip(&g).filter(|(a, b)| a == b).count();
        // The Gumbel noise's logs are correctly rounded on the GPU and within an ulp on the CPU:
        // a pick can differ only where the two best noisy logits are within an ulp.
        let need = match mode {
            Pick::Argmax => rows,
            Pick::Gumbel => rows - 1,
        };
        assert!(
            same >= need,
            "{tag}: {same} of {rows} picks agree (seed {})\ncpu {c:?}\ngpu {g:?}",
            lab.seed
        );
    }
}

#[test]
fn softmax_xent_vector_path() {
    let Some(mut lab) = Lab::small() else { return };
    softmax_case(&mut lab, 19, 1000, Some(Pick::Argmax));
    softmax_case(&mut lab, 19, 1000, None);
}

#[test]
fn softmax_xent_bert_vocab_and_odd_vocab() {
    let Some(mut lab) = Lab::small() else { return };
    softmax_case(&mut lab, 7, 30522, Some(Pick::Argmax));
    softmax_case(&mut lab, 5, 333, Some(Pick::Argmax));
}

#[test]
fn softmax_xent_gumbel() {
    let Some(mut lab) = Lab::small() else { return };
    lab.begin_step(0.0, 0, fresh_seed());
    softmax_case(&mut lab, 19, 1000, Some(Pick::Gumbel));
    softmax_case(&mut lab, 7, 30522, Some(Pick::Gumbel));
}

#[test]
fn replace_tokens_labels_equal_picks_as_original() {
    let Some(mut lab) = Lab::small() else { return };
    let tokens = 111;
    let original: Vec<u32> = (0..tokens).map(|_| lab.rng.below(50) as u32).collect();
    let mut positions: Vec<u32> = (0..tokens as u32)
        .filter(|_| lab.rng.below(6) == 0)
        .collect();
    positions.truncate(19);
    let picks: Vec<u32> = positions
        .iter()
        .map(|&p| {
            if lab.rng.below(3) == 0 {
                original[p as usize]
            } else {
                lab.rng.below(50) as u32
            }
        })
        .collect();
    let (original, positions, picks) =
        (lab.ints(&original), lab.ints(&positions), lab.ints(&picks));
    let corrupted = lab.ints(&vec![u32::MAX; tokens]);
    let labels = lab.output(tokens);
    let op = ReplaceTokensOp {
        original,
        positions,
        picks,
        corrupted,
        is_replaced: labels,
    };
    lab.both(|be| be.replace_tokens(&op));
    let (c, g) = lab.read_ints(corrupted);
    assert_eq!(c, g, "corrupted ids (seed {})", lab.seed);
    let (c, g) = lab.read(labels);
    assert_eq!(c, g, "is_replaced (seed {})", lab.seed);
}

#[test]
fn bce_head_over_real_tokens() {
    let Some(mut lab) = Lab::small() else { return };
    // Narrow and wide kernels, vector (width % 8 == 0) and scalar paths, odd token counts.
    for (tokens, width) in [(1001, 256), (256, 128), (3, 201), (77, 1000)] {
        lab.reset();
        let h = lab.alloc(tokens * width);
        lab.by_kernel(h, -1.0, 1.0);
        let w = lab.param(width, -0.2, 0.2);
        let b = lab.param(1, -0.5, 0.5);
        let labels: Vec<f32> = (0..tokens).map(|_| lab.rng.below(2) as f32).collect();
        let labels_buf = lab.alloc(tokens);
        lab.set(labels_buf, &labels);
        let mask: Vec<u32> = (0..tokens)
            .map(|_| u32::from(lab.rng.below(5) != 0))
            .collect();
        let mask = lab.ints(&mask);
        let (logits, loss) = (lab.output(tokens), lab.output(tokens));
        let scale = 50.0 / tokens as f32;
        // dh = scale·(σ(x) − y)·w: what is already in dh is of that size, so that the addition
        // is not lost in the rounding of a much larger bf16 value.
        lab.by_kernel(h.grad(), -0.2 * scale, 0.2 * scale);
        let (dh_before, _) = lab.read(h.grad());
        let dw_before = lab.randomize(w.grad(), -1.0, 1.0);
        let db_before = lab.randomize(b.grad(), -1.0, 1.0);
        let op = BceHeadOp {
            h,
            w,
            b,
            labels: labels_buf,
            mask,
            logits,
            row_loss: loss,
            grad_scale: scale,
        };
        lab.both(|be| be.bce_head(&op));
        let tag = format!("bce_head n{tokens} h{width}");
        lab.compare(&format!("{tag} logits"), logits, F32_TOL);
        lab.compare(&format!("{tag} loss"), loss, F32_TOL);
        lab.compare_added(&format!("{tag} dh"), h.grad(), &dh_before, BF16_TOL);
        lab.compare_added(&format!("{tag} dw"), w.grad(), &dw_before, F32_TOL);
        lab.compare_added(&format!("{tag} db"), b.grad(), &db_before, F32_TOL);
    }
}

/// A step's metric sums: the first call overwrites what was held (two first calls give the
/// second's sums alone), a later one adds; the counts equal the CPU's exactly, the loss sums
/// within f64 rounding (the kernel adds in another order).
#[test]
fn loss_sums_overwrite_then_add() {
    let Some(mut lab) = Lab::small() else { return };
    let case = |lab: &mut Lab, masked: usize, tokens: usize, picked: bool| {
        let gen = lab.alloc(masked);
        lab.randomize(gen, 0.0, 12.0);
        let (disc, logits, labels) = (lab.alloc(tokens), lab.alloc(tokens), lab.alloc(tokens));
        lab.randomize(disc, 0.0, 3.0);
        lab.randomize(logits, -2.0, 2.0);
        let label_values: Vec<f32> = (0..tokens)
            .map(|_| lab.rng.below(4).min(1) as f32)
            .collect();
        lab.set(labels, &label_values);
        let mask: Vec<u32> = (0..tokens)
            .map(|_| u32::from(lab.rng.below(7) != 0))
            .collect();
        let targets: Vec<u32> = (0..masked).map(|_| lab.rng.below(30) as u32).collect();
        let picks: Vec<u32> = targets
            .iter()
            .map(|&t| {
                if lab.rng.below(3) == 0 {
                    t
                } else {
                    lab.rng.below(30) as u32
                }
            })
            .collect();
        let (mask, targets, picks) = (lab.ints(&mask), lab.ints(&targets), lab.ints(&picks));
        move |first: bool| LossSumsOp {
            gen_row_loss: gen,
            disc_row_loss: disc,
            disc_logits: logits,
            is_replaced: labels,
            mask,
            picks: picked.then_some(picks),
            targets,
            first,
        }
    };
    let (a, b) = (
        case(&mut lab, 2_459, 16_384, true),
        case(&mut lab, 7, 1_001, false),
    );
    for (ops, what) in [
        (vec![a(true)], "one batch"),
        (vec![a(true), b(true)], "a first call after another"),
        (vec![b(true), a(false)], "two micro-batches"),
    ] {
        lab.both(|be| ops.iter().for_each(|op| be.loss_sums(op)));
        let (c, g) = (lab.cpu.read_loss_sums(), lab.gpu.read_loss_sums());
        for k in 0..2 {
            let rel = ((g[k] - c[k]) / c[k]).abs();
            assert!(
                rel < 1e-12,
                "{what}: loss sum {k}: {g:?} vs {c:?} (seed {})",
                lab.seed
            );
        }
        assert_eq!(g[2..], c[2..], "{what}: counts (seed {})", lab.seed);
    }
}

// ---- optimizer ------------------------------------------------------------------------------

#[test]
fn grad_norm_of_the_whole_space() {
    let Some(mut lab) = Lab::new(100_003, 1 << 12, 1 << 8) else {
        return;
    };
    let all = Buf {
        space: Space::Grad,
        offset: 0,
        len: 100_003,
    };
    lab.randomize(all, -1.0, 1.0);
    let (c, g) = (lab.cpu.grad_norm(), lab.gpu.grad_norm());
    let rel = ((g as f64 - c as f64) / c as f64).abs();
    assert!(
        g.is_finite() && rel < 1e-6,
        "norm {g} vs {c} (seed {})",
        lab.seed
    );
}

#[test]
fn adamw_updates_weights_moments_and_the_bf16_copy() {
    let Some(mut lab) = Lab::small() else { return };
    let (inp, out, rows) = (64, 96, 13);
    let run = lab.param(10_007, -1.0, 1.0);
    lab.randomize(run.in_space(Space::Grad), -1.0, 1.0);
    lab.randomize(run.in_space(Space::AdamM), -0.1, 0.1);
    lab.randomize(run.in_space(Space::AdamV), 0.0, 0.01);
    // The step's learning rate times the group's scale, as the fine-tuning layers have it.
    lab.begin_step(2e-2, 0, 0);
    let group = electra_group(run, 0.5, 0.01);
    lab.both(|be| be.adamw(&group, 0.7));
    for space in [Space::Param, Space::AdamM, Space::AdamV] {
        lab.compare(&format!("adamw {space:?}"), run.in_space(space), 1e-6);
    }
    // The products read the bf16 copy: it must hold the updated weights. Two offsets, so that
    // both an aligned and a misaligned copy are read.
    for first in [0, 1001] {
        let w = Buf {
            space: Space::Param,
            offset: run.offset + first,
            len: out * inp,
        };
        let x = lab.act(rows * inp, -1.0, 1.0);
        let y = lab.output(rows * out);
        let dims = LinearDims { rows, inp, out };
        // The CPU reads the f32 weights; round them as the GPU's copy does.
        let (cw, _) = lab.read(w);
        let rounded: Vec<f32> = cw.iter().map(|&v| bf16_round(v)).collect();
        lab.cpu.write(w, &rounded);
        let op = LinearOp {
            x,
            w,
            b: None,
            y,
            y_stride: out,
            gelu_pre: None,
            dims,
            overwrite_dx: false,
        };
        lab.both(|be| be.linear_fwd(&op));
        lab.compare(&format!("linear after adamw at +{first}"), y, BF16_TOL);
        lab.cpu.write(w, &cw);
    }
}

#[test]
fn optimizer_step_clips_on_the_device_and_skips_a_non_finite_norm() {
    let Some(mut lab) = Lab::small() else { return };
    let a = lab.param(3001, -1.0, 1.0);
    let b = lab.param(5003, -1.0, 1.0);
    for run in [a, b] {
        // A norm far above 1, so the step is clipped.
        lab.randomize(run.in_space(Space::Grad), -1.0, 1.0);
        lab.randomize(run.in_space(Space::AdamM), -0.1, 0.1);
        lab.randomize(run.in_space(Space::AdamV), 0.0, 0.01);
    }
    let groups = [electra_group(a, 1.0, 0.01), electra_group(b, 0.3, 0.0)];
    let step = OptimizerStep {
        groups: &groups,
        max_norm: 1.0,
    };
    lab.begin_step(1e-2, 0, 0);
    lab.both(|be| be.optimizer_step(&step));
    let (c, g) = (lab.cpu.last_grad_norm(), lab.gpu.last_grad_norm());
    assert!(c > 10.0 && ((g - c) / c).abs() < 1e-6, "norm {g} vs {c}");
    for run in [a, b] {
        for space in [Space::Param, Space::AdamM, Space::AdamV] {
            lab.compare(&format!("optimizer {space:?}"), run.in_space(space), 1e-6);
        }
    }
    // A NaN gradient: the GPU, like the CPU, leaves everything as it was.
    let spaces = [Space::Param, Space::AdamM, Space::AdamV];
    let span = |space| Buf {
        space,
        offset: a.offset,
        len: a.len + b.len,
    };
    let before: Vec<_> = spaces.iter().map(|&s| lab.read(span(s))).collect();
    lab.set(b.grad().prefix(1), &[f32::NAN]);
    lab.both(|be| be.optimizer_step(&step));
    assert!(lab.gpu.last_grad_norm().is_nan());
    for (&space, before) in spaces.iter().zip(&before) {
        assert!(
            &lab.read(span(space)) == before,
            "{space:?} moved on a NaN gradient"
        );
    }
}

// ---- the whole step -------------------------------------------------------------------------

mod whole_step {
    use super::*;
    use electra::io::batch_file::{read_batch_file, BatchFile};
    use electra::io::hf::load_pretraining_pair;
    use electra::train::{Corruption, TrainConfig, Trainer};
    use std::path::PathBuf;

    /// The fixture beside the sources this test was built from or, when the binary runs in
    /// another copy of the repository (a device machine), under the working directory.
    fn fixture() -> PathBuf {
        let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tiny");
        if built.is_dir() {
            built
        } else {
            PathBuf::from("tests/fixtures/hf-tiny")
        }
    }

    fn trainers() -> Option<(Trainer<CpuBackend>, Trainer<CudaBackend>, BatchFile)> {
        let gpu = device()?;
        let loaded = load_pretraining_pair(
            &fixture().join("generator"),
            &fixture().join("discriminator"),
        )
        .unwrap();
        let config = TrainConfig {
            weight_decay: 0.01,
            warmup_steps: 2,
            total_steps: 100,
            ..TrainConfig::default()
        };
        let cpu = Trainer::new(
            CpuBackend::new(),
            loaded.model.clone(),
            config.clone(),
            &loaded.values,
        )
        .unwrap();
        let gpu = Trainer::new(gpu, loaded.model, config, &loaded.values).unwrap();
        let batch = read_batch_file(&fixture().join("batch.safetensors")).unwrap();
        Some((cpu, gpu, batch))
    }

    fn rel(a: f32, b: f32) -> f64 {
        ((a as f64 - b as f64) / b as f64).abs()
    }

    #[test]
    fn losses_logits_and_every_gradient_match_the_cpu() {
        let Some((mut cpu, mut gpu, b)) = trainers() else {
            return;
        };
        let given = b.replaced.clone().unwrap();
        let rc = cpu
            .forward_backward(&b.batch, &b.masking, Corruption::Given(&given))
            .unwrap();
        let rg = gpu
            .forward_backward(&b.batch, &b.masking, Corruption::Given(&given))
            .unwrap();
        gpu.backend.check().unwrap();
        for (name, c, g) in [
            ("gen_loss", rc.gen_loss, rg.gen_loss),
            ("disc_loss", rc.disc_loss, rg.disc_loss),
            ("total_loss", rc.total_loss, rg.total_loss),
        ] {
            println!("{name}: cpu {c} gpu {g}");
            assert!(rel(g, c) < 1e-2, "{name}: gpu {g} vs cpu {c}");
        }
        let acts = cpu.acts().unwrap().clone();
        let masked = b.masking.positions.len();
        let vocab = cpu.model.config.vocab_size;
        let logits = acts.generator_logits(masked);
        for (name, buf, tol) in [
            ("disc_logits", acts.disc_logits, 2e-2),
            ("gen_logits", logits, 2e-2),
        ] {
            let (mut c, mut g) = (cpu.read_acts(buf), gpu.read_acts(buf));
            if buf == logits {
                (c, g) = (acts.unpad_logits(&c, vocab), acts.unpad_logits(&g, vocab));
            }
            let err = rel_err(&g, &c);
            println!("{name}: rel err {err:.2e}");
            assert!(err < tol, "{name}: rel err {err:e}");
        }
        let norm_c = cpu.grad_norm();
        let norm_g = gpu.grad_norm();
        println!("grad norm: cpu {norm_c} gpu {norm_g}");
        assert!(rel(norm_g, norm_c) < 2e-2, "grad norm {norm_g} vs {norm_c}");
        let mut errors = vec![];
        for p in &cpu.model.layout.params {
            let c = cpu.tensor(Space::Grad, &p.name).unwrap();
            let g = gpu.tensor(Space::Grad, &p.name).unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{}: not finite", p.name);
            let diff: f64 = c
                .iter()
                .zip(&g)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let size: f64 = c.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            // Gradients that are nearly zero (the key biases: softmax is shift-invariant) are
            // compared against the global norm instead of their own.
            let err = if size < 1e-3 * norm_c as f64 {
                diff / norm_c as f64
            } else {
                diff / size
            };
            errors.push((err, p.name.clone()));
        }
        errors.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (err, name) in errors.iter().take(12) {
            println!("gradient rel err {err:.2e} {name}");
        }
        // bf16 activations: the error grows from the loss toward the input. On an H200 (commits
        // 43f3d58 and a747164) the largest were the first attention layer's query/key weights and
        // the embeddings (4.2-5.0%), then the second layer's query/key (3.4-3.5%), while every
        // kernel alone is within 2e-3 and 300 training steps follow the CPU's loss curve to 0.2%.
        let (worst, name) = &errors[0];
        assert!(*worst < 8e-2, "{name}: gradient rel err {worst:e}");

        let before = cpu.flat(Space::Param);
        cpu.apply_gradients(1e-3);
        gpu.apply_gradients(1e-3);
        let (pc, pg) = (cpu.flat(Space::Param), gpu.flat(Space::Param));
        // Adam's first step moves every weight by about lr·√10·sign(g): where a gradient is
        // nearly zero its sign can differ between the backends, so compare the updates loosely
        // and require them to agree in direction almost everywhere.
        let step = |p: &[f32]| -> Vec<f32> { p.iter().zip(&before).map(|(a, b)| a - b).collect() };
        let (sc, sg) = (step(&pc), step(&pg));
        let err = rel_err(&sg, &sc);
        let agree = sc
            .iter()
            .zip(&sg)
            .filter(|(a, b)| (**a >= 0.0) == (**b >= 0.0))
            .count();
        let share = agree as f64 / sc.len() as f64;
        println!("one AdamW step: update rel err {err:.2e}, directions agree at {share:.4}");
        assert!(
            share > 0.97,
            "the updates agree in direction at only {share}"
        );
        assert!(err < 0.4, "one AdamW step: update rel err {err:e}");
    }

    #[test]
    fn training_steps_follow_the_cpu_and_allocate_nothing_after_the_first() {
        let Some((mut cpu, mut gpu, b)) = trainers() else {
            return;
        };
        let mut allocations = None;
        let mut same_picks = (0, 0);
        for step in 0..5 {
            let rc = cpu.train_step(&b.batch).unwrap();
            let rg = gpu.train_step(&b.batch).unwrap();
            println!(
                "step {step}: gen cpu {} gpu {}, disc cpu {} gpu {}",
                rc.loss.gen_loss, rg.loss.gen_loss, rc.loss.disc_loss, rg.loss.disc_loss
            );
            assert!(
                rel(rg.loss.gen_loss, rc.loss.gen_loss) < 2e-2,
                "step {step} gen loss"
            );
            // The argmax picks of bf16 logits can differ from the CPU's where two logits are
            // within a bf16 rounding, which changes the discriminator's input: looser.
            assert!(
                rel(rg.loss.disc_loss, rc.loss.disc_loss) < 1e-1,
                "step {step} disc loss"
            );
            let acts = cpu.acts().unwrap().clone();
            let mut ids = (vec![0u32; acts.picks.len], vec![0u32; acts.picks.len]);
            cpu.backend.read_ints(acts.picks, &mut ids.0);
            gpu.backend.read_ints(acts.picks, &mut ids.1);
            let masked = rc.loss.masked;
            same_picks.0 += ids.0[..masked]
                .iter()
                .zip(&ids.1[..masked])
                .filter(|(a, b)| a == b)
                .count();
            same_picks.1 += masked;
            match allocations {
                None => allocations = Some(gpu.backend.allocations()),
                Some(a) => assert_eq!(
                    gpu.backend.allocations(),
                    a,
                    "the GPU allocated memory in step {step}"
                ),
            }
        }
        gpu.backend.check().unwrap();
        println!("argmax picks agree at {} of {}", same_picks.0, same_picks.1);
        assert!(
            same_picks.0 * 10 >= same_picks.1 * 9,
            "picks agree too rarely"
        );
    }

    /// A step replayed from its recording computes exactly what the same step issued launch by
    /// launch computes: the same kernels with the same arguments, the per-step values (learning
    /// rate, dropout and Gumbel seeds) read from device memory in both.
    #[test]
    fn recorded_steps_equal_issued_steps_bit_for_bit() {
        let Some((cpu, mut recorded, b)) = trainers() else {
            return;
        };
        let Some(mut issued_be) = device() else {
            return;
        };
        issued_be.set_step_recording(false);
        recorded.backend.set_step_recording(true);
        recorded.config.replacement = electra::train::Replacement::Sample;
        let values = cpu.flat(Space::Param);
        let mut issued = Trainer::new(
            issued_be,
            recorded.model.clone(),
            recorded.config.clone(),
            &values,
        )
        .unwrap();
        for step in 0..5 {
            let r = recorded.train_step(&b.batch).unwrap();
            let i = issued.train_step(&b.batch).unwrap();
            println!(
                "step {step}: recorded gen {} disc {} norm {}; issued gen {} disc {} norm {}",
                r.loss.gen_loss,
                r.loss.disc_loss,
                r.grad_norm,
                i.loss.gen_loss,
                i.loss.disc_loss,
                i.grad_norm
            );
            assert_eq!(r.loss, i.loss, "step {step}: losses");
            assert_eq!(
                r.grad_norm.to_bits(),
                i.grad_norm.to_bits(),
                "step {step}: norm"
            );
            for space in [Space::Param, Space::AdamM, Space::AdamV] {
                let (a, b) = (recorded.flat(space), issued.flat(space));
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "step {step}: {space:?} differs");
            }
        }
        // Step 0 ran as issued, step 1 was recorded, steps 2 to 4 replayed it.
        assert_eq!(recorded.backend.recorded_steps(), 1);
        assert_eq!(issued.backend.recorded_steps(), 0);
        recorded.backend.check().unwrap();
    }
}
