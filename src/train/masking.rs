//! Dynamic masking, as the original code does it: per sequence, k distinct positions among the
//! real tokens other than [CLS], [SEP] and [MASK], with k = max(1, min(max_pred, round(0.15·n)))
//! where n counts every real token; 85% of them become [MASK] and 15% keep their token (no random
//! tokens).

use crate::data::Batch;
use crate::model::config::SpecialTokens;
use crate::rng::{Purpose, Stream};
use rayon::prelude::*;

/// Which positions the generator must fill, and its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Masking {
    /// Flat indices `b·seq + t` of the chosen positions, in increasing order.
    pub positions: Vec<u32>,
    /// The generator's input: [MASK] at most chosen positions, the original token elsewhere.
    pub masked_ids: Vec<u32>,
}

/// The original recipe's per-sequence cap: int((0.15 + 0.005)·seq), 19 at 128.
pub fn max_predictions(seq: usize, mask_prob: f64) -> usize {
    ((mask_prob + 0.005) * seq as f64) as usize
}

/// What the masking of a batch is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskKeys {
    /// The run's seed.
    pub seed: u64,
    /// The optimizer step.
    pub step: u64,
    /// The place of the batch's first sequence in the step's global batch (0 unless the
    /// batch is a slice of it): a sequence draws the same positions however the global batch
    /// is split over ranks and micro-batches.
    pub first_sequence: u64,
}

/// Chooses and masks positions for one batch, deterministically in its keys. Each sequence draws
/// from indices of its own, so the sequences are masked in parallel and their positions joined
/// in order: the result is the one a sequence-by-sequence loop gives.
pub fn mask_batch(
    batch: &Batch,
    special: &SpecialTokens,
    mask_prob: f64,
    keys: MaskKeys,
    out: &mut Masking,
) {
    let stream = Stream::new(keys.seed, Purpose::Mask, keys.step);
    out.masked_ids.clear();
    out.masked_ids.extend_from_slice(&batch.input_ids);
    let seq = batch.seq.max(1);
    let chosen: Vec<Vec<u32>> = out
        .masked_ids
        .par_chunks_mut(seq)
        .zip(batch.attention_mask.par_chunks(seq))
        .enumerate()
        .with_min_len(8)
        .map(|(b, (row, real))| {
            let sequence = keys.first_sequence as usize + b;
            mask_sequence(row, real, (b * seq, sequence), special, mask_prob, &stream)
        })
        .collect();
    out.positions.clear();
    out.positions.extend(chosen.into_iter().flatten());
}

