//! The two losses of ELECTRA and the replacement that links them.

use crate::backend::{Pick, LOSS_SUMS};
use crate::rng::{unit_f32, Purpose, Stream};
use rayon::prelude::*;

/// The Gumbel noise added to logit `col` of row `row`: −log(−log(u + 1e-9) + 1e-9), as the
/// original code draws it. The stream's step is the row, so every (row, col) has its own counter.
/// Each logarithm runs in f64 and rounds once to f32 (the rest is f32 arithmetic), so the CUDA
/// kernel (`gumbel_noise` in kernels/common.cuh) draws exactly the same values, which f32 `ln`
/// does not guarantee across math libraries.
pub fn gumbel_noise(seed: u64, row: u64, col: usize) -> f32 {
    let ln = |x: f32| (x as f64).ln() as f32;
    let stream = Stream::new(seed, Purpose::Gumbel, row);
    let u = unit_f32(stream.words(col as u32)[0]);
    -ln(-ln(u + 1e-9) + 1e-9)
}

/// How [`softmax_xent`] picks a replacement per row, and where it goes.
pub struct Picks<'a> {
    /// Argmax, or Gumbel-max sampling.
    pub mode: Pick,
    /// Keys the Gumbel noise (the step's [`StepScalars::sample_seed`](crate::backend::StepScalars)).
    pub sample_seed: u64,
    /// The Gumbel row of the first row: masked positions of the step's global batch before it
    /// ([`StepScalars::first_pick`](crate::backend::StepScalars)).
    pub first_pick: u64,
    /// One token per row.
    pub out: &'a mut [u32],
}

/// Softmax cross-entropy per row, its gradient into `dlogits`, and the replacement pick; `shape`
/// is (vocab, row stride): each row's `vocab` logits start `stride` values after the last's, and
/// the gradient's padding is left as it was.
pub fn softmax_xent(
    logits: &[f32],
    targets: &[u32],
    row_loss: &mut [f32],
    dlogits: &mut [f32],
    grad_scale: f32,
    pick: Option<Picks>,
    (vocab, stride): (usize, usize),
) {
    let rows = targets.len();
    let (mode, sample_seed, first_pick, picks) = match pick {
        Some(p) => (Some(p.mode), p.sample_seed, p.first_pick, Some(p.out)),
        None => (None, 0, 0, None),
    };
    let per_row = |r: usize, dl: &mut [f32], loss: &mut f32| -> u32 {
        let row = &logits[r * stride..r * stride + vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
        let log_z = max + sum.ln();
        let target = targets[r] as usize;
        *loss = log_z - row[target];
        for (j, (d, &x)) in dl.iter_mut().zip(row).enumerate() {
            let p = (x - log_z).exp();
            *d = grad_scale * (p - if j == target { 1.0 } else { 0.0 });
        }
        match mode {
            Some(Pick::Argmax) => argmax(row.iter().copied()),
            Some(Pick::Gumbel) => argmax(
                row.iter()
                    .enumerate()
                    .map(|(j, &x)| x + gumbel_noise(sample_seed, first_pick + r as u64, j)),
            ),
            None => 0,
        }
    };
    let rows_iter = dlogits
        .par_chunks_mut(stride)
        .take(rows)
        .map(|row| &mut row[..vocab])
        .zip(row_loss[..rows].par_iter_mut())
        .enumerate();
    match picks {
        Some(picks) => rows_iter
            .zip(picks[..rows].par_iter_mut())
            .for_each(|((r, (dl, loss)), p)| *p = per_row(r, dl, loss)),
        None => rows_iter.for_each(|(r, (dl, loss))| {
            per_row(r, dl, loss);
        }),
    }
}

/// The index of the first largest value.
fn argmax(values: impl Iterator<Item = f32>) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i as u32, v);
        }
    }
    best.0
}

/// The discriminator's input and labels: replaced tokens that equal the original count as original.
pub fn replace_tokens(
    original: &[u32],
    positions: &[u32],
    picks: &[u32],
    corrupted: &mut [u32],
    is_replaced: &mut [f32],
) {
    corrupted.copy_from_slice(original);
    is_replaced.fill(0.0);
    for (&pos, &tok) in positions.iter().zip(picks) {
        let pos = pos as usize;
        corrupted[pos] = tok;
        is_replaced[pos] = if tok != original[pos] { 1.0 } else { 0.0 };
    }
}

