//! The flat parameter buffer: HF names, shapes and offsets, and the handles the model uses.
//!
//! Tensors with weight decay (every matrix and embedding table) come first and the rest (biases
//! and LayerNorms) after, so AdamW runs as two calls over two contiguous runs. Within each run a
//! layer's query, key and value tensors are adjacent, which makes them one fused `[3H, H]`
//! projection and one `[3H]` bias without any copy.

use crate::backend::{Buf, EmbeddingParams, LayerNormParams, LinearDims, LinearOp, Space};
use crate::model::config::{ElectraConfig, EncoderConfig};
use std::collections::HashMap;

/// One named tensor of the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// `shared.electra.embeddings.…`, `generator.<HF name>` or `discriminator.<HF name>`.
    pub name: String,
    /// HF's shape (`[out, in]` for linear weights); the values are row-major in it.
    pub shape: Vec<usize>,
    /// Where the values lie in [`Space::Param`]; the same range in the other parameter-shaped
    /// spaces holds the gradient and Adam moments.
    pub buf: Buf,
    /// Whether AdamW applies weight decay (see [`takes_weight_decay`]).
    pub decay: bool,
}

/// Where every tensor lives in the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    /// Every tensor, in buffer order: the decayed run, then the rest.
    pub params: Vec<ParamInfo>,
    index: HashMap<String, usize>,
    /// The run of tensors that take weight decay.
    pub decayed: Buf,
    /// The run of biases and LayerNorm parameters, which do not.
    pub not_decayed: Buf,
}

/// The prefix of the shared embedding block's tensors.
pub const SHARED: &str = "shared.";
/// The prefix of the generator's own tensors.
pub const GENERATOR: &str = "generator.";
/// The prefix of the discriminator's own tensors.
pub const DISCRIMINATOR: &str = "discriminator.";

/// Whether AdamW decays a tensor: not LayerNorms, not biases (the original recipe's rule).
pub fn takes_weight_decay(name: &str) -> bool {
    !name.contains("LayerNorm") && !name.ends_with("bias")
}

fn encoder_specs(
    prefix: &str,
    enc: &EncoderConfig,
    embedding: usize,
    out: &mut Vec<(String, Vec<usize>)>,
) {
    let h = enc.hidden_size;
    if embedding != h {
        out.push((
            format!("{prefix}electra.embeddings_project.weight"),
            vec![h, embedding],
        ));
        out.push((format!("{prefix}electra.embeddings_project.bias"), vec![h]));
    }
    for l in 0..enc.num_layers {
        let p = format!("{prefix}electra.encoder.layer.{l}.");
        for part in ["query", "key", "value"] {
            out.push((format!("{p}attention.self.{part}.weight"), vec![h, h]));
        }
        for part in ["query", "key", "value"] {
            out.push((format!("{p}attention.self.{part}.bias"), vec![h]));
        }
        out.push((format!("{p}attention.output.dense.weight"), vec![h, h]));
        out.push((format!("{p}attention.output.dense.bias"), vec![h]));
        out.push((format!("{p}attention.output.LayerNorm.weight"), vec![h]));
        out.push((format!("{p}attention.output.LayerNorm.bias"), vec![h]));
        out.push((
            format!("{p}intermediate.dense.weight"),
            vec![enc.intermediate_size, h],
        ));
        out.push((
            format!("{p}intermediate.dense.bias"),
            vec![enc.intermediate_size],
        ));
        out.push((
            format!("{p}output.dense.weight"),
            vec![h, enc.intermediate_size],
        ));
        out.push((format!("{p}output.dense.bias"), vec![h]));
        out.push((format!("{p}output.LayerNorm.weight"), vec![h]));
        out.push((format!("{p}output.LayerNorm.bias"), vec![h]));
    }
}

