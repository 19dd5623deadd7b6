//! A run directory: `run.json` (the model and recipe), `metrics.jsonl`, `checkpoints/` and
//! `train.lock`, which the process training the run holds.

use super::{write_atomic, IoError};
use crate::model::config::ElectraConfig;
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything needed to continue a run exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Both networks' sizes and the special tokens.
    pub model: ElectraConfig,
    /// The optimisation recipe, seed included.
    pub train: TrainConfig,
    /// The prepared shard folder.
    pub data: PathBuf,
    /// Sequences per micro-batch: a step takes `accumulate` of them on each of `world_size`
    /// ranks ([`RunConfig::global_batch`]).
    pub batch_size: usize,
    /// Micro-batches per optimizer step on each rank (`--accumulate`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// The processes that train the run together (`mpirun -np N`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: usize,
    /// Steps between lines of `metrics.jsonl`.
    pub log_every: u64,
    /// Steps between checkpoints (one is also written at the last step and on Ctrl-C).
    pub checkpoint_every: u64,
    /// How many of the newest checkpoints are kept; older ones are deleted.
    pub keep_checkpoints: usize,
    /// [`Batcher::data_checksum`](crate::data::Batcher::data_checksum) of `data` when the run
    /// began; a resume on other data is refused. Absent in runs begun before it was recorded
    /// (their next resume records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_checksum: Option<u32>,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl RunConfig {
    /// Sequences per optimizer step over all ranks: `world_size · accumulate · batch_size`.
    pub fn global_batch(&self) -> usize {
        self.world_size * self.accumulate * self.batch_size
    }

    /// Sets the run to continue on `world` ranks with the same global batch, taking
    /// `accumulate` micro-batches a step when given and else as many as keep the global batch.
    /// A split that changes the global batch is refused, naming the numbers: the schedule and
    /// the data order of the run are those of its global batch.
    pub fn resplit(&mut self, world: usize, accumulate: Option<usize>) -> Result<(), String> {
        let (global, batch) = (self.global_batch(), self.batch_size);
        let per_pass = world * batch;
        let k = accumulate.unwrap_or(global / per_pass.max(1));
        if k == 0 || world * k * batch != global {
            return Err(format!(
                "the run's global batch is {global} sequences ({} ranks × {} micro-batches × \
                 {batch}); {world} ranks × {} × {batch} differ from it; {}",
                self.world_size,
                self.accumulate,
                accumulate.map_or("--accumulate ?".into(), |k| format!("--accumulate {k}")),
                if global % per_pass == 0 {
                    format!("pass --accumulate {}", global / per_pass)
                } else {
                    format!("use a number of ranks that divides {}", global / batch)
                }
            ));
        }
        self.world_size = world;
        self.accumulate = k;
        Ok(())
    }
}

/// One line of `metrics.jsonl`: means over the steps since the previous line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Optimizer steps taken when the line was written.
    pub step: u64,
    /// Generator MLM loss (nats per chosen position).
    pub gen_loss: f64,
    /// Discriminator BCE per real token, before the `disc_weight` factor.
    pub disc_loss: f64,
    /// Share of chosen positions where the generator's pick was the original token.
    pub mlm_accuracy: f64,
    /// Share of real tokens the discriminator labelled right.
    pub disc_accuracy: f64,
    /// Share of real tokens that differed from the original in the discriminator's input.
    pub replaced_fraction: f64,
    /// The label entropy of the replaced share minus `disc_loss` (see `LossReport::disc_gain`);
    /// absent from lines written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc_gain: Option<f64>,
    /// The learning rate of the last step of the window (not a mean).
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding included) per second of wall time over the window.
    pub tokens_per_s: f64,
    /// Training time since the run began, in seconds, carried across resumes.
    pub elapsed_s: f64,
}

/// `RUN_DIR/run.json`.
pub fn config_path(run_dir: &Path) -> PathBuf {
    run_dir.join("run.json")
}

/// `RUN_DIR/metrics.jsonl`.
pub fn metrics_path(run_dir: &Path) -> PathBuf {
    run_dir.join("metrics.jsonl")
}

/// Proof that this process alone trains a run; the lock goes when this value is dropped or the
/// process ends, however it ends, so a crash leaves nothing to clean up.
#[derive(Debug)]
pub struct TrainingLock {
    _held: File,
}

