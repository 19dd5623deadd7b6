//! `electra prepare`: raw text to shards of packed pretraining examples.
//!
//! Packing follows google-research/electra's `build_pretraining_dataset.py` (`ExampleBuilder`):
//! the lines of a document are tokenized and accumulated until they reach a target length, then
//! split into `[CLS] A [SEP] B [SEP]`; with probability 0.1 the example is a single segment
//! `[CLS] A [SEP]`, and with probability 0.05 the next target is a random length, uniform in
//! 5..=seq_len, so the model also sees short inputs. Two deliberate departures, so that no text
//! is lost or reordered:
//! - tokens past the target are carried into the next example of the document instead of being
//!   truncated away, which also splits lines longer than the target into several examples;
//! - once a sentence goes to segment B, the rest follow it (the original may put a later short
//!   sentence back into A, ahead of the one before it).
//!
//! Documents are packed in parallel. Each has its own random stream, derived from the seed and
//! its index in the corpus, so the shards are identical for a given seed whatever the thread
//! count.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::corpus::{Corpus, Document};
use super::error::{DataError, Result};
use super::shard::{shard_file_name, ShardWriter, MAX_VOCAB_SIZE};
use super::tokenizer::WordPieceTokenizer;

/// Shortest example target, as in the original (`random.randint(5, max_length)`).
pub const MIN_SEQ_LEN: usize = 5;
/// Text read per parallel batch: enough documents to keep every core busy, few enough that
/// memory stays flat on corpora of any size.
const BATCH_BYTES: u64 = 16 << 20;

/// Settings of one `prepare` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Tokens per example, `[CLS]` and `[SEP]`s included (at least [`MIN_SEQ_LEN`]).
    pub seq_len: usize,
    /// Seed of every random packing choice.
    pub seed: u64,
    /// Examples per shard file; the last shard may hold fewer.
    pub examples_per_shard: usize,
}

impl Default for PrepareOptions {
    /// ELECTRA-Small's 128 tokens, and 64Ki examples (16 MiB) per shard.
    fn default() -> Self {
        Self {
            seq_len: 128,
            seed: 0,
            examples_per_shard: 1 << 16,
        }
    }
}

/// What a `prepare` run read and wrote.
#[derive(Debug, Clone)]
pub struct PrepareSummary {
    /// Input sources read (files, and stdin if given).
    pub sources: usize,
    /// Input bytes read.
    pub bytes: u64,
    /// Lines that were not valid UTF-8 and were decoded lossily.
    pub lossy_lines: u64,
    /// The first of them, as `FILE:LINE`.
    pub first_lossy: Option<String>,
    /// Documents: runs of lines ended by a blank line or the end of a file.
    pub documents: u64,
    /// Examples written, over all shards.
    pub examples: u64,
    /// Text tokens packed, without `[CLS]` and `[SEP]`: every token of the input.
    pub tokens: u64,
    /// Shard files written, in order.
    pub shards: Vec<PathBuf>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// What an earlier, interrupted `prepare` into the same folder had left there, removed
    /// before this one began.
    pub removed: Vec<PathBuf>,
}

impl fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = self.bytes as f64 / 1e6;
        write!(
            f,
            "{} examples, {} tokens from {} documents in {} source(s) \
             ({mb:.1} MB at {:.1} MB/s), {} shard(s)",
            self.examples,
            self.tokens,
            self.documents,
            self.sources,
            mb / self.elapsed.as_secs_f64().max(1e-9),
            self.shards.len(),
        )?;
        if self.lossy_lines > 0 {
            write!(
                f,
                "; {} line(s) were not valid UTF-8 and were decoded lossily (the first: {})",
                self.lossy_lines,
                self.first_lossy.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

/// The file that marks a folder `prepare` is still writing: created before the first shard and
/// removed once every file is in place. A folder holding it is the work of a `prepare` that was
/// killed: [`Batcher::open`](super::Batcher::open) refuses it, and the next `prepare` into the
/// same folder clears it.
pub const UNFINISHED: &str = ".electra-prepare-unfinished";

/// Packs the text of `inputs` (files, folders, or `-` for stdin) into shards in `output`,
/// named `shard-00000.bin`, ..., and writes the vocabulary beside them as `vocab.txt` and
/// `tokenizer.json`, so later steps need no vocabulary flag. `output` must be absent, empty, or
/// hold only what an interrupted `prepare` left ([`check_output_dir`]), which is removed first.
/// On an error, what this call wrote is removed again.
pub fn prepare(
    inputs: &[PathBuf],
    output: &Path,
    tokenizer: &WordPieceTokenizer,
    options: &PrepareOptions,
) -> Result<PrepareSummary> {
    let started = Instant::now();
    let vocab_size = check_options(tokenizer, options)?;
    let corpus = Corpus::open(inputs)?;
    let removed = prepare_output_dir(output)?;
    let result = write_data(corpus, output, tokenizer, options, vocab_size);
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            // Best effort: the error that stopped the run matters more than one in cleaning up,
            // and whatever stays is marked unfinished.
            let _ = remove_written(output);
            return Err(e);
        }
    };
    // The commit point: only now is the folder data.
    let marker = output.join(UNFINISHED);
    fs::remove_file(&marker).map_err(|e| DataError::io(&marker, e))?;
    Ok(PrepareSummary {
        removed,
        elapsed: started.elapsed(),
        ..summary
    })
}

