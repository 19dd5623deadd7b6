//! The CPU backend: the f32 reference of every fused operation, parallel with rayon.
//!
//! The operations themselves are plain functions over slices, one file per operation, so they
//! read as the specification the CUDA kernels are tested against. This file only maps [`Buf`]
//! handles to slices.

pub mod attention;
pub mod bce_head;
pub mod dropout;
pub mod embedding;
pub mod layernorm;
pub mod linear;
pub mod losses;
pub mod matmul;
pub mod optim;

use std::marker::PhantomData;

use super::{
    AccumulateOp, AttentionOp, Backend, BceHeadOp, Buf, Dropout, DropoutMask, DropoutOp,
    EmbeddingOp, GatherRowsOp, IBuf, LayerNormOp, LayerNormParams, LayerNormSaved, LinearOp,
    LossSumsOp, OptimizerStep, OutOfMemory, ParamGroup, ReplaceTokensOp, Sizes, SoftmaxXentOp,
    Space, StepScalars, LOSS_SUMS,
};

/// The CPU backend. Memory is one `Vec` per space.
#[derive(Default)]
pub struct CpuBackend {
    spaces: [Vec<f32>; 7],
    ints: Vec<u32>,
    /// Room for one layer's dropped-out attention probabilities, rebuilt where they are needed.
    scratch: Vec<f32>,
    /// What the last `optimizer_step` measured.
    last_grad_norm: f32,
    /// What the last [`Backend::loss_sums`] calls left.
    loss_sums: [f64; LOSS_SUMS],
    /// The learning rate and seeds of the current step.
    scalars: StepScalars,
}

impl CpuBackend {
    /// An empty backend; [`Backend::reserve`] sizes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scratch memory of at least `len` values; grows once, so steps after the first allocate nothing.
    fn scratch(&mut self, len: usize) -> Vec<f32> {
        let mut s = std::mem::take(&mut self.scratch);
        if s.len() < len {
            s.resize(len, 0.0);
        }
        s
    }

    /// The mask of `dropout` in the current step, on a tensor of `per_sequence` elements per
    /// sequence: its first element is element `first_sequence · per_sequence` of the tensor
    /// over the step's global batch.
    fn mask_of(&self, dropout: Dropout, per_sequence: u64) -> DropoutMask {
        let offset = self.scalars.first_sequence * per_sequence;
        dropout.mask(self.scalars.dropout_seed, offset)
    }

    fn frame(&mut self) -> Frame<'_> {
        Frame {
            spaces: self.spaces.each_mut().map(|s| (s.as_mut_ptr(), s.len())),
            ints: (self.ints.as_mut_ptr(), self.ints.len()),
            _borrow: PhantomData,
        }
    }
}

/// A LayerNorm's parameters as the reference reads them: `width` values of gain and bias.
fn norm<'a>(f: &Frame<'a>, p: &LayerNormParams, width: usize) -> layernorm::Norm<'a> {
    layernorm::Norm {
        gain: &f.r(p.gain)[..width],
        bias: &f.r(p.bias)[..width],
        eps: p.eps,
    }
}

/// What a LayerNorm of `rows` rows saved, as the reference reads it.
fn saved_view<'a>(f: &Frame<'a>, saved: LayerNormSaved, rows: usize) -> layernorm::Saved<'a> {
    layernorm::Saved {
        xhat: f.r(saved.xhat),
        rstd: &f.r(saved.rstd)[..rows],
    }
}

/// The views one operation works on.
///
/// An operation reads and writes buffers of the same space (an activation and the next one), so
/// the views are made from raw pointers while the frame holds the backend's `&mut` borrow. Each
/// operation declares the buffers it reads alongside the ones it writes, and every written buffer
/// is checked to be in bounds and disjoint from every other declared buffer, which is what makes
/// the views sound.
struct Frame<'a> {
    spaces: [(*mut f32, usize); 7],
    ints: (*mut u32, usize),
    _borrow: PhantomData<&'a mut CpuBackend>,
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