/// Masks one sequence in place: `ids` (its original tokens on entry) and `real` are its rows of
/// the batch, which starts at flat index `start`, and `sequence` is its place in the step's
/// global batch, which keys its draws. Returns the flat indices of its chosen positions, in
/// increasing order.
fn mask_sequence(
    ids: &mut [u32],
    real: &[u32],
    (start, sequence): (usize, usize),
    special: &SpecialTokens,
    mask_prob: f64,
    stream: &Stream,
) -> Vec<u32> {
    let seq = ids.len();
    let n_real = real.iter().filter(|&&m| m != 0).count();
    // `get`: a batch whose arrays disagree in length is refused after masking, not here.
    let is_real = |t: usize| real.get(t).is_some_and(|&m| m != 0);
    let mut candidates: Vec<usize> = (0..seq)
        .filter(|&t| is_real(t) && ![special.cls, special.sep, special.mask].contains(&ids[t]))
        .collect();
    let k = ((n_real as f64 * mask_prob).round() as usize)
        .min(max_predictions(seq, mask_prob))
        .max(1)
        .min(candidates.len());
    // A partial Fisher–Yates shuffle picks k distinct candidates.
    let draws = (sequence * 2 * seq) as u32;
    for i in 0..k {
        let u = stream.uniform(draws + i as u32);
        let j = i + ((u * (candidates.len() - i) as f32) as usize).min(candidates.len() - i - 1);
        candidates.swap(i, j);
    }
    let chosen = &mut candidates[..k];
    chosen.sort_unstable();
    chosen
        .iter()
        .map(|&t| {
            if stream.uniform(draws + (seq + t) as u32) < 0.85 {
                ids[t] = special.mask;
            }
            (start + t) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u64, step: u64) -> MaskKeys {
        MaskKeys {
            seed,
            step,
            first_sequence: 0,
        }
    }

    fn batch() -> Batch {
        // Two sequences of 32: [CLS] words [SEP] words [SEP] then padding in the second.
        let seq = 32;
        let mut b = Batch {
            batch: 2,
            seq,
            ..Default::default()
        };
        for (row, len) in [(0, 32), (1, 20)] {
            for t in 0..seq {
                let id = match t {
                    0 => 101,
                    t if t == len - 1 || t == len / 2 => 102,
                    t if t < len => 1000 + (row * seq + t) as u32,
                    _ => 0,
                };
                b.input_ids.push(id);
                b.token_types.push(u32::from(t > len / 2 && t < len));
                b.attention_mask.push(u32::from(t < len));
            }
        }
        b
    }

    #[test]
    fn picks_k_distinct_real_non_special_positions_per_sequence() {
        let b = batch();
        let mut m = Masking::default();
        mask_batch(&b, &SpecialTokens::default(), 0.15, keys(9, 0), &mut m);
        let per_row = |r: usize| {
            m.positions
                .iter()
                .filter(|&&p| p as usize / b.seq == r)
                .count()
        };
        // round(0.15·32) = 5 and round(0.15·20) = 3, under the cap int(0.155·32) = 4.
        assert_eq!(per_row(0), 4);
        assert_eq!(per_row(1), 3);
        assert!(
            m.positions.windows(2).all(|w| w[0] < w[1]),
            "sorted and distinct"
        );
        for &p in &m.positions {
            let p = p as usize;
            assert_eq!(b.attention_mask[p], 1);
            assert!(![101, 102, 103].contains(&b.input_ids[p]));
            assert!(m.masked_ids[p] == 103 || m.masked_ids[p] == b.input_ids[p]);
        }
        let untouched = (0..b.input_ids.len()).filter(|p| !m.positions.contains(&(*p as u32)));
        assert!(untouched
            .into_iter()
            .all(|p| m.masked_ids[p] == b.input_ids[p]));
    }

    #[test]
    fn is_deterministic_in_seed_and_step_and_masks_about_85_percent() {
        let b = batch();
        let (mut a, mut c) = (Masking::default(), Masking::default());
        let st = SpecialTokens::default();
        mask_batch(&b, &st, 0.15, keys(1, 5), &mut a);
        mask_batch(&b, &st, 0.15, keys(1, 5), &mut c);
        assert_eq!(a, c);
        mask_batch(&b, &st, 0.15, keys(1, 6), &mut c);
        assert_ne!(a, c);
        let (mut masked, mut chosen) = (0, 0);
        for step in 0..500 {
            mask_batch(&b, &st, 0.15, keys(3, step), &mut a);
            chosen += a.positions.len();
            masked += a
                .positions
                .iter()
                .filter(|&&p| a.masked_ids[p as usize] == 103)
                .count();
        }
        let share = masked as f64 / chosen as f64;
        assert!((share - 0.85).abs() < 0.03, "share of [MASK] {share}");
    }

    #[test]
    fn a_slice_of_a_batch_masks_as_its_rows_in_the_whole_batch_do() {
        let (b, st) = (batch(), SpecialTokens::default());
        let mut whole = Masking::default();
        mask_batch(&b, &st, 0.15, keys(4, 2), &mut whole);
        let seq = b.seq;
        let second = Batch {
            batch: 1,
            seq,
            input_ids: b.input_ids[seq..].to_vec(),
            token_types: b.token_types[seq..].to_vec(),
            attention_mask: b.attention_mask[seq..].to_vec(),
        };
        let mut part = Masking::default();
        let as_second = MaskKeys {
            first_sequence: 1,
            ..keys(4, 2)
        };
        mask_batch(&second, &st, 0.15, as_second, &mut part);
        let rows_of_second: Vec<u32> = whole
            .positions
            .iter()
            .filter(|&&p| p as usize >= seq)
            .map(|&p| p - seq as u32)
            .collect();
        assert_eq!(part.positions, rows_of_second);
        assert_eq!(part.masked_ids, whole.masked_ids[seq..]);
        // Keyed as the first sequence instead, it draws other positions.
        let mut first = Masking::default();
        mask_batch(&second, &st, 0.15, keys(4, 2), &mut first);
        assert_ne!(first.positions, part.positions);
    }
}
