//! The shard file: pre-tokenized, pre-packed examples, memory-mapped for training.
//!
//! Layout, all little-endian:
//!
//! | offset | size | field                                  |
//! |--------|------|----------------------------------------|
//! | 0      | 8    | magic `b"ELECSHRD"`                    |
//! | 8      | 4    | version, u32 = 2 (1 is read too)       |
//! | 12     | 4    | vocab size, u32 (1..=65536)            |
//! | 16     | 8    | vocab hash, u64 (FNV-1a, see tokenizer)|
//! | 24     | 4    | seq len, u32 (> 0)                     |
//! | 28     | 4    | CRC-32 of the token ids (version 1: 0) |
//! | 32     | 8    | example count, u64                     |
//! | 40     | 24   | reserved, zero                         |
//! | 64     |      | u16 token ids, [examples x seq len]    |
//!
//! Each example is `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, padded with `[PAD]` = 0. That is
//! all a model needs: token types and the attention mask follow from the `[SEP]`s and the padding
//! (see [`fill_example`]), so the file stores 2 bytes per token and nothing else. The header is
//! 64 bytes so the ids stay aligned and the reserved bytes leave room for later versions.
//!
//! Version 2 added the checksum of the ids, which [`Shard::open`] checks, so that a byte flipped
//! on disk is refused rather than trained on; version 1 shards (prepared by older builds) are
//! read unchecked.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{DataError, Result, ShardProblem};

/// The first 8 bytes of every shard.
pub const MAGIC: [u8; 8] = *b"ELECSHRD";
/// The format version this build writes; it also reads version 1, which has no checksum.
pub const VERSION: u32 = 2;
/// Size of the header in bytes; token ids start here.
pub const HEADER_LEN: usize = 64;
/// Ids are stored as u16, so a vocabulary may hold at most this many tokens.
pub const MAX_VOCAB_SIZE: u32 = u16::MAX as u32 + 1;

// The ids are read in place from the memory map, which is only right on little-endian machines.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "shards are read in place as little-endian u16"
);

/// The fields of a shard header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Tokens in the vocabulary; every id is below it.
    pub vocab_size: u32,
    /// [`crate::data::tokenizer::vocab_hash`] of that vocabulary.
    pub vocab_hash: u64,
    /// Tokens per example, padding included.
    pub seq_len: u32,
    /// Examples in the file.
    pub example_count: u64,
    /// The format version: [`VERSION`], or 1 for a shard of an older build.
    pub version: u32,
    /// CRC-32 of the token ids (everything after the header); 0 and unchecked in version 1.
    pub body_checksum: u32,
}

impl ShardHeader {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.vocab_hash.to_le_bytes());
        b[24..28].copy_from_slice(&self.seq_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.body_checksum.to_le_bytes());
        b[32..40].copy_from_slice(&self.example_count.to_le_bytes());
        b
    }

    /// Parses and checks every field against the file's real length and the expected hash.
    fn parse(bytes: &[u8], expected_vocab_hash: u64) -> std::result::Result<Self, ShardProblem> {
        let len = bytes.len() as u64;
        let b = bytes.get(..HEADER_LEN).ok_or(ShardProblem::TooShort {
            len,
            header: HEADER_LEN as u64,
        })?;
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let found: [u8; 8] = b[0..8].try_into().unwrap();
        if found != MAGIC {
            return Err(ShardProblem::BadMagic { found });
        }
        let version = u32_at(8);
        if !(1..=VERSION).contains(&version) {
            return Err(ShardProblem::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let header = ShardHeader {
            vocab_size: u32_at(12),
            vocab_hash: u64_at(16),
            seq_len: u32_at(24),
            example_count: u64_at(32),
            version,
            body_checksum: u32_at(28),
        };
        if header.vocab_size == 0 || header.vocab_size > MAX_VOCAB_SIZE {
            return Err(ShardProblem::BadVocabSize(header.vocab_size));
        }
        if header.seq_len == 0 {
            return Err(ShardProblem::ZeroSeqLen);
        }
        // Version 1 reserved the checksum's bytes too.
        let unused_checksum: &[u8] = if version == 1 { &b[28..32] } else { &[] };
        if unused_checksum.iter().chain(&b[40..]).any(|&x| x != 0) {
            return Err(ShardProblem::ReservedNotZero);
        }
        // u128, because a corrupt count times a seq len can overflow u64.
        let expected =
            HEADER_LEN as u128 + header.example_count as u128 * header.seq_len as u128 * 2;
        if expected != len as u128 {
            return Err(ShardProblem::LengthMismatch {
                actual: len,
                expected,
                examples: header.example_count,
                seq_len: header.seq_len,
            });
        }
        if header.vocab_hash != expected_vocab_hash {
            return Err(ShardProblem::VocabMismatch {
                expected: expected_vocab_hash,
                found: header.vocab_hash,
            });
        }
        Ok(header)
    }
}

/// A validated, memory-mapped shard.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    map: Mmap,
    /// CRC-32 of the token ids (the header's, checked, in version 2; computed in version 1).
    checksum: u32,
}

