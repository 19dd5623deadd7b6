//! Finite-difference checks of every fused backward operation of the CPU backend, on small random
//! problems with odd sizes; then the replacement picks of `softmax_xent`, AdamW and the global
//! gradient norm against hand-computed values.
//!
//! Every gradient check goes through [`gradcheck`]: it defines the scalar `L = Σ r·y` over the
//! operation's output `y` with fixed random weights `r`, seeds `y.grad()` with `r`, runs the
//! backward operation on zeroed gradients, and compares each gradient it produced with central
//! differences `D(h) = (L(x+h) − L(x−h)) / 2h` of the forward operation, element by element.

use electra::backend::cpu::CpuBackend;
use electra::backend::{
    AttentionDims, AttentionOp, Backend, BceHeadOp, Buf, Dropout, DropoutOp, EmbeddingOp,
    EmbeddingParams, GatherRowsOp, IBuf, LayerNormOp, LayerNormParams, LinearDims, LinearOp,
    OptimizerStep, Pick, Sizes, SoftmaxXentOp, Space, StepScalars,
};
use electra::tape::Arena;

mod common;
use common::{electra_group, Rng};

/// The finite-difference step. The numeric gradient is the Richardson extrapolation
/// `(4·D(h/2) − D(h)) / 3` of two central differences, whose error is O(h⁴): a plain `D(h)` is
/// either off by up to 1% on a LayerNorm row of small variance (h = 1e-2, a truncation error of
/// O(h²·rstd³)) or dominated by the f32 rounding of the outputs, about `ε·|y| / h` (h = 3e-3).
const H: f32 = 3e-2;
/// An analytic gradient `an` passes when `|fd − an| ≤ ATOL + RTOL·|an|`. Over 200 other seeds the
/// worst error of any element was a third of this; [`gradcheck`] asserts that a 1% error in the
/// largest value of each tensor would not pass.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 2e-3;

/// A CPU backend with room for one small problem, allocators over its spaces, and a generator.
struct Lab {
    be: CpuBackend,
    rng: Rng,
    capacity: Sizes,
    params: usize,
    arena: Arena,
}

impl Lab {
    fn new(seed: u64) -> Self {
        Self::with_capacity(seed, 1 << 12, 1 << 8)
    }

    fn with_capacity(seed: u64, floats: usize, ints: usize) -> Self {
        let capacity = Sizes {
            params: floats,
            acts: floats,
            ints,
            grad_sum: 0,
        };
        let mut be = CpuBackend::new();
        be.reserve(capacity).unwrap();
        Lab {
            be,
            rng: Rng(seed),
            capacity,
            params: 0,
            arena: Arena::default(),
        }
    }

    /// A parameter of `len` values drawn from `[lo, hi)`.
    fn param(&mut self, len: usize, lo: f32, hi: f32) -> Buf {
        let b = Buf {
            space: Space::Param,
            offset: self.params,
            len,
        };
        self.params += len;
        assert!(self.params <= self.capacity.params, "lab too small");
        self.randomize(b, lo, hi);
        b
    }

    /// An activation of `len` values drawn from `[lo, hi)`.
    fn act(&mut self, len: usize, lo: f32, hi: f32) -> Buf {
        let b = self.arena.acts(len);
        assert!(self.arena.used().0 <= self.capacity.acts, "lab too small");
        self.randomize(b, lo, hi);
        b
    }

    /// An activation an operation must overwrite: filled with NaN, which would poison the loss if
    /// the operation read it.
    fn output(&mut self, len: usize) -> Buf {
        let b = self.act(len, 0.0, 0.0);
        self.be.fill(b, f32::NAN);
        b
    }

    fn ints(&mut self, values: &[u32]) -> IBuf {
        let b = self.arena.ints(values.len());
        assert!(self.arena.used().1 <= self.capacity.ints, "lab too small");
        self.be.write_ints(b, values);
        b
    }

    fn randomize(&mut self, b: Buf, lo: f32, hi: f32) {
        let values = self.rng.vec(b.len, lo, hi);
        self.be.write(b, &values);
    }

    /// Sets the learning rate and seeds the operations read.
    fn begin_step(&mut self, lr: f32, dropout_seed: u64, sample_seed: u64) {
        let scalars = StepScalars {
            lr,
            dropout_seed,
            sample_seed,
            ..StepScalars::default()
        };
        assert!(!self.be.begin_step(scalars, None));
    }

