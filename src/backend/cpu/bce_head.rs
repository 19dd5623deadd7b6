//! The discriminator's last projection fused with its loss ([`BceHeadOp`](crate::backend::BceHeadOp))
//! on slices, shared by [`CpuBackend`](super::CpuBackend) and the C ABI's ops.

use super::{linear, losses};
use crate::backend::LinearDims;

/// `logits = h·w + b` over `tokens = row_loss.len()` rows of `h` (width `w.len()`), the per-token
/// BCE against `labels` where `mask` is 1 into `row_loss`, and `dh += d·w`, `dw += Σ d·h`,
/// `db += Σ d` with `d = grad_scale · (σ(logit) − label)`; `dlogits` (`tokens` values) is
/// working memory. The reference is the composition of the one-column linear layer, the loss,
/// and the linear layer's backward.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    h: &[f32],
    w: &[f32],
    b: &[f32],
    labels: &[f32],
    mask: &[u32],
    logits: &mut [f32],
    row_loss: &mut [f32],
    dlogits: &mut [f32],
    dh: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    grad_scale: f32,
) {
    let dims = LinearDims {
        rows: row_loss.len(),
        inp: w.len(),
        out: 1,
    };
    linear::forward(h, w, Some(b), logits, None, dims, dims.out);
    losses::sigmoid_bce(logits, labels, mask, row_loss, dlogits, grad_scale);
    linear::backward(h, w, (dlogits, dims.out), dh, dw, Some(db), dims);
}
