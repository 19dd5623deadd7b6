//! Model configuration: presets, HF `config.json`, and the engine's own config file.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The size of one transformer encoder (the generator's or the discriminator's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Width H of every token's vector inside the encoder; a multiple of `num_heads`.
    pub hidden_size: usize,
    /// Number of post-LN transformer blocks.
    pub num_layers: usize,
    /// Attention heads per block; each sees `hidden_size / num_heads` dimensions.
    pub num_heads: usize,
    /// Width of the feed-forward layer (4·H in every preset).
    pub intermediate_size: usize,
}

impl EncoderConfig {
    /// `hidden_size / num_heads`: the width of each head (64 in the presets' discriminators).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// Special token ids (BERT's uncased vocabulary by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `[PAD]`: fills sequences past their end (attention mask 0); prepared shards use 0.
    pub pad: u32,
    /// `[UNK]`: the tokenizer's stand-in for words it cannot split; trained like any other token.
    pub unk: u32,
    /// `[CLS]`: starts every sequence; never chosen for masking.
    pub cls: u32,
    /// `[SEP]`: ends each segment; never chosen for masking.
    pub sep: u32,
    /// `[MASK]`: what the generator's input shows at 85% of the chosen positions.
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
    /// Rows of the word-embedding table; must match the tokenizer's vocabulary (the presets'
    /// 30522 is BERT's, so set it from the data otherwise).
    pub vocab_size: usize,
    /// Width E of the shared embeddings; each encoder projects E→H when E differs from its H.
    pub embedding_size: usize,
    /// Longest sequence the position table covers (512 in the presets).
    pub max_position_embeddings: usize,
    /// Number of segment ids (2: A and B).
    pub type_vocab_size: usize,
    /// Added to the variance in every LayerNorm (1e-12, as in BERT).
    pub layer_norm_eps: f32,
    /// The network that is kept and fine-tuned.
    pub discriminator: EncoderConfig,
    /// The smaller masked-LM network that produces the replacements; discarded after pretraining.
    pub generator: EncoderConfig,
    /// Ids of the special tokens; BERT's uncased ids when absent from a config file.
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
    /// [`ElectraConfig::preset`] was given a name it does not know (carried here).
    #[error("unknown preset `{0}` (expected tiny, small, base or large)")]
    UnknownPreset(String),
    /// A config file could not be read, parsed, or holds sizes that do not fit together.
    #[error("{path}: {message}")]
    File {
        /// The file, as given.
        path: String,
        /// What is wrong: the I/O or JSON error, or the failed check.
        message: String,
    },
    /// The sizes do not fit together (see [`ElectraConfig::validate`]); the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The memory for the model's values could not be had.
    #[error("a model of {parameters} parameters needs {:.2} GB for its values, which this machine could not allocate ({detail}); check the sizes in its config", *parameters as f64 * 4e-9)]
    TooLarge {
        /// How many values were asked for.
        parameters: usize,
        /// What the allocator said.
        detail: String,
    },
}

/// The most layers an encoder may have: far more than any ELECTRA (24), and few enough that a
/// model's tensors can be listed and its size computed without overflow.
pub const MAX_LAYERS: usize = 1024;
/// The largest width, vocabulary, position count or token-type count: with [`MAX_LAYERS`], no
/// product of sizes can overflow.
pub const MAX_SIZE: usize = 1 << 24;

/// `len` zeroed values on the host, or [`ConfigError::TooLarge`] when the memory cannot be had:
/// a config's sizes are a user's input, and an allocation they make must not abort.
pub fn zeroed_values(len: usize) -> Result<Vec<f32>, ConfigError> {
    let mut values = Vec::new();
    values
        .try_reserve_exact(len)
        .map_err(|e| ConfigError::TooLarge {
            parameters: len,
            detail: e.to_string(),
        })?;
    values.resize(len, 0.0);
    Ok(values)
}