    fn read(&self, b: Buf) -> Vec<f32> {
        let mut v = vec![0.0; b.len];
        self.be.read(b, &mut v);
        v
    }

    fn read_ints(&self, b: IBuf) -> Vec<u32> {
        let mut v = vec![0; b.len];
        self.be.read_ints(b, &mut v);
        v
    }

    /// Zeroes both gradient spaces whole.
    fn zero_grads(&mut self) {
        for (space, len) in [
            (Space::Grad, self.capacity.params),
            (Space::ActGrad, self.capacity.acts),
        ] {
            self.be.fill(
                Buf {
                    space,
                    offset: 0,
                    len,
                },
                0.0,
            );
        }
    }
}

type Op<'a> = &'a dyn Fn(&mut CpuBackend);

/// `L = Σ weights·out` after running `forward`, in f64.
fn loss(lab: &mut Lab, forward: Op, out: Buf, weights: &[f32]) -> f64 {
    forward(&mut lab.be);
    let y = lab.read(out);
    y.iter()
        .zip(weights)
        .map(|(&y, &r)| y as f64 * r as f64)
        .sum()
}

fn within(fd: f64, an: f64) -> bool {
    (fd - an).abs() <= ATOL + RTOL * an.abs()
}

/// Where an operation's gradients come from.
enum Grads<'a> {
    /// A separate backward operation, which accumulates.
    Backward(Op<'a>),
    /// The forward operation writes them whole (a loss).
    Written,
    /// The forward operation adds them (a loss fused with the layer below it).
    Accumulated,
}

/// Checks the gradient of `L = Σ weights·out` with respect to every element of every buffer of
/// `wrt` (found in `buf.grad()`) against central differences, and returns the analytic gradients.
/// The problems are small enough (at most a few hundred values) to check every element.
///
/// With `Grads::Backward`, the backward runs after `out.grad()` is seeded with the weights. With
/// `Written` or `Accumulated`, the forward operation makes the gradients itself (the losses, whose
/// `out` is the per-row loss and whose weights must then match its `grad_scale`); `Written` ones
/// start as NaN, so every element must be written. Whatever makes the gradients (the backward, or
/// an `Accumulated` forward) is run a second time to check that it accumulates.
///
/// Besides every element passing, the largest analytic value of each tensor, off by 1%, must fail:
/// the tolerance is tight enough to catch a small real bug, and no tensor is trivially zero.
fn gradcheck(
    lab: &mut Lab,
    forward: Op,
    grads: Grads,
    out: Buf,
    weights: &[f32],
    wrt: &[(&str, Buf)],
) -> Vec<Vec<f32>> {
    assert_eq!(weights.len(), out.len);
    lab.zero_grads();
    if let Grads::Written = grads {
        // A loss writes its whole gradient: any element it skipped stays NaN and fails.
        for &(_, b) in wrt {
            lab.be.fill(b.grad(), f32::NAN);
        }
    }
    forward(&mut lab.be);
    lab.be.write(out.grad(), weights);
    let read_grads =
        |lab: &Lab| -> Vec<Vec<f32>> { wrt.iter().map(|&(_, b)| lab.read(b.grad())).collect() };
    let again = match grads {
        Grads::Backward(backward) => {
            backward(&mut lab.be);
            Some(backward)
        }
        Grads::Accumulated => Some(forward),
        Grads::Written => None,
    };
    let analytic = read_grads(lab);
    if let Some(again) = again {
        again(&mut lab.be);
        for ((name, _), (once, twice)) in wrt.iter().zip(analytic.iter().zip(read_grads(lab))) {
            for (i, (&a, &b)) in once.iter().zip(&twice).enumerate() {
                let (a, b) = (a as f64, b as f64);
                assert!(
                    (b - 2.0 * a).abs() <= 1e-5 * (1.0 + a.abs()),
                    "d{name}[{i}] does not accumulate: {a} once, {b} twice"
                );
            }
        }
    }

    let (mut failures, mut largest) = (vec![], vec![]);
    for (&(name, buf), an) in wrt.iter().zip(&analytic) {
        let base = lab.read(buf);
        let mut values = base.clone();
        // The largest analytic value with its numeric value, and the worst error over the tolerance.
        let ((mut top, mut top_fd), mut worst) = ((0.0f64, 0.0f64), 0.0f64);
        for i in 0..buf.len {
            let mut central = |h: f32| {
                let (plus, minus) = (base[i] + h, base[i] - h);
                values[i] = plus;
                lab.be.write(buf, &values);
                let l_plus = loss(lab, forward, out, weights);
                values[i] = minus;
                lab.be.write(buf, &values);
                let l_minus = loss(lab, forward, out, weights);
                values[i] = base[i];
                (l_plus - l_minus) / (plus as f64 - minus as f64)
            };
            let fd = (4.0 * central(H / 2.0) - central(H)) / 3.0;
            let a = an[i] as f64;
            if !within(fd, a) {
                failures.push(format!("d{name}[{i}]: analytic {a:.6}, numeric {fd:.6}"));
            }
            if a.abs() > top.abs() {
                (top, top_fd) = (a, fd);
            }
            worst = worst.max((fd - a).abs() / (ATOL + RTOL * a.abs()));
        }
        lab.be.write(buf, &base);
        println!(
            "d{name}: {} values, largest {:.4}, worst error {worst:.3} of the tolerance",
            buf.len,
            top.abs()
        );
        largest.push((name, top, top_fd));
    }
    assert!(
        failures.is_empty(),
        "{} gradients disagree with finite differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for (name, a, fd) in largest {
        assert!(
            !within(fd, 1.01 * a),
            "d{name}: a 1% error in its largest value {a} (numeric {fd}) would pass"
        );
    }
    analytic
}

