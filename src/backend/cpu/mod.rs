//! The CPU backend: the f32 reference of every fused operation, parallel with rayon.
//!
//! The operations themselves are plain functions over slices, one file per operation, so they
//! read as the specification the CUDA kernels are tested against. This file only maps [`Buf`]
//! handles to slices.

pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod layernorm;
pub mod linear;
pub mod losses;
pub mod matmul;
pub mod optim;

use std::marker::PhantomData;

use super::{
    AdamW, AttentionDims, Backend, Buf, Dropout, EmbeddingParams, IBuf, LayerNormParams,
    LayerNormSaved, LinearDims, OutOfMemory, Pick, Sizes, Space,
};

/// The CPU backend. Memory is one `Vec` per space.
#[derive(Default)]
pub struct CpuBackend {
    spaces: [Vec<f32>; 6],
    ints: Vec<u32>,
    /// Room for one layer's dropped-out attention probabilities, rebuilt where they are needed.
    scratch: Vec<f32>,
    /// What the last `optimizer_step` measured.
    last_grad_norm: f32,
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

    fn frame(&mut self) -> Frame<'_> {
        Frame {
            spaces: self.spaces.each_mut().map(|s| (s.as_mut_ptr(), s.len())),
            ints: (self.ints.as_mut_ptr(), self.ints.len()),
            _borrow: PhantomData,
        }
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
    spaces: [(*mut f32, usize); 6],
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

    fn embedding_fwd(
        &mut self,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        p: &EmbeddingParams,
        out: Buf,
        saved: LayerNormSaved,
    ) {
        let f = self.frame();
        let reads = [p.word, p.position, p.token_type, p.norm.gain, p.norm.bias];
        let [out, xhat, rstd] = f.w([out, saved.xhat, saved.rstd], &reads);
        let tables = embedding::Tables {
            word: f.r(p.word),
            position: f.r(p.position),
            token_type: f.r(p.token_type),
            gain: f.r(p.norm.gain),
            bias: f.r(p.norm.bias),
            eps: p.norm.eps,
        };
        let (ids, types) = (f.ri(ids), f.ri(token_types));
        embedding::forward(ids, types, seq, &tables, p.norm.gain.len, out, xhat, rstd);
    }

    fn embedding_bwd(
        &mut self,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        p: &EmbeddingParams,
        dout: Buf,
        saved: LayerNormSaved,
    ) {
        let f = self.frame();
        let width = p.norm.gain.len;
        let rows = ids.len;
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
        layernorm::backward(
            f.r(dout),
            f.r(p.norm.gain),
            f.r(saved.xhat),
            &f.r(saved.rstd)[..rows],
            dsum,
            None,
            dgain,
            dbias,
            width,
        );
        let grads = embedding::TableGrads {
            word: dword,
            position: dpos,
            token_type: dtype,
        };
        embedding::scatter_backward(f.ri(ids), f.ri(token_types), seq, dsum, grads, width);
    }

    fn linear_fwd(
        &mut self,
        x: Buf,
        w: Buf,
        b: Option<Buf>,
        y: Buf,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    ) {
        let f = self.frame();
        let reads = [x, w, b.unwrap_or(x)];
        let bias = b.map(|b| f.r(b));
        match gelu_pre {
            Some(pre) => {
                let [y, pre] = f.w([y, pre], &reads);
                linear::forward(f.r(x), f.r(w), bias, y, Some(pre), dims);
            }
            None => {
                let [y] = f.w([y], &reads);
                linear::forward(f.r(x), f.r(w), bias, y, None, dims);
            }
        }
    }

    fn linear_bwd(
        &mut self,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        dw: Buf,
        db: Option<Buf>,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    ) {
        let f = self.frame();
        let dy = match gelu_pre {
            Some(pre) => {
                let [dpre] = f.w([pre.grad()], &[pre, dy]);
                linear::gelu_backward(f.r(pre), f.r(dy), dpre);
                pre.grad()
            }
            None => dy,
        };
        // An absent output is an empty view, which overlaps nothing.
        let empty = Buf { len: 0, ..dw };
        let [dw_view, dx_view, db_view] =
            f.w([dw, dx.unwrap_or(empty), db.unwrap_or(empty)], &[x, w, dy]);
        linear::backward(
            f.r(x),
            f.r(w),
            f.r(dy),
            dx.map(|_| dx_view),
            dw_view,
            db.map(|_| db_view),
            dims,
        );
    }