/// A generator of `fraction` times the discriminator's width, with heads of 64 where the width
/// allows (the original code's rule) and a single head otherwise.
fn generator_of(disc: EncoderConfig, fraction: f64) -> EncoderConfig {
    let hidden = ((disc.hidden_size as f64) * fraction).round().max(1.0) as usize;
    let heads = if hidden.is_multiple_of(64) {
        hidden / 64
    } else {
        1
    };
    EncoderConfig {
        hidden_size: hidden,
        num_layers: disc.num_layers,
        num_heads: heads,
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
            // The original code's large generator is a quarter of the discriminator.
            "large" => (1024, 1024, 24, 16, 4096, 0.25),
            other => return Err(ConfigError::UnknownPreset(other.to_string())),
        };
        let discriminator = EncoderConfig {
            hidden_size: h,
            num_layers: layers,
            num_heads: heads,
            intermediate_size: ffn,
        };
        let cfg = ElectraConfig {
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
        };
        cfg.validate()?;
        Ok(cfg)
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
        g.check(generator)?;
        d.check(discriminator)?;
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
        // Each file's fields were checked above; what is left concerns the two together.
        cfg.validate_sizes().map_err(|e| {
            ConfigError::Invalid(format!(
                "{} and {}: {e}",
                generator.display(),
                discriminator.display()
            ))
        })?;
        Ok(cfg)
    }

    /// Checks the sizes fit together and the special tokens lie inside the vocabulary.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sizes()?;
        let st = &self.special_tokens;
        for (name, id) in [
            ("pad", st.pad),
            ("cls", st.cls),
            ("sep", st.sep),
            ("mask", st.mask),
        ] {
            if id as usize >= self.vocab_size {
                return Err(ConfigError::Invalid(format!(
                    "special token {name} = {id} is outside the vocabulary of {}",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Checks the sizes alone: a HF `config.json` names no special tokens but padding, so they are
    /// checked once the vocabulary that defines them is known.
    pub fn validate_sizes(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("embedding_size", self.embedding_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        let encoders = [
            ("generator", &self.generator),
            ("discriminator", &self.discriminator),
        ];
        let encoder_sizes = encoders.iter().flat_map(|(name, enc)| {
            [
                (*name, "hidden_size", enc.hidden_size),
                (*name, "intermediate_size", enc.intermediate_size),
            ]
        });
        let sizes = sizes.map(|(field, v)| ("model", field, v));
        for (part, field, value) in sizes.into_iter().chain(encoder_sizes) {
            if value == 0 || value > MAX_SIZE {
                return bad(format!(
                    "{part}: {field} must be between 1 and {MAX_SIZE}, got {value}"
                ));
            }
        }
        for (name, enc) in encoders {
            if enc.num_layers > MAX_LAYERS {
                return bad(format!(
                    "{name}: {} layers, more than the engine's {MAX_LAYERS}",
                    enc.num_layers
                ));
            }
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
        let eps = self.layer_norm_eps;
        if !(eps.is_finite() && eps >= 0.0) {
            return bad(format!(
                "model: layer_norm_eps must be a finite number >= 0, got {eps}"
            ));
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
        // Four values a parameter on the backend (value, gradient, two moments) must be
        // addressable; what the machine can hold is found by allocating fallibly.
        let parameters = self.parameter_count();
        if parameters.saturating_mul(16) > isize::MAX as u128 {
            return bad(format!(
                "the sizes give {parameters} parameters, more than any machine can address"
            ));
        }
        Ok(())
    }

    /// The number of parameters of both networks and the shared embeddings, exact in u128
    /// whatever the sizes (the layout's `len()` once the sizes are valid).
    pub fn parameter_count(&self) -> u128 {
        let (v, e) = (self.vocab_size as u128, self.embedding_size as u128);
        let shared =
            (v + self.max_position_embeddings as u128 + self.type_vocab_size as u128 + 2) * e;
        let encoder = |enc: &EncoderConfig| {
            let (h, f) = (enc.hidden_size as u128, enc.intermediate_size as u128);
            let project = if e != h { e * h + h } else { 0 };
            // qkv, attention output, two LayerNorms, the two feed-forward layers.
            let layer = 3 * h * h + 3 * h + h * h + h + 4 * h + f * h + f + h * f + h;
            project + enc.num_layers as u128 * layer
        };
        let hg = self.generator.hidden_size as u128;
        let hd = self.discriminator.hidden_size as u128;
        let generator_head = hg * e + e + 2 * e + v;
        let discriminator_head = hd * hd + hd + hd + 1;
        shared
            + encoder(&self.generator)
            + encoder(&self.discriminator)
            + generator_head
            + discriminator_head
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

    /// Checks the sizes of this one file, naming it and the field as the file spells it: a
    /// model is built from two of them, and an error must say which one to fix.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |message: String| {
            Err(ConfigError::File {
                path: path.display().to_string(),
                message,
            })
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("embedding_size", self.embedding_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value == 0 || value > MAX_SIZE {
                return err(format!(
                    "`{field}` must be between 1 and {MAX_SIZE}, got {value}"
                ));
            }
        }
        let layers = self.num_hidden_layers;
        if layers == 0 || layers > MAX_LAYERS {
            return err(format!(
                "`num_hidden_layers` must be between 1 and {MAX_LAYERS}, got {layers}"
            ));
        }
        let (heads, hidden) = (self.num_attention_heads, self.hidden_size);
        if heads == 0 || hidden % heads != 0 {
            return err(format!(
                "`num_attention_heads` must divide `hidden_size` ({hidden}), got {heads}"
            ));
        }
        // Stored as f32: a value beyond its range would become infinite.
        let eps = self.layer_norm_eps as f32;
        if !(eps.is_finite() && eps >= 0.0) {
            return err(format!(
                "`layer_norm_eps` must be a finite number >= 0, got {}",
                self.layer_norm_eps
            ));
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return err(format!("`{field}` must be in [0, 1), got {p}"));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::ElectraConfig;

    #[test]
    fn presets_have_the_paper_sizes_and_are_valid() {
        let sizes = |name: &str| {
            let c = ElectraConfig::preset(name).unwrap();
            let (d, g) = (c.discriminator, c.generator);
            (
                c.embedding_size,
                d.hidden_size,
                d.num_layers,
                d.num_heads,
                g.hidden_size,
                g.num_heads,
                g.intermediate_size,
            )
        };
        assert_eq!(sizes("small"), (128, 256, 12, 4, 64, 1, 256));
        assert_eq!(sizes("base"), (768, 768, 12, 12, 256, 4, 1024));
        assert_eq!(sizes("large"), (1024, 1024, 24, 16, 256, 4, 1024));
        assert_eq!(sizes("tiny"), (64, 128, 4, 2, 32, 1, 128));
        assert!(ElectraConfig::preset("huge").is_err());
        let odd = ElectraConfig::preset("small")
            .unwrap()
            .with_generator_fraction(0.3)
            .unwrap();
        assert_eq!(
            (odd.generator.hidden_size, odd.generator.num_heads),
            (77, 1)
        );
    }
}