/// Everything of [`prepare`] between marking the folder unfinished and unmarking it.
fn write_data(
    mut corpus: Corpus,
    output: &Path,
    tokenizer: &WordPieceTokenizer,
    options: &PrepareOptions,
    vocab_size: u32,
) -> Result<PrepareSummary> {
    let progress = progress_bar(corpus.total_bytes());
    let packer = Packer {
        tokenizer,
        seq_len: options.seq_len,
        seed: options.seed,
    };
    let mut shards = ShardSet {
        dir: output,
        vocab_size,
        vocab_hash: tokenizer.vocab_hash(),
        seq_len: options.seq_len as u32,
        per_shard: options.examples_per_shard as u64,
        current: None,
        written: Vec::new(),
    };
    let (mut documents, mut examples, mut tokens) = (0u64, 0u64, 0u64);
    loop {
        let batch = read_batch(&mut corpus)?;
        if batch.is_empty() {
            break;
        }
        let first = documents;
        let packed = batch
            .par_iter()
            .enumerate()
            .map(|(i, document)| {
                let packed = packer.pack(document, first + i as u64);
                // Approximate (trimmed lines); the position is made exact after the batch.
                progress.inc(document.iter().map(|line| line.len() as u64 + 1).sum());
                packed
            })
            .collect::<Result<Vec<_>>>()?;
        for (document_examples, document_tokens) in packed {
            for example in &document_examples {
                shards.push(example)?;
            }
            examples += document_examples.len() as u64;
            tokens += document_tokens;
        }
        documents += batch.len() as u64;
        progress.set_position(corpus.bytes_read());
    }
    progress.finish_and_clear();
    if tokens == 0 {
        return Err(DataError::EmptyCorpus {
            files: corpus.source_count(),
            bytes: corpus.bytes_read(),
        });
    }
    let shards = shards.finish()?;
    let (vocab, json) = (output.join("vocab.txt"), output.join("tokenizer.json"));
    tokenizer.save_vocab(&vocab)?;
    tokenizer.save_json(&json)?;
    // On disk before the folder is unmarked, as the shards are (their writer syncs them).
    for path in [vocab, json] {
        let synced = fs::File::open(&path).and_then(|f| f.sync_all());
        synced.map_err(|e| DataError::io(&path, e))?;
    }
    Ok(PrepareSummary {
        sources: corpus.source_count(),
        bytes: corpus.bytes_read(),
        lossy_lines: corpus.lossy_lines(),
        first_lossy: corpus.first_lossy().map(str::to_owned),
        documents,
        examples,
        tokens,
        shards,
        elapsed: Duration::ZERO,
        removed: vec![],
    })
}

/// Whole documents, about [`BATCH_BYTES`] of them; empty at the end of the corpus.
fn read_batch(corpus: &mut Corpus) -> Result<Vec<Document>> {
    let start = corpus.bytes_read();
    let mut batch = Vec::new();
    while corpus.bytes_read() - start < BATCH_BYTES {
        match corpus.next_document()? {
            Some(document) => batch.push(document),
            None => break,
        }
    }
    Ok(batch)
}

/// A bar over the input bytes, or a spinner when stdin makes the total unknown. indicatif
/// hides either when stderr is not a terminal, so logs and CI output stay clean.
fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    let (bar, template) = match total_bytes {
        Some(total) => (
            ProgressBar::new(total),
            "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {binary_bytes} {binary_bytes_per_sec}",
        ),
    };
    bar.with_style(ProgressStyle::with_template(template).expect("the templates are valid"))
}

/// Trains a WordPiece vocabulary of `vocab_size` tokens on the text of `inputs`, read as
/// [`prepare`] reads it. Stdin cannot be used: training reads the text twice, and packing once
/// more.
pub fn train_tokenizer(inputs: &[PathBuf], vocab_size: usize) -> Result<WordPieceTokenizer> {
    if inputs.iter().any(|i| i.as_os_str() == super::corpus::STDIN) {
        return Err(DataError::Invalid(
            "training a vocabulary reads the input more than once, so it needs files, not stdin"
                .into(),
        ));
    }
    WordPieceTokenizer::train(|| Ok(Corpus::open(inputs)?.into_lines()), vocab_size)
}

