//! The trainer level: a pretraining model that takes one optimizer step per call on batches the
//! caller supplies, saves checkpoints in the run-directory format of `electra pretrain`, and
//! exports HF directories.

use super::{
    c_str, check_out, check_struct_size, deref_mut, fail, free, guard, hand_out, opt_c_str,
    read_versioned, slice, write_versioned, CResult, ElectraStatus, Versioned,
};
use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Device, Space};
use crate::data::{Batch, WordPieceTokenizer};
use crate::io::checkpoint::{self, CheckpointData, TrainingState};
use crate::io::run_dir::{self, RunConfig, TrainingLock};
use crate::io::IoError;
use crate::model::config::{ConfigError, ElectraConfig};
use crate::model::Model;
use crate::train::{StepReport, TrainConfig, TrainError, Trainer};
use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How [`electra_trainer_create`] builds a new model. Fill it with
/// [`electra_trainer_options_default`], then set what differs.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElectraTrainerOptions {
    /// `sizeof(ElectraTrainerOptions)`.
    pub struct_size: usize,
    /// A preset (`tiny`, `small`, `base`, `large`); exactly one of `preset`, `model_json` and
    /// `init_from` is set.
    pub preset: *const c_char,
    /// A model configuration as JSON text, the format of `run.json`'s `model` field.
    pub model_json: *const c_char,
    /// A folder holding HF `generator/` and `discriminator/` directories (as `electra export`
    /// writes them): the sizes and the initial weights come from there (`--init-from`).
    pub init_from: *const c_char,
    /// Optional JSON object whose fields override the recipe, named as in `run.json`'s `train`
    /// field (`peak_lr`, `replacement`, `mask_prob`, …, also `seed`, `total_steps` and
    /// `warmup_steps`, which then win over the fields below). NULL keeps the defaults.
    pub train_json: *const c_char,
    /// `"cpu"` (NULL means it), or `"cuda"`/`"cuda:N"` in a build with the CUDA backend.
    pub device: *const c_char,
    /// Keys the initial weights and every random draw of training.
    pub seed: u64,
    /// Rows of the word-embedding table; 0 keeps the configuration's (the presets' is BERT's
    /// 30522). Ignored with `init_from`.
    pub vocab_size: u32,
    /// Optional `vocab.txt` or `tokenizer.json` of the data (NULL for none): sets the vocabulary
    /// size and the special tokens' ids from it, as `electra pretrain` does from its data folder,
    /// overriding `vocab_size`. Ignored with `init_from`.
    pub vocab_file: *const c_char,
    /// The step at which the learning rate has decayed to zero.
    pub total_steps: u64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
}

/// The figures of one step. The caller sets `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ElectraStepMetrics {
    /// `sizeof(ElectraStepMetrics)`.
    pub struct_size: usize,
    /// Optimizer steps taken, this one included.
    pub step: u64,
    /// Generator MLM loss (nats per chosen position).
    pub gen_loss: f32,
    /// Discriminator BCE per real token, before the weight.
    pub disc_loss: f32,
    /// `gen_loss + disc_weight · disc_loss`.
    pub total_loss: f32,
    /// Share of chosen positions the generator got right; NaN when it was not measured.
    pub mlm_accuracy: f32,
    /// Share of real tokens the discriminator labelled right.
    pub disc_accuracy: f32,
    /// Share of real tokens replaced in the discriminator's input.
    pub replaced_fraction: f32,
    /// The replaced share's label entropy minus `disc_loss`.
    pub disc_gain: f32,
    /// The learning rate the step used.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Positions chosen for the generator.
    pub masked: u64,
    /// Real (non-padding) tokens in the batch.
    pub real_tokens: u64,
}

impl Versioned for ElectraTrainerOptions {
    // Version 1 (ELECTRA_ABI_VERSION 1): the fields up to `warmup_steps`.
    const SIZES: &'static [usize] = &[std::mem::size_of::<ElectraTrainerOptions>()];
    /// The defaults [`electra_trainer_options_default`] writes.
    fn defaults() -> Self {
        ElectraTrainerOptions {
            struct_size: std::mem::size_of::<ElectraTrainerOptions>(),
            preset: c"tiny".as_ptr(),
            model_json: std::ptr::null(),
            init_from: std::ptr::null(),
            train_json: std::ptr::null(),
            device: std::ptr::null(),
            seed: 0,
            vocab_size: 0,
            vocab_file: std::ptr::null(),
            total_steps: 1000,
            warmup_steps: 100,
        }
    }
}

