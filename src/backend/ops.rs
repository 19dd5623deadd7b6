//! The parameters of the fused operations: one struct per operation, shared unchanged by the
//! [`Backend`](super::Backend) trait, the tape's record, the CPU reference, the CUDA backend and its
//! stand-in, so that a change to an operation's arguments is made in one place.
//!
//! A struct names the buffers of the forward pass. Its backward pass takes the same struct and
//! finds each gradient in the companion space of the buffer it belongs to ([`Buf::grad`]): the
//! gradient of `y` is `y.grad()`, and so on. What changes from step to step (the learning rate,
//! the dropout and Gumbel seeds) is not here: it reaches every operation through
//! [`Backend::begin_step`](super::Backend::begin_step) ([`StepScalars`]).

use super::{Buf, IBuf};
use crate::rng::{Purpose, Stream};

/// `y[rows, out] = x[rows, inp] · w[out, inp]ᵀ (+ b)`; weights use PyTorch's `[out, in]` layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    /// Rows of `x` and `y` (tokens).
    pub rows: usize,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
}

impl std::fmt::Display for LinearDims {
    /// `rows×inp→out`, as the profiler labels a product.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}→{}", self.rows, self.inp, self.out)
    }
}

/// Self-attention over `batch` sequences of `seq` tokens, `heads` heads of `head_dim` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttentionDims {
    /// The model width, `heads · head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The attention probabilities of one sequence, `heads · seq · seq`.
    pub fn probs_per_sequence(&self) -> u64 {
        (self.heads * self.seq * self.seq) as u64
    }

    /// The dropout mask as bits that the CUDA kernels keep between the passes: `ceil(seq / 32)`
    /// u32 words for each of the `batch · heads · seq` query rows, bit `k % 32` of word `k / 32`
    /// for key `k`.
    pub fn keep_words(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq.div_ceil(32)
    }

    /// The length of [`AttentionOp::probs`]: room for the CPU's probabilities `[batch, heads,
    /// seq, seq]`, and for what the CUDA backend saves there instead, the log-sum-exp of each
    /// query row followed by the dropout mask as bits ([`keep_words`](Self::keep_words)).
    pub fn saved_len(&self) -> usize {
        let rows = self.batch * self.heads * self.seq;
        (rows * self.seq).max(rows + self.keep_words())
    }
}

/// The parameters of a LayerNorm: gain and bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormParams {
    /// The per-feature scale (HF `LayerNorm.weight`).
    pub gain: Buf,
    /// The per-feature shift (HF `LayerNorm.bias`).
    pub bias: Buf,
    /// Added to the variance (1e-12 in ELECTRA).
    pub eps: f32,
}

/// What a LayerNorm saves for its backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNormSaved {
    /// The normalised input, `(x - mean) · rstd`, `[rows, width]`.
    pub xhat: Buf,
    /// `1 / sqrt(var + eps)` per row.
    pub rstd: Buf,
}

/// The shared embedding block: word, position and token-type tables, then a LayerNorm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbeddingParams {
    /// `[vocab, embedding]`, also the generator's tied output weight.
    pub word: Buf,
    /// `[max_positions, embedding]`.
    pub position: Buf,
    /// `[token_types, embedding]`.
    pub token_type: Buf,
    /// The LayerNorm after the sum.
    pub norm: LayerNormParams,
}

/// Inverted dropout at one place of a pass: elements are dropped with probability `p` and kept
/// ones scaled by 1/(1−p). The mask also depends on the step's seed
/// ([`StepScalars::dropout_seed`]), which the backend supplies: see [`DropoutMask`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of dropping an element.
    pub p: f32,
    /// Numbers the places dropout is applied within a step.
    pub site: u32,
}

impl Dropout {
    /// The mask this dropout draws in the step whose dropout seed is `seed`, for a tensor whose
    /// first element is element `offset` of the same tensor over the step's whole batch (see
    /// [`StepScalars::first_sequence`]).
    pub fn mask(self, seed: u64, offset: u64) -> DropoutMask {
        DropoutMask {
            p: self.p,
            seed,
            site: self.site,
            offset,
        }
    }
}

