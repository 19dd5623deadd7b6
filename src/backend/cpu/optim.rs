//! The global gradient norm and AdamW over the flat parameter buffer.

use crate::backend::AdamW;
use rayon::prelude::*;

/// Fixed-size blocks make the parallel sum independent of the thread count.
const NORM_BLOCK: usize = 1 << 14;

/// √Σ g², summed per block in f64 and the blocks added in order, so it is deterministic.
pub fn global_norm(grads: &[f32]) -> f32 {
    let partial: Vec<f64> = grads
        .par_chunks(NORM_BLOCK)
        .map(|block| block.iter().map(|&g| (g as f64) * (g as f64)).sum())
        .collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// `dst = src` (`overwrite`) or `dst += src`: one micro-batch's gradients into their sum.
pub fn accumulate(src: &[f32], dst: &mut [f32], overwrite: bool) {
    assert_eq!(src.len(), dst.len(), "accumulate: lengths");
    if overwrite {
        dst.copy_from_slice(src);
    } else {
        dst.par_iter_mut().zip(src).for_each(|(d, &s)| *d += s);
    }
}

/// Adam without bias correction, with decoupled weight decay:
/// `m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; w ← w − lr·(m/(√v+ε) + wd·w)`.
pub fn adamw(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    grad_scale: f32,
    lr: f32,
    h: &AdamW,
) {
    w.par_iter_mut()
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .zip(g.par_iter())
        .for_each(|((w, (m, v)), &g)| {
            let g = g * grad_scale;
            *m = h.beta1 * *m + (1.0 - h.beta1) * g;
            *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
            *w -= lr * (*m / (v.sqrt() + h.eps) + h.weight_decay * *w);
        });
}