/// Random weights `r` of the scalar loss `Σ r·y`.
fn weights(lab: &mut Lab, out: Buf) -> Vec<f32> {
    lab.rng.vec(out.len, -1.0, 1.0)
}

fn check_linear(seed: u64, dims: LinearDims, bias: bool, gelu: bool) {
    let mut lab = Lab::new(seed);
    let x = lab.act(dims.rows * dims.inp, -1.0, 1.0);
    let w = lab.param(dims.out * dims.inp, -0.6, 0.6);
    let b = bias.then(|| lab.param(dims.out, -0.5, 0.5));
    let pre = gelu.then(|| lab.output(dims.rows * dims.out));
    let y = lab.output(dims.rows * dims.out);
    let r = weights(&mut lab, y);
    let mut wrt = vec![("w", w), ("x", x)];
    wrt.extend(b.map(|b| ("b", b)));
    let op = LinearOp {
        x,
        w,
        b,
        y,
        y_stride: dims.out,
        gelu_pre: pre,
        dims,
        overwrite_dx: false,
    };
    gradcheck(
        &mut lab,
        &|be| be.linear_fwd(&op),
        Grads::Backward(&|be| be.linear_bwd(&op)),
        y,
        &r,
        &wrt,
    );
}

#[test]
fn linear_with_bias() {
    let dims = LinearDims {
        rows: 7,
        inp: 5,
        out: 13,
    };
    check_linear(1, dims, true, false);
}

#[test]
fn linear_with_bias_and_gelu() {
    let dims = LinearDims {
        rows: 5,
        inp: 13,
        out: 7,
    };
    check_linear(2, dims, true, true);
}

#[test]
fn linear_without_bias() {
    let dims = LinearDims {
        rows: 3,
        inp: 7,
        out: 5,
    };
    check_linear(3, dims, false, false);
}

fn check_layernorm(seed: u64, rows: usize, width: usize, residual: bool, dropout: Option<Dropout>) {
    let mut lab = Lab::new(seed);
    lab.begin_step(0.0, seed, 0);
    let x = lab.act(rows * width, -1.0, 1.0);
    let res = residual.then(|| lab.act(rows * width, -1.0, 1.0));
    let params = LayerNormParams {
        gain: lab.param(width, 0.5, 1.5),
        bias: lab.param(width, -0.5, 0.5),
        eps: 1e-12,
    };
    let y = lab.output(rows * width);
    let saved = lab.arena.layernorm(rows, width);
    let r = weights(&mut lab, y);
    let mut wrt = vec![("x", x), ("gain", params.gain), ("bias", params.bias)];
    wrt.extend(res.map(|res| ("residual", res)));
    let op = LayerNormOp {
        x,
        residual: res,
        params,
        y,
        saved,
        rows,
        width,
        dropout,
        sequences: rows,
        overwrite_dx: false,
        overwrite_dresidual: false,
    };
    let grads = gradcheck(
        &mut lab,
        &|be| be.layernorm_fwd(&op),
        Grads::Backward(&|be| be.layernorm_bwd(&op)),
        y,
        &r,
        &wrt,
    );
    if residual {
        // The branch's gradient is the sum's through the dropout mask, the residual's the sum's.
        let mask = dropout.map(|d| d.mask(seed, 0));
        let scale = |i| mask.map_or(1.0, |m| m.scale_at(i));
        let dres_masked: Vec<f32> = grads[3]
            .iter()
            .enumerate()
            .map(|(i, g)| g * scale(i))
            .collect();
        assert_eq!(
            grads[0], dres_masked,
            "dx is not dresidual through the mask"
        );
    }
}

