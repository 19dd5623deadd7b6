//! `electra pretrain`: a new run (or a resumed one) from the flags, trained by
//! [`PretrainRun`](crate::pretrain::PretrainRun) under a progress bar (or, when stderr is not a
//! terminal, one line per metrics window) that SIGINT (Ctrl-C), SIGTERM and SIGHUP stop with a
//! checkpoint. Under `mpirun` every rank runs this; rank 0 alone writes and prints.

use super::EXIT_INTERRUPTED;
use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Device};
use crate::comm::Collective;
use crate::data::{prepare, train_tokenizer, PrepareOptions, WordPieceTokenizer};
use crate::io::checkpoint;
use crate::io::hf::Loaded;
use crate::io::paths::check_apart;
use crate::io::run_dir::{self, Metrics, RunConfig};
use crate::model::config::ElectraConfig;
use crate::model::Model;
use crate::pretrain::{check_ranks_agree, Observer, PretrainRun, Ranks, RunEnd, Start};
use crate::train::{Replacement, StepReport, TrainConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
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
    /// Sequences per micro-batch; a step takes --accumulate of them on each rank.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch: Option<usize>,
    /// Micro-batches per optimizer step on each rank (gradient accumulation): the global batch
    /// is ranks × accumulate × batch [default: 1; on --resume, what keeps the run's global batch]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    accumulate: Option<usize>,
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
        accumulate: 1,
        world_size: 1,
        log_every: args.log_every.unwrap_or(if is_demo { 10 } else { 100 }),
        checkpoint_every: args
            .checkpoint_every
            .unwrap_or(if is_demo { 200 } else { 10_000 }),
        keep_checkpoints: args.keep.unwrap_or(3),
        // Recorded once the data is open.
        data_checksum: None,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/tiny-sotu"));
    let mut inputs = vec![("the data folder", rc.data.as_path())];
    inputs.extend(
        args.init_from
            .as_deref()
            .map(|d| ("the --init-from folder", d)),
    );
    inputs.extend(args.config.as_deref().map(|c| ("the --config file", c)));
    check_apart(&out, &inputs)?;
    Ok((out, rc, initial))
}

/// Refuses a new run in a folder that holds a run with a checkpoint (which `--resume`
/// continues). A run that never wrote one cannot be resumed, so a new run replaces it.
/// Called with the folder's lock held, so no other process is writing the run.
fn check_new_run_folder(out: &Path) -> CliResult<()> {
    if !run_dir::config_path(out).exists() {
        return Ok(());
    }
    let d = out.display();
    if checkpoint::list(out)?.is_empty() {
        eprintln!("note: {d} holds a run that never wrote a checkpoint; a new run replaces it");
        return Ok(());
    }
    Err(
        format!("{d}: already holds a run; continue it with --resume {d} or choose another --out")
            .into(),
    )
}

/// After a new run failed to start in a folder it created: removes the lock file and the folder
/// if nothing else is in it, so nothing is left behind.
fn remove_new_folder(out: &Path) {
    let _ = std::fs::remove_file(out.join("train.lock"));
    let _ = std::fs::remove_dir(out);
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

pub fn run(args: &PretrainArgs) -> CliResult<ExitCode> {
    let comm = crate::comm::join()?;
    let result = match args.device.parse::<Device>()? {
        Device::Cpu => run_on(CpuBackend::new(), args, comm.clone()),
        Device::Cuda(n) => {
            let named = (args.device != "cuda").then_some(n);
            cuda_backend(named, &*comm).and_then(|be| run_on(be, args, comm.clone()))
        }
    };
    match result {
        Err(e) if comm.world() > 1 => {
            // The other ranks may wait in a collective for this one: end them all.
            eprintln!("rank {}: error: {e}", comm.rank());
            comm.abort(1)
        }
        other => other,
    }
}

/// The GPU `named` (`--device cuda:N`), or else the local rank's: local rank r takes device r of
/// those it sees, modulo their number, so that a launcher that shows each rank one GPU
/// (`CUDA_VISIBLE_DEVICES`, Slurm's `--gpus-per-task=1`) gives each its own. The gradient sums
/// of a run of several ranks go over NCCL; `ELECTRA_NCCL=0` sums them through host memory
/// instead, `ELECTRA_NCCL=1` uses NCCL on one rank too (a check of the NCCL path against the
/// plain one).
fn cuda_backend(named: Option<usize>, comm: &dyn Collective) -> CliResult<CudaBackend> {
    let n = match named {
        Some(n) => n,
        None => comm.local_rank() % CudaBackend::device_count()?,
    };
    let mut backend = CudaBackend::new(n)?;
    let nccl = match std::env::var("ELECTRA_NCCL").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => comm.world() > 1,
    };
    if nccl {
        backend.join_nccl(comm)?;
    }
    Ok(backend)
}