impl Versioned for ElectraStepMetrics {
    // Version 1 (ELECTRA_ABI_VERSION 1): the fields up to `real_tokens`.
    const SIZES: &'static [usize] = &[std::mem::size_of::<ElectraStepMetrics>()];
    /// An output struct: nothing is read from the caller's, so the defaults are never seen.
    fn defaults() -> Self {
        ElectraStepMetrics::default()
    }
}

/// A trainer on one of the backends.
// One value per handle, and the handle is boxed: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Cpu(Trainer<CpuBackend>),
    Cuda(Trainer<CudaBackend>),
}

/// Runs `$body` with `$t` bound to the trainer, whichever backend it is on.
macro_rules! with_trainer {
    ($engine:expr, $t:ident => $body:expr) => {
        match $engine {
            Engine::Cpu($t) => $body,
            Engine::Cuda($t) => $body,
        }
    };
}

/// An opaque trainer handle.
pub struct ElectraTrainer {
    engine: Engine,
    /// The recipe and sizes `run.json` records on save.
    run: RunConfig,
    /// Training time carried from the checkpoint it resumed, for `state.json`.
    elapsed_before: f64,
    clock: Instant,
    /// Held while a resumed run directory is in use, as `electra pretrain` holds it.
    _lock: Option<TrainingLock>,
}

fn io_failure(e: IoError) -> crate::capi::Failure {
    fail(ElectraStatus::Io, e.to_string())
}

fn config_failure(e: ConfigError) -> crate::capi::Failure {
    match e {
        ConfigError::UnknownPreset(_) => fail(ElectraStatus::UnknownPreset, e.to_string()),
        _ => fail(ElectraStatus::Config, e.to_string()),
    }
}

fn train_failure(e: TrainError) -> crate::capi::Failure {
    match e {
        TrainError::Batch(_) => fail(ElectraStatus::InvalidArgument, e.to_string()),
        _ => fail(ElectraStatus::Training, e.to_string()),
    }
}

/// The recipe: the defaults with the options' seed and schedule, then `train_json`'s fields.
fn recipe(o: &ElectraTrainerOptions, train_json: Option<&str>) -> CResult<TrainConfig> {
    let base = TrainConfig {
        seed: o.seed,
        total_steps: o.total_steps,
        warmup_steps: o.warmup_steps,
        ..TrainConfig::default()
    };
    let mut value = serde_json::to_value(&base).expect("a recipe serialises");
    if let Some(text) = train_json {
        let bad = |m: String| fail(ElectraStatus::Config, format!("options.train_json: {m}"));
        let given: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let fields = given
            .as_object()
            .ok_or_else(|| bad(format!("expected a JSON object, got {given}")))?;
        let known = value.as_object_mut().expect("a recipe is an object");
        for (k, v) in fields {
            if !known.contains_key(k) {
                let names: Vec<&String> = known.keys().collect();
                return Err(bad(format!(
                    "unknown field `{k}` (expected one of {names:?})"
                )));
            }
            known.insert(k.clone(), v.clone());
        }
        value = serde_json::Value::Object(known.clone());
    }
    let train: TrainConfig = serde_json::from_value(value)
        .map_err(|e| fail(ElectraStatus::Config, format!("options.train_json: {e}")))?;
    if train.total_steps == 0 {
        return Err(fail(
            ElectraStatus::InvalidArgument,
            "options.total_steps is 0, expected at least 1",
        ));
    }
    train
        .validate()
        .map_err(|m| fail(ElectraStatus::Config, format!("the recipe: {m}")))?;
    Ok(train)
}

/// The model's configuration and, with `init_from`, its initial values.
fn model_config(o: &ElectraTrainerOptions) -> CResult<(ElectraConfig, Option<Vec<f32>>)> {
    // SAFETY: the caller's strings are NULL or NUL-terminated (the header's contract).
    let (preset, json, init_from) = unsafe {
        (
            opt_c_str(o.preset, "options.preset")?,
            opt_c_str(o.model_json, "options.model_json")?,
            opt_c_str(o.init_from, "options.init_from")?,
        )
    };
    let (mut config, values) = match (preset, json, init_from) {
        (Some(name), None, None) => (ElectraConfig::preset(name).map_err(config_failure)?, None),
        (None, Some(text), None) => {
            let config = serde_json::from_str(text)
                .map_err(|e| fail(ElectraStatus::Config, format!("options.model_json: {e}")))?;
            (config, None)
        }
        (None, None, Some(dir)) => {
            let loaded = crate::io::hf::load_pretraining_dir(Path::new(dir)).map_err(io_failure)?;
            return Ok((loaded.model.config, Some(loaded.values)));
        }
        _ => {
            return Err(fail(
                ElectraStatus::InvalidArgument,
                "set exactly one of options.preset, options.model_json and options.init_from",
            ))
        }
    };
    if o.vocab_size != 0 {
        config.vocab_size = o.vocab_size as usize;
    }
    // SAFETY: as above.
    if let Some(file) = unsafe { opt_c_str(o.vocab_file, "options.vocab_file")? } {
        let tokenizer = WordPieceTokenizer::load(Path::new(file))
            .map_err(|e| fail(ElectraStatus::Io, format!("options.vocab_file: {e}")))?;
        config.vocab_size = tokenizer.vocab_size();
        config.special_tokens = tokenizer.special_tokens();
    }
    config.validate().map_err(config_failure)?;
    Ok((config, values))
}