impl<'a> Frame<'a> {
    fn r(&self, b: Buf) -> &'a [f32] {
        let (base, len) = self.spaces[b.space.index()];
        assert!(b.end() <= len, "{b:?} is out of its space");
        // SAFETY: in bounds; no mutable view of it exists (checked when the writes were made).
        unsafe { std::slice::from_raw_parts(base.add(b.offset), b.len) }
    }

    fn ri(&self, b: IBuf) -> &'a [u32] {
        assert!(
            b.offset + b.len <= self.ints.1,
            "{b:?} is out of the int space"
        );
        // SAFETY: as for `r`.
        unsafe { std::slice::from_raw_parts(self.ints.0.add(b.offset), b.len) }
    }

    fn w<const W: usize>(&self, writes: [Buf; W], reads: &[Buf]) -> [&'a mut [f32]; W] {
        for (i, w) in writes.iter().enumerate() {
            assert!(
                w.end() <= self.spaces[w.space.index()].1,
                "{w:?} is out of its space"
            );
            for other in writes[i + 1..].iter().chain(reads) {
                let clash = w.space == other.space
                    && overlaps((w.offset, w.len), (other.offset, other.len));
                assert!(!clash, "written {w:?} overlaps {other:?}");
            }
        }
        writes.map(|w| {
            let base = self.spaces[w.space.index()].0;
            // SAFETY: in bounds and disjoint from every other declared view (checked above).
            unsafe { std::slice::from_raw_parts_mut(base.add(w.offset), w.len) }
        })
    }

    fn wi(&self, write: IBuf, reads: &[IBuf]) -> &'a mut [u32] {
        assert!(
            write.offset + write.len <= self.ints.1,
            "{write:?} is out of the int space"
        );
        for other in reads {
            let clash = overlaps((write.offset, write.len), (other.offset, other.len));
            assert!(!clash, "written {write:?} overlaps {other:?}");
        }
        // SAFETY: in bounds and disjoint from every declared read (checked above).
        unsafe { std::slice::from_raw_parts_mut(self.ints.0.add(write.offset), write.len) }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn reserve(&mut self, sizes: Sizes) -> Result<(), OutOfMemory> {
        fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) -> Result<(), OutOfMemory> {
            v.try_reserve_exact(len.saturating_sub(v.len()))
                .map_err(|e| OutOfMemory {
                    backend: "cpu",
                    bytes: len.saturating_mul(std::mem::size_of::<T>()),
                    detail: e.to_string(),
                })?;
            v.resize(len, T::default());
            Ok(())
        }
        for space in Space::ALL {
            let len = match space {
                Space::Act | Space::ActGrad => sizes.acts,
                Space::GradSum => sizes.grad_sum,
                _ => sizes.params,
            };
            grow(&mut self.spaces[space.index()], len)?;
        }
        grow(&mut self.ints, sizes.ints)
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            params: self.spaces[Space::Param.index()].len(),
            acts: self.spaces[Space::Act.index()].len(),
            ints: self.ints.len(),
            grad_sum: self.spaces[Space::GradSum.index()].len(),
        }
    }

    fn write(&mut self, dst: Buf, src: &[f32]) {
        self.spaces[dst.space.index()][dst.offset..dst.end()].copy_from_slice(src);
    }

    fn read(&self, src: Buf, dst: &mut [f32]) {
        dst.copy_from_slice(&self.spaces[src.space.index()][src.offset..src.end()]);
    }

    fn write_ints(&mut self, dst: IBuf, src: &[u32]) {
        self.ints[dst.offset..dst.offset + dst.len].copy_from_slice(src);
    }

    fn read_ints(&self, src: IBuf, dst: &mut [u32]) {
        dst.copy_from_slice(&self.ints[src.offset..src.offset + src.len]);
    }

    fn fill(&mut self, dst: Buf, value: f32) {
        self.spaces[dst.space.index()][dst.offset..dst.end()].fill(value);
    }

    fn embedding_fwd(&mut self, op: &EmbeddingOp) {
        let (p, saved) = (&op.params, op.saved);
        let f = self.frame();
        let reads = [p.word, p.position, p.token_type, p.norm.gain, p.norm.bias];
        let [out, xhat, rstd] = f.w([op.out, saved.xhat, saved.rstd], &reads);
        let tables = embedding::Tables {
            word: f.r(p.word),
            position: f.r(p.position),
            token_type: f.r(p.token_type),
            norm: norm(&f, &p.norm, p.norm.gain.len),
        };
        let (ids, types) = (f.ri(op.ids), f.ri(op.token_types));
        embedding::forward(ids, types, op.seq, &tables, out, xhat, rstd);
    }

    fn embedding_bwd(&mut self, op: &EmbeddingOp) {
        let (p, saved, dout) = (&op.params, op.saved, op.out.grad());
        let f = self.frame();
        let width = p.norm.gain.len;
        let rows = op.ids.len;
        let writes = [
            saved.xhat.grad().prefix(rows * width),
            p.norm.gain.grad(),
            p.norm.bias.grad(),
            p.word.grad(),
            p.position.grad(),
            p.token_type.grad(),
        ];
        let reads = [dout, p.norm.gain, saved.xhat, saved.rstd];
        let [dsum, dgain, dbias, dword, dpos, dtype] = f.w(writes, &reads);
        dsum.fill(0.0);
        let norm_grads = layernorm::NormGrads {
            gain: dgain,
            bias: dbias,
        };
        let (gain, saved) = (f.r(p.norm.gain), saved_view(&f, saved, rows));
        layernorm::backward(f.r(dout), gain, saved, dsum, None, norm_grads);
        let grads = embedding::TableGrads {
            word: dword,
            position: dpos,
            token_type: dtype,
        };
        let (ids, types) = (f.ri(op.ids), f.ri(op.token_types));
        embedding::scatter_backward(ids, types, op.seq, dsum, grads, width);
    }

    fn linear_fwd(&mut self, op: &LinearOp) {
        let LinearOp {
            x,
            w,
            b,
            y,
            gelu_pre,
            dims,
            ..
        } = *op;
        let f = self.frame();
        let reads = [x, w, b.unwrap_or(x)];
        let bias = b.map(|b| f.r(b));
        match gelu_pre {
            Some(pre) => {
                let [y, pre] = f.w([y, pre], &reads);
                linear::forward(f.r(x), f.r(w), bias, y, Some(pre), dims, op.y_stride);
            }
            None => {
                let [y] = f.w([y], &reads);
                linear::forward(f.r(x), f.r(w), bias, y, None, dims, op.y_stride);
            }
        }
    }

    fn linear_bwd(&mut self, op: &LinearOp) {
        let LinearOp { x, w, b, y, .. } = *op;
        let f = self.frame();
        let dy = match op.gelu_pre {
            Some(pre) => {
                let [dpre] = f.w([pre.grad()], &[pre, y.grad()]);
                linear::gelu_backward(f.r(pre), f.r(y.grad()), dpre);
                pre.grad()
            }
            None => y.grad(),
        };
        // An absent bias is an empty view, which overlaps nothing.
        let db = b.map_or(Buf { len: 0, ..w }, Buf::grad);
        let [dx, dw, db_view] = f.w([x.grad(), w.grad(), db], &[x, w, dy]);
        let db = b.map(|_| db_view);
        let dy = (f.r(dy), op.y_stride);
        if op.overwrite_dx {
            dx[..op.dims.rows * op.dims.inp].fill(0.0);
        }
        linear::backward(f.r(x), f.r(w), dy, dx, dw, db, op.dims);
    }

    fn layernorm_fwd(&mut self, op: &LayerNormOp) {
        let LayerNormOp {
            x,
            residual,
            params: p,
            y,
            saved,
            rows,
            width,
            ..
        } = *op;
        let n = rows * width;
        let mask = op.dropout.map(|d| self.mask_of(d, op.per_sequence()));
        // The branch after its dropout, as a dropout op would have written it.
        let mut dropped = self.scratch(if mask.is_some() { n } else { 0 });
        let f = self.frame();
        let reads = [x, residual.unwrap_or(x), p.gain, p.bias];
        let [y, xhat, rstd] = f.w([y, saved.xhat, saved.rstd], &reads);
        let (residual, norm) = (residual.map(|r| f.r(r)), norm(&f, &p, width));
        let x = match mask {
            Some(mask) => {
                dropout::forward(&f.r(x)[..n], &mut dropped[..n], mask);
                &dropped[..n]
            }
            None => f.r(x),
        };
        layernorm::forward(x, residual, &norm, y, xhat, &mut rstd[..rows]);
        self.scratch = dropped;
    }

    fn layernorm_bwd(&mut self, op: &LayerNormOp) {
        let LayerNormOp {
            x,
            residual,
            params: p,
            y,
            saved,
            rows,
            width,
            overwrite_dx,
            overwrite_dresidual,
            ..
        } = *op;
        let n = rows * width;
        let mask = op.dropout.map(|d| self.mask_of(d, op.per_sequence()));
        // The gradient of the branch after its dropout, as a dropout op would have read it.
        let mut dropped = self.scratch(if mask.is_some() { n } else { 0 });
        let f = self.frame();
        let dresidual = residual.map_or(Buf { len: 0, ..x }, Buf::grad);
        let writes = [x.grad(), dresidual, p.gain.grad(), p.bias.grad()];
        let dy = y.grad();
        let [dx, dres, dgain, dbias] = f.w(writes, &[dy, p.gain, saved.xhat, saved.rstd]);
        for (grad, overwrite) in [
            (&mut *dx, overwrite_dx),
            (&mut *dres, overwrite_dresidual && residual.is_some()),
        ] {
            if overwrite {
                grad[..n].fill(0.0);
            }
        }
        let grads = layernorm::NormGrads {
            gain: dgain,
            bias: dbias,
        };
        let (gain, saved) = (&f.r(p.gain)[..width], saved_view(&f, saved, rows));
        let dres = residual.map(|_| dres);
        match mask {
            Some(mask) => {
                dropped[..n].fill(0.0);
                layernorm::backward(f.r(dy), gain, saved, &mut dropped[..n], dres, grads);
                dropout::backward(&dropped[..n], &mut dx[..n], mask);
            }
            None => layernorm::backward(f.r(dy), gain, saved, dx, dres, grads),
        }
        self.scratch = dropped;
    }

    fn attention_fwd(&mut self, op: &AttentionOp) {
        let mask = op
            .dropout
            .map(|d| self.mask_of(d, op.dims.probs_per_sequence()));
        let mut scratch = self.scratch(op.probs.len);
        let f = self.frame();
        let [ctx, probs] = f.w([op.ctx, op.probs], &[op.qkv]);
        let (qkv, key_mask) = (f.r(op.qkv), f.ri(op.key_mask));
        let pass = attention::Pass {
            dims: op.dims,
            key_mask,
            dropout: mask,
        };
        attention::forward(qkv, ctx, probs, &mut scratch, &pass);
        self.scratch = scratch;
    }

    fn attention_bwd(&mut self, op: &AttentionOp) {
        let AttentionOp {
            qkv, ctx, probs, ..
        } = *op;
        let mask = op
            .dropout
            .map(|d| self.mask_of(d, op.dims.probs_per_sequence()));
        let mut scratch = self.scratch(probs.len);
        let f = self.frame();
        let [dqkv, dscores] = f.w([qkv.grad(), probs.grad()], &[qkv, probs, ctx.grad()]);
        if op.overwrite_dqkv {
            let d = op.dims;
            dqkv[..d.batch * d.seq * 3 * d.hidden()].fill(0.0);
        }
        let (qkv, probs, dctx) = (f.r(qkv), f.r(probs), f.r(ctx.grad()));
        let key_mask = f.ri(op.key_mask);
        let pass = attention::Pass {
            dims: op.dims,
            key_mask,
            dropout: mask,
        };
        attention::backward(qkv, probs, dctx, dqkv, dscores, &mut scratch, &pass);
        self.scratch = scratch;
    }

    fn dropout_fwd(&mut self, op: &DropoutOp) {
        let mask = self.mask_of(op.dropout, op.per_sequence());
        let f = self.frame();
        let [y] = f.w([op.y], &[op.x]);
        dropout::forward(f.r(op.x), y, mask);
    }

    fn dropout_bwd(&mut self, op: &DropoutOp) {
        let mask = self.mask_of(op.dropout, op.per_sequence());
        let (dx, dy) = (op.x.grad(), op.y.grad());
        let f = self.frame();
        let [dx] = f.w([dx], &[dy]);
        if op.overwrite_dx {
            dx.fill(0.0);
        }
        dropout::backward(f.r(dy), dx, mask);
    }

    fn gather_rows(&mut self, op: &GatherRowsOp) {
        let width = op.width;
        let f = self.frame();
        let [out] = f.w([op.out], &[op.x]);
        let x = f.r(op.x);
        for (dst, &r) in out.chunks_mut(width).zip(f.ri(op.rows)) {
            dst.copy_from_slice(&x[r as usize * width..(r as usize + 1) * width]);
        }
    }

    fn gather_rows_bwd(&mut self, op: &GatherRowsOp) {
        let width = op.width;
        let f = self.frame();
        let [dx] = f.w([op.x.grad()], &[op.out.grad()]);
        for (src, &r) in f.r(op.out.grad()).chunks(width).zip(f.ri(op.rows)) {
            dx[r as usize * width..(r as usize + 1) * width]
                .iter_mut()
                .zip(src)
                .for_each(|(acc, v)| *acc += v);
        }
    }

    fn softmax_xent(&mut self, op: &SoftmaxXentOp) {
        let (sample_seed, first_pick) = (self.scalars.sample_seed, self.scalars.first_pick);
        let f = self.frame();
        let [row_loss, dlogits] = f.w([op.row_loss, op.logits.grad()], &[op.logits]);
        let targets = op.targets.prefix(op.rows);
        let pick = op.pick.map(|(mode, picks)| losses::Picks {
            mode,
            sample_seed,
            first_pick,
            out: f.wi(picks.prefix(op.rows), &[targets]),
        });
        let (logits, targets, scale) = (f.r(op.logits), f.ri(targets), op.grad_scale);
        let shape = (op.vocab, op.row_stride);
        losses::softmax_xent(logits, targets, row_loss, dlogits, scale, pick, shape);
    }

    fn replace_tokens(&mut self, op: &ReplaceTokensOp) {
        let f = self.frame();
        let [is_replaced] = f.w([op.is_replaced], &[]);
        let corrupted = f.wi(op.corrupted, &[op.original, op.positions, op.picks]);
        losses::replace_tokens(
            f.ri(op.original),
            f.ri(op.positions),
            f.ri(op.picks),
            corrupted,
            is_replaced,
        );
    }

    fn bce_head(&mut self, op: &BceHeadOp) {
        let BceHeadOp {
            h, w, b, labels, ..
        } = *op;
        let (tokens, width) = (op.row_loss.len, w.len);
        assert_eq!(b.len, 1, "bce_head: one bias");
        assert!(h.len >= tokens * width && op.logits.len >= tokens);
        assert!(labels.len >= tokens && op.mask.len >= tokens);
        let (h, logits) = (h.prefix(tokens * width), op.logits.prefix(tokens));
        let mut dlogits = self.scratch(tokens);
        let f = self.frame();
        let [logits, row_loss] = f.w([logits, op.row_loss], &[h, w, b, labels]);
        let [dh, dw, db] = f.w([h.grad(), w.grad(), b.grad()], &[h, w]);
        bce_head::forward_backward(
            f.r(h),
            f.r(w),
            f.r(b),
            f.r(labels),
            f.ri(op.mask),
            logits,
            row_loss,
            &mut dlogits[..tokens],
            dh,
            dw,
            db,
            op.grad_scale,
        );
        self.scratch = dlogits;
    }

    fn accumulate(&mut self, op: &AccumulateOp) {
        let f = self.frame();
        let [dst] = f.w([op.dst], &[op.src]);
        optim::accumulate(f.r(op.src), dst, op.overwrite);
    }

    fn loss_sums(&mut self, op: &LossSumsOp) {
        op.sizes();
        let f = self.frame();
        let sums = losses::loss_sums(
            f.r(op.gen_row_loss),
            f.r(op.disc_row_loss),
            (f.r(op.disc_logits), f.r(op.is_replaced), f.ri(op.mask)),
            op.picks.map(|p| f.ri(p)),
            f.ri(op.targets),
        );
        for (held, s) in self.loss_sums.iter_mut().zip(sums) {
            *held = if op.first { s } else { *held + s };
        }
    }

    fn read_loss_sums(&self) -> [f64; LOSS_SUMS] {
        self.loss_sums
    }

    fn grad_norm(&mut self) -> f32 {
        optim::global_norm(&self.spaces[Space::Grad.index()])
    }

    fn adamw(&mut self, group: &ParamGroup, grad_scale: f32) {
        let lr = self.scalars.lr * group.lr_scale;
        let params = group.params;
        let f = self.frame();
        let g = params.in_space(Space::Grad);
        let [w, m, v] = f.w(
            [
                params,
                params.in_space(Space::AdamM),
                params.in_space(Space::AdamV),
            ],
            &[g],
        );
        optim::adamw(w, f.r(g), m, v, grad_scale, lr, &group.adamw);
    }

    fn optimizer_step(&mut self, op: &OptimizerStep) {
        let norm = self.grad_norm();
        self.last_grad_norm = norm;
        if norm.is_finite() {
            let scale = if norm > op.max_norm {
                op.max_norm / norm
            } else {
                1.0
            };
            for group in op.groups {
                self.adamw(group, scale);
            }
        }
    }

    fn last_grad_norm(&self) -> f32 {
        self.last_grad_norm
    }

    fn begin_step(&mut self, scalars: StepScalars, _recording: Option<u64>) -> bool {
        self.scalars = scalars;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_that_cannot_be_had_is_an_error_and_the_old_sizes_stay() {
        let mut be = CpuBackend::new();
        let fits = Sizes {
            params: 16,
            acts: 32,
            ints: 8,
            grad_sum: 16,
        };
        be.reserve(fits).unwrap();
        let huge = Sizes {
            acts: usize::MAX / 8,
            ..fits
        };
        let err = be.reserve(huge).unwrap_err();
        assert_eq!(err.backend, "cpu");
        assert_eq!(err.bytes, huge.acts * 4);
        assert!(err.to_string().contains("lower the batch size"), "{err}");
        assert_eq!(be.sizes(), fits);
    }
}
