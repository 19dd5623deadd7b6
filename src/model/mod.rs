//! The ELECTRA model: configuration, the named parameter layout, and the forward passes of the
//! generator and the discriminator, recorded on the tape.

pub mod config;
pub mod params;

use crate::backend::{
    AttentionDims, AttentionOp, Backend, BceHeadOp, Buf, Dropout, DropoutOp, EmbeddingOp,
    GatherRowsOp, IBuf, LayerNormOp, LayerNormSaved, LinearDims, LinearOp,
};
use crate::rng::{Purpose, Stream};
use crate::tape::{Arena, Tape};
use config::{ElectraConfig, EncoderConfig};
use params::{EncoderParams, ModelParams, ParamLayout};

/// A model: its configuration, where its parameters live, and their handles.
#[derive(Clone, Debug)]
pub struct Model {
    /// The sizes both networks were built from.
    pub config: ElectraConfig,
    /// Name, shape and offset of every tensor in the flat parameter buffer.
    pub layout: ParamLayout,
    /// The same tensors as typed handles, grouped the way the forward passes use them.
    pub params: ModelParams,
}

/// The standard deviation of the original weight initialisation (BERT's and ELECTRA's; the
/// `initializer_range` of an exported config).
pub const INIT_STD: f32 = 0.02;

impl Model {
    /// Lays out the parameters of `config`. Holds no values: pass [`Model::initial_values`] (or a
    /// checkpoint's) to [`crate::train::Trainer::new`]. Expects a config that passes
    /// [`ElectraConfig::validate`].
    pub fn new(config: ElectraConfig) -> Self {
        let layout = ParamLayout::new(&config);
        let params = layout.handles(&config);
        Model {
            config,
            layout,
            params,
        }
    }

    /// The original initialisation: weights from N(0, 0.02) truncated at 2σ, biases 0, LayerNorm
    /// gains 1. Deterministic in `seed`. Fails only when the memory cannot be had.
    pub fn initial_values(&self, seed: u64) -> Result<Vec<f32>, config::ConfigError> {
        let mut values = config::zeroed_values(self.layout.len())?;
        for (t, p) in self.layout.params.iter().enumerate() {
            let dst = &mut values[p.buf.offset..p.buf.end()];
            if p.name.ends_with("LayerNorm.weight") {
                dst.fill(1.0);
            } else if p.decay {
                Stream::new(seed, Purpose::Init, t as u64).fill_truncated_normal(dst, INIT_STD);
            }
        }
        Ok(values)
    }
}

/// The dropout of one pass: the probabilities, numbering the places dropout is applied in the
/// order the forward pass meets them (the step's seed comes from the backend's
/// [`StepScalars`](crate::backend::StepScalars)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutPlan {
    hidden: f32,
    attention: f32,
    next_site: u32,
}

impl DropoutPlan {
    /// No dropout (evaluation, or comparing with another implementation).
    pub fn off() -> Self {
        Self::new(0.0, 0.0)
    }

    /// The configured dropout of a pass.
    pub fn new(hidden: f32, attention: f32) -> Self {
        DropoutPlan {
            hidden,
            attention,
            next_site: 0,
        }
    }

    fn site(&mut self, p: f32) -> Option<Dropout> {
        (p > 0.0).then(|| {
            self.next_site += 1;
            Dropout {
                p,
                site: self.next_site,
            }
        })
    }

    fn hidden(&mut self) -> Option<Dropout> {
        self.site(self.hidden)
    }

    fn attention(&mut self) -> Option<Dropout> {
        self.site(self.attention)
    }
}

/// The shape a step's memory is planned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence, padding included.
    pub seq: usize,
    /// The most masked positions a batch may have (batch × per-sequence maximum).
    pub max_masked: usize,
}