impl Shard {
    /// Maps `path` and validates it completely, ids included, so that no later read can return
    /// garbage: a scan of the ids costs far less than the first training step.
    pub fn open(path: &Path, expected_vocab_hash: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: the map is only read, and our writer never changes a finished shard in place
        // (it renames a new file over it), so its bytes stay put unless another program
        // truncates the file under a running job.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        let header =
            ShardHeader::parse(&map, expected_vocab_hash).map_err(|p| DataError::shard(path, p))?;
        let checksum = crc32fast::hash(&map[HEADER_LEN..]);
        if header.version >= 2 && checksum != header.body_checksum {
            let (expected, found) = (header.body_checksum, checksum);
            let problem = ShardProblem::ChecksumMismatch { expected, found };
            return Err(DataError::shard(path, problem));
        }
        let shard = Shard {
            path: path.to_path_buf(),
            header,
            map,
            checksum,
        };
        if let Some((index, &id)) = shard
            .ids()
            .iter()
            .enumerate()
            .find(|(_, &id)| id as u32 >= header.vocab_size)
        {
            let seq = header.seq_len as usize;
            return Err(DataError::shard(
                path,
                ShardProblem::TokenOutOfRange {
                    example: (index / seq) as u64,
                    position: (index % seq) as u32,
                    id,
                    vocab_size: header.vocab_size,
                },
            ));
        }
        Ok(shard)
    }

    /// The file this shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// The CRC-32 of the token ids, whatever the version.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.header.example_count as usize
    }

    /// Whether the shard holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `seq_len` padded ids of example `index`. Panics if `index >= len()`, like slicing.
    pub fn example(&self, index: usize) -> &[u16] {
        let seq = self.header.seq_len as usize;
        &self.ids()[index * seq..(index + 1) * seq]
    }

    fn ids(&self) -> &[u16] {
        // The map is page-aligned and the header is 64 bytes, so the ids are 2-aligned; the
        // length check in `parse` made the byte count even.
        bytemuck::cast_slice(&self.map[HEADER_LEN..])
    }
}

/// Writes one shard, atomically: examples stream into `.NAME.tmp-PID` beside `path` (the
/// engine's name for a file not yet committed, which no reader takes for a shard), and only a
/// finished file with its final count in the header is renamed to `path`. A crash leaves no half
/// shard that a reader could take for a whole one.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    header: ShardHeader,
    padded: Vec<u16>,
    /// The checksum of the ids written so far.
    body: crc32fast::Hasher,
}

impl ShardWriter {
    /// Starts a shard of `seq_len`-token examples for the vocabulary described by
    /// `vocab_size` and `vocab_hash`.
    pub fn create(path: &Path, vocab_size: u32, vocab_hash: u64, seq_len: u32) -> Result<Self> {
        if vocab_size == 0 || vocab_size > MAX_VOCAB_SIZE {
            return Err(DataError::Invalid(format!(
                "vocab size {vocab_size}: \
                 shards store u16 ids, so it must be in 1..={MAX_VOCAB_SIZE}"
            )));
        }
        if seq_len == 0 {
            return Err(DataError::Invalid("seq len must be at least 1".into()));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(crate::io::tmp_name(&name));
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let header = ShardHeader {
            vocab_size,
            vocab_hash,
            seq_len,
            example_count: 0,
            version: VERSION,
            body_checksum: 0,
        };
        let mut out = BufWriter::new(file);
        out.write_all(&header.to_bytes())
            .map_err(|e| DataError::io(&tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            header,
            padded: vec![0; seq_len as usize],
            body: crc32fast::Hasher::new(),
        })
    }

    /// Appends one example, padding it with `[PAD]` = 0 to the seq len.
    pub fn push(&mut self, ids: &[u16]) -> Result<()> {
        let (seq, vocab) = (self.padded.len(), self.header.vocab_size);
        if ids.len() > seq {
            return Err(DataError::Invalid(format!(
                "example of {} tokens does not fit seq len {seq}",
                ids.len()
            )));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as u32 >= vocab) {
            return Err(DataError::Invalid(format!(
                "token id {id} is not below the vocab size {vocab}"
            )));
        }
        self.padded[..ids.len()].copy_from_slice(ids);
        self.padded[ids.len()..].fill(0);
        let out = self.out.as_mut().expect("only finish() takes the writer");
        let bytes = bytemuck::cast_slice(&self.padded);
        out.write_all(bytes)
            .map_err(|e| DataError::io(&self.tmp, e))?;
        self.body.update(bytes);
        self.header.example_count += 1;
        Ok(())
    }

    /// Number of examples pushed so far.
    pub fn len(&self) -> u64 {
        self.header.example_count
    }

    /// Whether no example has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the final header, flushes to disk and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        let out = self.out.take().expect("finish() runs once");
        let tmp = self.tmp.clone();
        let io = |e| DataError::io(&tmp, e);
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        self.header.body_checksum = self.body.clone().finalize();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&self.header.to_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&self.tmp, &self.path).map_err(io)?;
        Ok(self.path.clone())
    }
}

impl Drop for ShardWriter {
    // An unfinished shard is removed rather than left behind as a stray temporary file.
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The file name of the `index`-th shard of a prepared folder.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.bin")
}

/// The shards of a prepared folder (`shard-*.bin`), in name order, which is the order they
/// were written in.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("shard-") && name.ends_with(".bin") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Expands one stored example into the three model inputs: `input_ids`, `token_type_ids` (0 up
/// to and including the first `[SEP]`, 1 after it, as BERT's segment ids) and `attention_mask`
/// (1 for tokens, 0 for `[PAD]` = 0, which never occurs inside an example). Each output slice
/// must be as long as `ids`.
pub fn fill_example(
    ids: &[u16],
    sep_id: u32,
    input_ids: &mut [u32],
    token_type_ids: &mut [u32],
    attention_mask: &mut [u32],
) {
    assert!(
        input_ids.len() == ids.len()
            && token_type_ids.len() == ids.len()
            && attention_mask.len() == ids.len(),
        "fill_example: output slices must have the example's length"
    );
    let mut segment = 0;
    for (i, &id) in ids.iter().enumerate() {
        let id = id as u32;
        let real = id != 0;
        input_ids[i] = id;
        token_type_ids[i] = if real { segment } else { 0 };
        attention_mask[i] = real as u32;
        if id == sep_id {
            segment = 1;
        }
    }
}