#[test]
fn layernorm() {
    check_layernorm(4, 7, 13, false, None);
}

#[test]
fn layernorm_with_residual() {
    check_layernorm(5, 5, 7, true, None);
}

#[test]
fn layernorm_with_residual_of_width_five() {
    check_layernorm(6, 3, 5, true, None);
}

#[test]
fn layernorm_of_a_dropped_out_branch() {
    let d = Dropout { p: 0.3, site: 4 };
    check_layernorm(8, 6, 12, true, Some(d));
    check_layernorm(9, 4, 9, false, Some(d));
}

#[test]
fn attention_with_key_padding() {
    check_attention(7, None);
}

#[test]
fn attention_with_key_padding_and_dropout() {
    let dropout = Dropout { p: 0.3, site: 2 };
    check_attention(8, Some(dropout));
}

fn check_attention(seed: u64, dropout: Option<Dropout>) {
    let mut lab = Lab::new(seed);
    let dims = AttentionDims {
        batch: 2,
        seq: 5,
        heads: 2,
        head_dim: 3,
    };
    let (t, h) = (dims.seq, dims.hidden());
    let tokens = dims.batch * t;
    let mask_values = [1, 1, 1, 0, 0, 1, 1, 1, 1, 0];
    let mask = lab.ints(&mask_values);
    let qkv = lab.act(tokens * 3 * h, -1.5, 1.5);
    let ctx = lab.output(tokens * h);
    let probs = lab.output(dims.batch * dims.heads * t * t);
    let r = weights(&mut lab, ctx);
    lab.begin_step(0.0, 11, 0);
    let op = AttentionOp {
        qkv,
        key_mask: mask,
        ctx,
        probs,
        dims,
        dropout,
        overwrite_dqkv: false,
    };
    let grads = gradcheck(
        &mut lab,
        &|be| be.attention_fwd(&op),
        Grads::Backward(&|be| be.attention_bwd(&op)),
        ctx,
        &r,
        &[("qkv", qkv)],
    );

    // Padding keys get no probability and no key or value gradient.
    lab.be.attention_fwd(&op);
    let p = lab.read(probs);
    for (i, row) in p.chunks(t).enumerate() {
        let b = i / (dims.heads * t);
        let sum: f32 = row.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "probability row {i} sums to {sum}"
        );
        for (j, &pj) in row.iter().enumerate() {
            if mask_values[b * t + j] == 0 {
                assert_eq!(pj, 0.0, "padding key {j} of row {i} is attended");
            }
        }
    }
    for (token, &m) in mask_values.iter().enumerate() {
        let keys_values = &grads[0][token * 3 * h + h..(token + 1) * 3 * h];
        if m == 0 {
            assert!(
                keys_values.iter().all(|&g| g == 0.0),
                "padding token {token} got a key or value gradient"
            );
        }
    }
}

#[test]
fn a_sequence_without_real_tokens_attends_uniformly_and_passes_no_score_gradient() {
    let mut lab = Lab::new(21);
    let dims = AttentionDims {
        batch: 2,
        seq: 5,
        heads: 2,
        head_dim: 3,
    };
    let (t, h) = (dims.seq, dims.hidden());
    // Sequence 0 has real tokens, sequence 1 has none.
    let mask_values = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    let mask = lab.ints(&mask_values);
    let qkv = lab.act(dims.batch * t * 3 * h, -1.5, 1.5);
    let ctx = lab.output(dims.batch * t * h);
    let probs = lab.output(dims.batch * dims.heads * t * t);
    let r = weights(&mut lab, ctx);
    // The finite differences agree with a zero gradient for the second sequence's q and k.
    let op = AttentionOp {
        qkv,
        key_mask: mask,
        ctx,
        probs,
        dims,
        dropout: None,
        overwrite_dqkv: false,
    };
    let grads = gradcheck(
        &mut lab,
        &|be| be.attention_fwd(&op),
        Grads::Backward(&|be| be.attention_bwd(&op)),
        ctx,
        &r,
        &[("qkv", qkv)],
    );
    let p = lab.read(probs);
    let second = &p[dims.heads * t * t..];
    assert!(
        second.iter().all(|&v| (v - 1.0 / t as f32).abs() < 1e-7),
        "{second:?}"
    );
    for token in t..2 * t {
        let qk = &grads[0][token * 3 * h..token * 3 * h + 2 * h];
        assert!(qk.iter().all(|&g| g == 0.0), "token {token}: {qk:?}");
        let v = &grads[0][token * 3 * h + 2 * h..(token + 1) * 3 * h];
        assert!(v.iter().any(|&g| g != 0.0), "values still get a gradient");
    }
}

