//! The `electra` command line.

mod loss;

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
}

/// Parses the arguments and runs the command; errors are returned for `main` to print.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Loss(args) => loss::run(&args),
    }
}
