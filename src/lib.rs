//! Pretraining of [ELECTRA](https://arxiv.org/abs/2003.10555) text encoders by replaced-token
//! detection.
//!
//! A small generator fills in masked tokens; a discriminator learns, for every token, whether the
//! generator replaced it. The discriminator is the network you keep and fine-tune. The engine
//! follows the recipe of the original code (google-research/electra), names parameters as HF
//! `transformers` does, and its CPU backend matches `transformers` to float precision. Every
//! random draw comes from a counter-based generator keyed by the seed and the step, so a run,
//! and a resumed run, reproduce bit for bit.
//!
//! # Layers
//! Each layer uses only the ones listed before it:
//! 1. [`backend`]: the [`Backend`](backend::Backend) trait, whose fused operations work on
//!    handles into a few flat memory spaces, and the f32 CPU reference
//!    [`CpuBackend`](backend::cpu::CpuBackend), and [`Profiled`](backend::Profiled), which times
//!    the operations of any backend. [`rng`] (Philox) serves it; `validate` (checks of settings
//!    that name the setting) serves every layer; [`comm`] (the collectives of data-parallel
//!    runs: a world of one, or MPI's ranks) serves the backend and the training loop.
//! 2. [`tape`]: records the fused operations of a forward pass and walks them back.
//! 3. [`model`]: configuration and presets, the flat parameter layout with HF names, and the
//!    forward passes of the generator and the discriminator.
//! 4. [`data`]: the WordPiece tokenizer, text → shards (`electra prepare`), shards →
//!    [`Batch`](data::Batch)es, the one batch type of pretraining and fine-tuning.
//! 5. [`train`]: masking, replacement, the two losses, clipping, AdamW, the learning-rate
//!    schedule, all driven by [`Trainer`](train::Trainer) one step at a time.
//! 6. [`io`]: safetensors files, checkpoints, run directories, HF import and export.
//! 7. The two training loops, each reporting to its caller: [`pretrain`] (a run directory's
//!    steps, metrics, checkpoints and exact resume, behind
//!    [`PretrainRun`](pretrain::PretrainRun)) and [`finetune`] (epochs on GLUE-format data, dev
//!    metrics, the best model, and prediction).
//! 8. [`cli`]: the `electra` command line, which parses flags and calls the layers before it.
//! 9. [`capi`]: the C ABI (`include/electra.h`) over the trainer, a discriminator as an encoder,
//!    the tokenizer and the fused operations, for programs in other languages.
//!
//! # Example
//! One training step of the `tiny` preset on random tokens (see `examples/embed_and_train.rs`):
//!
//! ```
//! use electra::backend::cpu::CpuBackend;
//! use electra::model::{config::ElectraConfig, Model};
//! use electra::data::Batch;
//! use electra::train::{TrainConfig, Trainer};
//!
//! let mut config = ElectraConfig::preset("tiny")?;
//! config.vocab_size = 1000; // real runs take it from the tokenizer's vocabulary
//! let model = Model::new(config);
//! let values = model.initial_values(42)?; // N(0, 0.02) weights, deterministic in the seed
//! let recipe = TrainConfig {
//!     warmup_steps: 10,
//!     total_steps: 100,
//!     ..TrainConfig::default()
//! };
//! let mut trainer = Trainer::new(CpuBackend::new(), model, recipe, &values)?;
//!
//! // 2 sequences of 32 tokens, `[CLS] A [SEP] B [SEP]`, ids drawn from seed 0.
//! let special = trainer.model.config.special_tokens;
//! let batch = Batch::random(2, 32, 1000, 0, &special);
//! let report = trainer.train_step(&batch)?;
//! assert_eq!(report.step, 1);
//! assert!(report.loss.gen_loss.is_finite() && report.loss.disc_loss.is_finite());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod capi;
pub mod cli;
pub mod comm;
pub mod data;
pub mod finetune;
pub mod io;
pub mod model;
pub mod pretrain;
pub mod rng;
pub mod tape;
pub mod train;
mod validate;
