//! HF export: a model's parameters as two `transformers` directories, `discriminator/`
//! (`ElectraForPreTraining`) and `generator/` (`ElectraForMaskedLM`), each with `config.json`,
//! `model.safetensors` (float32, HF names) and the tokenizer files.
//!
//! The shared embedding block is written into both files, as HF keeps one copy per network. The
//! generator's LM head weight is tied to its word embeddings and is not stored, as HF saves it.
//! The folder is built beside its destination and renamed into place once complete, so a crash
//! leaves no half-written export.

use super::checkpoint;
use super::run_dir::{self, RunConfig};
use super::tensors::{parse_tensors, write_f32_tensors};
use super::{paths, write_atomic, IoError};
use crate::data::WordPieceTokenizer;
use crate::model::config::{zeroed_values, ElectraConfig, EncoderConfig};
use crate::model::params::{ParamLayout, DISCRIMINATOR, GENERATOR, SHARED};
use crate::model::{Model, INIT_STD};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One of the two networks of a pretraining pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// `ElectraForMaskedLM`.
    Generator,
    /// `ElectraForPreTraining`.
    Discriminator,
}

impl Network {
    /// The subfolder of an export.
    pub fn dir_name(self) -> &'static str {
        match self {
            Network::Generator => "generator",
            Network::Discriminator => "discriminator",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Network::Generator => GENERATOR,
            Network::Discriminator => DISCRIMINATOR,
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            Network::Generator => "ElectraForMaskedLM",
            Network::Discriminator => "ElectraForPreTraining",
        }
    }

    fn encoder(self, cfg: &ElectraConfig) -> EncoderConfig {
        match self {
            Network::Generator => cfg.generator,
            Network::Discriminator => cfg.discriminator,
        }
    }
}

/// An f32 as the JSON number of its shortest decimal form (1e-12, not 9.99999996e-13).
fn json_f32(x: f32) -> serde_json::Value {
    let shortest: f64 = format!("{x}").parse().expect("an f32 prints as a number");
    json!(shortest)
}

/// The `config.json` of one network, with every field `transformers`' `ElectraConfig` reads,
/// written as `save_pretrained` writes them.
pub fn hf_config(cfg: &ElectraConfig, network: Network) -> serde_json::Value {
    let enc = network.encoder(cfg);
    json!({
        "architectures": [network.architecture()],
        "model_type": "electra",
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.embedding_size,
        "hidden_size": enc.hidden_size,
        "num_hidden_layers": enc.num_layers,
        "num_attention_heads": enc.num_heads,
        "intermediate_size": enc.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": json_f32(cfg.hidden_dropout_prob),
        "attention_probs_dropout_prob": json_f32(cfg.attention_probs_dropout_prob),
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": json_f32(INIT_STD),
        "layer_norm_eps": json_f32(cfg.layer_norm_eps),
        "pad_token_id": cfg.special_tokens.pad,
        "bos_token_id": null,
        "eos_token_id": null,
        "position_embedding_type": "absolute",
        "summary_type": "first",
        "summary_use_proj": true,
        "summary_activation": "gelu",
        "summary_last_dropout": 0.1,
        "classifier_dropout": null,
        "tie_word_embeddings": true,
        "is_decoder": false,
        "add_cross_attention": false,
        "use_cache": true,
        "dtype": "float32",
    })
}

/// The tensors of one network under their HF names: the shared embedding block and the
/// network's own tensors. The generator's tied `generator_lm_head.weight` is not included.
pub fn hf_tensors(
    layout: &ParamLayout,
    values: &[f32],
    network: Network,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    layout
        .params
        .iter()
        .filter_map(|p| {
            let name = p
                .name
                .strip_prefix(SHARED)
                .or_else(|| p.name.strip_prefix(network.prefix()))?;
            Some((
                name.to_string(),
                p.shape.clone(),
                values[p.buf.offset..p.buf.end()].to_vec(),
            ))
        })
        .collect()
}

/// The special tokens as BERT's tokenizer files name them.
const SPECIALS: [(&str, &str); 5] = [
    ("unk_token", "[UNK]"),
    ("sep_token", "[SEP]"),
    ("pad_token", "[PAD]"),
    ("cls_token", "[CLS]"),
    ("mask_token", "[MASK]"),
];

