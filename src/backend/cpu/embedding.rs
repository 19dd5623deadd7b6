//! The embedding block: word + position + token-type lookups summed, then LayerNorm.

use super::layernorm;
use rayon::prelude::*;

/// The tables and LayerNorm parameters of the block, as host slices.
pub struct Tables<'a> {
    pub word: &'a [f32],
    pub position: &'a [f32],
    pub token_type: &'a [f32],
    pub gain: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f32,
}

/// Gathers and sums the three embeddings of each token, then normalises; saves `xhat` and `rstd`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ids: &[u32],
    types: &[u32],
    seq: usize,
    t: &Tables,
    width: usize,
    out: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let rows = ids.len();
    out[..rows * width]
        .par_chunks_mut(width)
        .zip(xhat[..rows * width].par_chunks_mut(width))
        .zip(rstd[..rows].par_iter_mut())
        .enumerate()
        .for_each(|(r, ((y, xh), rs))| {
            let word = &t.word[ids[r] as usize * width..][..width];
            let pos = &t.position[(r % seq) * width..][..width];
            let typ = &t.token_type[types[r] as usize * width..][..width];
            for i in 0..width {
                xh[i] = word[i] + pos[i] + typ[i];
            }
            layernorm::normalize_row(xh, rs, t.eps);
            for i in 0..width {
                y[i] = xh[i] * t.gain[i] + t.bias[i];
            }
        });
}

/// The gradients of the three tables, given the gradient of the pre-LayerNorm sum.
/// Rows are scattered in token order, so repeated ids add up the same way on every run.
pub struct TableGrads<'a> {
    pub word: &'a mut [f32],
    pub position: &'a mut [f32],
    pub token_type: &'a mut [f32],
}

pub fn scatter_backward(
    ids: &[u32],
    types: &[u32],
    seq: usize,
    dsum: &[f32],
    g: TableGrads,
    width: usize,
) {
    for (r, d) in dsum.chunks(width).take(ids.len()).enumerate() {
        let targets = [
            (&mut *g.word, ids[r] as usize),
            (&mut *g.position, r % seq),
            (&mut *g.token_type, types[r] as usize),
        ];
        for (table, row) in targets {
            table[row * width..(row + 1) * width]
                .iter_mut()
                .zip(d)
                .for_each(|(acc, v)| *acc += v);
        }
    }
}
