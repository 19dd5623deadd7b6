//! A batch of token sequences: what pretraining, fine-tuning and the batcher pass around.

use crate::model::config::SpecialTokens;
use crate::rng::{Purpose, Stream};

/// A batch of token sequences, row-major `[batch, seq]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Number of sequences.
    pub batch: usize,
    /// Tokens per sequence, padding included; at most the model's `max_position_embeddings`.
    pub seq: usize,
    /// The original token ids, `[batch, seq]`; padding is conventionally 0 (`[PAD]`).
    pub input_ids: Vec<u32>,
    /// 0 for segment A, 1 for segment B.
    pub token_types: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl Batch {
    /// A full batch of random tokens shaped like pretraining data, `[CLS] A [SEP] B [SEP]` with the
    /// segments split in the middle, for benchmarks and demos. Ids are drawn above the BERT special
    /// tokens (from 110), so `vocab` must exceed 110.
    pub fn random(
        batch: usize,
        seq: usize,
        vocab: usize,
        seed: u64,
        special: &SpecialTokens,
    ) -> Self {
        assert!(
            vocab > 110 && seq >= 3,
            "random batches need vocab > 110 and seq >= 3"
        );
        let stream = Stream::new(seed, Purpose::RandomBatch, 0);
        let mut b = Batch {
            batch,
            seq,
            ..Default::default()
        };
        for r in 0..batch {
            for t in 0..seq {
                let id = match t {
                    0 => special.cls,
                    t if t == seq / 2 || t == seq - 1 => special.sep,
                    _ => {
                        let u = stream.uniform((r * seq + t) as u32);
                        110 + ((u * (vocab - 110) as f32) as u32).min(vocab as u32 - 111)
                    }
                };
                b.input_ids.push(id);
                b.token_types.push(u32::from(t > seq / 2));
                b.attention_mask.push(1);
            }
        }
        b
    }

    /// The number of real (non-padding) tokens.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Checks the three arrays agree with `[batch, seq]` and hold 0/1 masks.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.batch * self.seq;
        for (name, v) in [
            ("input_ids", &self.input_ids),
            ("token_types", &self.token_types),
            ("attention_mask", &self.attention_mask),
        ] {
            if v.len() != n {
                return Err(format!(
                    "{name} has {} values, expected batch {} × seq {} = {n}",
                    v.len(),
                    self.batch,
                    self.seq
                ));
            }
        }
        if self.attention_mask.iter().any(|&m| m > 1) {
            return Err("attention_mask must hold only 0 and 1".into());
        }
        Ok(())
    }
}