/// A dropout mask as a pure function of (seed, site, element): element `i` is kept when its
/// Philox draw is at least `p`. The CPU's backward pass draws the same mask again instead of
/// storing it; the CUDA kernels draw the same numbers (the attention keeps them as bits between
/// its passes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    /// The probability of dropping an element.
    pub p: f32,
    /// The step's dropout seed.
    pub seed: u64,
    /// The place in the pass.
    pub site: u32,
    /// The index, in the tensor over the step's whole batch, of this tensor's first element:
    /// the masks of a batch split into slices are the slices of the whole batch's masks.
    pub offset: u64,
}

impl DropoutMask {
    /// What element `index` is multiplied by: 0, or 1/(1−p).
    pub fn scale_at(&self, index: usize) -> f32 {
        let mut one = [0.0];
        self.scales(index, &mut one);
        one[0]
    }

    /// The multipliers of elements `first..first + out.len()`, drawing each Philox block once.
    /// Element `i` draws word `g % 4` of block `g / 4`, `g = offset + i`; the block's low 32 bits
    /// are the counter and its high bits share the sub-stream word with the site, so the masks of
    /// tensors of more than 2^34 elements (a large global batch) never repeat.
    pub fn scales(&self, first: usize, out: &mut [f32]) {
        let keep = 1.0 / (1.0 - self.p);
        let mut block = (u64::MAX, [0u32; 4]);
        for (i, v) in out.iter_mut().enumerate() {
            let index = self.offset + (first + i) as u64;
            if block.0 != index / 4 {
                let high = (index / 4) >> 32 << 32;
                let stream = Stream::new(self.seed, Purpose::Dropout, high | self.site as u64);
                block = (index / 4, stream.words((index / 4) as u32));
            }
            let u = crate::rng::unit_f32(block.1[(index % 4) as usize]);
            *v = if u >= self.p { keep } else { 0.0 };
        }
    }
}

/// How the generator's replacement for a masked position is picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The most likely token (sampling-free; the design's default).
    Argmax,
    /// Gumbel-max sampling at temperature 1, with noise from Philox keyed by the step's
    /// [`StepScalars::sample_seed`].
    Gumbel,
}

/// Adam without bias correction and with decoupled weight decay (the original ELECTRA optimizer).
/// The learning rate is the step's ([`StepScalars::lr`]) times the group's
/// [`ParamGroup::lr_scale`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to √v.
    pub eps: f32,
    /// Decoupled weight decay, times the learning rate.
    pub weight_decay: f32,
}

/// A run of parameters that one AdamW update covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    /// A run of [`Space::Param`](super::Space::Param); its gradient and moments are the same run
    /// of their spaces.
    pub params: Buf,
    /// The group's learning rate over the step's: 1 in pretraining, `layer_decay^k` for a layer
    /// `k` below the top in fine-tuning.
    pub lr_scale: f32,
    /// The update's other settings.
    pub adamw: AdamW,
}

/// What changes from one training step to the next besides the batch. Operations read these from
/// the backend ([`Backend::begin_step`](super::Backend::begin_step) sets them), never from their
/// own arguments, so a backend that replays a recorded step serves every step with one recording.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepScalars {
    /// The learning rate of the step's AdamW updates, before each group's
    /// [`ParamGroup::lr_scale`].
    pub lr: f32,
    /// The seed of every dropout mask of the step ([`DropoutMask::seed`]).
    pub dropout_seed: u64,
    /// The seed of the generator's Gumbel noise ([`Pick::Gumbel`]).
    pub sample_seed: u64,
    /// The index of the pass's first sequence in the optimizer step's global batch (0 unless
    /// the batch is split over ranks or micro-batches). Dropout masks are keyed by the element's
    /// place in the global batch, so the way a batch is split does not change them.
    pub first_sequence: u64,
    /// Masked positions of the global batch before the pass's first one: the Gumbel noise of a
    /// masked position is keyed by its index among all the step's masked positions.
    pub first_pick: u64,
}