#[test]
fn dropout_masks_scales_and_its_gradient() {
    let mut lab = Lab::with_capacity(13, 40_000, 0);
    let d = Dropout { p: 0.25, site: 3 };
    let x = lab.act(4099, 0.5, 1.5);
    let y = lab.output(4099);
    let r = weights(&mut lab, y);
    lab.begin_step(0.0, 99, 0);
    let op = DropoutOp {
        x,
        y,
        dropout: d,
        sequences: 1,
        overwrite_dx: false,
    };
    gradcheck(
        &mut lab,
        &|be| be.dropout_fwd(&op),
        Grads::Backward(&|be| be.dropout_bwd(&op)),
        y,
        &r,
        &[("x", x)],
    );
    lab.be.dropout_fwd(&op);
    let (xs, ys) = (lab.read(x), lab.read(y));
    let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / ys.len() as f64;
    assert!((dropped - 0.25).abs() < 0.03, "dropped share {dropped}");
    for (&a, &b) in xs.iter().zip(&ys) {
        assert!(
            b == 0.0 || (b - a / 0.75).abs() < 1e-6,
            "kept {a} became {b}"
        );
    }
    // The mask is a function of (seed, site, index): another site or seed draws another one.
    let mask = |d: Dropout, seed| {
        let mask = d.mask(seed, 0);
        (0..4099).map(|i| mask.scale_at(i)).collect::<Vec<f32>>()
    };
    let expected = mask(d, 99);
    assert!(xs
        .iter()
        .zip(&ys)
        .zip(&expected)
        .all(|((&a, &b), &m)| (a * m - b).abs() < 1e-6));
    assert_ne!(expected, mask(Dropout { site: 4, ..d }, 99));
    assert_ne!(expected, mask(d, 100));
}

#[test]
fn embedding_block() {
    let mut lab = Lab::new(8);
    let (vocab, max_positions, types, width) = (11, 7, 2, 7);
    let (batch, seq) = (2, 5);
    // Id 3 appears three times and id 7 twice, so the word gradient must add rows up.
    let ids = lab.ints(&[3, 7, 3, 0, 10, 3, 5, 7, 1, 9]);
    let token_types = lab.ints(&[0, 0, 0, 1, 1, 0, 1, 1, 1, 1]);
    let params = EmbeddingParams {
        word: lab.param(vocab * width, -1.0, 1.0),
        position: lab.param(max_positions * width, -0.5, 0.5),
        token_type: lab.param(types * width, -0.5, 0.5),
        norm: LayerNormParams {
            gain: lab.param(width, 0.5, 1.5),
            bias: lab.param(width, -0.5, 0.5),
            eps: 1e-12,
        },
    };
    let out = lab.output(batch * seq * width);
    let saved = lab.arena.layernorm(batch * seq, width);
    let r = weights(&mut lab, out);
    let op = EmbeddingOp {
        ids,
        token_types,
        seq,
        params,
        out,
        saved,
    };
    gradcheck(
        &mut lab,
        &|be| be.embedding_fwd(&op),
        Grads::Backward(&|be| be.embedding_bwd(&op)),
        out,
        &r,
        &[
            ("word", params.word),
            ("position", params.position),
            ("token_type", params.token_type),
            ("gain", params.norm.gain),
            ("bias", params.norm.bias),
        ],
    );
}

