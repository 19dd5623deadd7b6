//! HF ELECTRA directories (`config.json` + `model.safetensors`), the generator
//! (ElectraForMaskedLM) and the discriminator (ElectraForPreTraining).

use super::tensors::{read_tensors, Tensor, Values};
use super::IoError;
use crate::data::WordPieceTokenizer;
use crate::model::config::{zeroed_values, ElectraConfig, EncoderConfig};
use crate::model::params::{ParamLayout, DISCRIMINATOR, GENERATOR, SHARED};
use crate::model::Model;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A model read from HF directories, its parameter values, and any warnings.
pub struct Loaded {
    /// The model's config and parameter layout.
    pub model: Model,
    /// Every parameter, as one flat buffer in the layout's order.
    pub values: Vec<f32>,
    /// Problems that did not stop the load (the generator's embedding copy differing).
    pub warnings: Vec<String>,
}

/// Tensors that HF files may carry and the engine derives instead.
fn is_derived(name: &str) -> bool {
    name.ends_with("position_ids") || name == "generator_lm_head.weight"
}

/// Matches the tensors of the files against the layout, by layout name `prefix + file name`,
/// before anything the size of the model is allocated: a config.json can claim any size, and only
/// weights that are really there may make the engine allocate one.
struct Filler<'a> {
    model: &'a Model,
    /// Each layout tensor found with its shape, and the file's tensor for it.
    found: Vec<(std::ops::Range<usize>, Tensor)>,
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
            if matches!(t.values, Values::Float(_)) && t.shape == p.shape {
                self.found.push((p.buf.offset..p.buf.end(), t));
            } else {
                self.mismatched.push(format!(
                    "{}: {hf_name} is {}, expected a float tensor of {:?}",
                    file.display(),
                    t.describe(),
                    p.shape
                ));
            }
        }
    }
}

/// Reads a generator and a discriminator directory into one model with the shared embedding
/// block. The block comes from the discriminator; where the generator's copy differs, a warning
/// names the tensors. Missing, unknown or mis-shaped tensors are an error that lists them all.
///
/// HF configs carry only the padding id; when the discriminator directory ships a `vocab.txt`,
/// the other special ids ([UNK], [CLS], [SEP], [MASK]) are read from it, else BERT's are assumed.
pub fn load_pretraining_pair(generator: &Path, discriminator: &Path) -> Result<Loaded, IoError> {
    let mut config = ElectraConfig::from_hf(
        &generator.join("config.json"),
        &discriminator.join("config.json"),
    )?;
    apply_vocab_specials(discriminator, &mut config)?;
    let model = Model::new(config);
    let gen_file = model_file(generator)?;
    let disc_file = model_file(discriminator)?;
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
        found: vec![],
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
    if let Some(problems) = tensor_problems(missing, unknown, mismatched) {
        // Each problem names its file, the generator's or the discriminator's.
        return Err(IoError::Weights(problems));
    }
    // Every tensor of the layout is in the files, so this is the size of what was read.
    let mut values = zeroed_values(model.layout.len())?;
    for (range, tensor) in filler.found {
        let floats = tensor.to_f32().expect("checked to hold floats");
        values[range].copy_from_slice(&floats);
    }
    Ok(Loaded {
        model,
        values,
        warnings,
    })
}

/// Sets the special ids of `config` from `dir/vocab.txt`, when there is one.
fn apply_vocab_specials(dir: &Path, config: &mut ElectraConfig) -> Result<(), IoError> {
    let vocab = dir.join("vocab.txt");
    if !vocab.is_file() {
        // BERT's special ids are assumed; they must fit the vocabulary.
        return config
            .validate()
            .map_err(|e| IoError::format(dir, e.to_string()));
    }
    let t = WordPieceTokenizer::from_vocab_file(&vocab)
        .map_err(|e| IoError::format(&vocab, e.to_string()))?;
    config.special_tokens = t.special_tokens();
    config
        .validate()
        .map_err(|e| IoError::format(&vocab, format!("does not fit the model: {e}")))
}

