//! Multi-head self-attention with a key-padding mask, one sequence per rayon task.
//!
//! Queries, keys and values are read in place from the fused `[tokens, 3·hidden]` projection with
//! strided products, so no head is ever copied out. The probabilities are saved for the backward
//! pass (the CPU has the memory; the CUDA kernel recomputes them from the log-sum-exp instead).

use super::matmul::{matmul, MatLayout, Threads};
use crate::backend::{AttentionDims, DropoutMask};
use rayon::prelude::*;

/// What a pass attends over: its sizes, the key-padding mask (`[batch·seq]`, 1 for a real
/// token) and the dropout mask of the probabilities.
pub struct Pass<'a> {
    /// The sizes.
    pub dims: AttentionDims,
    /// Keys whose mask is 0 get no attention.
    pub key_mask: &'a [u32],
    /// Dropout on the probabilities.
    pub dropout: Option<DropoutMask>,
}

fn head_layout(d: &AttentionDims, row_stride: usize, offset: usize) -> MatLayout {
    MatLayout {
        offset,
        rows: d.seq,
        cols: d.head_dim,
        row_stride,
        col_stride: 1,
    }
}

/// Softmax of each row of `scores` after scaling, over the keys whose mask is 1; padding keys get
/// probability 0. A sequence with no real token at all attends uniformly, as HF's additive mask of
/// the most negative float makes it (and the backward pass treats its scores as constant).
fn masked_softmax(scores: &mut [f32], key_mask: &[u32], scale: f32) {
    let width = key_mask.len();
    if key_mask.iter().all(|&m| m == 0) {
        scores.fill(1.0 / width as f32);
        return;
    }
    for row in scores.chunks_mut(width) {
        let mut max = f32::NEG_INFINITY;
        for (j, s) in row.iter_mut().enumerate() {
            *s *= scale;
            if key_mask[j] != 0 {
                max = max.max(*s);
            }
        }
        let mut sum = 0.0f32;
        for (j, s) in row.iter_mut().enumerate() {
            *s = if key_mask[j] != 0 {
                (*s - max).exp()
            } else {
                0.0
            };
            sum += *s;
        }
        row.iter_mut().for_each(|s| *s /= sum);
    }
}

/// The dropped-out probabilities of one head: `out = p ∘ mask/(1−p)`, where `first` is the index
/// of `p[0]` in the whole probability buffer.
fn drop_probs(p: &[f32], out: &mut [f32], dropout: &DropoutMask, first: usize) {
    dropout.scales(first, out);
    out.iter_mut().zip(p).for_each(|(o, &v)| *o *= v);
}

/// The forward pass; `scratch` (as long as `probs`) holds the dropped-out probabilities.
pub fn forward(qkv: &[f32], ctx: &mut [f32], probs: &mut [f32], scratch: &mut [f32], pass: &Pass) {
    let Pass {
        dims: d,
        key_mask,
        dropout,
    } = *pass;
    let (t, h) = (d.seq, d.hidden());
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let per_seq = d.heads * t * t;
    ctx[..d.batch * t * h]
        .par_chunks_mut(t * h)
        .zip(probs[..d.batch * per_seq].par_chunks_mut(per_seq))
        .zip(scratch[..d.batch * per_seq].par_chunks_mut(per_seq))
        .enumerate()
        .for_each(|(b, ((ctx, probs), scratch))| {
            let qkv = &qkv[b * t * 3 * h..(b + 1) * t * 3 * h];
            let mask = &key_mask[b * t..(b + 1) * t];
            for head in 0..d.heads {
                let p = &mut probs[head * t * t..(head + 1) * t * t];
                let q = head_layout(&d, 3 * h, head * d.head_dim);
                let k = head_layout(&d, 3 * h, h + head * d.head_dim);
                let v = head_layout(&d, 3 * h, 2 * h + head * d.head_dim);
                let pl = MatLayout::row_major(t, t);
                matmul(p, pl, (qkv, q), (qkv, k.t()), false, Threads::Caller);
                masked_softmax(p, mask, scale);
                let c = head_layout(&d, h, head * d.head_dim);
                match &dropout {
                    Some(drop) => {
                        let pd = &mut scratch[head * t * t..(head + 1) * t * t];
                        drop_probs(p, pd, drop, b * per_seq + head * t * t);
                        matmul(ctx, c, (pd, pl), (qkv, v), false, Threads::Caller);
                    }
                    None => matmul(ctx, c, (p, pl), (qkv, v), false, Threads::Caller),
                }
            }
        });
}