impl BatchShape {
    /// Tokens in the batch, `batch · seq`: the row count of every per-token activation.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// What one transformer block keeps for its backward pass.
#[derive(Clone, Debug)]
struct LayerActs {
    qkv: Buf,
    ctx: Buf,
    probs: Buf,
    attention_out: Buf,
    attention_norm_out: Buf,
    attention_norm: LayerNormSaved,
    ffn_pre: Buf,
    ffn_act: Buf,
    ffn_out: Buf,
    ffn_norm_out: Buf,
    ffn_norm: LayerNormSaved,
}

/// The self-attention sizes of `enc`'s layers over a batch of `shape`.
fn attention_dims(enc: &EncoderConfig, shape: BatchShape) -> AttentionDims {
    AttentionDims {
        batch: shape.batch,
        seq: shape.seq,
        heads: enc.num_heads,
        head_dim: enc.head_dim(),
    }
}

/// The activations of one encoder.
#[derive(Clone, Debug)]
pub struct EncoderActs {
    embedded: Buf,
    embedding_norm: LayerNormSaved,
    embedded_dropped: Buf,
    projected: Option<Buf>,
    layers: Vec<LayerActs>,
}

impl EncoderActs {
    /// Plans the activations of `enc` over a batch of `shape` from `arena`.
    pub fn new(
        arena: &mut Arena,
        enc: &EncoderConfig,
        embedding: usize,
        shape: BatchShape,
    ) -> Self {
        let n = shape.tokens();
        let h = enc.hidden_size;
        let embedded = arena.acts(n * embedding);
        let embedding_norm = arena.layernorm(n, embedding);
        let embedded_dropped = arena.acts(n * embedding);
        let projected = (embedding != h).then(|| arena.acts(n * h));
        let layers = (0..enc.num_layers)
            .map(|_| LayerActs {
                qkv: arena.acts(n * 3 * h),
                ctx: arena.acts(n * h),
                probs: arena.acts(attention_dims(enc, shape).saved_len()),
                attention_out: arena.acts(n * h),
                attention_norm_out: arena.acts(n * h),
                attention_norm: arena.layernorm(n, h),
                ffn_pre: arena.acts(n * enc.intermediate_size),
                ffn_act: arena.acts(n * enc.intermediate_size),
                ffn_out: arena.acts(n * h),
                ffn_norm_out: arena.acts(n * h),
                ffn_norm: arena.layernorm(n, h),
            })
            .collect();
        EncoderActs {
            embedded,
            embedding_norm,
            embedded_dropped,
            projected,
            layers,
        }
    }

    /// The encoder's final hidden states.
    pub fn output(&self) -> Buf {
        match self.layers.last() {
            Some(l) => l.ffn_norm_out,
            None => self.projected.unwrap_or(self.embedded),
        }
    }
}

/// Every buffer of a training step for one batch shape.
///
/// Buffers sized by `max_masked` hold the chosen positions in their first `masked` rows; the rest
/// is unused in a step with fewer. Token-level buffers have `batch · seq` rows, row-major.
#[derive(Clone, Debug)]
pub struct StepActs {
    /// The shape the buffers are sized for; a batch fits if it has the same `batch` and `seq` and
    /// at most `max_masked` chosen positions.
    pub shape: BatchShape,
    /// The original tokens, `[batch·seq]`.
    pub input_ids: IBuf,
    /// Segment ids (0 = A, 1 = B), `[batch·seq]`.
    pub token_types: IBuf,
    /// 1 for real tokens, 0 for padding, `[batch·seq]`; padded keys get no attention.
    pub attention_mask: IBuf,
    /// The generator's input, with [MASK] at most chosen positions.
    pub masked_ids: IBuf,
    /// Flat indices (`b·seq + t`) of the chosen positions, increasing, `[max_masked]`.
    pub positions: IBuf,
    /// The original token at each chosen position: the generator's labels, `[max_masked]`.
    pub targets: IBuf,
    /// The generator's replacement at each chosen position (argmax or Gumbel), `[max_masked]`.
    pub picks: IBuf,
    /// The discriminator's input: `input_ids` with `picks` written at `positions`, `[batch·seq]`.
    pub corrupted_ids: IBuf,
    /// The generator encoder's activations, over every token.
    pub generator: EncoderActs,
    /// The generator's final hidden states at the chosen positions, `[max_masked, Hg]`.
    pub gathered: Buf,
    /// The generator head's dense output before GELU, `[max_masked, E]` (kept for backward).
    pub head_pre: Buf,
    /// The same after GELU, `[max_masked, E]`.
    pub head_act: Buf,
    /// The same after LayerNorm, `[max_masked, E]`: what multiplies the word table.
    pub head_out: Buf,
    /// What the head's LayerNorm keeps for backward.
    pub head_norm: LayerNormSaved,
    /// Generator logits at the chosen positions, `[max_masked, logits_stride]`: each row holds
    /// the vocabulary's logits, then padding.
    pub gen_logits: Buf,
    /// Values from one row of [`StepActs::gen_logits`] to the next: the vocabulary size rounded
    /// up to a multiple of 8, so that every row starts on 16 bytes of bf16, as the CUDA matrix
    /// products' fast paths and the softmax kernel's vector path need (BERT's 30,522 is 2 mod 8).
    pub logits_stride: usize,
    /// Cross-entropy (nats) of each chosen position, `[max_masked]`.
    pub gen_row_loss: Buf,
    /// The discriminator encoder's activations, over every token.
    pub discriminator: EncoderActs,
    /// The discriminator head's dense output before GELU, `[batch·seq, H]`.
    pub disc_head_pre: Buf,
    /// The same after GELU, `[batch·seq, H]`.
    pub disc_head_act: Buf,
    /// One logit per token, `[batch·seq]`; above 0 means "replaced".
    pub disc_logits: Buf,
    /// 1 where the discriminator's input token was replaced.
    pub is_replaced: Buf,
    /// Sigmoid BCE of each token, `[batch·seq]`; 0 at padding.
    pub disc_row_loss: Buf,
    /// The activation and integer sizes this plan needs.
    pub sizes: (usize, usize),
}

/// The row stride of logits over a vocabulary of `vocab`: see [`StepActs::logits_stride`].
pub fn logits_stride(vocab: usize) -> usize {
    vocab.next_multiple_of(8)
}

impl StepActs {
    /// The generator's logits of the first `rows` chosen positions, padding included.
    pub fn generator_logits(&self, rows: usize) -> Buf {
        self.gen_logits.prefix(rows * self.logits_stride)
    }