/// The BERT uncased pipeline as `transformers`' `BertTokenizerFast` serialises it: normaliser,
/// pre-tokenizer, WordPiece, the `[CLS] A [SEP] B [SEP]` template and the special tokens.
fn tokenizer_json(tokenizer: &WordPieceTokenizer, path: &Path) -> Result<(), IoError> {
    use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, Tokenizer};
    let err = |e: String| IoError::format(path, e);
    let mut text = tokenizer.vocab().join("\n");
    text.push('\n');
    let vocab = WordPiece::read_bytes(text.as_bytes()).map_err(|e| err(e.to_string()))?;
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let (cls, sep) = (tokenizer.cls_id(), tokenizer.sep_id());
    let template = TemplateProcessing::builder()
        .try_single("[CLS]:0 $A:0 [SEP]:0")
        .and_then(|b| b.try_pair("[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"))
        .map_err(|e| err(e.to_string()))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut t = Tokenizer::new(model);
    t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(template))
        .with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    t.add_special_tokens(&specials);
    let text = t.to_string(true).map_err(|e| err(e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// `vocab.txt`, `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`.
fn write_tokenizer_files(
    tokenizer: &WordPieceTokenizer,
    max_length: usize,
    dir: &Path,
) -> Result<(), IoError> {
    let mut vocab = tokenizer.vocab().join("\n");
    vocab.push('\n');
    write_atomic(&dir.join("vocab.txt"), vocab.as_bytes())?;
    tokenizer_json(tokenizer, &dir.join("tokenizer.json"))?;
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), json!("BertTokenizer"));
    config.insert("do_lower_case".into(), json!(true));
    config.insert("tokenize_chinese_chars".into(), json!(true));
    config.insert("strip_accents".into(), json!(null));
    config.insert("model_max_length".into(), json!(max_length));
    config.insert("clean_up_tokenization_spaces".into(), json!(true));
    let mut map = serde_json::Map::new();
    for (key, token) in SPECIALS {
        config.insert(key.into(), json!(token));
        map.insert(key.into(), json!(token));
    }
    let pretty = |v: serde_json::Value| serde_json::to_vec_pretty(&v).expect("JSON serialises");
    write_atomic(
        &dir.join("tokenizer_config.json"),
        &pretty(serde_json::Value::Object(config)),
    )?;
    write_atomic(
        &dir.join("special_tokens_map.json"),
        &pretty(serde_json::Value::Object(map)),
    )
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    /// The export's folder.
    pub out: PathBuf,
    /// The checkpoint's step, when exported from a run.
    pub step: Option<u64>,
    /// Tensors written into `discriminator/model.safetensors`.
    pub discriminator_tensors: usize,
    /// Tensors written into `generator/model.safetensors`.
    pub generator_tensors: usize,
}

/// Checks that `out` may receive an export: absent, an empty directory, or (with `replace`)
/// anything but a folder that holds a run, a checkpoint or prepared data.
fn check_destination(out: &Path, replace: bool) -> Result<(), IoError> {
    let mut entries = match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) if out.exists() && !out.is_dir() => {
            return Err(IoError::format(out, "exists and is not a directory"))
        }
        Err(e) => return Err(IoError::io(out, e)),
        Ok(entries) => entries,
    };
    if entries.next().is_some() {
        if !replace {
            return Err(IoError::format(
                out,
                "already exists and is not empty; choose another --out or pass --force to replace it",
            ));
        }
        paths::check_replaceable(out)?;
    }
    Ok(())
}

