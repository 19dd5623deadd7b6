//! `electra export`: a run's checkpoint as HF `transformers` directories.

use crate::io::export::export_run;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run directory (its newest checkpoint is exported) or one checkpoint folder
    /// (RUN_DIR/checkpoints/step-N).
    source: PathBuf,
    /// The folder to write: OUT/discriminator/ and OUT/generator/.
    #[arg(long)]
    out: PathBuf,
    /// The vocab.txt to ship with the model; by default the run's data folder's (run.json `data`).
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Replaces OUT if it already holds files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
    let s = export_run(&args.source, &args.out, args.vocab.as_deref(), args.force)?;
    let step = s.step.map_or(String::new(), |n| format!(" (step {n})"));
    eprintln!(
        "exported {}{step} to {}: discriminator/ ({} tensors, ElectraForPreTraining), generator/ \
         ({} tensors, ElectraForMaskedLM)",
        args.source.display(),
        s.out.display(),
        s.discriminator_tensors,
        s.generator_tensors
    );
    Ok(())
}