    /// The activation gradients the two losses write before the backward pass: the generator's
    /// logits' (overwritten by [`Backend::softmax_xent`]) and the discriminator head's input's
    /// (zeroed, then added to by [`Backend::bce_head`], in [`discriminator_with_loss`]).
    pub fn loss_grads(&self, masked: usize) -> [Buf; 2] {
        [
            self.generator_logits(masked).grad(),
            self.disc_head_act.grad(),
        ]
    }

    /// Drops the padding of each row of `values`, the generator's logits (or their gradient) as
    /// read from [`StepActs::generator_logits`]: `[rows, vocab]`.
    pub fn unpad_logits(&self, values: &[f32], vocab: usize) -> Vec<f32> {
        values
            .chunks(self.logits_stride)
            .flat_map(|row| &row[..vocab])
            .copied()
            .collect()
    }

    /// The batch's segments, mask and shape with `ids` as its tokens (the generator's masked
    /// input or the discriminator's corrupted one).
    pub fn tokens(&self, ids: IBuf) -> Tokens {
        Tokens {
            ids,
            token_types: self.token_types,
            attention_mask: self.attention_mask,
            shape: self.shape,
        }
    }

    /// Plans every buffer of a step of `shape` for `cfg`, from offset 0 of the activation and
    /// integer spaces; reserve [`StepActs::sizes`] on the backend before using it.
    pub fn new(cfg: &ElectraConfig, shape: BatchShape) -> Self {
        let mut a = Arena::default();
        let n = shape.tokens();
        let m = shape.max_masked;
        let e = cfg.embedding_size;
        let hd = cfg.discriminator.hidden_size;
        let mut plan = StepActs {
            shape,
            input_ids: a.ints(n),
            token_types: a.ints(n),
            attention_mask: a.ints(n),
            masked_ids: a.ints(n),
            positions: a.ints(m),
            targets: a.ints(m),
            picks: a.ints(m),
            corrupted_ids: a.ints(n),
            generator: EncoderActs::new(&mut a, &cfg.generator, e, shape),
            gathered: a.acts(m * cfg.generator.hidden_size),
            head_pre: a.acts(m * e),
            head_act: a.acts(m * e),
            head_out: a.acts(m * e),
            head_norm: a.layernorm(m, e),
            gen_logits: a.acts(m * logits_stride(cfg.vocab_size)),
            logits_stride: logits_stride(cfg.vocab_size),
            gen_row_loss: a.acts(m),
            discriminator: EncoderActs::new(&mut a, &cfg.discriminator, e, shape),
            disc_head_pre: a.acts(n * hd),
            disc_head_act: a.acts(n * hd),
            disc_logits: a.acts(n),
            is_replaced: a.acts(n),
            disc_row_loss: a.acts(n),
            sizes: (0, 0),
        };
        plan.sizes = a.used();
        plan
    }
}

/// `x` (of `sequences` sequences) after dropout into `out`, or `x` itself when there is no
/// dropout.
fn dropped<B: Backend>(
    be: &mut B,
    tape: &mut Tape,
    d: Option<Dropout>,
    (x, out): (Buf, Buf),
    sequences: usize,
) -> Buf {
    match d {
        Some(dropout) => {
            let op = DropoutOp {
                x,
                y: out,
                dropout,
                sequences,
                overwrite_dx: false,
            };
            tape.run(be, op);
            out
        }
        None => x,
    }
}

/// One encoder of a model: its sizes, its parameters and the activations planned for it.
#[derive(Clone, Copy, Debug)]
pub struct Encoder<'a> {
    /// The sizes.
    pub config: &'a EncoderConfig,
    /// Where its parameters are.
    pub params: &'a EncoderParams,
    /// Where its activations go.
    pub acts: &'a EncoderActs,
}