/// The backward pass; `dscores` and `scratch` (each as long as `probs`) are working memory.
pub fn backward(
    qkv: &[f32],
    probs: &[f32],
    dctx: &[f32],
    dqkv: &mut [f32],
    dscores: &mut [f32],
    scratch: &mut [f32],
    pass: &Pass,
) {
    let Pass {
        dims: d,
        key_mask,
        dropout,
    } = *pass;
    let (t, h) = (d.seq, d.hidden());
    let per_seq = d.heads * t * t;
    dqkv[..d.batch * t * 3 * h]
        .par_chunks_mut(t * 3 * h)
        .zip(dscores[..d.batch * per_seq].par_chunks_mut(per_seq))
        .zip(scratch[..d.batch * per_seq].par_chunks_mut(per_seq))
        .enumerate()
        .for_each(|(b, ((dqkv, dscores), scratch))| {
            let qkv = &qkv[b * t * 3 * h..(b + 1) * t * 3 * h];
            let dctx = &dctx[b * t * h..(b + 1) * t * h];
            // A sequence with no real token attends uniformly whatever its scores, so its
            // queries and keys get no gradient: its scores count as scaled by 0.
            let any_real = key_mask[b * t..(b + 1) * t].iter().any(|&m| m != 0);
            let scale = if any_real {
                1.0 / (d.head_dim as f32).sqrt()
            } else {
                0.0
            };
            for head in 0..d.heads {
                let p = &probs[(b * d.heads + head) * t * t..(b * d.heads + head + 1) * t * t];
                let ds = &mut dscores[head * t * t..(head + 1) * t * t];
                let pl = MatLayout::row_major(t, t);
                let q = head_layout(&d, 3 * h, head * d.head_dim);
                let k = head_layout(&d, 3 * h, h + head * d.head_dim);
                let v = head_layout(&d, 3 * h, 2 * h + head * d.head_dim);
                let dc = head_layout(&d, h, head * d.head_dim);
                // dP = dctx·Vᵀ and dV += Pᵀ·dctx, through the dropout mask when there is one.
                matmul(ds, pl, (dctx, dc), (qkv, v.t()), false, Threads::Caller);
                match &dropout {
                    Some(drop) => {
                        // The mask is drawn once into the scratch: dP ∘= mask/(1−p), then the
                        // scratch becomes the dropped probabilities for dV.
                        let pd = &mut scratch[head * t * t..(head + 1) * t * t];
                        drop.scales(b * per_seq + head * t * t, pd);
                        ds.iter_mut().zip(pd.iter()).for_each(|(g, &m)| *g *= m);
                        pd.iter_mut().zip(p).for_each(|(m, &pv)| *m *= pv);
                        matmul(dqkv, v, (pd, pl.t()), (dctx, dc), true, Threads::Caller);
                    }
                    None => matmul(dqkv, v, (p, pl.t()), (dctx, dc), true, Threads::Caller),
                }
                // Softmax backward: dS = P ∘ (dP − Σ_j P·dP), then the 1/√d scale.
                for (ds_row, p_row) in ds.chunks_mut(t).zip(p.chunks(t)) {
                    let dot: f32 = ds_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                    ds_row
                        .iter_mut()
                        .zip(p_row)
                        .for_each(|(g, &pv)| *g = pv * (*g - dot) * scale);
                }
                // dQ += dS·K and dK += dSᵀ·Q
                matmul(dqkv, q, (ds, pl), (qkv, k), true, Threads::Caller);
                matmul(dqkv, k, (ds, pl.t()), (qkv, q), true, Threads::Caller);
            }
        });
}
