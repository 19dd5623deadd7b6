//! Model configuration: presets, HF `config.json`, and the engine's own config file.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The size of one transformer encoder (the generator's or the discriminator's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
}

impl EncoderConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// Special token ids (BERT's uncased vocabulary by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        SpecialTokens {
            pad: 0,
            unk: 100,
            cls: 101,
            sep: 102,
            mask: 103,
        }
    }
}

/// A whole ELECTRA: the shared embedding block, the generator and the discriminator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElectraConfig {
    pub vocab_size: usize,
    pub embedding_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub discriminator: EncoderConfig,
    pub generator: EncoderConfig,
    #[serde(default)]
    pub special_tokens: SpecialTokens,
    /// Dropout on the embeddings and on each residual branch, in training (0.1 in the recipe).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    /// Dropout on the attention probabilities, in training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
}

fn default_dropout() -> f32 {
    0.1
}

/// Errors in a configuration, each naming where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown preset `{0}` (expected tiny, small, base or large)")]
    UnknownPreset(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn generator_of(disc: EncoderConfig, fraction: f64) -> EncoderConfig {
    let hidden = ((disc.hidden_size as f64) * fraction).round().max(1.0) as usize;
    EncoderConfig {
        hidden_size: hidden,
        num_layers: disc.num_layers,
        num_heads: (hidden / 64).max(1),
        intermediate_size: 4 * hidden,
    }
}

impl ElectraConfig {
    /// A named preset (`tiny`, `small`, `base`, `large`) with the paper's generator fraction
    /// (1/4 for Small and Tiny, 1/3 for Base and Large) and the BERT vocabulary size.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (e, h, layers, heads, ffn, fraction) = match name {
            "tiny" => (64, 128, 4, 2, 512, 0.25),
            "small" => (128, 256, 12, 4, 1024, 0.25),
            "base" => (768, 768, 12, 12, 3072, 1.0 / 3.0),
            "large" => (1024, 1024, 24, 16, 4096, 1.0 / 3.0),
            other => return Err(ConfigError::UnknownPreset(other.to_string())),
        };
        let discriminator = EncoderConfig {
            hidden_size: h,
            num_layers: layers,
            num_heads: heads,
            intermediate_size: ffn,
        };
        Ok(ElectraConfig {
            vocab_size: 30522,
            embedding_size: e,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            discriminator,
            generator: generator_of(discriminator, fraction),
            special_tokens: SpecialTokens::default(),
            hidden_dropout_prob: default_dropout(),
            attention_probs_dropout_prob: default_dropout(),
        })
    }

    /// Replaces the generator by one of `fraction` times the discriminator's hidden size.
    pub fn with_generator_fraction(mut self, fraction: f64) -> Result<Self, ConfigError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "generator fraction must be in (0, 1], got {fraction}"
            )));
        }
        self.generator = generator_of(self.discriminator, fraction);
        self.validate()?;
        Ok(self)
    }

    /// Reads the engine's own JSON config (the format [`ElectraConfig`] serialises to).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: ElectraConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        cfg.validate().map_err(|e| err(e.to_string()))?;
        Ok(cfg)
    }

    /// Builds the config from a pair of HF `config.json` files (ElectraForMaskedLM and
    /// ElectraForPreTraining), checking that the shared embedding block agrees.
    pub fn from_hf(generator: &Path, discriminator: &Path) -> Result<Self, ConfigError> {
        let g = HfConfig::read(generator)?;
        let d = HfConfig::read(discriminator)?;
        for (field, a, b) in [
            ("vocab_size", g.vocab_size, d.vocab_size),
            ("embedding_size", g.embedding_size, d.embedding_size),
            (
                "max_position_embeddings",
                g.max_position_embeddings,
                d.max_position_embeddings,
            ),
            ("type_vocab_size", g.type_vocab_size, d.type_vocab_size),
        ] {
            if a != b {
                return Err(ConfigError::Invalid(format!(
                    "{} and {} disagree on `{field}` ({a} vs {b}); the embedding block is shared",
                    generator.display(),
                    discriminator.display()
                )));
            }
        }
        let cfg = ElectraConfig {
            vocab_size: d.vocab_size,
            embedding_size: d.embedding_size,
            max_position_embeddings: d.max_position_embeddings,
            type_vocab_size: d.type_vocab_size,
            layer_norm_eps: d.layer_norm_eps as f32,
            discriminator: d.encoder(),
            generator: g.encoder(),
            special_tokens: SpecialTokens {
                pad: d.pad_token_id.unwrap_or(0),
                ..SpecialTokens::default()
            },
            hidden_dropout_prob: d.hidden_dropout_prob.unwrap_or(0.1),
            attention_probs_dropout_prob: d.attention_probs_dropout_prob.unwrap_or(0.1),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, enc) in [
            ("generator", &self.generator),
            ("discriminator", &self.discriminator),
        ] {
            if enc.num_heads == 0 || enc.hidden_size % enc.num_heads != 0 {
                return bad(format!(
                    "{name}: hidden size {} is not a multiple of {} heads",
                    enc.hidden_size, enc.num_heads
                ));
            }
            if enc.num_layers == 0 || enc.intermediate_size == 0 {
                return bad(format!(
                    "{name}: layers and intermediate size must be positive"
                ));
            }
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if self.vocab_size == 0 || self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} is out of range", self.vocab_size));
        }
        let st = &self.special_tokens;
        for (name, id) in [
            ("pad", st.pad),
            ("cls", st.cls),
            ("sep", st.sep),
            ("mask", st.mask),
        ] {
            if id as usize >= self.vocab_size {
                return bad(format!(
                    "special token {name} = {id} is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        if self.embedding_size == 0
            || self.max_position_embeddings == 0
            || self.type_vocab_size == 0
        {
            return bad("embedding size, positions and token types must be positive".into());
        }
        Ok(())
    }
}

/// The fields of a HF ELECTRA `config.json` that the engine uses.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    embedding_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    hidden_dropout_prob: Option<f32>,
    #[serde(default)]
    attention_probs_dropout_prob: Option<f32>,
}

impl HfConfig {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: HfConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        match cfg.hidden_act.as_deref() {
            None | Some("gelu") => Ok(cfg),
            Some(other) => Err(err(format!(
                "hidden_act `{other}` is not supported (expected \"gelu\", the exact erf form)"
            ))),
        }
    }

    fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
        }
    }
}