/// Puts a model on the device with `values`.
fn engine(device: &str, model: Model, train: TrainConfig, values: &[f32]) -> CResult<Engine> {
    let device: Device = device
        .parse()
        .map_err(|m: String| fail(ElectraStatus::Device, m))?;
    let memory = |e: TrainError| fail(ElectraStatus::Training, e.to_string());
    Ok(match device {
        Device::Cpu => {
            Engine::Cpu(Trainer::new(CpuBackend::new(), model, train, values).map_err(memory)?)
        }
        Device::Cuda(n) => {
            let backend =
                CudaBackend::new(n).map_err(|e| fail(ElectraStatus::Device, e.to_string()))?;
            Engine::Cuda(Trainer::new(backend, model, train, values).map_err(memory)?)
        }
    })
}

/// The `run.json` of a run driven through the C API: there is no data folder, since the caller
/// supplies the batches.
fn run_config(model: &ElectraConfig, train: &TrainConfig) -> RunConfig {
    RunConfig {
        model: model.clone(),
        train: train.clone(),
        data: PathBuf::new(),
        batch_size: 0,
        accumulate: 1,
        world_size: 1,
        log_every: 1,
        checkpoint_every: 1,
        keep_checkpoints: usize::MAX,
        data_checksum: None,
    }
}

/// Fills `options` with the defaults: the `tiny` preset, the CPU, seed 0, the preset's
/// vocabulary (no `vocab_file`), 1000 steps with 100 of warmup, and the recipe's defaults (`train_json` NULL).
/// A program compiled against an older header sets `options->struct_size = sizeof *options`
/// first, and only its version's fields are written; with any other value (unset) the whole
/// struct of this header is written.
///
/// # Safety
/// `options` is NULL or points to writable memory for an `ElectraTrainerOptions` of this
/// header, or of the version whose size `struct_size` holds.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_options_default(
    options: *mut ElectraTrainerOptions,
) -> ElectraStatus {
    guard(|| {
        if options.is_null() {
            return Err(fail(ElectraStatus::NullPointer, "options is NULL"));
        }
        // A caller compiled against an older header sets struct_size first, so that only its
        // version's fields are written; one that left it unset gets this version's struct.
        let size = std::ptr::read_unaligned(options as *const usize);
        let defaults = ElectraTrainerOptions::defaults();
        if size != std::mem::size_of::<ElectraTrainerOptions>()
            && ElectraTrainerOptions::SIZES.contains(&size)
        {
            write_versioned(options, &defaults, size);
        } else {
            options.write(defaults);
        }
        Ok(())
    })
}

/// Creates a trainer with a new model (random weights keyed by the seed, or `init_from`'s) at
/// step 0, and writes its handle to `*out`.
///
/// # Safety
/// `options` is NULL or points to an initialised `ElectraTrainerOptions` whose strings are NULL
/// or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_create(
    options: *const ElectraTrainerOptions,
    out: *mut *mut ElectraTrainer,
) -> ElectraStatus {
    guard(|| {
        check_out(out, "out")?;
        let o = &read_versioned(options, "options")?;
        let train_json = opt_c_str(o.train_json, "options.train_json")?;
        let device = opt_c_str(o.device, "options.device")?.unwrap_or("cpu");
        let (config, values) = model_config(o)?;
        let train = recipe(o, train_json)?;
        let model = Model::new(config.clone());
        let values = match values {
            Some(values) => values,
            None => model
                .initial_values(train.seed)
                .map_err(|e| fail(ElectraStatus::Device, e.to_string()))?,
        };
        let run = run_config(&config, &train);
        let engine = engine(device, model, train, &values)?;
        hand_out(
            out,
            ElectraTrainer {
                engine,
                run,
                elapsed_before: 0.0,
                clock: Instant::now(),
                _lock: None,
            },
        );
        Ok(())
    })
}