/// The tokens an encoder reads: `[batch·seq]` each, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Tokens {
    /// Token ids.
    pub ids: IBuf,
    /// Segment ids.
    pub token_types: IBuf,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: IBuf,
    /// The batch's shape.
    pub shape: BatchShape,
}

/// Runs one encoder over the embedded `tokens`; returns its final hidden states.
pub fn encoder_forward<B: Backend>(
    be: &mut B,
    tape: &mut Tape,
    model: &Model,
    encoder: Encoder,
    tokens: Tokens,
    drop: &mut DropoutPlan,
) -> Buf {
    let Encoder {
        config: enc,
        params: p,
        acts,
    } = encoder;
    let Tokens {
        ids,
        token_types,
        attention_mask,
        shape,
    } = tokens;
    let n = shape.tokens();
    let e = model.config.embedding_size;
    let h = enc.hidden_size;
    let emb = &model.params.embeddings;
    let embedding = EmbeddingOp {
        ids,
        token_types,
        seq: shape.seq,
        params: *emb,
        out: acts.embedded,
        saved: acts.embedding_norm,
    };
    tape.run(be, embedding);
    let sequences = shape.batch;
    let embedded = (acts.embedded, acts.embedded_dropped);
    let mut x = dropped(be, tape, drop.hidden(), embedded, sequences);
    if let (Some(project), Some(out)) = (p.project, acts.projected) {
        let dims = LinearDims {
            rows: n,
            inp: e,
            out: h,
        };
        tape.run(be, project.linear(x, out, dims));
        x = out;
    }
    let attention = attention_dims(enc, shape);
    let dims = |inp, out| LinearDims { rows: n, inp, out };
    for (l, a) in p.layers.iter().zip(&acts.layers) {
        tape.run(be, l.qkv.linear(x, a.qkv, dims(h, 3 * h)));
        let self_attention = AttentionOp {
            qkv: a.qkv,
            key_mask: attention_mask,
            ctx: a.ctx,
            probs: a.probs,
            dims: attention,
            dropout: drop.attention(),
            overwrite_dqkv: false,
        };
        tape.run(be, self_attention);
        let out = l.attention_out.linear(a.ctx, a.attention_out, dims(h, h));
        tape.run(be, out);
        // Each branch's hidden dropout is applied by the LayerNorm that adds it to the residual
        // stream.
        let norm = |branch, residual, params, (y, saved), dropout| LayerNormOp {
            x: branch,
            residual: Some(residual),
            params,
            y,
            saved,
            rows: n,
            width: h,
            dropout,
            sequences,
            overwrite_dx: false,
            overwrite_dresidual: false,
        };
        let ln1_out = a.attention_norm_out;
        let ln1 = (ln1_out, a.attention_norm);
        let attended = norm(a.attention_out, x, l.attention_norm, ln1, drop.hidden());
        tape.run(be, attended);
        let f = enc.intermediate_size;
        let ffn_in = l
            .ffn_in
            .linear_gelu(ln1_out, a.ffn_pre, a.ffn_act, dims(h, f));
        tape.run(be, ffn_in);
        tape.run(be, l.ffn_out.linear(a.ffn_act, a.ffn_out, dims(f, h)));
        let ln2 = (a.ffn_norm_out, a.ffn_norm);
        let ffn = norm(a.ffn_out, ln1_out, l.ffn_norm, ln2, drop.hidden());
        tape.run(be, ffn);
        x = a.ffn_norm_out;
    }
    x
}

