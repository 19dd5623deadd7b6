//! `electra pretrain`: the pretraining loop, with metrics, checkpoints and exact resume.

use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Device, Space};
use crate::data::{prepare, train_tokenizer, Batcher, Cursor, PrepareOptions, WordPieceTokenizer};
use crate::io::checkpoint::{self, CheckpointData, TrainingState};
use crate::io::hf::Loaded;
use crate::io::run_dir::{self, Metrics, RunConfig};
use crate::model::config::ElectraConfig;
use crate::model::Model;
use crate::train::{Replacement, StepReport, TrainConfig, TrainError, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

/// Means of the step figures since the last metrics line.
#[derive(Default)]
struct Window {
    steps: u64,
    tokens: u64,
    sums: [f64; 7],
    started: Option<Instant>,
}

impl Window {
    fn add(&mut self, r: &StepReport, tokens: usize) {
        self.started.get_or_insert_with(Instant::now);
        self.steps += 1;
        self.tokens += tokens as u64;
        let l = &r.loss;
        let figures = [
            l.gen_loss as f64,
            l.disc_loss as f64,
            l.mlm_accuracy.unwrap_or(f32::NAN) as f64,
            l.disc_accuracy as f64,
            l.replaced_fraction as f64,
            r.grad_norm as f64,
            l.disc_gain() as f64,
        ];
        self.sums.iter_mut().zip(figures).for_each(|(s, f)| *s += f);
    }

    fn take(&mut self, step: u64, lr: f32, elapsed_s: f64) -> Option<Metrics> {
        if self.steps == 0 {
            return None;
        }
        let n = self.steps as f64;
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let m = Metrics {
            step,
            gen_loss: self.sums[0] / n,
            disc_loss: self.sums[1] / n,
            mlm_accuracy: self.sums[2] / n,
            disc_accuracy: self.sums[3] / n,
            replaced_fraction: self.sums[4] / n,
            disc_gain: Some(self.sums[6] / n),
            lr: lr as f64,
            grad_norm: self.sums[5] / n,
            tokens_per_s: self.tokens as f64 / secs.max(1e-9),
            elapsed_s,
        };
        *self = Window::default();
        Some(m)
    }
}

pub fn run(args: &PretrainArgs) -> CliResult<()> {
    match args.device.parse::<Device>()? {
        Device::Cpu => run_on(CpuBackend::new(), args),
        Device::Cuda(n) => run_on(CudaBackend::new(n)?, args),
    }
}

fn run_on<B: Backend>(backend: B, args: &PretrainArgs) -> CliResult<()> {
    let mut init = None;
    let (out, rc, start, _lock) = match &args.resume {
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
            (dir.clone(), rc, Some(ckpt), lock)
        }
        None => {
            let (out, rc, initial) = new_run(args)?;
            let lock = run_dir::lock_for_training(&out)?;
            init = initial;
            (out, rc, None, lock)
        }
    };
    let mut batcher = Batcher::open(&rc.data, rc.batch_size, rc.train.seed)?;
    if batcher.seq_len() > rc.model.max_position_embeddings {
        return Err(format!(
            "{}: examples of {} tokens exceed the model's {} positions",
            rc.data.display(),
            batcher.seq_len(),
            rc.model.max_position_embeddings
        )
        .into());
    }
    let model = Model::new(rc.model.clone());
    let initial = match (&start, init) {
        (Some(c), _) => c.params.clone(),
        (None, Some(values)) => values,
        (None, None) => model.initial_values(rc.train.seed),
    };
    let mut trainer = Trainer::new(backend, model, rc.train.clone(), &initial)?;
    let mut elapsed_before = 0.0;
    if let Some(c) = &start {
        trainer.set_flat(Space::AdamM, &c.adam_m);
        trainer.set_flat(Space::AdamV, &c.adam_v);
        trainer.step = c.state.step;
        let cursor: Cursor = serde_json::from_value(c.state.data_cursor.clone())
            .map_err(|e| format!("{}: bad data cursor in the checkpoint: {e}", out.display()))?;
        batcher.restore(cursor)?;
        elapsed_before = c.state.elapsed_s;
        run_dir::truncate_metrics(&out, c.state.step)?;
        eprintln!("resuming {} at step {}", out.display(), c.state.step);
    }
    train_loop(
        &out,
        &rc,
        args.stop_at,
        &mut trainer,
        &mut batcher,
        elapsed_before,
    )?;
    Ok(())
}

fn save<B: Backend>(
    out: &Path,
    rc: &RunConfig,
    trainer: &Trainer<B>,
    batcher: &Batcher,
    elapsed_s: f64,
) -> CliResult<()> {
    let data = CheckpointData {
        params: trainer.flat(Space::Param),
        adam_m: trainer.flat(Space::AdamM),
        adam_v: trainer.flat(Space::AdamV),
        state: TrainingState {
            step: trainer.step,
            data_cursor: serde_json::to_value(batcher.cursor())?,
            elapsed_s,
        },
    };
    checkpoint::save(out, &trainer.model.layout, &data, rc.keep_checkpoints)?;
    Ok(())
}

fn train_loop<B: Backend>(
    out: &Path,
    rc: &RunConfig,
    stop_at: Option<u64>,
    trainer: &mut Trainer<B>,
    batcher: &mut Batcher,
    elapsed_before: f64,
) -> CliResult<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // A second handler registration in one process (tests) fails harmlessly.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let end = stop_at
        .unwrap_or(rc.train.total_steps)
        .min(rc.train.total_steps);
    let bar = ProgressBar::new(end);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta}]",
        )
        .expect("the template is valid"),
    );
    bar.set_position(trainer.step);
    let clock = Instant::now();
    let elapsed = |c: &Instant| elapsed_before + c.elapsed().as_secs_f64();
    let mut window = Window::default();
    let tokens_per_step = rc.batch_size * batcher.seq_len();
    while trainer.step < end {
        let batch = batcher.next_batch();
        let report = match trainer.train_step(batch) {
            Ok(r) => r,
            Err(e @ TrainError::NonFinite { .. }) => {
                bar.abandon();
                let last = checkpoint::list(out)?
                    .last()
                    .map_or("none".to_string(), |s| format!("step-{s}"));
                return Err(
                    format!("{e}; the run stops here, its last good checkpoint is {last}").into(),
                );
            }
            Err(e) => return Err(e.into()),
        };
        window.add(&report, tokens_per_step);
        let step = trainer.step;
        let checkpoint_due = step.is_multiple_of(rc.checkpoint_every.max(1)) || step == end;
        let stop = interrupted.load(Ordering::SeqCst);
        if step.is_multiple_of(rc.log_every.max(1)) || checkpoint_due || stop {
            if let Some(m) = window.take(step, report.lr, elapsed(&clock)) {
                bar.set_message(format!(
                    "gen {:.3} disc {:.4} (gain {:+.4}) {:.0} tok/s",
                    m.gen_loss,
                    m.disc_loss,
                    m.disc_gain.unwrap_or(f64::NAN),
                    m.tokens_per_s
                ));
                run_dir::append_metrics(out, &m)?;
            }
        }
        bar.set_position(step);
        if checkpoint_due || stop {
            save(out, rc, trainer, batcher, elapsed(&clock))?;
        }
        if stop {
            bar.abandon();
            eprintln!(
                "interrupted: wrote a checkpoint at step {step}; continue with --resume {}",
                out.display()
            );
            return Ok(());
        }
    }
    bar.finish();
    eprintln!("finished at step {} in {}", trainer.step, out.display());
    Ok(())
}