/// The embedding block for `ids.len` tokens: gathers word + position + token-type embeddings
/// (positions count from 0 in each sequence of `seq`), then applies LayerNorm into `out`.
/// Backward scatter-adds `out.grad()` into the three tables' gradients and the LayerNorm's, using
/// `saved.xhat.grad()` as scratch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbeddingOp {
    /// Token ids, `[rows]`.
    pub ids: IBuf,
    /// Segment ids, `[rows]`.
    pub token_types: IBuf,
    /// Tokens per sequence.
    pub seq: usize,
    /// The tables and their LayerNorm.
    pub params: EmbeddingParams,
    /// `[rows, embedding]`.
    pub out: Buf,
    /// The LayerNorm's statistics.
    pub saved: LayerNormSaved,
}

/// `y = x·wᵀ + b`, and with `gelu_pre = Some(pre)`: `pre = x·wᵀ + b; y = gelu(pre)` (erf form).
/// Backward, given `y.grad()`: with GELU it first forms the pre-activation's gradient in
/// `pre.grad()`; then `x.grad() += dy·w` (`=` with `overwrite_dx`), `w.grad() += dyᵀ·x`,
/// `b.grad() += Σ dy`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearOp {
    /// The input, `[rows, inp]`.
    pub x: Buf,
    /// The weight, `[out, inp]`.
    pub w: Buf,
    /// The bias, `[out]`.
    pub b: Option<Buf>,
    /// The output, `[rows, out]` with rows `y_stride` apart.
    pub y: Buf,
    /// Values from one row of `y` (and of its gradient) to the next: `dims.out`, or more to
    /// start each row on 16 bytes (the generator's logits); only a layer without GELU pads.
    pub y_stride: usize,
    /// Where the pre-activation goes when the layer ends in GELU, `[rows, out]`.
    pub gelu_pre: Option<Buf>,
    /// The product's sizes.
    pub dims: LinearDims,
    /// The backward pass sets the first `rows · inp` values of `x.grad()` instead of adding to
    /// them, as the first operation of a backward pass to write them does (the tape sets it).
    pub overwrite_dx: bool,
}

impl LinearOp {
    /// The profiler's name of the forward (`fwd`) or backward (`bwd`) pass, with the shape: one
    /// kind of product can cost very differently at different shapes.
    pub fn label(&self, direction: &str) -> String {
        let gelu = if self.gelu_pre.is_some() { "_gelu" } else { "" };
        format!("linear{gelu}_{direction} {}", self.dims)
    }
}

/// `y = LayerNorm(dropout(x) + residual)` over `rows` rows of `width`: BERT's post-LN sum of a
/// residual branch, its hidden dropout included (none when `dropout` is `None`). Backward adds
/// the sum's gradient to `residual.grad()` and, through the same dropout mask, to `x.grad()`
/// (their first `rows · width` values), or sets either with its `overwrite_` flag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormOp {
    /// The input (a residual branch, before its dropout).
    pub x: Buf,
    /// What is added to `x` before normalising.
    pub residual: Option<Buf>,
    /// Gain, bias and eps.
    pub params: LayerNormParams,
    /// The output.
    pub y: Buf,
    /// What the backward pass reads.
    pub saved: LayerNormSaved,
    /// Rows.
    pub rows: usize,
    /// Features per row.
    pub width: usize,
    /// The dropout on `x`: its mask is the one a [`DropoutOp`] over the first `rows · width`
    /// values of `x` with the same `sequences` draws.
    pub dropout: Option<Dropout>,
    /// The sequences the rows belong to (their first dimension), which key the dropout mask
    /// (read only with dropout).
    pub sequences: usize,
    /// The backward pass sets `x.grad()` instead of adding to it, as the first operation of a
    /// backward pass to write it does (the tape sets it).
    pub overwrite_dx: bool,
    /// The same for `residual.grad()`.
    pub overwrite_dresidual: bool,
}

impl LayerNormOp {
    /// Elements of `x` per sequence.
    pub fn per_sequence(&self) -> u64 {
        per_sequence(self.rows * self.width, self.sequences)
    }
}

