//! `electra finetune` and `electra predict`: sequence classification and regression on GLUE-format
//! data.

use crate::backend::cpu::CpuBackend;
use crate::finetune::data::TaskSpec;
use crate::finetune::run::{finetune, predict, RunOptions};
use crate::finetune::FinetuneError;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// A GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli. Or leave it out and give
    /// --text-columns and --label-column.
    #[arg(long)]
    task: Option<String>,
    /// For other files: the 0-based text column(s), `A` or `A,B`.
    #[arg(long, value_delimiter = ',')]
    text_columns: Vec<usize>,
    /// For other files: the 0-based label column.
    #[arg(long)]
    label_column: Option<usize>,
    /// For other files: the first row is a header.
    #[arg(long)]
    header: bool,
    /// For other files: the label is a real number (mean squared error, Pearson/Spearman).
    #[arg(long)]
    regression: bool,
    /// Folder with train.tsv and dev.tsv (dev_matched.tsv for MNLI; .csv for other files).
    #[arg(long)]
    data: PathBuf,
    /// A HF discriminator directory with vocab.txt (or a folder with discriminator/, as
    /// `electra export` writes).
    #[arg(long)]
    model: PathBuf,
    /// Output folder: metrics.jsonl and best/ (the best epoch's model).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate (3e-4 for Small, 1e-4 for Base).
    #[arg(long, default_value_t = 3e-4, allow_negative_numbers = true)]
    lr: f32,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Layer-wise learning-rate decay: layer d gets lr · decay^(L+1−d).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    layer_decay: f32,
    /// Share of the steps spent in linear warmup.
    #[arg(long, default_value_t = 0.1)]
    warmup_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest sequence, [CLS] and [SEP] included; the longer text is trimmed first. Default 128
    /// (or the model's positions, if fewer).
    #[arg(long)]
    max_seq: Option<usize>,
    /// Same architecture with random weights (the baseline for pretraining).
    #[arg(long, alias = "random-init")]
    init_from_scratch: bool,
    /// Progress line every N steps (0: per epoch only).
    #[arg(long, default_value_t = 100)]
    log_every: u64,
}

pub fn run(args: &FinetuneArgs) -> Result<(), Box<dyn std::error::Error>> {
    let task = match (&args.task, args.label_column) {
        (Some(t), None) if args.text_columns.is_empty() => TaskSpec::glue(t)?,
        (None, Some(label)) => TaskSpec::custom(
            args.text_columns.clone(),
            label,
            args.header,
            args.regression,
        )?,
        _ => {
            return Err(FinetuneError::Usage(
                "give either --task NAME or --text-columns A[,B] --label-column C".into(),
            )
            .into())
        }
    };
    let opts = RunOptions {
        task,
        data: args.data.clone(),
        model: args.model.clone(),
        out: args.out.clone(),
        epochs: args.epochs,
        lr: args.lr,
        batch: args.batch,
        layer_decay: args.layer_decay,
        seed: args.seed,
        max_seq: args.max_seq,
        warmup_fraction: args.warmup_fraction,
        random_init: args.init_from_scratch,
        log_every: args.log_every,
    };
    let s = finetune(CpuBackend::new(), &opts)?;
    eprintln!(
        "best dev {} {:.4} at epoch {} ({} steps); model in {}",
        opts.task.main_metric,
        s.best,
        s.best_epoch,
        s.steps,
        args.out.join("best").display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A fine-tuned model folder (OUT/best of `electra finetune`).
    #[arg(long)]
    model: PathBuf,
    /// The file to label: GLUE's test layout by default (an index column first).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `index<TAB>prediction` lines (after a header).
    #[arg(long)]
    out: PathBuf,
    /// The input has the train/dev layout (with labels); also prints the metrics.
    #[arg(long)]
    labelled: bool,
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

pub fn run_predict(args: &PredictArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (n, metrics) = predict(
        CpuBackend::new(),
        &args.model,
        &args.input,
        &args.out,
        args.labelled,
        args.batch.max(1),
    )?;
    eprintln!("wrote {n} predictions to {}", args.out.display());
    if let Some(m) = metrics {
        println!("{m}");
    }
    Ok(())
}