#[test]
fn gather_rows_with_repeats() {
    let mut lab = Lab::new(9);
    let width = 5;
    let x = lab.act(7 * width, -1.0, 1.0);
    let rows = lab.ints(&[0, 3, 3, 6, 3]);
    let out = lab.output(rows.len * width);
    let r = weights(&mut lab, out);
    let op = GatherRowsOp {
        x,
        rows,
        out,
        width,
    };
    gradcheck(
        &mut lab,
        &|be| be.gather_rows(&op),
        Grads::Backward(&|be| be.gather_rows_bwd(&op)),
        out,
        &r,
        &[("x", x)],
    );
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best as u32
}

#[test]
fn softmax_xent_mean_loss_and_argmax_picks() {
    let mut lab = Lab::new(10);
    let (rows, vocab) = (7, 11);
    let logits = lab.act(rows * vocab, -3.0, 3.0);
    // Every other target is the row's most likely token, as the generator's often is.
    let x = lab.read(logits);
    let target_values: Vec<u32> = (0..rows)
        .map(|r| match r % 2 {
            0 => argmax(&x[r * vocab..(r + 1) * vocab]),
            _ => lab.rng.below(vocab) as u32,
        })
        .collect();
    let targets = lab.ints(&target_values);
    let picks = lab.ints(&vec![u32::MAX; rows]);
    let row_loss = lab.output(rows);
    // The mean loss: grad_scale = 1/rows, and L = Σ row_loss / rows.
    let scale = 1.0 / rows as f32;
    let op = SoftmaxXentOp {
        logits,
        row_stride: vocab,
        targets,
        row_loss,
        grad_scale: scale,
        pick: Some((Pick::Argmax, picks)),
        rows,
        vocab,
    };
    gradcheck(
        &mut lab,
        &|be| be.softmax_xent(&op),
        Grads::Written,
        row_loss,
        &vec![scale; rows],
        &[("logits", logits)],
    );

    // The loss itself, against log-sum-exp in f64, and the picks against the argmax.
    lab.be.softmax_xent(&op);
    let (x, losses, picked) = (lab.read(logits), lab.read(row_loss), lab.read_ints(picks));
    for (r, row) in x.chunks(vocab).enumerate() {
        let log_z = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        let expected = log_z - row[target_values[r] as usize] as f64;
        assert!(
            (losses[r] as f64 - expected).abs() < 1e-5 * (1.0 + expected),
            "row {r}: loss {} instead of {expected}",
            losses[r]
        );
        assert_eq!(picked[r], argmax(row), "row {r}: pick is not the argmax");
    }
}

#[test]
fn softmax_xent_gumbel_picks() {
    // A few distinct rows for reproducibility, then many copies of one row for the distribution.
    let probs = [0.05f64, 0.3, 0.1, 0.4, 0.15];
    let (rows, vocab) = (20_000, probs.len());
    let mut lab = Lab::with_capacity(11, 2 * rows * vocab, 3 * rows);
    let row: Vec<f32> = probs.iter().map(|p| p.ln() as f32 + 0.7).collect();
    let logits = lab.act(rows * vocab, 0.0, 0.0);
    lab.be.write(logits, &row.repeat(rows));
    let targets = lab.ints(&vec![0; rows]);
    let picks = lab.ints(&vec![0; rows]);
    let row_loss = lab.output(rows);
    let sample = |lab: &mut Lab, seed: u64, n: usize| {
        let picks = picks.prefix(n);
        lab.begin_step(0.0, 0, seed);
        lab.be.softmax_xent(&SoftmaxXentOp {
            logits,
            row_stride: vocab,
            targets,
            row_loss,
            grad_scale: 1.0,
            pick: Some((Pick::Gumbel, picks)),
            rows: n,
            vocab,
        });
        lab.read_ints(picks)
    };

    let first = sample(&mut lab, 1234, 64);
    assert_eq!(first, sample(&mut lab, 1234, 64), "same seed, other picks");
    assert_ne!(first, sample(&mut lab, 1235, 64), "other seed, same picks");

    // Gumbel-max samples the softmax: each token's frequency is within 5σ of its probability.
    let picked = sample(&mut lab, 99, rows);
    for (j, &p) in probs.iter().enumerate() {
        let freq = picked.iter().filter(|&&v| v as usize == j).count() as f64 / rows as f64;
        let sigma = (p * (1.0 - p) / rows as f64).sqrt();
        assert!(
            (freq - p).abs() < 5.0 * sigma,
            "token {j} picked with frequency {freq}, probability {p}"
        );
    }
}

