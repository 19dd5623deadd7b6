//! HF ELECTRA directories (`config.json` + `model.safetensors`), the generator
//! (ElectraForMaskedLM) and the discriminator (ElectraForPreTraining).

use super::tensors::{read_tensors, Tensor};
use super::IoError;
use crate::model::config::ElectraConfig;
use crate::model::params::{DISCRIMINATOR, GENERATOR, SHARED};
use crate::model::Model;
use std::collections::BTreeMap;
use std::path::Path;

/// A model read from HF directories, its parameter values, and any warnings.
pub struct Loaded {
    pub model: Model,
    pub values: Vec<f32>,
    pub warnings: Vec<String>,
}

/// Tensors that HF files may carry and the engine derives instead.
fn is_derived(name: &str) -> bool {
    name.ends_with("position_ids") || name == "generator_lm_head.weight"
}

/// Copies the tensors of one file into the flat values, by layout name `prefix + file name`.
struct Filler<'a> {
    model: &'a Model,
    values: &'a mut Vec<f32>,
    missing: Vec<String>,
    mismatched: Vec<String>,
}

impl Filler<'_> {
    fn take(
        &mut self,
        file: &Path,
        tensors: &mut BTreeMap<String, Tensor>,
        prefix: &str,
        strip: &str,
    ) {
        for p in self
            .model
            .layout
            .params
            .iter()
            .filter(|p| p.name.starts_with(prefix))
        {
            let hf_name = format!("{strip}{}", &p.name[prefix.len()..]);
            let Some(t) = tensors.remove(&hf_name) else {
                self.missing.push(format!("{}: {hf_name}", file.display()));
                continue;
            };
            match t.to_f32() {
                Some(v) if t.shape == p.shape => {
                    self.values[p.buf.offset..p.buf.end()].copy_from_slice(&v)
                }
                _ => self.mismatched.push(format!(
                    "{}: {hf_name} is {:?}, expected a float tensor of {:?}",
                    file.display(),
                    t.shape,
                    p.shape
                )),
            }
        }
    }
}

/// Reads a generator and a discriminator directory into one model with the shared embedding
/// block. The block comes from the discriminator; where the generator's copy differs, a warning
/// names the tensors. Missing, unknown or mis-shaped tensors are an error that lists them all.
pub fn load_pretraining_pair(generator: &Path, discriminator: &Path) -> Result<Loaded, IoError> {
    let config = ElectraConfig::from_hf(
        &generator.join("config.json"),
        &discriminator.join("config.json"),
    )?;
    let model = Model::new(config);
    let mut values = vec![0.0f32; model.layout.len()];
    let gen_file = generator.join("model.safetensors");
    let disc_file = discriminator.join("model.safetensors");
    let mut gen = read_tensors(&gen_file)?;
    let mut disc = read_tensors(&disc_file)?;

    let mut warnings = vec![];
    let shared_names: Vec<String> = gen
        .keys()
        .filter(|k| k.starts_with("electra.embeddings.") && !is_derived(k))
        .cloned()
        .collect();
    for name in shared_names {
        let g = gen.remove(&name);
        if disc.get(&name) != g.as_ref() {
            warnings.push(format!(
                "{}: {name} differs from the discriminator's; the discriminator's copy is used",
                gen_file.display()
            ));
        }
    }

    let mut filler = Filler {
        model: &model,
        values: &mut values,
        missing: vec![],
        mismatched: vec![],
    };
    filler.take(&disc_file, &mut disc, SHARED, "");
    filler.take(&disc_file, &mut disc, DISCRIMINATOR, "");
    filler.take(&gen_file, &mut gen, GENERATOR, "");
    let (missing, mismatched) = (filler.missing, filler.mismatched);
    let unknown: Vec<String> = [(&gen_file, &gen), (&disc_file, &disc)]
        .iter()
        .flat_map(|(f, t)| {
            t.keys()
                .filter(|k| !is_derived(k))
                .map(move |k| format!("{}: {k}", f.display()))
        })
        .collect();
    let mut problems = vec![];
    for (what, list) in [
        ("missing", missing),
        ("unknown", unknown),
        ("wrong shape", mismatched),
    ] {
        if !list.is_empty() {
            problems.push(format!("{what} tensors:\n  {}", list.join("\n  ")));
        }
    }
    if !problems.is_empty() {
        return Err(IoError::format(discriminator, problems.join("\n")));
    }
    Ok(Loaded {
        model,
        values,
        warnings,
    })
}