/// Multi-head self-attention. `qkv` is `[batch·seq, 3·hidden]` (queries, keys, values side by
/// side, heads contiguous within each); `key_mask` is 1 for real tokens and 0 for padding, which
/// is never attended to. Writes `ctx [batch·seq, hidden]` and saves in `probs` (room for
/// [`AttentionDims::saved_len`] values) what the backward pass needs: the CPU saves the
/// probabilities before dropout, the CUDA backend the log-sum-exp of each query row (its first
/// `batch·heads·seq` values) and, with dropout, the mask as bits after them. Dropout applies to
/// the probabilities (element index = position in a `[batch, heads, seq, seq]` buffer).
///
/// Backward uses `probs.grad()` as scratch; the CUDA backend recomputes the probabilities from
/// `qkv`, the mask and the saved log-sum-exp, and reads `ctx` for `rowsum(dctx ∘ ctx)`. A
/// sequence with no real token attends uniformly whatever its scores, so its queries and keys get
/// no gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionOp {
    /// Queries, keys and values.
    pub qkv: Buf,
    /// 1 for a real token, `[batch·seq]`.
    pub key_mask: IBuf,
    /// The output.
    pub ctx: Buf,
    /// What the backward pass needs (see above).
    pub probs: Buf,
    /// The sizes.
    pub dims: AttentionDims,
    /// Dropout on the probabilities.
    pub dropout: Option<Dropout>,
    /// The backward pass sets the first `batch · seq · 3 · hidden` values of `qkv.grad()`
    /// instead of adding to them, as the first operation of a backward pass to write them does
    /// (the tape sets it).
    pub overwrite_dqkv: bool,
}

/// `y = x ∘ mask / (1 − p)`; backward `x.grad() += y.grad() ∘ mask / (1 − p)` (`=` with
/// `overwrite_dx`) with the same mask. `y.len` elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutOp {
    /// The input.
    pub x: Buf,
    /// The output.
    pub y: Buf,
    /// Where and how strongly.
    pub dropout: Dropout,
    /// The sequences the tensor holds (its first dimension): `y.len / sequences` elements each.
    pub sequences: usize,
    /// The backward pass sets `x.grad()` instead of adding to it, as the first operation of a
    /// backward pass to write it does (the tape sets it).
    pub overwrite_dx: bool,
}

/// The elements per sequence of a tensor of `len` elements over `sequences` sequences: what
/// keys a dropout mask to each sequence's place in the step's global batch.
fn per_sequence(len: usize, sequences: usize) -> u64 {
    (len / sequences.max(1)) as u64
}

impl DropoutOp {
    /// The tensor's elements per sequence.
    pub fn per_sequence(&self) -> u64 {
        per_sequence(self.y.len, self.sequences)
    }
}

/// `out[i] = x[rows[i]]` for rows of `width`; backward `x.grad()[rows[i]] += out.grad()[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatherRowsOp {
    /// The rows to pick from.
    pub x: Buf,
    /// Which rows, in order.
    pub rows: IBuf,
    /// The picked rows, `[rows.len, width]`.
    pub out: Buf,
    /// Values per row.
    pub width: usize,
}

/// One pass over each row of `logits [rows, vocab]`: the softmax cross-entropy against `targets`
/// into `row_loss`, its gradient times `grad_scale` into `logits.grad()` (the probabilities are
/// never stored), and, when `pick` is given, the replacement token into its buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftmaxXentOp {
    /// `[rows, vocab]` with rows `row_stride` apart; its gradient is written beside it in the
    /// same layout, padding untouched.
    pub logits: Buf,
    /// Values from one row of `logits` to the next, at least `vocab`.
    pub row_stride: usize,
    /// The right class of each row.
    pub targets: IBuf,
    /// Nats per row.
    pub row_loss: Buf,
    /// The factor on the gradient (1/rows for a mean).
    pub grad_scale: f32,
    /// How to pick a replacement per row, and where it goes.
    pub pick: Option<(Pick, IBuf)>,
    /// Rows.
    pub rows: usize,
    /// Classes per row.
    pub vocab: usize,
}

/// Writes the discriminator's input: `corrupted = original` with `picks[i]` at position
/// `positions[i]`, and `is_replaced = 1` where the new token differs from the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaceTokensOp {
    /// The original tokens.
    pub original: IBuf,
    /// Flat indices of the chosen positions.
    pub positions: IBuf,
    /// The replacement at each chosen position.
    pub picks: IBuf,
    /// The result, as long as `original`.
    pub corrupted: IBuf,
    /// The labels, as long as `original`.
    pub is_replaced: Buf,
}

