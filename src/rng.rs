//! Philox4x32-10, a counter-based random number generator (Salmon et al., SC'11).
//!
//! Every random draw of a training step is a pure function of (seed, purpose, step, index), so
//! runs are reproducible bit for bit, resuming needs no generator state beyond the step count,
//! and the CUDA kernels can draw the very same numbers in parallel.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Four 32-bit random words for `counter` under `key`.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// Maps a random word to a uniform float in [0, 1) with 24 bits of precision.
pub fn unit_f32(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// What a stream of random numbers is for. Each use has its own tag, so that two uses never
/// share numbers; the CUDA kernels draw the Gumbel noise and the dropout masks themselves, with
/// the same tags (`GUMBEL_PURPOSE` and `DROPOUT_PURPOSE` in `kernels/common.cuh`, checked by a
/// test). A tag is part of every trajectory made so far: never renumber one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Purpose {
    /// The model's initial weights (a sub-stream per tensor).
    Init = 1,
    /// The positions a pretraining step masks (a sub-stream per step).
    Mask = 2,
    /// The Gumbel noise of sampled replacements (a sub-stream per row).
    Gumbel = 3,
    /// The seed of each pretraining step's Gumbel noise.
    SampleSeed = 4,
    /// Random batches for benchmarks and demos.
    RandomBatch = 5,
    /// Dropout masks (a sub-stream per place in the pass).
    Dropout = 6,
    /// The seed of each pretraining step's dropout masks.
    DropoutSeed = 7,
    /// The fine-tuning head's initial weights (a sub-stream per tensor).
    HeadInit = 21,
    /// The seed of each fine-tuning step's dropout masks.
    FinetuneDropoutSeed = 22,
    /// The order of the fine-tuning examples (a sub-stream per epoch).
    FinetuneShuffle = 23,
}

/// A stream of uniform draws for one purpose of one step, addressed by index.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    key: [u32; 2],
    step: u64,
    purpose: u32,
}

impl Stream {
    /// The stream keyed by `seed`, for one `purpose` and one `step` (the training step, or any
    /// other 64-bit sub-stream number, such as a tensor or a row).
    pub fn new(seed: u64, purpose: Purpose, step: u64) -> Self {
        Stream {
            key: [seed as u32, (seed >> 32) as u32],
            step,
            purpose: purpose as u32,
        }
    }

    /// A 64-bit seed drawn from the stream (its first two words): the per-step seeds of dropout
    /// and Gumbel noise.
    pub fn seed(&self) -> u64 {
        let w = self.words(0);
        (w[0] as u64) | ((w[1] as u64) << 32)
    }

    /// Four uniform words at `index`.
    pub fn words(&self, index: u32) -> [u32; 4] {
        philox4x32(
            [
                index,
                self.purpose,
                self.step as u32,
                (self.step >> 32) as u32,
            ],
            self.key,
        )
    }

    /// A uniform float in [0, 1) at `index`.
    pub fn uniform(&self, index: u32) -> f32 {
        unit_f32(self.words(index)[0])
    }

    /// Fills `dst` with draws of N(0, std²) truncated at 2σ (the weight initialisation of BERT and
    /// ELECTRA), by Box–Muller and rejection; a rejected draw consumes its index, so each value
    /// depends only on the stream and its position in `dst`.
    pub fn fill_truncated_normal(&self, dst: &mut [f32], std: f32) {
        let mut index = 0u32;
        for v in dst {
            *v = loop {
                let w = self.words(index);
                index += 1;
                let u1 = (unit_f32(w[0]) as f64).max(1e-12);
                let u2 = unit_f32(w[1]) as f64;
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                if z.abs() <= 2.0 {
                    break std * z as f32;
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_draw_with_the_same_purpose_tags() {
        let header = include_str!("../kernels/common.cuh");
        let tags: Vec<(&str, u32)> = header
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(name, _)| name.ends_with("_PURPOSE"))
            .map(|(name, v)| (name, v.trim().trim_end_matches('u').parse().unwrap()))
            .collect();
        let expected = [
            ("GUMBEL_PURPOSE", Purpose::Gumbel as u32),
            ("DROPOUT_PURPOSE", Purpose::Dropout as u32),
        ];
        assert_eq!(tags, expected, "kernels/common.cuh's purpose tags");
    }

    #[test]
    fn matches_the_random123_known_answer() {
        // Known-answer vectors of Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_draws_stay_in_the_unit_interval_and_look_uniform() {
        let s = Stream::new(7, Purpose::Init, 3);
        let draws: Vec<f32> = (0..10_000).map(|i| s.uniform(i)).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().sum::<f32>() / draws.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn truncated_normal_draws_have_the_truncated_moments() {
        let mut draws = vec![0.0f32; 20_000];
        Stream::new(3, Purpose::Mask, 5).fill_truncated_normal(&mut draws, 0.02);
        assert!(draws.iter().all(|v| v.abs() <= 0.04));
        let n = draws.len() as f64;
        let mean = draws.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (draws
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        // N(0, 1) truncated to [-2, 2] has standard deviation 0.8796.
        assert!(mean.abs() < 0.0005, "mean {mean}");
        assert!((std / 0.02 - 0.8796).abs() < 0.01, "std {std}");
    }
}
