//! The `electra` command line.

mod bench;
mod export;
mod finetune;
mod loss;
mod plot;
mod prepare;
mod pretrain;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "electra",
    version,
    about = "Pretrain ELECTRA text encoders (replaced-token detection)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Computes both losses and the gradients of HF-format models on one batch file, to check the
    /// engine against another implementation.
    Loss(loss::LossArgs),
    /// Tokenizes and packs text into shards for pretraining.
    Prepare(prepare::PrepareArgs),
    /// Pretrains a generator and a discriminator. With no flags, trains the `tiny` preset on the
    /// State of the Union corpus for a few minutes on the CPU.
    Pretrain(pretrain::PretrainArgs),
    /// Writes a run's newest checkpoint (or one checkpoint) as HF `transformers` directories:
    /// OUT/discriminator (ElectraForPreTraining) and OUT/generator (ElectraForMaskedLM).
    Export(export::ExportArgs),
    /// Times training steps on random ids: median step, tokens/s, FLOP rate, per-operation table.
    Bench(bench::BenchArgs),
    /// Draws a run's loss and accuracy curves into RUN_DIR/curves.svg.
    Plot(plot::PlotArgs),
    /// Fine-tunes a discriminator for classification or regression on GLUE-format data.
    Finetune(finetune::FinetuneArgs),
    /// Writes predictions of a fine-tuned model for a TSV/CSV file.
    Predict(finetune::PredictArgs),
}

/// Parses the arguments and runs the command; errors are returned for `main` to print.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Loss(args) => loss::run(&args),
        Command::Prepare(args) => prepare::run(&args),
        Command::Pretrain(args) => pretrain::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Finetune(args) => finetune::run(&args),
        Command::Predict(args) => finetune::run_predict(&args),
    }
}