    fn layernorm_fwd(
        &mut self,
        x: Buf,
        residual: Option<Buf>,
        p: &LayerNormParams,
        y: Buf,
        saved: LayerNormSaved,
        rows: usize,
        width: usize,
    ) {
        let f = self.frame();
        let reads = [x, residual.unwrap_or(x), p.gain, p.bias];
        let [y, xhat, rstd] = f.w([y, saved.xhat, saved.rstd], &reads);
        layernorm::forward(
            f.r(x),
            residual.map(|r| f.r(r)),
            f.r(p.gain),
            f.r(p.bias),
            p.eps,
            y,
            xhat,
            &mut rstd[..rows],
            width,
        );
    }

    fn layernorm_bwd(
        &mut self,
        dy: Buf,
        p: &LayerNormParams,
        saved: LayerNormSaved,
        dx: Buf,
        dresidual: Option<Buf>,
        rows: usize,
        width: usize,
    ) {
        let f = self.frame();
        let empty = Buf { len: 0, ..dx };
        let writes = [dx, dresidual.unwrap_or(empty), p.gain.grad(), p.bias.grad()];
        let [dx, dres, dgain, dbias] = f.w(writes, &[dy, p.gain, saved.xhat, saved.rstd]);
        layernorm::backward(
            f.r(dy),
            f.r(p.gain),
            f.r(saved.xhat),
            &f.r(saved.rstd)[..rows],
            dx,
            dresidual.map(|_| dres),
            dgain,
            dbias,
            width,
        );
    }

    fn attention_fwd(
        &mut self,
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    ) {
        let mut scratch = self.scratch(probs.len);
        let f = self.frame();
        let [ctx, probs] = f.w([ctx, probs], &[qkv]);
        let mask = f.ri(key_mask);
        attention::forward(f.r(qkv), mask, ctx, probs, &mut scratch, dropout, dims);
        self.scratch = scratch;
    }

    fn attention_bwd(
        &mut self,
        qkv: Buf,
        key_mask: IBuf,
        _ctx: Buf,
        probs: Buf,
        dctx: Buf,
        dqkv: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    ) {
        let mut scratch = self.scratch(probs.len);
        let f = self.frame();
        let [dqkv, dscores] = f.w([dqkv, probs.grad()], &[qkv, probs, dctx]);
        let (qkv, probs, dctx) = (f.r(qkv), f.r(probs), f.r(dctx));
        let mask = f.ri(key_mask);
        attention::backward(
            qkv,
            mask,
            probs,
            dctx,
            dqkv,
            dscores,
            &mut scratch,
            dropout,
            dims,
        );
        self.scratch = scratch;
    }

    fn dropout_fwd(&mut self, x: Buf, y: Buf, dropout: Dropout) {
        let f = self.frame();
        let [y] = f.w([y], &[x]);
        dropout::forward(f.r(x), y, dropout);
    }

    fn dropout_bwd(&mut self, dy: Buf, dx: Buf, dropout: Dropout) {
        let f = self.frame();
        let [dx] = f.w([dx], &[dy]);
        dropout::backward(f.r(dy), dx, dropout);
    }

    fn gather_rows(&mut self, x: Buf, rows: IBuf, out: Buf, width: usize) {
        let f = self.frame();
        let [out] = f.w([out], &[x]);
        let x = f.r(x);
        for (dst, &r) in out.chunks_mut(width).zip(f.ri(rows)) {
            dst.copy_from_slice(&x[r as usize * width..(r as usize + 1) * width]);
        }
    }

