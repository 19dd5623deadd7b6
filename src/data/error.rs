//! The one error type of the data layer.
//!
//! Every variant that concerns a file carries its path, so a user with a folder of shards learns
//! which one is bad and what is wrong with it without a debugger.

use std::fmt;
use std::path::PathBuf;

/// Result alias of the data layer.
pub type Result<T> = std::result::Result<T, DataError>;

/// What went wrong while tokenizing, preparing or reading training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder the operation was on.
        path: PathBuf,
        /// The operating system's error (not found, permission denied, disk full, …).
        #[source]
        source: std::io::Error,
    },
    /// The `tokenizers` crate or a vocabulary check rejected something; `context` says what.
    #[error("{context}: {message}")]
    Tokenizer {
        /// What was being done, usually the vocabulary or text file's path.
        context: String,
        /// The underlying error's text.
        message: String,
    },
    /// A shard file is malformed or does not belong to this vocabulary.
    #[error("{}: {problem}", path.display())]
    Shard {
        /// The shard file.
        path: PathBuf,
        /// Which check failed.
        problem: ShardProblem,
    },
    /// The inputs held no token at all, so there is nothing to train on.
    #[error("the input holds no tokens ({files} file(s), {bytes} bytes read): nothing to write")]
    EmptyCorpus {
        /// Input files read.
        files: usize,
        /// Bytes read from them in all; 0 usually means empty files or a wrong path.
        bytes: u64,
    },
    /// A folder that should hold shards holds none.
    #[error("{}: no shard-*.bin files in this folder (run `electra prepare` first)", dir.display())]
    NoShards {
        /// The folder searched.
        dir: PathBuf,
    },
    /// An option or argument is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tokenizer(context: impl Into<String>, message: impl fmt::Display) -> Self {
        DataError::Tokenizer {
            context: context.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn shard(path: impl Into<PathBuf>, problem: ShardProblem) -> Self {
        DataError::Shard {
            path: path.into(),
            problem,
        }
    }
}

/// The ways a shard file can be wrong; see [`crate::data::shard`] for the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardProblem {
    /// The file cannot even hold a header: an interrupted copy or an empty file.
    #[error("file is {len} bytes, shorter than the {header}-byte shard header (truncated?)")]
    TooShort {
        /// The file's size in bytes.
        len: u64,
        /// The header's size in bytes (64).
        header: u64,
    },
    /// The first 8 bytes are not `ELECSHRD`: not a shard at all.
    #[error("not an electra shard: magic bytes are {found:?}, expected \"ELECSHRD\"")]
    BadMagic {
        /// The file's first 8 bytes.
        found: [u8; 8],
    },
    /// Written by another version of the format; re-run `electra prepare` with this build.
    #[error("unsupported shard version {found} (this build reads versions 1 to {supported})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// The only version this build reads.
        supported: u32,
    },
    /// The header's vocabulary size (carried here) is 0, or above the 65536 that u16 ids address.
    #[error("vocab size {0} in the header is outside 1..=65536 (ids are stored as u16)")]
    BadVocabSize(u32),
    /// The header says examples have no tokens.
    #[error("seq len in the header is 0")]
    ZeroSeqLen,
    /// The token ids are not those the header's checksum was taken of: a byte changed on disk.
    #[error(
        "the token ids' checksum is {found:08x}, not the {expected:08x} of the header: the file \
         is corrupt; prepare the data again"
    )]
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the ids in the file.
        found: u32,
    },
    /// Bytes the format reserves (40..64, and 28..32 in version 1) are not zero, so the header
    /// is corrupt.
    #[error("reserved header bytes are not zero (corrupt header?)")]
    ReservedNotZero,
    /// The file's size disagrees with the header's example count and sequence length.
    #[error(
        "file is {actual} bytes but its header promises {expected} \
         ({examples} examples x {seq_len} tokens x 2 bytes + header): truncated or corrupt"
    )]
    LengthMismatch {
        /// The file's size in bytes.
        actual: u64,
        /// The size the header implies: 64 + examples × seq_len × 2 bytes.
        expected: u128,
        /// The header's example count.
        examples: u64,
        /// The header's sequence length, in tokens.
        seq_len: u32,
    },
    /// The shard's token ids belong to another vocabulary than the one given (compared by
    /// [`vocab_hash`](crate::data::tokenizer::vocab_hash)).
    #[error(
        "vocab hash {found:#018x} differs from the expected {expected:#018x}: \
         the shard was prepared with another vocabulary"
    )]
    VocabMismatch {
        /// The hash of the vocabulary in use.
        expected: u64,
        /// The hash in the shard's header.
        found: u64,
    },
    /// The header's vocabulary size is not the size of the vocabulary it claims (by its hash):
    /// the header is corrupt.
    #[error(
        "vocab size {found} differs from the {expected} tokens of the vocabulary the header \
         names: the header is corrupt; prepare the data again"
    )]
    VocabSizeMismatch {
        /// The size of the vocabulary in use.
        expected: u32,
        /// The size in the shard's header.
        found: u32,
    },
    /// Shards of one folder must share a sequence length; this one does not.
    #[error("seq len {found} differs from {expected} in the other shards of this folder")]
    SeqLenMismatch {
        /// The other shards' sequence length.
        expected: u32,
        /// This shard's.
        found: u32,
    },
    /// A stored id is not below the header's vocabulary size (found when the shard is opened).
    #[error(
        "example {example}, position {position}: \
         token id {id} is not below the vocab size {vocab_size}"
    )]
    TokenOutOfRange {
        /// Index of the example in the shard, from 0.
        example: u64,
        /// Token index within the example, from 0.
        position: u32,
        /// The offending id.
        id: u16,
        /// The header's vocabulary size.
        vocab_size: u32,
    },
}