/// The discriminator's last projection (H → 1) fused with its loss, forward and backward in one
/// pass over `h [tokens, H]`: `logits = h·w + b`; the per-token sigmoid binary cross-entropy
/// against `labels` over the tokens whose `mask` is 1 into `row_loss` (0 elsewhere); and, with
/// `d = grad_scale · (σ(logit) − label)` (0 on padding), `h.grad() += d·w`, `w.grad() += Σ d·h`,
/// `b.grad() += Σ d`. The gradients are complete when it returns, so the head needs no backward
/// pass of its own. `tokens = row_loss.len`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BceHeadOp {
    /// The head's input, `[tokens, H]`.
    pub h: Buf,
    /// The projection, `[H]`.
    pub w: Buf,
    /// Its bias, `[1]`.
    pub b: Buf,
    /// 1 for a replaced token.
    pub labels: Buf,
    /// 1 for a real token.
    pub mask: IBuf,
    /// One logit per token.
    pub logits: Buf,
    /// The loss per token.
    pub row_loss: Buf,
    /// The factor on the gradient (the loss weight over the real tokens).
    pub grad_scale: f32,
}

/// How many sums [`LossSumsOp`] forms.
pub const LOSS_SUMS: usize = 5;

/// The sums a step's metrics are made of, over the last pass's tokens, left in the backend for
/// [`Backend::read_loss_sums`](super::Backend::read_loss_sums), in this order: the generator's
/// loss over the masked rows, the discriminator's over every token, the real tokens whose logit's
/// sign matches their label, the real tokens replaced, and the masked rows whose pick is their
/// target (0 without `picks`). Counted in f64; added to the sums already held unless `first`, so
/// that the micro-batches of one optimizer step add up on the backend and are read once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossSumsOp {
    /// The generator's loss per masked row, `[masked]`.
    pub gen_row_loss: Buf,
    /// The discriminator's loss per token, `[tokens]`.
    pub disc_row_loss: Buf,
    /// The discriminator's logit per token, `[tokens]`.
    pub disc_logits: Buf,
    /// 1 for a replaced token, `[tokens]`.
    pub is_replaced: Buf,
    /// 1 for a real token, `[tokens]`.
    pub mask: IBuf,
    /// The generator's pick per masked row, when it picked the replacements, `[masked]`.
    pub picks: Option<IBuf>,
    /// The original token per masked row, `[masked]`.
    pub targets: IBuf,
    /// Whether these are the step's first sums (overwriting) rather than added to the held ones.
    pub first: bool,
}

impl LossSumsOp {
    /// `(masked, tokens)`, after checking that every buffer has the length its rows call for.
    pub fn sizes(&self) -> (usize, usize) {
        let (masked, tokens) = (self.gen_row_loss.len, self.disc_row_loss.len);
        let per_token = [self.disc_logits.len, self.is_replaced.len, self.mask.len];
        let per_row = [Some(self.targets.len), self.picks.map(|p| p.len)];
        assert!(
            per_token.iter().all(|&l| l == tokens) && per_row.iter().flatten().all(|&l| l == masked),
            "loss_sums: buffers of other lengths than {masked} masked rows and {tokens} tokens: {self:?}"
        );
        (masked, tokens)
    }
}

/// The optimizer step: the global gradient norm, clipping to `max_norm`, and one AdamW update
/// per group with the clipping folded in. A non-finite norm skips the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerStep<'a> {
    /// The parameter runs and their settings.
    pub groups: &'a [ParamGroup],
    /// Gradients are scaled down so their global norm is at most this.
    pub max_norm: f32,
}

/// `dst = src` (`overwrite`) or `dst += src`, elementwise: how the gradients of an optimizer
/// step's micro-batches are summed, each computed alone and then added, so that the sum is the
/// one an all-reduce over ranks forms from the same gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccumulateOp {
    /// What is added.
    pub src: Buf,
    /// The sum, as long as `src`.
    pub dst: Buf,
    /// Whether `dst` is overwritten (the first term) rather than added to.
    pub overwrite: bool,
}
