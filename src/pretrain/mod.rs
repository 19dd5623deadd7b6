//! A pretraining run: [`Trainer`] steps over the batches of the run's prepared data, with
//! `metrics.jsonl` lines, checkpoints and exact resume, reporting its progress to an [`Observer`]
//! (the command line's progress bar, a test's counter).
//!
//! The caller decides what the run is (a [`RunConfig`]), holds the run directory's
//! [`TrainingLock`] and, once [`PretrainRun::new`] has checked that the run can start, writes
//! `run.json`; [`PretrainRun`] does the rest:
//!
//! ```no_run
//! use electra::backend::cpu::CpuBackend;
//! use electra::io::run_dir::{self, Metrics};
//! use electra::pretrain::{Observer, PretrainRun, Start};
//! use std::path::Path;
//!
//! struct Printer;
//! impl Observer for Printer {
//!     fn on_metrics(&mut self, m: &Metrics) {
//!         println!("step {}: discriminator loss {:.4}", m.step, m.disc_loss);
//!     }
//! }
//!
//! let dir = Path::new("runs/mine");
//! let config = run_dir::read_config(Path::new("runs/other"))?; // the settings of another run
//! let lock = run_dir::lock_for_training(dir)?;
//! let run_config = config.clone();
//! let mut run = PretrainRun::new(CpuBackend::new(), dir, config, Start::Fresh(None), lock)?;
//! run_dir::write_config(dir, &run_config)?;
//! run.train(None, &mut Printer)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ranks;
mod window;

use crate::backend::{Backend, Space};
use crate::comm::Collective;
use crate::data::{Batcher, Cursor, DataError};
use crate::io::checkpoint::{self, CheckpointData, TrainingState};
use crate::io::run_dir::{self, Metrics, RunConfig, TrainingLock};
use crate::io::IoError;
use crate::model::Model;
use crate::train::{PreparedStep, StepReport, TrainError, Trainer};
pub use ranks::{check_ranks_agree, Ranks};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;
use window::Window;

/// What a run reports while it trains; every method does nothing unless overridden.
pub trait Observer {
    /// Training starts at `step` (0, or the checkpoint's) and will stop at `end` at the latest.
    fn on_start(&mut self, _step: u64, _end: u64) {}
    /// One optimizer step was taken.
    fn on_step(&mut self, _report: &StepReport) {}
    /// A line was appended to `metrics.jsonl`.
    fn on_metrics(&mut self, _metrics: &Metrics) {}
    /// A checkpoint of `step` was written.
    fn on_checkpoint(&mut self, _step: u64) {}
    /// Asked after every step; `true` writes a checkpoint and ends the run there (Ctrl-C).
    fn should_stop(&self) -> bool {
        false
    }
}

/// Where a run starts.
pub enum Start {
    /// Step 0, from these parameter values (e.g. HF weights) or, when None, the model's random
    /// initialisation keyed by the recipe's seed.
    Fresh(Option<Vec<f32>>),
    /// A checkpoint of this run: its parameters, Adam moments, step, data position and time.
    Checkpoint(CheckpointData),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// It reached the step it was to stop at (or was there already) and left a checkpoint of it.
    Finished {
        /// Optimizer steps taken.
        step: u64,
    },
    /// [`Observer::should_stop`] ended it early, with a checkpoint.
    Stopped {
        /// Optimizer steps taken.
        step: u64,
    },
}