/// The sums of [`LossSumsOp`](crate::backend::LossSumsOp), in its order: each loss summed one
/// row after another in f64, and the three counts. `mask`, `disc_logits` and `is_replaced` are
/// as long as `disc_row_loss`; `picks` and `targets` as `gen_row_loss`.
pub fn loss_sums(
    gen_row_loss: &[f32],
    disc_row_loss: &[f32],
    (disc_logits, is_replaced, mask): (&[f32], &[f32], &[u32]),
    picks: Option<&[u32]>,
    targets: &[u32],
) -> [f64; LOSS_SUMS] {
    let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
    let (mut right, mut replaced) = (0usize, 0usize);
    for i in (0..mask.len()).filter(|&i| mask[i] != 0) {
        let label = is_replaced[i] > 0.5;
        right += usize::from((disc_logits[i] > 0.0) == label);
        replaced += usize::from(label);
    }
    let hits = picks.map_or(0, |p| p.iter().zip(targets).filter(|(a, b)| a == b).count());
    [
        sum(gen_row_loss),
        sum(disc_row_loss),
        right as f64,
        replaced as f64,
        hits as f64,
    ]
}

/// Numerically stable sigmoid BCE with logits, and its gradient, over the unmasked tokens.
pub fn sigmoid_bce(
    logits: &[f32],
    labels: &[f32],
    mask: &[u32],
    row_loss: &mut [f32],
    dlogits: &mut [f32],
    grad_scale: f32,
) {
    row_loss
        .par_iter_mut()
        .zip(dlogits.par_iter_mut())
        .enumerate()
        .for_each(|(i, (loss, d))| {
            if mask[i] == 0 {
                *loss = 0.0;
                *d = 0.0;
                return;
            }
            let (x, y) = (logits[i], labels[i]);
            *loss = x.max(0.0) - x * y + (-x.abs()).exp().ln_1p();
            *d = grad_scale * (1.0 / (1.0 + (-x).exp()) - y);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The metric sums count real tokens only (padding's logit and label are not looked at),
    /// match a logit's sign with its label at 0.5, and count hits only with picks.
    #[test]
    fn loss_sums_count_real_tokens_and_picks() {
        let gen = [0.5, 1.25, 2.0];
        let disc = [0.1, 0.2, 0.3, 0.4, 0.0];
        let logits = [1.0, -1.0, 0.5, -0.25, 9.0];
        let labels = [1.0, 1.0, 0.0, 0.0, 1.0];
        let mask = [1, 1, 1, 1, 0];
        let (picks, targets) = ([7, 3, 9], [7, 4, 9]);
        let tokens = (&logits[..], &labels[..], &mask[..]);
        let sums = loss_sums(&gen, &disc, tokens, Some(&picks), &targets);
        let disc_sum = disc.iter().map(|&x| x as f64).sum::<f64>();
        // Right: tokens 0 (+, 1) and 3 (-, 0); wrong: 1 (-, 1) and 2 (+, 0); 4 is padding.
        assert_eq!(sums, [3.75, disc_sum, 2.0, 2.0, 2.0]);
        assert_eq!(loss_sums(&gen, &disc, tokens, None, &targets)[4], 0.0);
    }

    /// Rows padded to a stride: the same losses, gradient bits and picks as dense rows, and the
    /// gradient's padding left as it was.
    #[test]
    fn padded_rows_give_the_dense_results_and_keep_their_padding() {
        let (rows, vocab, stride) = (4, 11, 16);
        let dense: Vec<f32> = (0..rows * vocab)
            .map(|i| (i as f32 * 0.61).sin() * 3.0)
            .collect();
        let padded: Vec<f32> = dense
            .chunks(vocab)
            .flat_map(|r| r.iter().copied().chain([f32::NAN; 5]))
            .collect();
        let targets = [3, 0, 10, 7];
        let run = |logits: &[f32], stride: usize| {
            let (mut loss, mut picks) = (vec![0.0; rows], vec![0; rows]);
            let mut dlogits = vec![f32::NAN; rows * stride];
            let pick = Picks {
                mode: Pick::Gumbel,
                sample_seed: 5,
                first_pick: 2,
                out: &mut picks,
            };
            softmax_xent(
                logits,
                &targets,
                &mut loss,
                &mut dlogits,
                0.25,
                Some(pick),
                (vocab, stride),
            );
            (loss, dlogits, picks)
        };
        let (loss, dl, picks) = run(&dense, vocab);
        let (loss_p, dl_p, picks_p) = run(&padded, stride);
        assert_eq!(bits(&loss), bits(&loss_p));
        assert_eq!(picks, picks_p);
        for (r, row) in dl_p.chunks(stride).enumerate() {
            let want = &dl[r * vocab..(r + 1) * vocab];
            assert_eq!(bits(&row[..vocab]), bits(want), "row {r}");
            assert!(
                row[vocab..].iter().all(|v| v.is_nan()),
                "row {r}: padding written"
            );
        }
    }
}