    fn gather_rows_bwd(&mut self, dout: Buf, rows: IBuf, dx: Buf, width: usize) {
        let f = self.frame();
        let [dx] = f.w([dx], &[dout]);
        for (src, &r) in f.r(dout).chunks(width).zip(f.ri(rows)) {
            dx[r as usize * width..(r as usize + 1) * width]
                .iter_mut()
                .zip(src)
                .for_each(|(acc, v)| *acc += v);
        }
    }

    fn softmax_xent(
        &mut self,
        logits: Buf,
        targets: IBuf,
        row_loss: Buf,
        grad_scale: f32,
        pick: Option<(Pick, IBuf)>,
        rows: usize,
        vocab: usize,
    ) {
        let f = self.frame();
        let [row_loss, dlogits] = f.w([row_loss, logits.grad()], &[logits]);
        let targets = targets.prefix(rows);
        let pick = pick.map(|(mode, picks)| (mode, f.wi(picks.prefix(rows), &[targets])));
        losses::softmax_xent(
            f.r(logits),
            f.ri(targets),
            row_loss,
            dlogits,
            grad_scale,
            pick,
            vocab,
        );
    }

    fn replace_tokens(
        &mut self,
        original: IBuf,
        positions: IBuf,
        picks: IBuf,
        corrupted: IBuf,
        is_replaced: Buf,
    ) {
        let f = self.frame();
        let [is_replaced] = f.w([is_replaced], &[]);
        let corrupted = f.wi(corrupted, &[original, positions, picks]);
        losses::replace_tokens(
            f.ri(original),
            f.ri(positions),
            f.ri(picks),
            corrupted,
            is_replaced,
        );
    }

    fn bce_head(
        &mut self,
        h: Buf,
        w: Buf,
        b: Buf,
        labels: Buf,
        mask: IBuf,
        logits: Buf,
        row_loss: Buf,
        grad_scale: f32,
    ) {
        let (tokens, width) = (row_loss.len, w.len);
        assert_eq!(b.len, 1, "bce_head: one bias");
        assert!(h.len >= tokens * width && logits.len >= tokens);
        assert!(labels.len >= tokens && mask.len >= tokens);
        // The reference is the composition: the one-column linear layer, the loss into a
        // per-token gradient, and the linear layer's backward.
        let dims = LinearDims {
            rows: tokens,
            inp: width,
            out: 1,
        };
        let (h, logits) = (h.prefix(tokens * width), logits.prefix(tokens));
        let mut dlogits = self.scratch(tokens);
        let dlogits_view = &mut dlogits[..tokens];
        let f = self.frame();
        let [logits_view, row_loss] = f.w([logits, row_loss], &[h, w, b, labels]);
        linear::forward(f.r(h), f.r(w), Some(f.r(b)), logits_view, None, dims);
        let (labels, mask) = (f.r(labels), f.ri(mask));
        losses::sigmoid_bce(
            logits_view,
            labels,
            mask,
            row_loss,
            dlogits_view,
            grad_scale,
        );
        let [dh, dw, db] = f.w([h.grad(), w.grad(), b.grad()], &[h, w]);
        linear::backward(f.r(h), f.r(w), dlogits_view, Some(dh), dw, Some(db), dims);
        self.scratch = dlogits;
    }

    fn grad_norm(&mut self) -> f32 {
        optim::global_norm(&self.spaces[Space::Grad.index()])
    }

    fn adamw(&mut self, params: Buf, grad_scale: f32, hyper: &AdamW) {
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
        optim::adamw(w, f.r(g), m, v, grad_scale, hyper);
    }

    fn optimizer_step(&mut self, groups: &[(Buf, AdamW)], max_norm: f32) {
        let norm = self.grad_norm();
        self.last_grad_norm = norm;
        if norm.is_finite() {
            let scale = if norm > max_norm {
                max_norm / norm
            } else {
                1.0
            };
            for (params, hyper) in groups {
                self.adamw(*params, scale, hyper);
            }
        }
    }

    fn last_grad_norm(&self) -> f32 {
        self.last_grad_norm
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
