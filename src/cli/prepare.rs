//! `electra prepare`: text in, shards out.

use crate::data::prepare::check_output_dir;
use crate::data::{prepare, train_tokenizer, PrepareOptions, WordPieceTokenizer};
use crate::io::paths::check_apart;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// A text file, a folder (read recursively) or `-` for stdin; repeat for several.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// A vocab.txt or tokenizer.json to tokenize with.
    #[arg(long, conflicts_with = "train_vocab")]
    pub vocab: Option<PathBuf>,
    /// Trains a new WordPiece vocabulary of this size on the input instead.
    #[arg(long, required_unless_present = "vocab")]
    pub train_vocab: Option<usize>,
    /// The shard folder to create.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per example.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Seed of the packing choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Examples per shard file; the last one may hold fewer.
    #[arg(long, default_value_t = PrepareOptions::default().examples_per_shard)]
    pub examples_per_shard: usize,
}

pub fn run(args: &PrepareArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Checked before a vocabulary is trained, which can take minutes.
    check_output_dir(&args.out)?;
    let mut inputs: Vec<(&str, &Path)> = args
        .input
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .map(|p| ("the input", p.as_path()))
        .collect();
    if let Some(vocab) = &args.vocab {
        inputs.push(("the vocabulary", vocab));
    }
    check_apart(&args.out, &inputs)?;
    let tokenizer = match (&args.vocab, args.train_vocab) {
        (Some(path), _) => WordPieceTokenizer::load(path)?,
        (None, Some(size)) => {
            eprintln!("training a WordPiece vocabulary of {size} tokens");
            train_tokenizer(&args.input, size)?
        }
        (None, None) => unreachable!("clap requires --vocab or --train-vocab"),
    };
    let options = PrepareOptions {
        seq_len: args.seq_len,
        seed: args.seed,
        examples_per_shard: args.examples_per_shard,
    };
    let summary = prepare(&args.input, &args.out, &tokenizer, &options)?;
    if !summary.removed.is_empty() {
        eprintln!(
            "note: removed {} file(s) that an interrupted prepare had left in {}",
            summary.removed.len(),
            args.out.display()
        );
    }
    eprintln!("{summary}");
    Ok(())
}
