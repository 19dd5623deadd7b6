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
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `tokenizers` crate or a vocabulary check rejected something; `context` says what.
    #[error("{context}: {message}")]
    Tokenizer { context: String, message: String },
    /// A shard file is malformed or does not belong to this vocabulary.
    #[error("{}: {problem}", path.display())]
    Shard {
        path: PathBuf,
        problem: ShardProblem,
    },
    /// The inputs held no token at all, so there is nothing to train on.
    #[error("the input holds no tokens ({files} file(s), {bytes} bytes read): nothing to write")]
    EmptyCorpus { files: usize, bytes: u64 },
    /// A folder that should hold shards holds none.
    #[error("{}: no shard-*.bin files in this folder (run `electra prepare` first)", dir.display())]
    NoShards { dir: PathBuf },
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
    #[error("file is {len} bytes, shorter than the {header}-byte shard header (truncated?)")]
    TooShort { len: u64, header: u64 },
    #[error("not an electra shard: magic bytes are {found:?}, expected \"ELECSHRD\"")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported shard version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("vocab size {0} in the header is outside 1..=65536 (ids are stored as u16)")]
    BadVocabSize(u32),
    #[error("seq len in the header is 0")]
    ZeroSeqLen,
    #[error("reserved header bytes are not zero (corrupt header?)")]
    ReservedNotZero,
    #[error(
        "file is {actual} bytes but its header promises {expected} \
         ({examples} examples x {seq_len} tokens x 2 bytes + header): truncated or corrupt"
    )]
    LengthMismatch {
        actual: u64,
        expected: u128,
        examples: u64,
        seq_len: u32,
    },
    #[error(
        "vocab hash {found:#018x} differs from the expected {expected:#018x}: \
         the shard was prepared with another vocabulary"
    )]
    VocabMismatch { expected: u64, found: u64 },
    #[error("seq len {found} differs from {expected} in the other shards of this folder")]
    SeqLenMismatch { expected: u32, found: u32 },
    #[error(
        "example {example}, position {position}: \
         token id {id} is not below the vocab size {vocab_size}"
    )]
    TokenOutOfRange {
        example: u64,
        position: u32,
        id: u16,
        vocab_size: u32,
    },
}
