//! The ELECTRA model: configuration, the named parameter layout, and the forward passes of the
//! generator and the discriminator, recorded on the tape.

pub mod config;
pub mod params;

use crate::backend::{AttentionDims, Backend, Buf, Dropout, IBuf, LayerNormSaved, LinearDims};
use crate::rng::Stream;
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

/// Purpose tag of the initialisation stream.
const INIT_PURPOSE: u32 = 1;

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
    /// gains 1. Deterministic in `seed`.
    pub fn initial_values(&self, seed: u64) -> Vec<f32> {
        let mut values = vec![0.0f32; self.layout.len()];
        for (t, p) in self.layout.params.iter().enumerate() {
            let dst = &mut values[p.buf.offset..p.buf.end()];
            if p.name.ends_with("LayerNorm.weight") {
                dst.fill(1.0);
            } else if p.decay {
                Stream::new(seed, INIT_PURPOSE, t as u64).fill_truncated_normal(dst, INIT_STD);
            }
        }
        values
    }
}

/// The dropout of one pass: the probabilities and the pass's seed, numbering the places dropout
/// is applied in the order the forward pass meets them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutPlan {
    hidden: f32,
    attention: f32,
    seed: u64,
    next_site: u32,
}

impl DropoutPlan {
    /// No dropout (evaluation, or comparing with another implementation).
    pub fn off() -> Self {
        Self::new(0.0, 0.0, 0)
    }

    /// The configured dropout for a pass whose masks derive from `seed`.
    pub fn new(hidden: f32, attention: f32, seed: u64) -> Self {
        DropoutPlan {
            hidden,
            attention,
            seed,
            next_site: 0,
        }
    }