/// Opens a new or resumed run: everything is checked before `run.json` is written, and the
/// lock is taken before anything is. Every rank opens the run; rank 0 alone takes the lock
/// and writes.
fn open_run<B: Backend>(
    backend: B,
    args: &PretrainArgs,
    comm: Rc<dyn Collective>,
) -> CliResult<(PathBuf, PretrainRun<B>)> {
    let writer = comm.rank() == 0;
    let Some(dir) = &args.resume else {
        let (out, mut rc, initial) = new_run(args)?;
        rc.world_size = comm.world();
        rc.accumulate = args.accumulate.unwrap_or(1);
        let created = !out.exists();
        let lock = if writer {
            Some(run_dir::lock_for_training(&out)?)
        } else {
            None
        };
        let ranks = Ranks {
            comm: comm.clone(),
            lock,
        };
        let start = Start::Fresh(initial);
        let run = (if writer {
            check_new_run_folder(&out)
        } else {
            Ok(())
        })
        .and_then(|()| Ok(PretrainRun::with_ranks(backend, &out, rc, start, ranks)?))
        .and_then(|run| Ok(check_ranks_agree(&*comm, run.config()).map(|()| run)?))
        .and_then(|run| {
            if writer {
                run_dir::write_config(&out, run.config())?;
            }
            Ok(run)
        })
        .inspect_err(|_| {
            if created && writer {
                remove_new_folder(&out);
            }
        })?;
        if let (Some(dir), true) = (&args.init_from, writer) {
            eprintln!("initialised {} from {}", out.display(), dir.display());
        }
        return Ok((out, run));
    };
    let mut rc = run_dir::read_config(dir)?;
    let lock = if writer {
        Some(run_dir::lock_for_training(dir)?)
    } else {
        None
    };
    let Some(&last) = checkpoint::list(dir)?.last() else {
        return Err(format!("{}: has no checkpoint to resume from", dir.display()).into());
    };
    if let Some(steps) = args.steps {
        rc.train.total_steps = steps;
    }
    apply_overrides(args, &mut rc.train)?;
    rc.resplit(comm.world(), args.accumulate)
        .map_err(|e| format!("--resume {}: {e}", dir.display()))?;
    let layout = Model::new(rc.model.clone()).layout;
    let ckpt = checkpoint::load(dir, &layout, last)?;
    let ranks = Ranks {
        comm: comm.clone(),
        lock,
    };
    let run = PretrainRun::with_ranks(backend, dir, rc, Start::Checkpoint(ckpt), ranks)?;
    check_ranks_agree(&*comm, run.config())?;
    if writer {
        run_dir::write_config(dir, run.config())?;
        eprintln!("resuming {} at step {}", dir.display(), run.trainer().step);
    }
    Ok((dir.clone(), run))
}

fn run_on<B: Backend>(
    backend: B,
    args: &PretrainArgs,
    comm: Rc<dyn Collective>,
) -> CliResult<ExitCode> {
    // Watched from before the first write: a signal from then on ends the run with a checkpoint.
    let interrupted = watch_signals();
    let printing = if comm.rank() != 0 {
        Printing::Silent
    } else if std::io::stderr().is_terminal() {
        Printing::Bar
    } else {
        Printing::Lines
    };
    let (out, mut run) = open_run(backend, args, comm)?;
    for repair in run.repairs() {
        eprintln!("note: {repair}");
    }
    let mut progress = Progress::new(interrupted, printing);
    match run.train(args.stop_at, &mut progress) {
        Ok(RunEnd::Finished { step }) => {
            progress.bar.finish();
            if printing != Printing::Silent {
                eprintln!("finished at step {step} in {}", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(RunEnd::Stopped { step }) => {
            progress.bar.abandon();
            if printing != Printing::Silent {
                eprintln!(
                    "interrupted: wrote a checkpoint at step {step}; continue with --resume {} \
                     (exit status {EXIT_INTERRUPTED})",
                    out.display()
                );
            }
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(e) => {
            progress.bar.abandon();
            Err(e.into())
        }
    }
}

/// Turns SIGINT (Ctrl-C), SIGTERM and SIGHUP (what `kill` and cluster schedulers send) into a
/// request to stop with a checkpoint; the flag says whether one came.
fn watch_signals() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // A second handler registration in one process (tests) fails harmlessly.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    interrupted
}

/// How a rank shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Printing {
    /// A progress bar on the terminal.
    Bar,
    /// One plain line per metrics window, for logs that are files (a Slurm job, `nohup`).
    Lines,
    /// Nothing: a rank other than 0.
    Silent,
}

/// The progress bar on the terminal (or lines in a log), and a signal ([`watch_signals`]) as a
/// request to stop with a checkpoint.
struct Progress {
    bar: ProgressBar,
    printing: Printing,
    interrupted: Arc<AtomicBool>,
    /// The step training started at and when, for the time still to go.
    start: (u64, std::time::Instant),
    end: u64,
}

impl Progress {
    fn new(interrupted: Arc<AtomicBool>, printing: Printing) -> Self {
        let bar = if printing == Printing::Bar {
            ProgressBar::new(0)
        } else {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta}]",
            )
            .expect("the template is valid"),
        );
        Progress {
            bar,
            printing,
            interrupted,
            start: (0, std::time::Instant::now()),
            end: 0,
        }
    }

    /// One line of a log: the step, both losses, the discriminator's gain, the rate, the
    /// training time so far (resumes included) and the time to the end at this session's pace.
    fn line(&self, m: &Metrics) -> String {
        let (first, since) = self.start;
        let pace = since.elapsed().as_secs_f64() / m.step.saturating_sub(first).max(1) as f64;
        let remaining = pace * self.end.saturating_sub(m.step) as f64;
        format!(
            "step {}/{} gen {:.4} disc {:.4} gain {:+.4} {:.0} tok/s elapsed {} remaining {}",
            m.step,
            self.end,
            m.gen_loss,
            m.disc_loss,
            m.disc_gain.unwrap_or(f64::NAN),
            m.tokens_per_s,
            clock(m.elapsed_s),
            clock(remaining)
        )
    }
}

/// `h:mm:ss`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Observer for Progress {
    fn on_start(&mut self, step: u64, end: u64) {
        self.start = (step, std::time::Instant::now());
        self.end = end;
        self.bar.set_length(end);
        self.bar.set_position(step);
    }

    fn on_step(&mut self, report: &StepReport) {
        self.bar.set_position(report.step);
    }

    fn on_metrics(&mut self, m: &Metrics) {
        if self.printing == Printing::Lines {
            eprintln!("{}", self.line(m));
        }
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