/// Takes `RUN_DIR/train.lock`, creating the folder if needed. A second `pretrain` on a run that is still training (a `--resume`
/// typed while the first runs) would rewrite its config and metrics and race its checkpoints; it
/// gets this error instead and changes nothing.
pub fn lock_for_training(run_dir: &Path) -> Result<TrainingLock, IoError> {
    std::fs::create_dir_all(run_dir).map_err(|e| IoError::io(run_dir, e))?;
    let path = run_dir.join("train.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| IoError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(TrainingLock { _held: file }),
        Err(TryLockError::WouldBlock) => Err(IoError::format(
            &path,
            "held by another process that is training this run; stop it first (Ctrl-C or \
             SIGTERM writes a checkpoint), or choose another --out for a new run",
        )),
        Err(TryLockError::Error(e)) => Err(IoError::io(&path, e)),
    }
}

/// Writes `run.json` atomically.
pub fn write_config(run_dir: &Path, cfg: &RunConfig) -> Result<(), IoError> {
    std::fs::create_dir_all(run_dir).map_err(|e| IoError::io(run_dir, e))?;
    let text = serde_json::to_vec_pretty(cfg).expect("run config serialises");
    write_atomic(&config_path(run_dir), &text)
}

/// Reads `run.json`, with an error that says when the folder is not a run at all; its recipe
/// and model sizes are checked as a new run's are.
pub fn read_config(run_dir: &Path) -> Result<RunConfig, IoError> {
    if !run_dir.is_dir() {
        return Err(IoError::format(run_dir, "no such run directory"));
    }
    let path = config_path(run_dir);
    let text = std::fs::read(&path).map_err(|e| IoError::io(&path, e))?;
    let cfg: RunConfig = serde_json::from_slice(&text)
        .map_err(|e| IoError::format(&path, format!("not a valid run config: {e}")))?;
    cfg.train
        .validate()
        .map_err(|e| IoError::format(&path, format!("train.{e}")))?;
    // Every reader lays the model out next, which takes time and memory in its sizes.
    cfg.model
        .validate()
        .map_err(|e| IoError::format(&path, format!("the `model` field: {e}")))?;
    Ok(cfg)
}

/// Appends one metrics line.
pub fn append_metrics(run_dir: &Path, m: &Metrics) -> Result<(), IoError> {
    let path = metrics_path(run_dir);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| IoError::io(&path, e))?;
    let line = serde_json::to_string(m).expect("metrics serialise");
    writeln!(f, "{line}").map_err(|e| IoError::io(&path, e))
}

/// Every metrics line of a run.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<Metrics>, IoError> {
    let path = metrics_path(run_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(IoError::io(&path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| IoError::format(&path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Removes what a killed process left half-written in the run: hidden `.NAME.tmp-PID` files
/// and folders (an unfinished checkpoint, a metrics or config file not yet renamed into place).
/// Holding `_lock` proves no live process is writing them. Returns what was removed.
pub fn remove_debris(run_dir: &Path, _lock: &TrainingLock) -> Result<Vec<PathBuf>, IoError> {
    let mut removed = vec![];
    for dir in [run_dir.to_path_buf(), run_dir.join("checkpoints")] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IoError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| IoError::io(&dir, e))?;
            if !super::is_tmp_name(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            gone.map_err(|e| IoError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Drops the metrics lines after `step`, so a resumed run rewrites them as the straight run did.
/// The lines kept are kept byte for byte. An unreadable last line (torn by a kill or a full disk
/// during its append) is dropped too and returned, for the caller to warn about; an unreadable
/// line before the last is an error. The file is rewritten (atomically) only if a line goes.
pub fn truncate_metrics(run_dir: &Path, step: u64) -> Result<Option<String>, IoError> {
    let path = metrics_path(run_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoError::io(&path, e)),
    };
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .collect();
    let mut kept = Vec::with_capacity(bytes.len());
    let mut torn = None;
    for (k, &(i, line)) in lines.iter().enumerate() {
        match serde_json::from_slice::<Metrics>(line) {
            Ok(m) if m.step <= step => {
                kept.extend_from_slice(line);
                kept.push(b'\n');
            }
            Ok(_) => {}
            Err(_) if k + 1 == lines.len() => torn = Some(String::from_utf8_lossy(line).into()),
            Err(e) => return Err(IoError::format(&path, format!("line {}: {e}", i + 1))),
        }
    }
    if kept != bytes {
        write_atomic(&path, &kept)?;
    }
    Ok(torn)
}
