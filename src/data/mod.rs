//! The data layer: raw text to packed, tokenized shards, and shards to training batches.
//!
//! `electra prepare` runs [`prepare::prepare`] with a [`tokenizer::WordPieceTokenizer`] (loaded
//! or trained); it reads text through [`corpus::Corpus`] and writes [`shard`] files plus the
//! vocabulary into one folder. `electra pretrain` opens that folder with a
//! [`batcher::Batcher`], which serves [`Batch`]es, the one batch type of pretraining and
//! fine-tuning.

pub mod batch;
pub mod batcher;
pub mod corpus;
pub mod error;
pub mod prepare;
pub mod shard;
pub mod tokenizer;

pub use batch::Batch;
pub use batcher::{Batcher, Cursor};
pub use corpus::Corpus;
pub use error::{DataError, Result, ShardProblem};
pub use prepare::{prepare, train_tokenizer, PrepareOptions, PrepareSummary};
pub use shard::{fill_example, Shard, ShardHeader, ShardWriter};
pub use tokenizer::WordPieceTokenizer;