/// Checks the options against the tokenizer, and returns the vocab size as the header stores it.
fn check_options(tokenizer: &WordPieceTokenizer, options: &PrepareOptions) -> Result<u32> {
    if options.seq_len < MIN_SEQ_LEN || options.seq_len > u32::MAX as usize {
        return Err(DataError::Invalid(format!(
            "seq len {} is out of range: an example needs at least {MIN_SEQ_LEN} tokens \
             ([CLS] A [SEP] B [SEP])",
            options.seq_len
        )));
    }
    if options.examples_per_shard == 0 {
        return Err(DataError::Invalid(
            "examples per shard must be at least 1".into(),
        ));
    }
    let vocab_size = tokenizer.vocab_size();
    if vocab_size > MAX_VOCAB_SIZE as usize {
        return Err(DataError::Invalid(format!(
            "vocab size {vocab_size} is too large: \
             shards store u16 ids, so at most {MAX_VOCAB_SIZE} tokens"
        )));
    }
    if tokenizer.pad_id() != 0 {
        return Err(DataError::Invalid(format!(
            "[PAD] has id {}, but shards pad with id 0: put [PAD] first in the vocabulary",
            tokenizer.pad_id()
        )));
    }
    Ok(vocab_size as u32)
}

/// Whether `name` is a file that `prepare` writes into its folder, finished or not.
fn written_by_prepare(name: &str) -> bool {
    name == UNFINISHED
        || name == "vocab.txt"
        || name == "tokenizer.json"
        || crate::io::is_tmp_name(name)
        || (name.starts_with("shard-") && name.ends_with(".bin"))
}