    fn site(&mut self, p: f32) -> Option<Dropout> {
        (p > 0.0).then(|| {
            self.next_site += 1;
            Dropout {
                p,
                seed: self.seed,
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
    attention_dropped: Buf,
    attention_norm_out: Buf,
    attention_norm: LayerNormSaved,
    ffn_pre: Buf,
    ffn_act: Buf,
    ffn_out: Buf,
    ffn_dropped: Buf,
    ffn_norm_out: Buf,
    ffn_norm: LayerNormSaved,
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
                probs: arena.acts(shape.batch * enc.num_heads * shape.seq * shape.seq),
                attention_out: arena.acts(n * h),
                attention_dropped: arena.acts(n * h),
                attention_norm_out: arena.acts(n * h),
                attention_norm: arena.layernorm(n, h),
                ffn_pre: arena.acts(n * enc.intermediate_size),
                ffn_act: arena.acts(n * enc.intermediate_size),
                ffn_out: arena.acts(n * h),
                ffn_dropped: arena.acts(n * h),
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
    /// Generator logits at the chosen positions, `[max_masked, vocab]`.
    pub gen_logits: Buf,
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

impl StepActs {
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
            gen_logits: a.acts(m * cfg.vocab_size),
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

/// `x` after dropout into `out`, or `x` itself when there is no dropout.
fn dropped<B: Backend>(be: &mut B, tape: &mut Tape, d: Option<Dropout>, x: Buf, out: Buf) -> Buf {
    match d {
        Some(d) => {
            tape.dropout(be, x, out, d);
            out
        }
        None => x,
    }
}

/// Runs one encoder over the embedded tokens `ids`.
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward<B: Backend>(
    be: &mut B,
    tape: &mut Tape,
    model: &Model,
    enc: &EncoderConfig,
    p: &EncoderParams,
    acts: &EncoderActs,
    ids: IBuf,
    token_types: IBuf,
    attention_mask: IBuf,
    shape: BatchShape,
    drop: &mut DropoutPlan,
) -> Buf {
    let n = shape.tokens();
    let e = model.config.embedding_size;
    let h = enc.hidden_size;
    let emb = &model.params.embeddings;
    tape.embedding(
        be,
        ids,
        token_types,
        shape.seq,
        emb,
        acts.embedded,
        acts.embedding_norm,
    );
    let mut x = dropped(
        be,
        tape,
        drop.hidden(),
        acts.embedded,
        acts.embedded_dropped,
    );
    if let (Some(project), Some(out)) = (p.project, acts.projected) {
        let dims = LinearDims {
            rows: n,
            inp: e,
            out: h,
        };
        tape.linear(be, x, project.weight, Some(project.bias), out, None, dims);
        x = out;
    }
    let attention = AttentionDims {
        batch: shape.batch,
        seq: shape.seq,
        heads: enc.num_heads,
        head_dim: enc.head_dim(),
    };
    let dims = |inp, out| LinearDims { rows: n, inp, out };
    for (l, a) in p.layers.iter().zip(&acts.layers) {
        let (wq, bq) = (l.qkv.weight, l.qkv.bias);
        tape.linear(be, x, wq, Some(bq), a.qkv, None, dims(h, 3 * h));
        let p_drop = drop.attention();
        tape.attention(be, a.qkv, attention_mask, a.ctx, a.probs, attention, p_drop);
        let (wo, bo) = (l.attention_out.weight, l.attention_out.bias);
        tape.linear(be, a.ctx, wo, Some(bo), a.attention_out, None, dims(h, h));
        let branch = dropped(
            be,
            tape,
            drop.hidden(),
            a.attention_out,
            a.attention_dropped,
        );
        let (ln1, ln1_out) = (&l.attention_norm, a.attention_norm_out);
        tape.layernorm(be, branch, Some(x), ln1, ln1_out, a.attention_norm, n, h);
        let f = enc.intermediate_size;
        let (wi, bi) = (l.ffn_in.weight, l.ffn_in.bias);
        tape.linear(
            be,
            ln1_out,
            wi,
            Some(bi),
            a.ffn_act,
            Some(a.ffn_pre),
            dims(h, f),
        );
        let (wf, bf) = (l.ffn_out.weight, l.ffn_out.bias);
        tape.linear(be, a.ffn_act, wf, Some(bf), a.ffn_out, None, dims(f, h));
        let branch = dropped(be, tape, drop.hidden(), a.ffn_out, a.ffn_dropped);
        let (ln2, ln2_out) = (&l.ffn_norm, a.ffn_norm_out);
        tape.layernorm(be, branch, Some(ln1_out), ln2, ln2_out, a.ffn_norm, n, h);
        x = ln2_out;
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
    let hidden = encoder_forward(
        be,
        tape,
        model,
        &cfg.generator,
        &model.params.generator,
        &acts.generator,
        acts.masked_ids,
        acts.token_types,
        acts.attention_mask,
        acts.shape,
        drop,
    );
    let (hg, e, v) = (
        cfg.generator.hidden_size,
        cfg.embedding_size,
        cfg.vocab_size,
    );
    let head = &model.params.generator_head;
    let gathered = acts.gathered.prefix(masked * hg);
    tape.gather_rows(be, hidden, acts.positions.prefix(masked), gathered, hg);
    let dims = |inp, out| LinearDims {
        rows: masked,
        inp,
        out,
    };
    let head_act = acts.head_act.prefix(masked * e);
    let head_pre = acts.head_pre.prefix(masked * e);
    let (w, b) = (head.dense.weight, head.dense.bias);
    tape.linear(
        be,
        gathered,
        w,
        Some(b),
        head_act,
        Some(head_pre),
        dims(hg, e),
    );
    let head_out = acts.head_out.prefix(masked * e);
    tape.layernorm(
        be,
        head_act,
        None,
        &head.norm,
        head_out,
        acts.head_norm,
        masked,
        e,
    );
    let logits = acts.gen_logits.prefix(masked * v);
    let word = model.params.embeddings.word;
    tape.linear(
        be,
        head_out,
        word,
        Some(head.lm_bias),
        logits,
        None,
        dims(e, v),
    );
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
    let hidden = encoder_forward(
        be,
        tape,
        model,
        &cfg.discriminator,
        &model.params.discriminator,
        &acts.discriminator,
        acts.corrupted_ids,
        acts.token_types,
        acts.attention_mask,
        acts.shape,
        drop,
    );
    let n = acts.shape.tokens();
    let h = cfg.discriminator.hidden_size;
    let head = &model.params.discriminator_head;
    let dims = LinearDims {
        rows: n,
        inp: h,
        out: h,
    };
    let (w, b) = (head.dense.weight, head.dense.bias);
    let (pre, act) = (acts.disc_head_pre, acts.disc_head_act);
    tape.linear(be, hidden, w, Some(b), act, Some(pre), dims);
    let (w, b) = (head.prediction.weight, head.prediction.bias);
    tape.profiler.time("bce_head", be, |be| {
        be.bce_head(
            act,
            w,
            b,
            acts.is_replaced,
            acts.attention_mask,
            acts.disc_logits,
            acts.disc_row_loss,
            loss_scale,
        )
    });
}