impl ParamLayout {
    /// Lays out every tensor of `cfg`: the shared embedding block, the generator with its head,
    /// the discriminator with its head; `embeddings_project` only for an encoder whose hidden size
    /// differs from the embedding size.
    pub fn new(cfg: &ElectraConfig) -> Self {
        let (v, e) = (cfg.vocab_size, cfg.embedding_size);
        let mut specs: Vec<(String, Vec<usize>)> = vec![];
        let emb = "shared.electra.embeddings.";
        specs.push((format!("{emb}word_embeddings.weight"), vec![v, e]));
        specs.push((
            format!("{emb}position_embeddings.weight"),
            vec![cfg.max_position_embeddings, e],
        ));
        specs.push((
            format!("{emb}token_type_embeddings.weight"),
            vec![cfg.type_vocab_size, e],
        ));
        specs.push((format!("{emb}LayerNorm.weight"), vec![e]));
        specs.push((format!("{emb}LayerNorm.bias"), vec![e]));
        encoder_specs(GENERATOR, &cfg.generator, e, &mut specs);
        let hg = cfg.generator.hidden_size;
        specs.push((
            "generator.generator_predictions.dense.weight".into(),
            vec![e, hg],
        ));
        specs.push(("generator.generator_predictions.dense.bias".into(), vec![e]));
        specs.push((
            "generator.generator_predictions.LayerNorm.weight".into(),
            vec![e],
        ));
        specs.push((
            "generator.generator_predictions.LayerNorm.bias".into(),
            vec![e],
        ));
        specs.push(("generator.generator_lm_head.bias".into(), vec![v]));
        encoder_specs(DISCRIMINATOR, &cfg.discriminator, e, &mut specs);
        let hd = cfg.discriminator.hidden_size;
        let dp = "discriminator.discriminator_predictions.";
        specs.push((format!("{dp}dense.weight"), vec![hd, hd]));
        specs.push((format!("{dp}dense.bias"), vec![hd]));
        specs.push((format!("{dp}dense_prediction.weight"), vec![1, hd]));
        specs.push((format!("{dp}dense_prediction.bias"), vec![1]));

        let mut params = vec![];
        let mut offset = 0;
        let mut run_start = [0usize; 2];
        for (run, decay) in [true, false].into_iter().enumerate() {
            run_start[run] = offset;
            for (name, shape) in specs.iter().filter(|(n, _)| takes_weight_decay(n) == decay) {
                let len = shape.iter().product();
                params.push(ParamInfo {
                    name: name.clone(),
                    shape: shape.clone(),
                    buf: Buf {
                        space: Space::Param,
                        offset,
                        len,
                    },
                    decay,
                });
                offset += len;
            }
        }
        let index = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let run = |start: usize, end: usize| Buf {
            space: Space::Param,
            offset: start,
            len: end - start,
        };
        ParamLayout {
            params,
            index,
            decayed: run(run_start[0], run_start[1]),
            not_decayed: run(run_start[1], offset),
        }
    }

    /// The total number of parameters (each shared tensor counted once).
    pub fn len(&self) -> usize {
        self.not_decayed.end()
    }

    /// Whether the layout holds no value (never the case for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    fn buf(&self, name: &str) -> Buf {
        match self.get(name) {
            Some(p) => p.buf,
            None => panic!("the layout has no tensor {name}"),
        }
    }

    /// `count` adjacent tensors starting at `first`, as one buffer.
    fn fused(&self, names: &[String]) -> Buf {
        let first = self.buf(&names[0]);
        let mut end = first.end();
        for n in &names[1..] {
            let b = self.buf(n);
            assert_eq!(b.offset, end, "{n} is not adjacent to the tensor before it");
            end = b.end();
        }
        Buf {
            len: end - first.offset,
            ..first
        }
    }

    fn layernorm(&self, prefix: &str, eps: f32) -> LayerNormParams {
        LayerNormParams {
            gain: self.buf(&format!("{prefix}LayerNorm.weight")),
            bias: self.buf(&format!("{prefix}LayerNorm.bias")),
            eps,
        }
    }

    fn encoder(&self, prefix: &str, enc: &EncoderConfig, eps: f32) -> EncoderParams {
        let project_name = format!("{prefix}electra.embeddings_project.");
        let project = self.get(&format!("{project_name}weight")).map(|w| Dense {
            weight: w.buf,
            bias: self.buf(&format!("{project_name}bias")),
        });
        let layers = (0..enc.num_layers)
            .map(|l| {
                let p = format!("{prefix}electra.encoder.layer.{l}.");
                let qkv = |kind: &str| {
                    let names: Vec<String> = ["query", "key", "value"]
                        .iter()
                        .map(|part| format!("{p}attention.self.{part}.{kind}"))
                        .collect();
                    self.fused(&names)
                };
                let dense = |name: &str| Dense {
                    weight: self.buf(&format!("{p}{name}.weight")),
                    bias: self.buf(&format!("{p}{name}.bias")),
                };
                LayerParams {
                    qkv: Dense {
                        weight: qkv("weight"),
                        bias: qkv("bias"),
                    },
                    attention_out: dense("attention.output.dense"),
                    attention_norm: self.layernorm(&format!("{p}attention.output."), eps),
                    ffn_in: dense("intermediate.dense"),
                    ffn_out: dense("output.dense"),
                    ffn_norm: self.layernorm(&format!("{p}output."), eps),
                }
            })
            .collect();
        EncoderParams { project, layers }
    }

    /// The handles of every tensor, grouped as the model uses them.
    pub fn handles(&self, cfg: &ElectraConfig) -> ModelParams {
        let eps = cfg.layer_norm_eps;
        let emb = "shared.electra.embeddings.";
        let gp = "generator.generator_predictions.";
        let dp = "discriminator.discriminator_predictions.";
        let dense = |name: &str| Dense {
            weight: self.buf(&format!("{name}.weight")),
            bias: self.buf(&format!("{name}.bias")),
        };
        ModelParams {
            embeddings: EmbeddingParams {
                word: self.buf(&format!("{emb}word_embeddings.weight")),
                position: self.buf(&format!("{emb}position_embeddings.weight")),
                token_type: self.buf(&format!("{emb}token_type_embeddings.weight")),
                norm: self.layernorm(emb, eps),
            },
            generator: self.encoder(GENERATOR, &cfg.generator, eps),
            generator_head: GeneratorHead {
                dense: dense(&format!("{gp}dense")),
                norm: self.layernorm(gp, eps),
                lm_bias: self.buf("generator.generator_lm_head.bias"),
            },
            discriminator: self.encoder(DISCRIMINATOR, &cfg.discriminator, eps),
            discriminator_head: DiscriminatorHead {
                dense: dense(&format!("{dp}dense")),
                prediction: dense(&format!("{dp}dense_prediction")),
            },
        }
    }
}

