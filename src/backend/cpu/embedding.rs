//! The embedding block: word + position + token-type lookups summed, then LayerNorm.

use super::layernorm::{self, Norm};
use rayon::prelude::*;

/// The tables and LayerNorm parameters of the block, as host slices; the LayerNorm's width is
/// the tables'.
pub struct Tables<'a> {
    /// Word embeddings, row-major `[vocab, width]`; indexed by token id.
    pub word: &'a [f32],
    /// Position embeddings, row-major `[max_positions, width]`; indexed by position in sequence.
    pub position: &'a [f32],
    /// Token-type (segment) embeddings, row-major `[type_vocab, width]`.
    pub token_type: &'a [f32],
    /// The LayerNorm after the sum.
    pub norm: Norm<'a>,
}

/// Gathers and sums the three embeddings of each token, then normalises; saves `xhat` and `rstd`.
///
/// `ids` and `types` hold one entry per token of a `[batch, seq]` batch, flattened row-major; a
/// token's position is its index modulo `seq`. `out` and `xhat` are `[tokens, width]` and `rstd`
/// is `[tokens]` (1/σ of each row); each may be longer, and only the prefix is written. Ids out
/// of range panic.
pub fn forward(
    ids: &[u32],
    types: &[u32],
    seq: usize,
    t: &Tables,
    out: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let (rows, width) = (ids.len(), t.norm.gain.len());
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
            layernorm::normalize_row(xh, rs, t.norm.eps);
            for i in 0..width {
                y[i] = xh[i] * t.norm.gain[i] + t.norm.bias[i];
            }
        });
}

/// The gradients of the three tables, given the gradient of the pre-LayerNorm sum.
/// Rows are scattered in token order, so repeated ids add up the same way on every run.
pub struct TableGrads<'a> {
    /// Accumulates into the word table's gradient, shaped like [`Tables::word`].
    pub word: &'a mut [f32],
    /// Accumulates into the position table's gradient, shaped like [`Tables::position`].
    pub position: &'a mut [f32],
    /// Accumulates into the token-type table's gradient, shaped like [`Tables::token_type`].
    pub token_type: &'a mut [f32],
}

/// Adds each row of `dsum` (`[tokens, width]`, the gradient of the pre-LayerNorm sum) into the
/// word, position and token-type rows that token read in [`forward`]. Runs on one thread so the
/// order of additions, and so the result, is the same on every run; the gradients are accumulated,
/// not overwritten.
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