/// The generator on `acts.masked_ids`, and its head at the first `masked` chosen positions:
/// writes `acts.gen_logits`.
pub fn generator_forward<B: Backend>(
    be: &mut B,
    tape: &mut Tape,
    model: &Model,
    acts: &StepActs,
    masked: usize,
    drop: &mut DropoutPlan,
) {
    let cfg = &model.config;
    let generator = Encoder {
        config: &cfg.generator,
        params: &model.params.generator,
        acts: &acts.generator,
    };
    let hidden = encoder_forward(
        be,
        tape,
        model,
        generator,
        acts.tokens(acts.masked_ids),
        drop,
    );
    let (hg, e, v) = (
        cfg.generator.hidden_size,
        cfg.embedding_size,
        cfg.vocab_size,
    );
    let head = &model.params.generator_head;
    let gathered = acts.gathered.prefix(masked * hg);
    let gather = GatherRowsOp {
        x: hidden,
        rows: acts.positions.prefix(masked),
        out: gathered,
        width: hg,
    };
    tape.run(be, gather);
    let dims = |inp, out| LinearDims {
        rows: masked,
        inp,
        out,
    };
    let head_act = acts.head_act.prefix(masked * e);
    let head_pre = acts.head_pre.prefix(masked * e);
    let dense = head
        .dense
        .linear_gelu(gathered, head_pre, head_act, dims(hg, e));
    tape.run(be, dense);
    let head_out = acts.head_out.prefix(masked * e);
    let norm = LayerNormOp {
        x: head_act,
        residual: None,
        params: head.norm,
        y: head_out,
        saved: acts.head_norm,
        rows: masked,
        width: e,
        dropout: None,
        sequences: 1,
        overwrite_dx: false,
        overwrite_dresidual: false,
    };
    tape.run(be, norm);
    // The output layer is tied to the word embeddings.
    let lm = LinearOp {
        x: head_out,
        w: model.params.embeddings.word,
        b: Some(head.lm_bias),
        y: acts.generator_logits(masked),
        y_stride: acts.logits_stride,
        gelu_pre: None,
        dims: dims(e, v),
        overwrite_dx: false,
    };
    tape.run(be, lm);
}

/// The discriminator on `acts.corrupted_ids` and its loss against `acts.is_replaced`: one logit
/// per token into `acts.disc_logits`, per-token losses into `acts.disc_row_loss`. The head's last
/// projection is fused with the loss ([`Backend::bce_head`]), which leaves the gradient of the
/// loss times `loss_scale` at the head's input, so the tape's backward pass starts below it.
pub fn discriminator_with_loss<B: Backend>(
    be: &mut B,
    tape: &mut Tape,
    model: &Model,
    acts: &StepActs,
    drop: &mut DropoutPlan,
    loss_scale: f32,
) {
    let cfg = &model.config;
    let discriminator = Encoder {
        config: &cfg.discriminator,
        params: &model.params.discriminator,
        acts: &acts.discriminator,
    };
    let tokens = acts.tokens(acts.corrupted_ids);
    let hidden = encoder_forward(be, tape, model, discriminator, tokens, drop);
    let n = acts.shape.tokens();
    let h = cfg.discriminator.hidden_size;
    let head = &model.params.discriminator_head;
    let dims = LinearDims {
        rows: n,
        inp: h,
        out: h,
    };
    let act = acts.disc_head_act;
    let dense = head
        .dense
        .linear_gelu(hidden, acts.disc_head_pre, act, dims);
    tape.run(be, dense);
    // The head adds to its input's gradient, which nothing has written in this step.
    be.fill(act.grad(), 0.0);
    be.bce_head(&BceHeadOp {
        h: act,
        w: head.prediction.weight,
        b: head.prediction.bias,
        labels: acts.is_replaced,
        mask: acts.attention_mask,
        logits: acts.disc_logits,
        row_loss: acts.disc_row_loss,
        grad_scale: loss_scale,
    });
}
