//! Batches for training: every example of a prepared folder, in a seeded shuffled order.
//!
//! Epoch `e` visits all examples once, in the order of a Fisher-Yates shuffle seeded with
//! `seed + e`. A batch that runs past the end of an epoch continues into the next, so every
//! batch is full and a run is measured in steps, as ELECTRA's is. The position in that stream
//! is a [`Cursor`]: saved in a checkpoint and restored, it makes a resumed run see exactly the
//! batches the uninterrupted run would have seen.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::error::{DataError, Result, ShardProblem};
use super::shard::{fill_example, shard_paths, Shard};
use super::tokenizer::WordPieceTokenizer;

/// Where the batcher stands: the next example is number `position` of epoch `epoch`'s order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Epochs completed so far; epoch e is shuffled with `seed + e`.
    pub epoch: u64,
    /// Examples of this epoch already served.
    pub position: u64,
}

/// Serves batches from all shards of a prepared folder.
#[derive(Debug)]
pub struct Batcher {
    shards: Vec<Shard>,
    /// `starts[i]` is the global index of shard i's first example; the last entry is the total.
    starts: Vec<u64>,
    seed: u64,
    sep_id: u32,
    cursor: Cursor,
    order: Vec<u32>,
    batch: Batch,
}

impl Batcher {
    /// Opens every `shard-*.bin` in `dir` and checks them all against the folder's `vocab.txt`
    /// and against each other, so training cannot start on mismatched data.
    pub fn open(dir: &Path, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        let unfinished = dir.join(super::prepare::UNFINISHED);
        if unfinished.exists() {
            return Err(DataError::Invalid(format!(
                "{}: the `electra prepare` that wrote this folder did not finish (it was killed, \
                 or failed), so its data is incomplete; run it again with the same --out, which \
                 clears what it left",
                unfinished.display()
            )));
        }
        let tokenizer = WordPieceTokenizer::from_vocab_file(&dir.join("vocab.txt"))?;
        let paths = shard_paths(dir)?;
        let shards = open_shards(&paths, &tokenizer)?;
        let Some(first) = shards.first() else {
            return Err(DataError::NoShards {
                dir: dir.to_path_buf(),
            });
        };
        let seq_len = first.header().seq_len as usize;
        let mut starts = vec![0u64];
        for shard in &shards {
            starts.push(starts.last().unwrap() + shard.len() as u64);
        }
        let total = *starts.last().unwrap();
        if total == 0 || total > u32::MAX as u64 {
            return Err(DataError::Invalid(format!(
                "{}: {total} examples; a batcher needs between 1 and {} of them",
                dir.display(),
                u32::MAX
            )));
        }
        let cells = batch_size * seq_len;
        let mut batcher = Self {
            shards,
            starts,
            seed,
            sep_id: tokenizer.sep_id(),
            cursor: Cursor::default(),
            order: vec![0; total as usize],
            batch: Batch {
                batch: batch_size,
                seq: seq_len,
                input_ids: vec![0; cells],
                token_types: vec![0; cells],
                attention_mask: vec![0; cells],
            },
        };
        batcher.shuffle();
        Ok(batcher)
    }

    /// A checksum of the data: the CRC-32 of its shards' checksums, in order. A run records it,
    /// so that resuming on data prepared again (another seed, another text) is refused rather
    /// than continued on other batches.
    pub fn data_checksum(&self) -> u32 {
        let mut all = crc32fast::Hasher::new();
        for shard in &self.shards {
            all.update(&shard.checksum().to_le_bytes());
        }
        all.finalize()
    }

    /// Total number of examples, which is the length of an epoch.
    pub fn example_count(&self) -> u64 {
        *self.starts.last().unwrap()
    }

    /// Tokens per example.
    pub fn seq_len(&self) -> usize {
        self.batch.seq
    }

    /// Where the next batch starts.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Continues from `cursor`, as saved by [`Batcher::cursor`] from a batcher opened on the
    /// same folder with the same seed.
    pub fn restore(&mut self, cursor: Cursor) -> Result<()> {
        if cursor.position > self.example_count() {
            return Err(DataError::Invalid(format!(
                "cursor position {} is past the {} examples of an epoch: \
                 the data changed since it was saved",
                cursor.position,
                self.example_count()
            )));
        }
        let reshuffle = cursor.epoch != self.cursor.epoch;
        self.cursor = cursor;
        if reshuffle {
            self.shuffle();
        }
        Ok(())
    }

    /// Passes over the next `n` examples, as if they had been served: a rank of a data-parallel
    /// run skips the slices of the global batch that other ranks train on.
    pub fn skip(&mut self, mut n: u64) {
        let count = self.example_count();
        while n > 0 {
            if self.cursor.position == count {
                self.cursor = Cursor {
                    epoch: self.cursor.epoch + 1,
                    position: 0,
                };
                self.shuffle();
            }
            let taken = n.min(count - self.cursor.position);
            self.cursor.position += taken;
            n -= taken;
        }
    }

    /// The next `batch_size` examples. The returned batch is reused by the next call, so a
    /// training loop allocates nothing here.
    pub fn next_batch(&mut self) -> &Batch {
        let seq = self.batch.seq;
        for row in 0..self.batch.batch {
            if self.cursor.position == self.example_count() {
                self.cursor = Cursor {
                    epoch: self.cursor.epoch + 1,
                    position: 0,
                };
                self.shuffle();
            }
            let global = self.order[self.cursor.position as usize] as u64;
            self.cursor.position += 1;
            let shard = self.starts.partition_point(|&start| start <= global) - 1;
            let ids = self.shards[shard].example((global - self.starts[shard]) as usize);
            let cells = row * seq..(row + 1) * seq;
            fill_example(
                ids,
                self.sep_id,
                &mut self.batch.input_ids[cells.clone()],
                &mut self.batch.token_types[cells.clone()],
                &mut self.batch.attention_mask[cells],
            );
        }
        &self.batch
    }

    /// Makes `order` the current epoch's permutation. It always starts from the identity, so
    /// the order of epoch e is a function of (seed, e) alone and a restored cursor can rebuild
    /// it without replaying the epochs before it.
    fn shuffle(&mut self) {
        for (i, slot) in self.order.iter_mut().enumerate() {
            *slot = i as u32;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(self.cursor.epoch));
        self.order.shuffle(&mut rng);
    }
}

fn open_shards(paths: &[PathBuf], vocab: &WordPieceTokenizer) -> Result<Vec<Shard>> {
    let mut shards: Vec<Shard> = Vec::with_capacity(paths.len());
    for path in paths {
        let shard = Shard::open(path, vocab.vocab_hash())?;
        let (expected, found) = (vocab.vocab_size() as u32, shard.header().vocab_size);
        if found != expected {
            let problem = ShardProblem::VocabSizeMismatch { expected, found };
            return Err(DataError::shard(path, problem));
        }
        if let Some(first) = shards.first() {
            let (expected, found) = (first.header().seq_len, shard.header().seq_len);
            if found != expected {
                return Err(DataError::shard(
                    path,
                    ShardProblem::SeqLenMismatch { expected, found },
                ));
            }
        }
        shards.push(shard);
    }
    Ok(shards)
}