/// Errors of a pretraining run.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// The data's examples are longer than the model has positions.
    #[error("{}: examples of {seq_len} tokens exceed the model's {positions} positions", data.display())]
    TooLong {
        /// The prepared shard folder.
        data: PathBuf,
        /// Tokens per example.
        seq_len: usize,
        /// The model's `max_position_embeddings`.
        positions: usize,
    },
    /// The data folder holds other shards than the run began with.
    #[error(
        "{}: its shards are not those this run began with (checksum {found:08x}, run.json \
         records {expected:08x}): the data was prepared again or changed; resume with the data \
         the run began with, or start a new run", data.display()
    )]
    DataChanged {
        /// The prepared shard folder.
        data: PathBuf,
        /// The checksum `run.json` recorded.
        expected: u32,
        /// The checksum of the folder's shards now.
        found: u32,
    },
    /// The checkpoint's data cursor cannot be read.
    #[error("{}: bad data cursor in the checkpoint: {message}", dir.display())]
    BadCursor {
        /// The run directory.
        dir: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A loss came out NaN or infinite; the run's newest checkpoint is from before it.
    #[error(
        "{source}; the run stops here, its last good checkpoint is {}",
        last_checkpoint.map_or("none".to_string(), |s| format!("step-{s}"))
    )]
    NonFinite {
        /// The step's error ([`TrainError::NonFinite`]).
        source: TrainError,
        /// The step of the run's newest checkpoint, if it has one.
        last_checkpoint: Option<u64>,
    },
    /// The ranks do not match the run's configuration.
    #[error("{0}")]
    Ranks(String),
    /// Any other failure of a step (memory, a batch that does not fit the model).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Reading or writing the run directory.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Opening the data or restoring its position.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// A model training in a run directory, with the data and the time it has used so far.
pub struct PretrainRun<B: Backend> {
    trainer: Trainer<B>,
    batcher: Batcher,
    dir: PathBuf,
    config: RunConfig,
    /// Training time before this process took over, from the checkpoint resumed.
    elapsed_before: f64,
    /// See [`PretrainRun::repairs`].
    repairs: Vec<String>,
    comm: Rc<dyn Collective>,
    /// Held by the rank that writes the run directory.
    lock: Option<TrainingLock>,
    /// The data's position after the last step finished, which a checkpoint records (the
    /// batcher is a step ahead while the next step is prepared).
    cursor: Cursor,
}

impl<B: Backend> PretrainRun<B> {
    /// Opens `config.data`, puts the model on `backend`, sizes the backend for the batches and,
    /// from a checkpoint, restores its Adam moments, step and data position, so that the run
    /// continues exactly as if it had not stopped. Only once all of that succeeded does it write:
    /// it removes the debris of killed processes ([`run_dir::remove_debris`]) and drops the
    /// `metrics.jsonl` lines after the starting step ([`run_dir::truncate_metrics`]). `lock`
    /// shows this process alone trains `dir` ([`run_dir::lock_for_training`]); the run holds it
    /// until dropped. It does not write `run.json`: the caller does, once this succeeded.
    pub fn new(
        backend: B,
        dir: &Path,
        config: RunConfig,
        start: Start,
        lock: TrainingLock,
    ) -> Result<Self, PretrainError> {
        Self::with_ranks(backend, dir, config, start, Ranks::solo(lock))
    }