/// Opens the run directory `run_dir` (a run of `electra pretrain` or one saved by
/// [`electra_trainer_save`]) at its newest checkpoint: parameters, Adam moments and step, so
/// that the next steps continue it exactly. The handle holds the run's `train.lock` until
/// destroyed. `device` NULL means `"cpu"`.
///
/// # Safety
/// `run_dir` and `device` are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_resume(
    run_dir: *const c_char,
    device: *const c_char,
    out: *mut *mut ElectraTrainer,
) -> ElectraStatus {
    guard(|| {
        check_out(out, "out")?;
        let dir = Path::new(c_str(run_dir, "run_dir")?);
        let device = opt_c_str(device, "device")?.unwrap_or("cpu");
        let run = run_dir::read_config(dir).map_err(io_failure)?;
        let lock = run_dir::lock_for_training(dir).map_err(io_failure)?;
        let model = Model::new(run.model.clone());
        let newest = checkpoint::list(dir).map_err(io_failure)?.last().copied();
        let step = newest.ok_or_else(|| {
            fail(
                ElectraStatus::Io,
                format!("{}: no checkpoint to resume from", dir.display()),
            )
        })?;
        let c = checkpoint::load(dir, &model.layout, step).map_err(io_failure)?;
        let mut engine = engine(device, model, run.train.clone(), &c.params)?;
        with_trainer!(&mut engine, t => {
            t.set_flat(Space::AdamM, &c.adam_m);
            t.set_flat(Space::AdamV, &c.adam_v);
            t.step = c.state.step;
        });
        hand_out(
            out,
            ElectraTrainer {
                engine,
                run,
                elapsed_before: c.state.elapsed_s,
                clock: Instant::now(),
                _lock: Some(lock),
            },
        );
        Ok(())
    })
}

/// Frees a trainer; NULL does nothing.
///
/// # Safety
/// `trainer` is NULL or a handle from this library not destroyed before.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_destroy(trainer: *mut ElectraTrainer) {
    // Dropping frees memory only; nothing in it can panic.
    free(trainer)
}

/// The report of a step as the C struct.
fn metrics(r: &StepReport) -> ElectraStepMetrics {
    ElectraStepMetrics {
        struct_size: std::mem::size_of::<ElectraStepMetrics>(),
        step: r.step,
        gen_loss: r.loss.gen_loss,
        disc_loss: r.loss.disc_loss,
        total_loss: r.loss.total_loss,
        mlm_accuracy: r.loss.mlm_accuracy.unwrap_or(f32::NAN),
        disc_accuracy: r.loss.disc_accuracy,
        replaced_fraction: r.loss.replaced_fraction,
        disc_gain: r.loss.disc_gain(),
        lr: r.lr,
        grad_norm: r.grad_norm,
        masked: r.loss.masked as u64,
        real_tokens: r.loss.real_tokens as u64,
    }
}

/// Copies the caller's three `[batch, seq]` arrays into a [`Batch`].
///
/// # Safety
/// Each pointer is NULL or points to `batch · seq` values.
pub(crate) unsafe fn read_batch(
    input_ids: *const u32,
    attention_mask: *const u32,
    token_types: *const u32,
    batch: usize,
    seq: usize,
) -> CResult<Batch> {
    if batch == 0 || seq == 0 {
        return Err(fail(
            ElectraStatus::Shape,
            format!("batch is {batch} and seq is {seq}, expected both at least 1"),
        ));
    }
    let n = batch.checked_mul(seq).ok_or_else(|| {
        fail(
            ElectraStatus::Shape,
            format!("batch {batch} × seq {seq} overflows"),
        )
    })?;
    let b = Batch {
        batch,
        seq,
        input_ids: slice(input_ids, n, "input_ids")?.to_vec(),
        token_types: slice(token_types, n, "token_types")?.to_vec(),
        attention_mask: slice(attention_mask, n, "attention_mask")?.to_vec(),
    };
    b.validate()
        .map_err(|m| fail(ElectraStatus::InvalidArgument, m))?;
    Ok(b)
}