#[test]
fn bce_head_projects_and_takes_the_masked_mean() {
    let mut lab = Lab::new(12);
    let (n, width) = (13, 11);
    let h = lab.act(n * width, -1.0, 1.0);
    let w = lab.param(width, -1.0, 1.0);
    let b = lab.param(1, -0.5, 0.5);
    let label_values: Vec<f32> = (0..n).map(|_| lab.rng.below(2) as f32).collect();
    let labels = lab.act(n, 0.0, 0.0);
    lab.be.write(labels, &label_values);
    let mask_values = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0];
    let mask = lab.ints(&mask_values);
    let logits = lab.output(n);
    let row_loss = lab.output(n);
    let count = mask_values.iter().filter(|&&m| m == 1).count();
    let scale = 1.0 / count as f32;
    let op = BceHeadOp {
        h,
        w,
        b,
        labels,
        mask,
        logits,
        row_loss,
        grad_scale: scale,
    };
    let grads = gradcheck(
        &mut lab,
        &|be| be.bce_head(&op),
        Grads::Accumulated,
        row_loss,
        &vec![scale; n],
        &[("h", h), ("w", w), ("b", b)],
    );

    lab.be.bce_head(&op);
    let (hv, wv, bv) = (lab.read(h), lab.read(w), lab.read(b)[0]);
    let (x, losses) = (lab.read(logits), lab.read(row_loss));
    for i in 0..n {
        let dot: f64 = (0..width)
            .map(|j| hv[i * width + j] as f64 * wv[j] as f64)
            .sum();
        let logit = dot + bv as f64;
        assert!(
            (x[i] as f64 - logit).abs() < 1e-5,
            "token {i}: logit {}",
            x[i]
        );
        if mask_values[i] == 0 {
            let dh = &grads[0][i * width..(i + 1) * width];
            assert!(
                dh.iter().all(|&g| g == 0.0),
                "masked token {i} has a gradient"
            );
            assert_eq!(losses[i], 0.0, "masked token {i} has a loss");
        } else {
            let (x, y) = (x[i] as f64, label_values[i] as f64);
            let p = 1.0 / (1.0 + (-x).exp());
            let expected = -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            assert!(
                (losses[i] as f64 - expected).abs() < 1e-5 * (1.0 + expected),
                "token {i}: loss {} instead of {expected}",
                losses[i]
            );
        }
    }

    // Saturated logits keep a finite loss and the exact limit gradient: with w = 0 the logit is
    // the bias, and db adds up (σ(x) − y)·scale over the real tokens.
    lab.be.write(w, &vec![0.0; width]);
    lab.be.write(labels, &vec![0.0; n]);
    for (bias, loss, per_token) in [(100.0f32, 100.0f32, scale), (-100.0, 0.0, 0.0)] {
        lab.be.write(b, &[bias]);
        lab.be.fill(b.grad(), 0.0);
        lab.be.bce_head(&op);
        let losses = lab.read(row_loss);
        assert!(
            losses[0] == loss || (loss == 0.0 && (0.0..1e-30).contains(&losses[0])),
            "{losses:?}"
        );
        let db = lab.read(b.grad())[0];
        assert!((db - per_token * count as f32).abs() < 1e-6, "db {db}");
    }
}