    /// [`PretrainRun::new`] for one of the `config.world_size` ranks of a data-parallel run:
    /// each opens the data and the checkpoint itself and trains its slices of every global
    /// batch; rank 0, which holds the lock, alone writes.
    pub fn with_ranks(
        backend: B,
        dir: &Path,
        mut config: RunConfig,
        start: Start,
        ranks: Ranks,
    ) -> Result<Self, PretrainError> {
        let Ranks { comm, lock } = ranks;
        if config.world_size != comm.world() || config.accumulate == 0 {
            return Err(PretrainError::Ranks(format!(
                "the run is set for {} ranks of {} micro-batches, but {} ranks started",
                config.world_size,
                config.accumulate,
                comm.world()
            )));
        }
        if lock.is_some() != (comm.rank() == 0) {
            return Err(PretrainError::Ranks(format!(
                "rank {} {} the run directory's lock; rank 0, and it alone, writes the run",
                comm.rank(),
                if lock.is_some() { "holds" } else { "lacks" }
            )));
        }
        let mut batcher = Batcher::open(&config.data, config.batch_size, config.train.seed)?;
        let found = batcher.data_checksum();
        match config.data_checksum {
            Some(expected) if expected != found => {
                return Err(PretrainError::DataChanged {
                    data: config.data.clone(),
                    expected,
                    found,
                })
            }
            _ => config.data_checksum = Some(found),
        }
        let positions = config.model.max_position_embeddings;
        if batcher.seq_len() > positions {
            return Err(PretrainError::TooLong {
                data: config.data.clone(),
                seq_len: batcher.seq_len(),
                positions,
            });
        }
        let model = Model::new(config.model.clone());
        let initial = match &start {
            Start::Checkpoint(c) => c.params.clone(),
            Start::Fresh(Some(values)) => values.clone(),
            Start::Fresh(None) => model
                .initial_values(config.train.seed)
                .map_err(IoError::from)?,
        };
        let mut trainer = Trainer::new(backend, model, config.train.clone(), &initial)?;
        trainer.reserve_for(config.batch_size, batcher.seq_len(), config.accumulate)?;
        let mut elapsed_before = 0.0;
        if let Start::Checkpoint(c) = &start {
            trainer.set_flat(Space::AdamM, &c.adam_m);
            trainer.set_flat(Space::AdamV, &c.adam_v);
            trainer.step = c.state.step;
            let cursor: Cursor =
                serde_json::from_value(c.state.data_cursor.clone()).map_err(|e| {
                    PretrainError::BadCursor {
                        dir: dir.to_path_buf(),
                        message: e.to_string(),
                    }
                })?;
            batcher.restore(cursor)?;
            elapsed_before = c.state.elapsed_s;
        }
        // Everything is checked; only now is the run directory touched, by its writer.
        let mut repairs = vec![];
        if let Some(lock) = &lock {
            repairs.extend(
                run_dir::remove_debris(dir, lock)?
                    .iter()
                    .map(|p| format!("removed {}, left by a process that was killed", p.display())),
            );
            if let Some(torn) = run_dir::truncate_metrics(dir, trainer.step)? {
                repairs.push(format!(
                    "dropped the unreadable last line of {} (torn by a kill or a full disk): \
                     {torn:?}",
                    run_dir::metrics_path(dir).display()
                ));
            }
        }
        let cursor = batcher.cursor();
        Ok(PretrainRun {
            trainer,
            batcher,
            dir: dir.to_path_buf(),
            config,
            elapsed_before,
            repairs,
            comm,
            lock,
            cursor,
        })
    }

    /// What opening the run repaired, one sentence each, for the caller to tell the user:
    /// debris of a killed process removed, a torn last metrics line dropped.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// The run's configuration, with the checksum of its data recorded: what `run.json` holds.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The trainer: the model, its values on the backend, and the step reached.
    pub fn trainer(&self) -> &Trainer<B> {
        &self.trainer
    }