/// A linear layer's weight `[out, in]` and bias `[out]`.
#[derive(Clone, Copy, Debug)]
pub struct Dense {
    /// `[out, in]`, row-major, as torch's `nn.Linear` stores it (y = x·Wᵀ + b).
    pub weight: Buf,
    /// `[out]`.
    pub bias: Buf,
}

impl Dense {
    /// This layer applied to `x` into `y`.
    pub fn linear(&self, x: Buf, y: Buf, dims: LinearDims) -> LinearOp {
        LinearOp {
            x,
            w: self.weight,
            b: Some(self.bias),
            y,
            y_stride: dims.out,
            gelu_pre: None,
            dims,
            overwrite_dx: false,
        }
    }

    /// This layer then GELU: the pre-activation into `pre`, the activation into `y`.
    pub fn linear_gelu(&self, x: Buf, pre: Buf, y: Buf, dims: LinearDims) -> LinearOp {
        LinearOp {
            gelu_pre: Some(pre),
            ..self.linear(x, y, dims)
        }
    }
}

/// One post-LN transformer block.
#[derive(Clone, Copy, Debug)]
pub struct LayerParams {
    /// Query, key and value fused: `[3H, H]` and `[3H]`.
    pub qkv: Dense,
    /// Projects the concatenated heads back, `[H, H]` (`attention.output.dense`).
    pub attention_out: Dense,
    /// LayerNorm of attention output + residual (`attention.output.LayerNorm`).
    pub attention_norm: LayerNormParams,
    /// H → FFN, followed by GELU (`intermediate.dense`).
    pub ffn_in: Dense,
    /// FFN → H (`output.dense`).
    pub ffn_out: Dense,
    /// LayerNorm of feed-forward output + residual (`output.LayerNorm`).
    pub ffn_norm: LayerNormParams,
}

/// An encoder: the projection from the embedding size (when it differs) and the blocks.
#[derive(Clone, Debug)]
pub struct EncoderParams {
    /// `embeddings_project`, E → H; `None` when E = H and the embeddings feed the blocks directly.
    pub project: Option<Dense>,
    /// The blocks, first to last.
    pub layers: Vec<LayerParams>,
}

/// dense(H→E) → GELU → LayerNorm → logits tied to the word embeddings, plus their bias.
#[derive(Clone, Copy, Debug)]
pub struct GeneratorHead {
    /// Hg → E (`generator_predictions.dense`).
    pub dense: Dense,
    /// LayerNorm over E (`generator_predictions.LayerNorm`).
    pub norm: LayerNormParams,
    /// Per-token output bias `[vocab]` (`generator_lm_head.bias`); the weight is the word table.
    pub lm_bias: Buf,
}

/// dense(H→H) → GELU → dense(H→1).
#[derive(Clone, Copy, Debug)]
pub struct DiscriminatorHead {
    /// H → H, followed by GELU (`discriminator_predictions.dense`).
    pub dense: Dense,
    /// H → 1: the logit that the token was replaced (`dense_prediction`).
    pub prediction: Dense,
}

/// Every parameter handle of the model.
#[derive(Clone, Debug)]
pub struct ModelParams {
    /// The shared word, position and token-type tables and their LayerNorm.
    pub embeddings: EmbeddingParams,
    /// The generator's encoder.
    pub generator: EncoderParams,
    /// The generator's masked-LM head.
    pub generator_head: GeneratorHead,
    /// The discriminator's encoder.
    pub discriminator: EncoderParams,
    /// The discriminator's replaced-token head.
    pub discriminator_head: DiscriminatorHead,
}