/// Renames the finished `tmp` folder to `out`, moving what was there aside first.
fn publish(tmp: &Path, out: &Path) -> Result<(), IoError> {
    if out.exists() {
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(|e| IoError::io(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| IoError::io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| IoError::io(&old, e))?;
    } else {
        std::fs::rename(tmp, out).map_err(|e| IoError::io(out, e))?;
    }
    if let Some(Ok(d)) = out.parent().map(std::fs::File::open) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `model` with parameter `values` (a flat buffer in its layout) and `tokenizer` as
/// `out/discriminator/` and `out/generator/`. `out` must be absent or empty unless `replace`.
pub fn export_model(
    model: &Model,
    values: &[f32],
    tokenizer: &WordPieceTokenizer,
    out: &Path,
    replace: bool,
) -> Result<ExportSummary, IoError> {
    let cfg = &model.config;
    if values.len() != model.layout.len() {
        return Err(IoError::format(
            out,
            format!(
                "{} parameter values given for a model of {}",
                values.len(),
                model.layout.len()
            ),
        ));
    }
    if tokenizer.vocab_size() != cfg.vocab_size {
        return Err(IoError::format(
            out,
            format!(
                "the vocabulary has {} tokens but the model's embedding table has {} rows",
                tokenizer.vocab_size(),
                cfg.vocab_size
            ),
        ));
    }
    let st = cfg.special_tokens;
    for (name, model_id, vocab_id) in [
        ("[PAD]", st.pad, tokenizer.pad_id()),
        ("[UNK]", st.unk, tokenizer.unk_id()),
        ("[CLS]", st.cls, tokenizer.cls_id()),
        ("[SEP]", st.sep, tokenizer.sep_id()),
        ("[MASK]", st.mask, tokenizer.mask_id()),
    ] {
        if model_id != vocab_id {
            return Err(IoError::format(
                out,
                format!("the model's {name} is id {model_id} but the vocabulary's is {vocab_id}"),
            ));
        }
    }
    check_destination(out, replace)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| IoError::io(parent, e))?;
    let name = out
        .file_name()
        .ok_or_else(|| IoError::format(out, "not a folder name"))?
        .to_string_lossy();
    let tmp = parent.join(super::tmp_name(&name));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<[usize; 2], IoError> {
        let mut counts = [0usize; 2];
        for (i, network) in [Network::Discriminator, Network::Generator]
            .into_iter()
            .enumerate()
        {
            let dir = tmp.join(network.dir_name());
            std::fs::create_dir_all(&dir).map_err(|e| IoError::io(&dir, e))?;
            let config = serde_json::to_vec_pretty(&hf_config(cfg, network)).expect("serialises");
            write_atomic(&dir.join("config.json"), &config)?;
            let tensors = hf_tensors(&model.layout, values, network);
            counts[i] = tensors.len();
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            write_f32_tensors(&dir.join("model.safetensors"), &tensors, Some(meta))?;
            write_tokenizer_files(tokenizer, cfg.max_position_embeddings, &dir)?;
        }
        publish(&tmp, out)?;
        Ok(counts)
    })();
    let counts = written.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    Ok(ExportSummary {
        out: out.to_path_buf(),
        step: None,
        discriminator_tensors: counts[0],
        generator_tensors: counts[1],
    })
}

/// A checkpoint to export, found from a run directory or a checkpoint folder.
#[derive(Clone, Debug)]
pub struct ExportSource {
    /// The run directory (it holds `run.json`).
    pub run_dir: PathBuf,
    /// The checkpoint folder, `run_dir/checkpoints/step-N`.
    pub checkpoint: PathBuf,
    /// Its step.
    pub step: u64,
    /// The run's config: the model's sizes and the data folder.
    pub run: RunConfig,
}

/// Finds what to export: for a run directory (it has `run.json`) its newest checkpoint; for a
/// checkpoint folder (`RUN/checkpoints/step-N`) that one, with the model config of its run.
pub fn resolve_source(path: &Path) -> Result<ExportSource, IoError> {
    if !path.is_dir() {
        return Err(IoError::format(
            path,
            "no such run directory or checkpoint folder",
        ));
    }
    if run_dir::config_path(path).is_file() {
        let run = run_dir::read_config(path)?;
        let Some(&step) = checkpoint::list(path)?.last() else {
            return Err(IoError::format(
                path,
                "the run has no checkpoint yet (checkpoints/step-N/); train it further or name a \
                 checkpoint folder",
            ));
        };
        return Ok(ExportSource {
            run_dir: path.to_path_buf(),
            checkpoint: checkpoint::step_dir(path, step),
            step,
            run,
        });
    }
    let step = path
        .file_name()
        .and_then(|n| n.to_str()?.strip_prefix("step-")?.parse::<u64>().ok());
    let run_dir = path
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))
        .and_then(Path::parent);
    match (step, run_dir) {
        (Some(step), Some(run)) if run_dir::config_path(run).is_file() => Ok(ExportSource {
            run_dir: run.to_path_buf(),
            checkpoint: path.to_path_buf(),
            step,
            run: run_dir::read_config(run)?,
        }),
        (Some(_), _) => Err(IoError::format(
            path,
            "is not inside a run directory (RUN/checkpoints/step-N with RUN/run.json), so the \
             model's config is unknown",
        )),
        _ => Err(IoError::format(
            path,
            "neither a run directory (no run.json) nor a checkpoint folder (checkpoints/step-N)",
        )),
    }
}