    /// Trains until the recipe's `total_steps`, or `stop_at` if that comes first, or until the
    /// observer asks to stop. A metrics line is written every `log_every` steps and a checkpoint
    /// every `checkpoint_every` steps, and both at the last step.
    pub fn train(
        &mut self,
        stop_at: Option<u64>,
        observer: &mut impl Observer,
    ) -> Result<RunEnd, PretrainError> {
        let total = self.config.train.total_steps;
        let end = stop_at.unwrap_or(total).min(total);
        observer.on_start(self.trainer.step, end);
        let clock = Instant::now();
        let before = self.elapsed_before;
        let elapsed = |c: &Instant| before + c.elapsed().as_secs_f64();
        let mut window = Window::default();
        let tokens_per_step = self.config.global_batch() * self.batcher.seq_len();
        // A call that ended with the next step prepared left the batcher a step ahead.
        self.batcher.restore(self.cursor)?;
        let mut next = (self.trainer.step < end).then(|| self.prepare_next());
        while self.trainer.step < end {
            let step_clock = Instant::now();
            let (prepared, cursor) = next
                .take()
                .expect("a step is prepared while steps remain")?;
            let issued = self.trainer.issue_step(prepared, &*self.comm)?;
            // The next step's batches and masking, on the host while the device works.
            next = (self.trainer.step + 1 < end).then(|| self.prepare_next());
            let report = match self.trainer.finish_step(issued, &*self.comm) {
                Ok(r) => r,
                Err(source @ TrainError::NonFinite { .. }) => {
                    let last_checkpoint = checkpoint::list(&self.dir)?.last().copied();
                    return Err(PretrainError::NonFinite {
                        source,
                        last_checkpoint,
                    });
                }
                Err(e) => return Err(e.into()),
            };
            self.cursor = cursor;
            window.add(&report, tokens_per_step, step_clock.elapsed().as_secs_f64());
            observer.on_step(&report);
            let step = self.trainer.step;
            let checkpoint_due =
                step.is_multiple_of(self.config.checkpoint_every.max(1)) || step == end;
            let stop = self.agree_to_stop(observer.should_stop());
            let writes = self.lock.is_some();
            if step.is_multiple_of(self.config.log_every.max(1)) || checkpoint_due || stop {
                if let Some(m) = window.take(step, report.lr, elapsed(&clock)) {
                    if writes {
                        run_dir::append_metrics(&self.dir, &m)?;
                    }
                    observer.on_metrics(&m);
                }
            }
            if checkpoint_due || stop {
                if writes {
                    self.save(elapsed(&clock))?;
                }
                observer.on_checkpoint(step);
            }
            if stop {
                return Ok(RunEnd::Stopped { step });
            }
        }
        Ok(RunEnd::Finished {
            step: self.trainer.step,
        })
    }

    /// Prepares the next step on this rank's slices of the next global batch, and returns it
    /// with the data's position after it. The global batch is the next `world · accumulate ·
    /// batch_size` examples of the data's order, and rank r takes slices `r·accumulate ..` of
    /// it, so that the data a step sees and the batcher's position after it do not depend on
    /// the number of ranks.
    fn prepare_next(&mut self) -> Result<(PreparedStep, Cursor), TrainError> {
        let slice = self.config.batch_size as u64;
        let per_rank = slice * self.config.accumulate as u64;
        let (rank, world) = (self.comm.rank() as u64, self.comm.world() as u64);
        self.batcher.skip(rank * per_rank);
        let micro = (0..self.config.accumulate)
            .map(|_| self.batcher.next_batch().clone())
            .collect();
        self.batcher.skip((world - 1 - rank) * per_rank);
        let prepared = self.trainer.prepare_step(micro, &*self.comm)?;
        Ok((prepared, self.batcher.cursor()))
    }

    /// Whether any rank was asked to stop (a signal reaches one rank, or all at different
    /// steps): all stop after the same step, or those that go on would wait for the others.
    fn agree_to_stop(&self, asked: bool) -> bool {
        let mut votes = [f64::from(u8::from(asked))];
        self.comm.all_reduce_sum_f64(&mut votes);
        votes[0] > 0.0
    }

    /// Writes a checkpoint of the current step, then keeps only the newest `keep_checkpoints`.
    fn save(&self, elapsed_s: f64) -> Result<(), IoError> {
        let trainer = &self.trainer;
        let data = CheckpointData {
            params: trainer.flat(Space::Param),
            adam_m: trainer.flat(Space::AdamM),
            adam_v: trainer.flat(Space::AdamV),
            state: TrainingState {
                step: trainer.step,
                data_cursor: serde_json::to_value(self.cursor).expect("a cursor serialises"),
                elapsed_s,
            },
        };
        let layout = &trainer.model.layout;
        checkpoint::save(&self.dir, layout, &data, self.config.keep_checkpoints)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