/// Checks the output folder, before anything is read or written: it must be absent, empty, or
/// hold only what an interrupted `prepare` left (its [`UNFINISHED`] mark, shards, temporary files,
/// the vocabulary), which is returned for [`prepare`] to remove. Anything else is refused:
/// `prepare` never mixes its shards with others (a batcher reads every shard in a folder) nor
/// replaces a file it did not write.
pub fn check_output_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(_) if dir.exists() && !dir.is_dir() => {
            return Err(DataError::Invalid(format!(
                "{}: exists and is not a folder; --out names the folder to create",
                dir.display()
            )))
        }
        Err(e) => return Err(DataError::io(dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let Some(first) = names.first() else {
        return Ok(vec![]);
    };
    if !names.iter().any(|n| n == UNFINISHED) {
        return Err(DataError::Invalid(format!(
            "{}: already holds {} file(s) ({first} ...); prepare writes only into an absent or \
             empty folder: choose another --out",
            dir.display(),
            names.len(),
        )));
    }
    if let Some(other) = names.iter().find(|n| !written_by_prepare(n)) {
        return Err(DataError::Invalid(format!(
            "{}: holds what an interrupted `electra prepare` left ({UNFINISHED}), but also \
             {other}, which prepare does not write; remove the folder or choose another --out",
            dir.display(),
        )));
    }
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

/// Creates `dir` (see [`check_output_dir`]), removing what an interrupted `prepare` left there,
/// and marks it [`UNFINISHED`]. Returns what was removed.
fn prepare_output_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let debris = check_output_dir(dir)?;
    // The mark goes last, so that a kill while clearing leaves a folder still marked.
    let (marks, others): (Vec<&PathBuf>, Vec<&PathBuf>) =
        debris.iter().partition(|p| p.ends_with(UNFINISHED));
    for path in others.into_iter().chain(marks) {
        fs::remove_file(path).map_err(|e| DataError::io(path, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let marker = dir.join(UNFINISHED);
    fs::File::create(&marker).map_err(|e| DataError::io(&marker, e))?;
    Ok(debris)
}

/// Removes what [`prepare`] wrote into `dir`, the mark last.
fn remove_written(dir: &Path) -> Result<()> {
    let mut written: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| written_by_prepare(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    written.sort_by_key(|p| p.ends_with(UNFINISHED));
    for path in written {
        fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
    }
    Ok(())
}

/// The packing rules, shared read-only by the worker threads.
struct Packer<'a> {
    tokenizer: &'a WordPieceTokenizer,
    seq_len: usize,
    seed: u64,
}

impl Packer<'_> {
    /// Packs one document into examples (`[CLS]` and `[SEP]`s included, unpadded), and counts its
    /// text tokens.
    fn pack(&self, document: &Document, index: u64) -> Result<(Vec<Vec<u16>>, u64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);
        let mut pending = Pending::default();
        let mut examples = Vec::new();
        let mut target = self.next_target(&mut rng);
        let mut tokens = 0;
        for line in document {
            let ids = self.tokenizer.encode(line)?;
            tokens += ids.len() as u64;
            // The vocab size was checked against u16 before packing began.
            pending.push_sentence(ids.iter().map(|&id| id as u16));
            while pending.waiting().len() >= target {
                examples.push(self.take_example(&mut pending, target, &mut rng));
                target = self.next_target(&mut rng);
            }
        }
        while !pending.waiting().is_empty() {
            examples.push(self.take_example(&mut pending, target, &mut rng));
            target = self.next_target(&mut rng);
        }
        Ok((examples, tokens))
    }

    /// The original's `_create_example`, taking at most `target` tokens (specials included)
    /// off the front of `pending` and leaving the rest there.
    fn take_example(&self, pending: &mut Pending, target: usize, rng: &mut ChaCha8Rng) -> Vec<u16> {
        let first_target = if rng.random::<f64>() < 0.1 {
            usize::MAX
        } else {
            (target - 3) / 2
        };
        // Segment A is the whole sentences before the first one that goes to B.
        let mut a_end = 0;
        for len in pending.sentence_lens() {
            let to_a = a_end == 0
                || a_end + len < first_target
                || (a_end < first_target && rng.random::<f64>() < 0.5);
            if !to_a {
                break;
            }
            a_end += len;
        }
        let waiting = pending.waiting();
        let a_len = a_end.min(target - 2);
        let b_len = (waiting.len() - a_len).min(target.saturating_sub(a_len + 3));
        let (cls, sep) = (
            self.tokenizer.cls_id() as u16,
            self.tokenizer.sep_id() as u16,
        );
        let mut example = Vec::with_capacity(a_len + b_len + 3);
        example.push(cls);
        example.extend_from_slice(&waiting[..a_len]);
        example.push(sep);
        if b_len > 0 {
            example.extend_from_slice(&waiting[a_len..a_len + b_len]);
            example.push(sep);
        }
        pending.consume(a_len + b_len);
        example
    }

    /// The original's choice of the next target length.
    fn next_target(&self, rng: &mut ChaCha8Rng) -> usize {
        if rng.random::<f64>() < 0.05 {
            rng.random_range(MIN_SEQ_LEN..=self.seq_len)
        } else {
            self.seq_len
        }
    }
}

/// Tokens waiting to be packed, with the sentence boundaries that decide the A/B split.
#[derive(Default)]
struct Pending {
    /// The waiting tokens are `tokens[head..]`. Packed ones are dropped in bulk, once they are
    /// half the vector, so a line of millions of tokens is not shifted once per example.
    tokens: Vec<u16>,
    head: usize,
    /// Exclusive end of each waiting sentence in `tokens`; the last one is `tokens.len()`.
    sentence_ends: Vec<usize>,
}

impl Pending {
    fn waiting(&self) -> &[u16] {
        &self.tokens[self.head..]
    }

    fn push_sentence(&mut self, ids: impl Iterator<Item = u16>) {
        let before = self.tokens.len();
        self.tokens.extend(ids);
        // A line of no tokens (only control characters, say) is no sentence.
        if self.tokens.len() > before {
            self.sentence_ends.push(self.tokens.len());
        }
    }

    /// Lengths of the waiting sentences, in order.
    fn sentence_lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.sentence_ends.iter().scan(self.head, |start, &end| {
            let len = end - *start;
            *start = end;
            Some(len)
        })
    }

    /// Drops the first `n` waiting tokens; a sentence cut in two keeps its tail as a sentence.
    fn consume(&mut self, n: usize) {
        self.head += n;
        let head = self.head;
        self.sentence_ends.retain(|&end| end > head);
        if 2 * head >= self.tokens.len() {
            self.tokens.drain(..head);
            for end in &mut self.sentence_ends {
                *end -= head;
            }
            self.head = 0;
        }
    }
}

/// The shards of one run, rolled over every `per_shard` examples.
struct ShardSet<'a> {
    dir: &'a Path,
    vocab_size: u32,
    vocab_hash: u64,
    seq_len: u32,
    per_shard: u64,
    current: Option<ShardWriter>,
    written: Vec<PathBuf>,
}

impl ShardSet<'_> {
    fn push(&mut self, example: &[u16]) -> Result<()> {
        let writer = match &mut self.current {
            Some(writer) => writer,
            None => {
                let name = shard_file_name(self.written.len());
                self.current.insert(ShardWriter::create(
                    &self.dir.join(name),
                    self.vocab_size,
                    self.vocab_hash,
                    self.seq_len,
                )?)
            }
        };
        writer.push(example)?;
        if writer.len() == self.per_shard {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
        if let Some(writer) = self.current.take() {
            self.written.push(writer.finish()?);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<PathBuf>> {
        self.roll()?;
        Ok(self.written)
    }
}
