//! `electra pretrain`: a new run (or a resumed one) from the flags, trained by
//! [`PretrainRun`](crate::pretrain::PretrainRun) under a progress bar that Ctrl-C stops.

use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Device};
use crate::data::{prepare, train_tokenizer, PrepareOptions, WordPieceTokenizer};
use crate::io::checkpoint;
use crate::io::hf::Loaded;
use crate::io::run_dir::{self, Metrics, RunConfig};
use crate::model::config::ElectraConfig;
use crate::model::Model;
use crate::pretrain::{Observer, PretrainRun, RunEnd, Start};
use crate::train::{Replacement, StepReport, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// Model size: tiny, small, base or large [default: tiny for the built-in default run, small
    /// with --data]
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A model config file (JSON, the format of a run's run.json `model` field).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prepared shard folder. Without it, the built-in default: the State of the Union corpus,
    /// fetched and prepared under data/ if absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The run directory to create.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continues the run in this directory from its newest checkpoint.
    #[arg(long, conflicts_with_all = ["preset", "config", "data", "out"])]
    resume: Option<PathBuf>,
    /// Starts from the weights of HF ELECTRA directories instead of a random init: DIR holds
    /// generator/ and discriminator/ (as `electra export` writes them). The model's sizes are
    /// taken from their config.json files; the vocabulary must be the data's.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["preset", "config", "gen_fraction", "resume"])]
    init_from: Option<PathBuf>,
    /// The total number of steps to reach (the schedule decays to zero there).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Stops (with a checkpoint) after this step, leaving the rest for --resume.
    #[arg(long)]
    stop_at: Option<u64>,
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// argmax (sampling-free, the default) or sample (Gumbel, as in the paper).
    #[arg(long, value_parser = ["argmax", "sample"])]
    replacement: Option<String>,
    /// Generator hidden size as a fraction of the discriminator's.
    #[arg(long)]
    gen_fraction: Option<f64>,
    /// Weight of the discriminator's loss against the generator's (50 in the paper); 0 takes the
    /// discriminator out of the gradients, so the generator learns alone (weight decay still
    /// shrinks the discriminator's weights).
    #[arg(long, allow_negative_numbers = true)]
    disc_weight: Option<f32>,
    /// cpu, or cuda[:N] where the CUDA backend is built in.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Steps between metrics lines.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    log_every: Option<u64>,
    /// Steps between checkpoints.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// Checkpoints to keep.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    keep: Option<usize>,
}

/// Where the built-in default keeps its data, relative to the working directory.
const DEFAULT_TEXT: &str = "data/sotu";
const DEFAULT_SHARDS: &str = "data/sotu-shards";
/// A vocabulary trained on the corpus keeps the `tiny` demo fast on the CPU.
const DEFAULT_VOCAB: usize = 8192;

/// Fetches and prepares the State of the Union corpus, unless that was done before.
fn default_data() -> CliResult<PathBuf> {
    let shards = PathBuf::from(DEFAULT_SHARDS);
    if shards.join("vocab.txt").exists() {
        return Ok(shards);
    }
    let text = PathBuf::from(DEFAULT_TEXT);
    if !text.is_dir() {
        let script = Path::new("scripts/fetch-data.sh");
        if !script.exists() {
            return Err(format!(
                "no --data given and {DEFAULT_TEXT} is absent; run from the electra repository (which has \
                 scripts/fetch-data.sh) or pass --data with a folder made by `electra prepare`"
            )
            .into());
        }
        eprintln!("fetching the State of the Union corpus with scripts/fetch-data.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg("sotu")
            .status()?;
        if !status.success() {
            return Err("scripts/fetch-data.sh failed (see its message above)".into());
        }
    }
    eprintln!(
        "preparing {DEFAULT_TEXT} into {DEFAULT_SHARDS} with a {DEFAULT_VOCAB}-token vocabulary"
    );
    let tokenizer = train_tokenizer(std::slice::from_ref(&text), DEFAULT_VOCAB)?;
    let summary = prepare(&[text], &shards, &tokenizer, &PrepareOptions::default())?;
    eprintln!("{summary}");
    Ok(shards)
}

/// Reads the pair of HF directories of `--init-from`: the model config and its values. The
/// vocabulary must be the data's: the same `vocab.txt` when the directory ships one, else at
/// least the same size.
fn init_from(dir: &Path, data: &Path, tokenizer: &WordPieceTokenizer) -> CliResult<Loaded> {
    let loaded = crate::io::hf::load_pretraining_dir(dir)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let cfg = &loaded.model.config;
    let shipped = dir.join("discriminator").join("vocab.txt");
    if shipped.is_file() {
        let theirs = WordPieceTokenizer::from_vocab_file(&shipped)?;
        if theirs.vocab_hash() != tokenizer.vocab_hash() {
            return Err(format!(
                "{} differs from {}: the embeddings of --init-from {} belong to another \
                 vocabulary; prepare the data with --vocab {}",
                shipped.display(),
                data.join("vocab.txt").display(),
                dir.display(),
                shipped.display()
            )
            .into());
        }
    } else if cfg.vocab_size != tokenizer.vocab_size() {
        return Err(format!(
            "--init-from {} has a vocabulary of {} tokens but {} has {}",
            dir.display(),
            cfg.vocab_size,
            data.join("vocab.txt").display(),
            tokenizer.vocab_size()
        )
        .into());
    } else {
        eprintln!(
            "warning: {} ships no vocab.txt; assuming its {} token ids are those of {}",
            dir.display(),
            cfg.vocab_size,
            data.join("vocab.txt").display()
        );
    }
    Ok(loaded)
}

/// The run configuration of a new run, from the flags, and the initial values when they come
/// from `--init-from`.
fn new_run(args: &PretrainArgs) -> CliResult<(PathBuf, RunConfig, Option<Vec<f32>>)> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => default_data()?,
    };
    let tokenizer = WordPieceTokenizer::from_vocab_file(&data.join("vocab.txt"))
        .map_err(|e| format!("{}: not a prepared shard folder ({e})", data.display()))?;
    let default_preset = if args.data.is_none() { "tiny" } else { "small" };
    let mut initial = None;
    let mut model = match (&args.init_from, &args.config, &args.preset) {
        (Some(dir), _, _) => {
            let loaded = init_from(dir, &data, &tokenizer)?;
            initial = Some(loaded.values);
            loaded.model.config
        }
        (None, Some(path), _) => ElectraConfig::from_file(path)?,
        (None, None, preset) => ElectraConfig::preset(preset.as_deref().unwrap_or(default_preset))?,
    };
    if let Some(f) = args.gen_fraction {
        model = model.with_generator_fraction(f)?;
    }
    model.vocab_size = tokenizer.vocab_size();
    model.special_tokens = tokenizer.special_tokens();
    model.validate()?;
    let is_demo = args.data.is_none();
    let steps = args.steps.unwrap_or(if is_demo { 400 } else { 1_000_000 });
    let mut train = TrainConfig {
        total_steps: steps,
        warmup_steps: (steps / 10).min(10_000),
        ..TrainConfig::default()
    };
    apply_overrides(args, &mut train)?;
    let rc = RunConfig {
        model,
        train,
        data,
        batch_size: args.batch.unwrap_or(if is_demo { 32 } else { 128 }),
        log_every: args.log_every.unwrap_or(if is_demo { 10 } else { 100 }),
        checkpoint_every: args
            .checkpoint_every
            .unwrap_or(if is_demo { 200 } else { 10_000 }),
        keep_checkpoints: args.keep.unwrap_or(3),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/tiny-sotu"));
    if run_dir::config_path(&out).exists() {
        let d = out.display();
        return Err(if checkpoint::list(&out)?.is_empty() {
            // A run that failed before its first checkpoint cannot be resumed.
            format!("{d}: already holds a run that never wrote a checkpoint; delete it or choose another --out")
        } else {
            format!("{d}: already holds a run; continue it with --resume {d} or choose another --out")
        }
        .into());
    }
    run_dir::write_config(&out, &rc)?;
    if let Some(dir) = &args.init_from {
        eprintln!("initialised {} from {}", out.display(), dir.display());
    }
    Ok((out, rc, initial))
}

/// Applies the recipe flags, new run or resume alike, and checks the result.
fn apply_overrides(args: &PretrainArgs, train: &mut TrainConfig) -> CliResult<()> {
    if let Some(lr) = args.lr {
        train.peak_lr = lr;
    }
    if let Some(w) = args.warmup {
        train.warmup_steps = w;
    }
    if let Some(s) = args.seed {
        train.seed = s;
    }
    if let Some(w) = args.disc_weight {
        train.disc_weight = w;
    }
    if let Some(r) = &args.replacement {
        train.replacement = if r == "sample" {
            Replacement::Sample
        } else {
            Replacement::Argmax
        };
    }
    train.validate().map_err(|e| {
        // Name the flag the user typed rather than the run.json field it sets.
        let e = e.replacen("peak_lr", "--lr", 1);
        e.replacen("disc_weight", "--disc-weight", 1).into()
    })
}

pub fn run(args: &PretrainArgs) -> CliResult<()> {
    match args.device.parse::<Device>()? {
        Device::Cpu => run_on(CpuBackend::new(), args),
        Device::Cuda(n) => run_on(CudaBackend::new(n)?, args),
    }
}

fn run_on<B: Backend>(backend: B, args: &PretrainArgs) -> CliResult<()> {
    let (out, rc, start, lock) = match &args.resume {
        Some(dir) => {
            let mut rc = run_dir::read_config(dir)?;
            let lock = run_dir::lock_for_training(dir)?;
            let Some(&last) = checkpoint::list(dir)?.last() else {
                return Err(format!("{}: has no checkpoint to resume from", dir.display()).into());
            };
            if let Some(steps) = args.steps {
                rc.train.total_steps = steps;
            }
            apply_overrides(args, &mut rc.train)?;
            let layout = Model::new(rc.model.clone()).layout;
            let ckpt = checkpoint::load(dir, &layout, last)?;
            run_dir::write_config(dir, &rc)?;
            (dir.clone(), rc, Start::Checkpoint(ckpt), lock)
        }
        None => {
            let (out, rc, initial) = new_run(args)?;
            let lock = run_dir::lock_for_training(&out)?;
            (out, rc, Start::Fresh(initial), lock)
        }
    };
    let resuming = matches!(start, Start::Checkpoint(_));
    let mut run = PretrainRun::new(backend, &out, rc, start, lock)?;
    if resuming {
        eprintln!("resuming {} at step {}", out.display(), run.trainer().step);
    }
    let mut progress = Progress::new();
    match run.train(args.stop_at, &mut progress) {
        Ok(RunEnd::Finished { step }) => {
            progress.bar.finish();
            eprintln!("finished at step {step} in {}", out.display());
            Ok(())
        }
        Ok(RunEnd::Stopped { step }) => {
            progress.bar.abandon();
            eprintln!(
                "interrupted: wrote a checkpoint at step {step}; continue with --resume {}",
                out.display()
            );
            Ok(())
        }
        Err(e) => {
            progress.bar.abandon();
            Err(e.into())
        }
    }
}

/// The progress bar on the terminal, and Ctrl-C as a request to stop with a checkpoint.
struct Progress {
    bar: ProgressBar,
    interrupted: Arc<AtomicBool>,
}

impl Progress {
    fn new() -> Self {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        // A second handler registration in one process (tests) fails harmlessly.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta}]",
            )
            .expect("the template is valid"),
        );
        Progress { bar, interrupted }
    }
}

impl Observer for Progress {
    fn on_start(&mut self, step: u64, end: u64) {
        self.bar.set_length(end);
        self.bar.set_position(step);
    }

    fn on_step(&mut self, report: &StepReport) {
        self.bar.set_position(report.step);
    }

    fn on_metrics(&mut self, m: &Metrics) {
        self.bar.set_message(format!(
            "gen {:.3} disc {:.4} (gain {:+.4}) {:.0} tok/s",
            m.gen_loss,
            m.disc_loss,
            m.disc_gain.unwrap_or(f64::NAN),
            m.tokens_per_s
        ));
    }

    fn should_stop(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}