/// Reads a checkpoint's `model.safetensors` into a flat buffer laid out by `layout`; every
/// tensor must be there with its shape, and no other.
pub fn read_checkpoint_params(layout: &ParamLayout, dir: &Path) -> Result<Vec<f32>, IoError> {
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        return Err(IoError::format(
            &file,
            "absent: the checkpoint has no model weights",
        ));
    }
    let bytes = super::checkpoint::read_checked(dir, super::checkpoint::MODEL_FILE)?;
    let mut tensors = parse_tensors(&file, &bytes)?;
    let mut flat = zeroed_values(layout.len())?;
    let (mut missing, mut mismatched) = (vec![], vec![]);
    for p in &layout.params {
        match tensors.remove(&p.name) {
            None => missing.push(p.name.clone()),
            Some(t) => match t.to_f32() {
                Some(v) if t.shape == p.shape => {
                    flat[p.buf.offset..p.buf.end()].copy_from_slice(&v)
                }
                _ => mismatched.push(format!(
                    "{} is {}, expected a float tensor of {:?}",
                    p.name,
                    t.describe(),
                    p.shape
                )),
            },
        }
    }
    let unknown: Vec<String> = tensors.into_keys().collect();
    if let Some(problems) = super::hf::tensor_problems(missing, unknown, mismatched) {
        return Err(IoError::format(
            &file,
            format!("does not fit the run's model config:\n{problems}"),
        ));
    }
    Ok(flat)
}

/// Exports a run's newest checkpoint, or one checkpoint folder, to `out`. The vocabulary is
/// `vocab` if given, else the run's data folder's `vocab.txt`. `out` may not be, contain or lie
/// inside the checkpoint, the run, the data folder or the vocabulary.
pub fn export_run(
    source: &Path,
    out: &Path,
    vocab: Option<&Path>,
    replace: bool,
) -> Result<ExportSummary, IoError> {
    let src = resolve_source(source)?;
    let vocab_file = match vocab {
        Some(v) => v.to_path_buf(),
        None => src.run.data.join("vocab.txt"),
    };
    paths::check_apart(
        out,
        &[
            ("the checkpoint being exported", &src.checkpoint),
            ("the run being exported", &src.run_dir),
            ("the run's data folder", &src.run.data),
            ("the vocabulary", &vocab_file),
        ],
    )?;
    check_destination(out, replace)?;
    if !vocab_file.is_file() {
        return Err(IoError::format(
            &vocab_file,
            format!(
                "absent: the vocabulary of {} is needed for the tokenizer files; pass --vocab FILE",
                src.run_dir.display()
            ),
        ));
    }
    let tokenizer = WordPieceTokenizer::from_vocab_file(&vocab_file)
        .map_err(|e| IoError::format(&vocab_file, e.to_string()))?;
    let model = Model::new(src.run.model.clone());
    if tokenizer.vocab_size() != model.config.vocab_size {
        // Named here, where the file is known: export_model can only name the destination.
        return Err(IoError::format(
            &vocab_file,
            format!(
                "{} tokens, but {} was trained with a vocabulary of {}",
                tokenizer.vocab_size(),
                src.run_dir.display(),
                model.config.vocab_size
            ),
        ));
    }
    let values = read_checkpoint_params(&model.layout, &src.checkpoint)?;
    let mut summary = export_model(&model, &values, &tokenizer, out, replace)?;
    summary.step = Some(src.step);
    Ok(summary)
}