/// One optimizer step on a batch of `batch` sequences of `seq` tokens, each array `[batch, seq]`
/// row-major `uint32_t`: token ids, attention mask (1 real, 0 padding) and token types (0/1).
/// Masking, the generator's replacement and dropout are drawn inside, keyed by the seed and the
/// step, so the same batches give the same run. `metrics` (NULL to skip, else with `struct_size`
/// set) receives the step's figures. A batch that does not fit the model (an id outside the
/// vocabulary, a sequence longer than the positions) is refused before anything changes; a
/// non-finite loss returns `ELECTRA_STATUS_TRAINING` with the step not taken.
///
/// # Safety
/// `trainer` is NULL or a live handle; the arrays are NULL or hold `batch · seq` values;
/// `metrics` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_step(
    trainer: *mut ElectraTrainer,
    input_ids: *const u32,
    attention_mask: *const u32,
    token_types: *const u32,
    batch: usize,
    seq: usize,
    metrics_out: *mut ElectraStepMetrics,
) -> ElectraStatus {
    guard(|| {
        let t = deref_mut(trainer, "trainer")?;
        // The caller's struct_size, read alone: an older caller's struct may be smaller.
        let metrics_size = match metrics_out.is_null() {
            true => None,
            false => Some(std::ptr::read_unaligned(metrics_out as *const usize)),
        };
        if let Some(size) = metrics_size {
            check_struct_size::<ElectraStepMetrics>(size, "metrics")?;
        }
        let b = read_batch(input_ids, attention_mask, token_types, batch, seq)?;
        let report =
            with_trainer!(&mut t.engine, tr => tr.train_step(&b)).map_err(train_failure)?;
        t.run.batch_size = batch;
        if let Some(size) = metrics_size {
            write_versioned(metrics_out, &metrics(&report), size);
        }
        Ok(())
    })
}

/// The number of optimizer steps taken.
///
/// # Safety
/// `trainer` is NULL or a live handle; `step` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_get_step(
    trainer: *mut ElectraTrainer,
    step: *mut u64,
) -> ElectraStatus {
    guard(|| {
        let t = deref_mut(trainer, "trainer")?;
        let out = deref_mut(step, "step")?;
        *out = with_trainer!(&t.engine, tr => tr.step);
        Ok(())
    })
}

/// Writes a checkpoint of the current step into the run directory `run_dir` (created if
/// absent): `run.json` and `checkpoints/step-N/` with `model.safetensors`,
/// `optimizer.safetensors` and `state.json`, in the format of `electra pretrain`, so that
/// [`electra_trainer_resume`] and `electra export` read it. Older checkpoints are kept.
///
/// # Safety
/// `trainer` is NULL or a live handle; `run_dir` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_save(
    trainer: *mut ElectraTrainer,
    run_dir: *const c_char,
) -> ElectraStatus {
    guard(|| {
        let t = deref_mut(trainer, "trainer")?;
        let dir = Path::new(c_str(run_dir, "run_dir")?);
        let (data, layout) = with_trainer!(&t.engine, tr => (
            CheckpointData {
                params: tr.flat(Space::Param),
                adam_m: tr.flat(Space::AdamM),
                adam_v: tr.flat(Space::AdamV),
                state: TrainingState {
                    step: tr.step,
                    data_cursor: serde_json::Value::Null,
                    elapsed_s: t.elapsed_before + t.clock.elapsed().as_secs_f64(),
                },
            },
            tr.model.layout.clone(),
        ));
        run_dir::write_config(dir, &t.run).map_err(io_failure)?;
        checkpoint::save(dir, &layout, &data, usize::MAX).map_err(io_failure)?;
        Ok(())
    })
}

/// Writes the current weights as HF directories `out_dir/discriminator/` and
/// `out_dir/generator/` (as `electra export` does), with the vocabulary `vocab_file`
/// (a `vocab.txt` or `tokenizer.json` of the model's size). `out_dir` must be absent or empty.
///
/// # Safety
/// `trainer` is NULL or a live handle; the strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn electra_trainer_export(
    trainer: *mut ElectraTrainer,
    out_dir: *const c_char,
    vocab_file: *const c_char,
) -> ElectraStatus {
    guard(|| {
        let t = deref_mut(trainer, "trainer")?;
        let out = Path::new(c_str(out_dir, "out_dir")?);
        let vocab = Path::new(c_str(vocab_file, "vocab_file")?);
        let tokenizer =
            WordPieceTokenizer::load(vocab).map_err(|e| fail(ElectraStatus::Io, e.to_string()))?;
        with_trainer!(&t.engine, tr => {
            let values = tr.flat(Space::Param);
            crate::io::export::export_model(&tr.model, &values, &tokenizer, out, false)
        })
        .map_err(io_failure)?;
        Ok(())
    })
}
