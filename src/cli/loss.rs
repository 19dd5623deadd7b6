//! `electra loss`: one forward and backward pass on a batch file, printed as one JSON line.

use crate::backend::{cpu::CpuBackend, Backend, Pick, Space};
use crate::io::batch_file::read_batch_file;
use crate::io::hf::load_pretraining_pair;
use crate::io::paths::check_apart;
use crate::io::tensors::write_f32_tensors;
use crate::io::write_atomic;
use crate::model::params::GENERATOR;
use crate::model::Model;
use crate::train::{Corruption, TrainConfig, Trainer};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LossArgs {
    /// HF ElectraForMaskedLM directory (config.json + model.safetensors).
    #[arg(long)]
    generator: PathBuf,
    /// HF ElectraForPreTraining directory.
    #[arg(long)]
    discriminator: PathBuf,
    /// Batch file (safetensors; layout in the README).
    #[arg(long)]
    batch: PathBuf,
    /// `given` uses the file's replaced_input_ids; `argmax` lets the generator pick. Defaults to
    /// `given` when the file has replacements, else `argmax`.
    #[arg(long, value_parser = ["given", "argmax"])]
    replacement: Option<String>,
    /// Writes every gradient here, as grad.shared.…, grad.generator.…, grad.discriminator.….
    #[arg(long)]
    grads: Option<PathBuf>,
    /// Writes the logits here (safetensors): `disc_logits` [batch, seq] (float32),
    /// `gen_logits_at_chosen` [n_chosen, vocab] (float32, rows in row-major order of the chosen
    /// positions) and `replaced_input_ids` [batch, seq] (int64, the discriminator's input).
    #[arg(long)]
    logits: Option<PathBuf>,
}

/// Writes the last pass's logits and the discriminator's input (see [`LossArgs::logits`]).
fn write_logits(
    trainer: &Trainer<CpuBackend>,
    path: &std::path::Path,
    masked: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let acts = trainer.acts().ok_or("no pass was run")?;
    let (batch, seq) = (acts.shape.batch, acts.shape.seq);
    let vocab = trainer.model.config.vocab_size;
    let disc = trainer.read_acts(acts.disc_logits.prefix(batch * seq));
    let gen = acts.unpad_logits(&trainer.read_acts(acts.generator_logits(masked)), vocab);
    let mut ids = vec![0u32; batch * seq];
    trainer.backend.read_ints(acts.corrupted_ids, &mut ids);
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let view = |dtype, shape: Vec<usize>, bytes| {
        safetensors::tensor::TensorView::new(dtype, shape, bytes)
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let tensors = vec![
        (
            "disc_logits",
            view(
                safetensors::Dtype::F32,
                vec![batch, seq],
                bytemuck::cast_slice(&disc),
            )?,
        ),
        (
            "gen_logits_at_chosen",
            view(
                safetensors::Dtype::F32,
                vec![masked, vocab],
                bytemuck::cast_slice(&gen),
            )?,
        ),
        (
            "replaced_input_ids",
            view(
                safetensors::Dtype::I64,
                vec![batch, seq],
                bytemuck::cast_slice(&ids),
            )?,
        ),
    ];
    let bytes = safetensors::serialize(tensors, None)
        .map_err(|e| format!("{}: cannot serialise: {e}", path.display()))?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// The first parameter of `model` holding a NaN or an infinity: its name, the folder it was read
/// from (the shared embedding block is the discriminator's), the index and the value.
fn first_non_finite(model: &Model, values: &[f32], args: &LossArgs) -> Option<String> {
    model.layout.params.iter().find_map(|p| {
        let (i, v) = values[p.buf.offset..p.buf.end()]
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())?;
        let dir = if p.name.starts_with(GENERATOR) {
            &args.generator
        } else {
            &args.discriminator
        };
        Some(format!(
            "{}: `{}` holds {v} at index {i}",
            dir.join("model.safetensors").display(),
            p.name
        ))
    })
}

pub fn run(args: &LossArgs) -> Result<(), Box<dyn std::error::Error>> {
    let inputs = [
        ("the generator", args.generator.as_path()),
        ("the discriminator", &args.discriminator),
        ("the batch file", &args.batch),
    ];
    for out in [&args.grads, &args.logits].into_iter().flatten() {
        check_apart(out, &inputs)?;
    }
    let loaded = load_pretraining_pair(&args.generator, &args.discriminator)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let file = read_batch_file(&args.batch)?;
    let loaded_values = loaded.values;
    let mut trainer = Trainer::new(
        CpuBackend::new(),
        loaded.model,
        TrainConfig::default(),
        &loaded_values,
    )?;
    // Comparisons with another implementation run without dropout, as its evaluation mode does.
    trainer.dropout = false;
    let mode = args.replacement.clone().unwrap_or_else(|| {
        if file.replaced.is_some() {
            "given"
        } else {
            "argmax"
        }
        .into()
    });
    let corruption = match (mode.as_str(), &file.replaced) {
        ("given", Some(ids)) => Corruption::Given(ids),
        ("given", None) => {
            return Err(format!(
                "{}: --replacement given needs a `replaced_input_ids` tensor",
                args.batch.display()
            )
            .into())
        }
        _ => Corruption::Generator(Pick::Argmax),
    };
    let report = trainer
        .forward_backward(&file.batch, &file.masking, corruption)
        .map_err(|e| format!("{}: {e}", args.batch.display()))?;
    let norm = trainer.grad_norm();
    let figures = [
        ("gen_loss", report.gen_loss),
        ("disc_loss", report.disc_loss),
        ("total_loss", report.total_loss),
        ("grad_global_norm", norm),
    ];
    if let Some((name, value)) = figures.iter().find(|(_, v)| !v.is_finite()) {
        let cause = first_non_finite(&trainer.model, &loaded_values, args)
            .unwrap_or_else(|| "every weight is finite, so the pass overflowed".into());
        return Err(format!("{name} is {value}, not a finite number; {cause}").into());
    }
    if let Some(path) = &args.logits {
        write_logits(&trainer, path, report.masked)?;
    }
    if let Some(path) = &args.grads {
        let tensors: Vec<_> = trainer
            .model
            .layout
            .params
            .iter()
            .map(|p| {
                let g = trainer.tensor(Space::Grad, &p.name).unwrap_or_default();
                (format!("grad.{}", p.name), p.shape.clone(), g)
            })
            .collect();
        write_f32_tensors(path, &tensors, None)?;
    }
    let line = serde_json::json!({
        "gen_loss": report.gen_loss,
        "disc_loss": report.disc_loss,
        "total_loss": report.total_loss,
        "grad_global_norm": norm,
        "replacement": mode,
        "masked": report.masked,
        "real_tokens": report.real_tokens,
    });
    println!("{line}");
    Ok(())
}
