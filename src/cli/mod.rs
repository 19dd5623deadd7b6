//! The `electra` command line.

mod bench;
mod export;
mod finetune;
mod loss;
mod plot;
mod prepare;
mod pretrain;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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

/// The exit status of a `pretrain` that SIGINT (Ctrl-C), SIGTERM or SIGHUP stopped after it wrote
/// a checkpoint, so that job scripts can tell it from a finished run (0) and an error (1) and
/// requeue it with `--resume`. It is `EX_TEMPFAIL` of `sysexits.h`: try again later.
pub const EXIT_INTERRUPTED: u8 = 75;

/// Parses the arguments and runs the command; returns the exit status of a command that ran
/// (0, or [`EXIT_INTERRUPTED`]), and errors for `main` to print.
pub fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let done = |r: Result<(), Box<dyn std::error::Error>>| r.map(|()| ExitCode::SUCCESS);
    match Cli::parse().command {
        Command::Loss(args) => done(loss::run(&args)),
        Command::Prepare(args) => done(prepare::run(&args)),
        Command::Pretrain(args) => pretrain::run(&args),
        Command::Plot(args) => done(plot::run(&args)),
        Command::Bench(args) => done(bench::run(&args)),
        Command::Export(args) => done(export::run(&args)),
        Command::Finetune(args) => done(finetune::run(&args)),
        Command::Predict(args) => done(finetune::run_predict(&args)),
    }
}