#[test]
fn adamw_single_update() {
    let mut lab = Lab::new(13);
    let n = 13;
    // The update runs on the middle of three parameters; the others must not move.
    lab.param(5, -1.0, 1.0);
    let w = lab.param(n, -1.0, 1.0);
    lab.param(7, -1.0, 1.0);
    let all = Buf {
        space: Space::Param,
        offset: 0,
        len: lab.params,
    };
    for space in [Space::Grad, Space::AdamM] {
        lab.randomize(all.in_space(space), -1.0, 1.0);
    }
    lab.randomize(all.in_space(Space::AdamV), 0.0, 0.5);
    // One element with no gradient and no moments: only the weight decay moves it.
    for space in [Space::Grad, Space::AdamM, Space::AdamV] {
        lab.be.write(w.in_space(space).prefix(1), &[0.0]);
    }
    // The step's learning rate times the group's scale.
    let (step_lr, lr_scale) = (0.1, 0.5);
    let group = electra_group(w, lr_scale, 0.01);
    let hyper = group.adamw;
    let grad_scale = 0.5;
    let read = |lab: &Lab, space| lab.read(all.in_space(space));
    let (w0, g, m0, v0) = (
        read(&lab, Space::Param),
        read(&lab, Space::Grad),
        read(&lab, Space::AdamM),
        read(&lab, Space::AdamV),
    );

    lab.begin_step(step_lr, 0, 0);
    lab.be.adamw(&group, grad_scale);

    let (w1, m1, v1) = (
        read(&lab, Space::Param),
        read(&lab, Space::AdamM),
        read(&lab, Space::AdamV),
    );
    assert_eq!(read(&lab, Space::Grad), g, "the gradient changed");
    let inside = w.offset..w.offset + w.len;
    for i in 0..all.len {
        if !inside.contains(&i) {
            assert_eq!(
                (w1[i], m1[i], v1[i]),
                (w0[i], m0[i], v0[i]),
                "element {i} outside the update moved"
            );
            continue;
        }
        let (beta1, beta2) = (hyper.beta1 as f64, hyper.beta2 as f64);
        let g = g[i] as f64 * grad_scale as f64;
        let m = beta1 * m0[i] as f64 + (1.0 - beta1) * g;
        let v = beta2 * v0[i] as f64 + (1.0 - beta2) * g * g;
        let w = w0[i] as f64;
        let update = m / (v.sqrt() + hyper.eps as f64) + hyper.weight_decay as f64 * w;
        let w = w - (step_lr * lr_scale) as f64 * update;
        for (what, got, want) in [("w", w1[i], w), ("m", m1[i], m), ("v", v1[i], v)] {
            assert!(
                (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{what}[{i}] = {got} instead of {want}"
            );
        }
    }
}

#[test]
fn optimizer_step_clips_by_the_global_norm_and_skips_a_non_finite_step() {
    let len = 3000;
    let mut lab = Lab::with_capacity(15, len, 0);
    let (a, b) = (lab.param(1000, -1.0, 1.0), lab.param(2000, -1.0, 1.0));
    let all = Buf {
        space: Space::Param,
        offset: 0,
        len,
    };
    // A norm of about 50: the step is clipped to 1.
    lab.randomize(all.grad(), -1.6, 1.6);
    lab.randomize(all.in_space(Space::AdamM), -1.0, 1.0);
    lab.randomize(all.in_space(Space::AdamV), 0.0, 0.5);
    let groups = [electra_group(a, 1.0, 0.01), electra_group(b, 0.3, 0.0)];
    let step = OptimizerStep {
        groups: &groups,
        max_norm: 1.0,
    };
    lab.begin_step(0.01, 0, 0);
    let spaces = [Space::Param, Space::AdamM, Space::AdamV];
    let before: Vec<Vec<f32>> = spaces.iter().map(|&s| lab.read(all.in_space(s))).collect();

    // The same update by hand: the norm, then adamw with the clipping factor.
    let norm = lab.be.grad_norm();
    assert!(
        norm > 10.0,
        "the test needs a clipped step, the norm is {norm}"
    );
    for group in &groups {
        lab.be.adamw(group, 1.0 / norm);
    }
    let want: Vec<Vec<f32>> = spaces.iter().map(|&s| lab.read(all.in_space(s))).collect();
    for (&space, values) in spaces.iter().zip(&before) {
        lab.be.write(all.in_space(space), values);
    }
    lab.be.optimizer_step(&step);
    assert_eq!(lab.be.last_grad_norm(), norm);
    for (&space, want) in spaces.iter().zip(&want) {
        assert_eq!(&lab.read(all.in_space(space)), want, "{space:?}");
    }

    // One NaN gradient: nothing moves, and the norm says why.
    lab.be.write(b.grad().prefix(1), &[f32::NAN]);
    lab.be.optimizer_step(&step);
    assert!(lab.be.last_grad_norm().is_nan());
    for (&space, want) in spaces.iter().zip(&want) {
        assert_eq!(&lab.read(all.in_space(space)), want, "{space:?} moved");
    }
}

#[test]
fn grad_norm_of_the_whole_gradient_space() {
    // More than one of the norm's 16384-value blocks.
    let len = 40_000;
    let mut lab = Lab::with_capacity(14, len, 0);
    let all = Buf {
        space: Space::Param,
        offset: 0,
        len,
    };
    lab.randomize(all, -10.0, 10.0);
    lab.randomize(all.grad(), -1.0, 1.0);
    let g = lab.read(all.grad());
    let expected = g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let norm = lab.be.grad_norm() as f64;
    assert!(
        (norm - expected).abs() <= 1e-6 * expected,
        "norm {norm} instead of {expected}"
    );
}