/// The missing, unknown and mis-shaped tensors of a weights file as one message listing them all,
/// or None when there are none.
pub(crate) fn tensor_problems(
    missing: Vec<String>,
    unknown: Vec<String>,
    mismatched: Vec<String>,
) -> Option<String> {
    let lists = [
        ("missing", missing),
        ("unknown", unknown),
        ("wrong shape", mismatched),
    ];
    let problems: Vec<String> = lists
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(what, list)| format!("{what} tensors:\n  {}", list.join("\n  ")))
        .collect();
    (!problems.is_empty()).then(|| problems.join("\n"))
}

/// The weights file of a HF directory, with an error that says what to do when the directory
/// holds only a PyTorch pickle (`pytorch_model.bin`), which the engine does not read.
fn model_file(dir: &Path) -> Result<PathBuf, IoError> {
    let file = dir.join("model.safetensors");
    if file.is_file() {
        return Ok(file);
    }
    if !dir.is_dir() {
        return Err(IoError::format(dir, "no such directory"));
    }
    if dir.join("pytorch_model.bin").exists() {
        return Err(IoError::format(
            &file,
            "absent: the directory holds only pytorch_model.bin; convert it with transformers \
             (`Model.from_pretrained(dir).save_pretrained(dir)` writes model.safetensors)",
        ));
    }
    Err(IoError::format(&file, "absent: not a HF model directory"))
}

/// The `generator/` and `discriminator/` subfolders of a pretraining pair, as `electra export`
/// writes them (and as the google/electra-*-generator and -discriminator pairs are laid out).
pub fn pair_dirs(dir: &Path) -> Result<(PathBuf, PathBuf), IoError> {
    if !dir.is_dir() {
        return Err(IoError::format(dir, "no such directory"));
    }
    let (gen, disc) = (dir.join("generator"), dir.join("discriminator"));
    let absent: Vec<&str> = [("generator/", &gen), ("discriminator/", &disc)]
        .iter()
        .filter(|(_, d)| !d.join("config.json").is_file())
        .map(|(n, _)| *n)
        .collect();
    if !absent.is_empty() {
        return Err(IoError::format(
            dir,
            format!(
                "expected generator/ and discriminator/ subfolders with a config.json each (the \
                 layout `electra export` writes); missing: {}",
                absent.join(", ")
            ),
        ));
    }
    Ok((gen, disc))
}

/// Reads a folder holding `generator/` and `discriminator/` (see [`pair_dirs`]) with
/// [`load_pretraining_pair`].
pub fn load_pretraining_dir(dir: &Path) -> Result<Loaded, IoError> {
    let (gen, disc) = pair_dirs(dir)?;
    load_pretraining_pair(&gen, &disc)
}

/// One tensor of a [`HfDiscriminator`].
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The values in row-major order.
    pub values: Vec<f32>,
}

/// A discriminator read alone (for fine-tuning): its sizes and its tensors, under the engine's
/// layout names: `shared.electra.embeddings.…` for the embedding block and
/// `discriminator.<HF name>` for the rest, exactly as [`ParamLayout`] and checkpoints name them.
/// A model whose layout reuses those names (the discriminator half of [`ParamLayout`] plus a head
/// of its own) takes the weights with [`HfDiscriminator::fill`].
#[derive(Clone, Debug)]
pub struct HfDiscriminator {
    /// The shared embedding block's and the discriminator's sizes, as a whole [`ElectraConfig`]
    /// (so that [`ParamLayout::new`] and [`Model::new`] accept it). No generator was read: its
    /// sizes mirror the discriminator's, and no tensor of it is held.
    pub config: ElectraConfig,
    /// Every tensor that was read, by layout name. The replaced-token-detection head
    /// (`discriminator.discriminator_predictions.*`) is present only when the file has it (an
    /// `ElectraForPreTraining` has, an `ElectraModel` has not).
    pub tensors: BTreeMap<String, NamedTensor>,
    /// The directory it was read from.
    pub source: PathBuf,
}

/// The layout names of the discriminator's replaced-token-detection head.
const RTD_HEAD: &str = "discriminator.discriminator_predictions.";

impl HfDiscriminator {
    /// The discriminator encoder's sizes.
    pub fn encoder(&self) -> EncoderConfig {
        self.config.discriminator
    }

    /// The tensor with layout name `name`.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.get(name)
    }

    /// Whether the replaced-token-detection head was read too.
    pub fn has_rtd_head(&self) -> bool {
        self.tensors.keys().any(|k| k.starts_with(RTD_HEAD))
    }

    /// Copies every tensor that `layout` also has (same name, same shape) into `values`, a flat
    /// buffer laid out by `layout`. Returns the names of the layout's tensors it did not fill
    /// (a new head, say), for the caller to initialise. A tensor with the layout's name but
    /// another shape is an error that lists them all.
    pub fn fill(&self, layout: &ParamLayout, values: &mut [f32]) -> Result<Vec<String>, IoError> {
        assert_eq!(values.len(), layout.len(), "values must match the layout");
        let mut left = vec![];
        let mut mismatched = vec![];
        for p in &layout.params {
            match self.tensors.get(&p.name) {
                Some(t) if t.shape == p.shape => {
                    values[p.buf.offset..p.buf.end()].copy_from_slice(&t.values)
                }
                Some(t) => mismatched.push(format!(
                    "{} is {:?}, the model expects {:?}",
                    p.name, t.shape, p.shape
                )),
                None => left.push(p.name.clone()),
            }
        }
        if !mismatched.is_empty() {
            return Err(IoError::format(
                &self.source,
                format!("wrong shape tensors:\n  {}", mismatched.join("\n  ")),
            ));
        }
        Ok(left)
    }
}

/// Reads a HF discriminator alone: `dir` is either its directory (`config.json` +
/// `model.safetensors`, as `ElectraForPreTraining` or `ElectraModel` save it) or a pair folder
/// with a `discriminator/` subfolder. Missing, unknown or mis-shaped tensors are an error that
/// lists them all; the replaced-token-detection head is optional.
pub fn load_discriminator(dir: &Path) -> Result<HfDiscriminator, IoError> {
    let dir = if !dir.join("config.json").is_file() && dir.join("discriminator").is_dir() {
        dir.join("discriminator")
    } else {
        dir.to_path_buf()
    };
    let config_file = dir.join("config.json");
    if !config_file.is_file() {
        return Err(IoError::format(
            &dir,
            "no config.json here nor a discriminator/ subfolder with one: not a HF ELECTRA \
             discriminator directory",
        ));
    }
    // The generator's sizes are taken from the same file: only the discriminator half is used.
    let mut config = ElectraConfig::from_hf(&config_file, &config_file)?;
    apply_vocab_specials(&dir, &mut config)?;
    let file = model_file(&dir)?;
    let mut tensors = read_tensors(&file)?;
    // An `ElectraModel` saves its tensors without the `electra.` prefix.
    if !tensors.keys().any(|k| k.starts_with("electra.")) {
        tensors = tensors
            .into_iter()
            .map(|(k, t)| (format!("electra.{k}"), t))
            .collect();
    }
    let layout = ParamLayout::new(&config);
    let mut out = BTreeMap::new();
    let (mut missing, mut mismatched, mut head_missing) = (vec![], vec![], vec![]);
    for p in layout
        .params
        .iter()
        .filter(|p| p.name.starts_with(SHARED) || p.name.starts_with(DISCRIMINATOR))
    {
        let hf_name = p
            .name
            .strip_prefix(SHARED)
            .or_else(|| p.name.strip_prefix(DISCRIMINATOR))
            .expect("filtered on the prefixes");
        let Some(t) = tensors.remove(hf_name) else {
            if p.name.starts_with(RTD_HEAD) {
                head_missing.push(hf_name.to_string());
            } else {
                missing.push(hf_name.to_string());
            }
            continue;
        };
        match t.to_f32() {
            Some(values) if t.shape == p.shape => {
                out.insert(
                    p.name.clone(),
                    NamedTensor {
                        shape: t.shape,
                        values,
                    },
                );
            }
            _ => mismatched.push(format!(
                "{hf_name} is {}, expected a float tensor of {:?}",
                t.describe(),
                p.shape
            )),
        }
    }
    // The head is optional, but half a head is a broken file.
    if !head_missing.is_empty() && out.keys().any(|k| k.starts_with(RTD_HEAD)) {
        missing.extend(head_missing);
    }
    let unknown: Vec<String> = tensors.into_keys().filter(|k| !is_derived(k)).collect();
    if let Some(problems) = tensor_problems(missing, unknown, mismatched) {
        return Err(IoError::format(&file, problems));
    }
    Ok(HfDiscriminator {
        config,
        tensors: out,
        source: dir,
    })
}
