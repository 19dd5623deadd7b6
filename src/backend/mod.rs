//! The numeric core: memory handles and the `Backend` interface.
//!
//! A backend owns all the memory of a training step in a few flat spaces (parameters, their
//! gradients, the two Adam moments, activations and their gradients, integer ids). Everything
//! above this layer refers to memory only through [`Buf`] and [`IBuf`] handles into those spaces,
//! so the same model code drives the CPU reference and the CUDA backend, and a GPU step can be
//! captured as a graph: no handle ever changes between steps of the same batch shape.
//!
//! The operations are fused at the level the kernels are written (linear+bias+GELU,
//! residual+LayerNorm, attention, ...), not elementwise. Backward operations *accumulate* into
//! gradient buffers, which is what makes a tensor used twice (the shared embeddings, the tied LM
//! head, a residual branch) receive the sum of its gradients.

pub mod cpu;
/// The CUDA backend (`--features cuda`): hand-written kernels and cuBLASLt.
#[cfg(feature = "cuda")]
pub mod cuda;
/// Built without the `cuda` feature: the same names, whose constructor says so.
#[cfg(not(feature = "cuda"))]
#[path = "cuda/stub.rs"]
pub mod cuda;

/// The backend a command runs on, as `--device` names it: `cpu`, or `cuda` / `cuda:N` (device N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The f32 CPU reference ([`cpu::CpuBackend`]).
    Cpu,
    /// CUDA device N ([`cuda::CudaBackend`]).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

/// One of the flat memory spaces a backend owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// f32 master weights, one flat buffer with named views.
    Param,
    /// Gradients, laid out exactly like [`Space::Param`].
    Grad,
    /// Adam's first moment, laid out like [`Space::Param`].
    AdamM,
    /// Adam's second moment, laid out like [`Space::Param`].
    AdamV,
    /// The activation arena, sized once per batch shape.
    Act,
    /// Gradients of activations, laid out exactly like [`Space::Act`].
    ActGrad,
}

impl Space {
    pub(crate) const ALL: [Space; 6] = [
        Space::Param,
        Space::Grad,
        Space::AdamM,
        Space::AdamV,
        Space::Act,
        Space::ActGrad,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A contiguous run of values in one memory space (f32 on the CPU; see the CUDA backend for the
/// element types of its activation buffers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// The space the values live in.
    pub space: Space,
    /// The index of the first value in the space.
    pub offset: usize,
    /// How many values.
    pub len: usize,
}

impl Buf {
    /// The buffer that holds this buffer's gradient: same offset, companion space.
    pub fn grad(self) -> Buf {
        let space = match self.space {
            Space::Param => Space::Grad,
            Space::Act => Space::ActGrad,
            other => panic!("{other:?} buffers have no gradient"),
        };
        Buf { space, ..self }
    }

    /// The first `len` values of this buffer.
    pub fn prefix(self, len: usize) -> Buf {
        assert!(len <= self.len, "prefix {len} of a buffer of {}", self.len);
        Buf { len, ..self }
    }

    /// The same run of values in another space (e.g. the Adam moments of a parameter).
    pub fn in_space(self, space: Space) -> Buf {
        Buf { space, ..self }
    }

    pub(crate) fn end(self) -> usize {
        self.offset + self.len
    }
}

/// A contiguous run of u32 values (token ids, masks, positions) in the backend's integer space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IBuf {
    /// Index of the first value in the integer space.
    pub offset: usize,
    /// Number of values.
    pub len: usize,
}

impl IBuf {
    /// The first `len` values of this buffer.
    pub fn prefix(self, len: usize) -> IBuf {
        assert!(
            len <= self.len,
            "prefix {len} of an int buffer of {}",
            self.len
        );
        IBuf { len, ..self }
    }
}

/// A backend could not allocate the memory that [`Backend::reserve`] asked for.
#[derive(Debug, thiserror::Error)]
#[error("the {backend} backend could not allocate {:.2} GB for the model and its activations ({detail}); lower the batch size or the sequence length", *bytes as f64 / 1e9)]
pub struct OutOfMemory {
    /// The backend's name.
    pub backend: &'static str,
    /// Bytes in the allocation that failed.
    pub bytes: usize,
    /// What the allocator said.
    pub detail: String,
}

/// How many values each space must hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Values in each parameter-shaped space (parameters, gradients, moments).
    pub params: usize,
    /// Values in the activation space and in its gradient space.
    pub acts: usize,
    /// Values in the integer space.
    pub ints: usize,
}

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

/// Adam without bias correction and with decoupled weight decay (the original ELECTRA optimizer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// The learning rate of this step.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to √v.
    pub eps: f32,
    /// Decoupled weight decay, times `lr`.
    pub weight_decay: f32,
}

/// Purpose tag of the dropout masks (see [`crate::rng::Stream`]).
const DROPOUT_PURPOSE: u32 = 6;

/// Inverted dropout whose mask is a pure function of (seed, site, element): element `i` is kept
/// when its Philox draw is at least `p`, and kept values are scaled by 1/(1−p). The backward pass
/// draws the same mask again instead of storing it, and the CUDA kernels draw the same numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of dropping an element.
    pub p: f32,
    /// Changes every step.
    pub seed: u64,
    /// Numbers the places dropout is applied within a step.
    pub site: u32,
}

impl Dropout {
    /// What element `index` is multiplied by: 0, or 1/(1−p).
    pub fn scale_at(&self, index: usize) -> f32 {
        let mut one = [0.0];
        self.scales(index, &mut one);
        one[0]
    }

    /// The multipliers of elements `first..first + out.len()`, drawing each Philox block once.
    pub fn scales(&self, first: usize, out: &mut [f32]) {
        let stream = crate::rng::Stream::new(self.seed, DROPOUT_PURPOSE, self.site as u64);
        let keep = 1.0 / (1.0 - self.p);
        let mut block = (usize::MAX, [0u32; 4]);
        for (i, v) in out.iter_mut().enumerate() {
            let index = first + i;
            if block.0 != index / 4 {
                block = (index / 4, stream.words((index / 4) as u32));
            }
            let u = crate::rng::unit_f32(block.1[index % 4]);
            *v = if u >= self.p { keep } else { 0.0 };
        }
    }
}

/// How the generator's replacement for a masked position is picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The most likely token (sampling-free; the design's default).
    Argmax,
    /// Gumbel-max sampling at temperature 1, with noise from Philox keyed by this seed.
    Gumbel {
        /// Keys the noise of one step.
        seed: u64,
    },
}

/// What changes from one training step to the next besides the batch. A backend that replays a
/// recorded step reads these from its own memory, so that one recording serves every step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepScalars {
    /// The learning rate of the step's AdamW updates ([`AdamW::lr`]).
    pub lr: f32,
    /// The seed of every dropout mask of the step ([`Dropout::seed`]).
    pub dropout_seed: u64,
    /// The seed of the generator's Gumbel noise ([`Pick::Gumbel`]).
    pub sample_seed: u64,
}

/// The fused operations of an ELECTRA training step. Implemented by the CPU reference and by the
/// CUDA backend; the CPU implementation is the specification the kernels are tested against.
///
/// Forward operations overwrite their outputs. Backward operations accumulate (`+=`) into every
/// gradient they produce.
pub trait Backend {
    /// A short name for messages and benchmarks.
    fn name(&self) -> &'static str;

    /// Sizes every memory space. The parameter spaces keep their values when only the activation
    /// or integer sizes change; new memory is zero. Memory that cannot be had is an error, not an
    /// abort: a batch too large for the machine is a user's mistake to report.
    fn reserve(&mut self, sizes: Sizes) -> Result<(), OutOfMemory>;

    /// The current sizes.
    fn sizes(&self) -> Sizes;

    /// Waits until all queued work is done (for timing; a synchronous backend has nothing to do).
    fn synchronize(&self) {}

    /// Copies host values into a buffer (`src.len() == dst.len`).
    fn write(&mut self, dst: Buf, src: &[f32]);

    /// Copies a buffer to the host (`dst.len() == src.len`).
    fn read(&self, src: Buf, dst: &mut [f32]);

    /// Copies host integers into an integer buffer.
    fn write_ints(&mut self, dst: IBuf, src: &[u32]);

    /// Copies an integer buffer to the host.
    fn read_ints(&self, src: IBuf, dst: &mut [u32]);

    /// Sets every value of a buffer.
    fn fill(&mut self, dst: Buf, value: f32);

    /// Gathers word + position + token-type embeddings for `rows = ids.len` tokens (positions count
    /// from 0 in each sequence of `seq`), then applies LayerNorm.
    #[allow(clippy::too_many_arguments)]
    fn embedding_fwd(
        &mut self,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        params: &EmbeddingParams,
        out: Buf,
        saved: LayerNormSaved,
    );

    /// Backward of [`Backend::embedding_fwd`]: scatter-adds into the three tables' gradients and the
    /// LayerNorm's. Uses `saved.xhat.grad()` as scratch.
    fn embedding_bwd(
        &mut self,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        params: &EmbeddingParams,
        dout: Buf,
        saved: LayerNormSaved,
    );

    /// `y = x·wᵀ + b`, and with `gelu_pre = Some(pre)`: `pre = x·wᵀ + b; y = gelu(pre)` (erf form).
    #[allow(clippy::too_many_arguments)]
    fn linear_fwd(
        &mut self,
        x: Buf,
        w: Buf,
        b: Option<Buf>,
        y: Buf,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    );

    /// Backward of [`Backend::linear_fwd`] given `dy`. With GELU, first forms the pre-activation's
    /// gradient in `gelu_pre.grad()`. `dx` is skipped when `None` (the input needs no gradient).
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &mut self,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        dw: Buf,
        db: Option<Buf>,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    );

    /// `y = LayerNorm(x + residual)` over rows of `width`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &mut self,
        x: Buf,
        residual: Option<Buf>,
        params: &LayerNormParams,
        y: Buf,
        saved: LayerNormSaved,
        rows: usize,
        width: usize,
    );

    /// Backward of [`Backend::layernorm_fwd`]: the input's gradient goes to both `dx` and
    /// `dresidual`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &mut self,
        dy: Buf,
        params: &LayerNormParams,
        saved: LayerNormSaved,
        dx: Buf,
        dresidual: Option<Buf>,
        rows: usize,
        width: usize,
    );

    /// Multi-head self-attention. `qkv` is `[batch·seq, 3·hidden]` (queries, keys, values side by
    /// side, heads contiguous within each); `key_mask` is 1 for real tokens and 0 for padding, which
    /// is never attended to. Writes `ctx [batch·seq, hidden]` and saves in `probs` (room for
    /// `[batch, heads, seq, seq]`) what the backward pass needs: the CPU saves the probabilities
    /// before dropout, the CUDA backend only the log-sum-exp of each query row (its first
    /// `batch·heads·seq` values). Dropout applies to the probabilities (element index = position
    /// in a `[batch, heads, seq, seq]` buffer).
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &mut self,
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    );

    /// Backward of [`Backend::attention_fwd`]; uses `probs.grad()` as scratch. `key_mask` and
    /// `ctx` are the forward pass's (the CUDA backend recomputes the probabilities from `qkv`,
    /// the mask and the saved log-sum-exp, and needs `ctx` for `rowsum(dctx ∘ ctx)`; the CPU reads
    /// only the mask). A sequence with no real token attends uniformly whatever its scores, so its
    /// queries and keys get no gradient.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &mut self,
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dctx: Buf,
        dqkv: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    );

    /// `y = x ∘ mask / (1 − p)`.
    fn dropout_fwd(&mut self, x: Buf, y: Buf, dropout: Dropout);

    /// `dx += dy ∘ mask / (1 − p)`, with the forward pass's mask.
    fn dropout_bwd(&mut self, dy: Buf, dx: Buf, dropout: Dropout);

    /// `out[i] = x[rows[i]]` for rows of `width`.
    fn gather_rows(&mut self, x: Buf, rows: IBuf, out: Buf, width: usize);

    /// Backward of [`Backend::gather_rows`]: `dx[rows[i]] += dout[i]`.
    fn gather_rows_bwd(&mut self, dout: Buf, rows: IBuf, dx: Buf, width: usize);

    /// One pass over each row of `logits [rows, vocab]`: the softmax cross-entropy against
    /// `targets` into `row_loss`, its gradient times `grad_scale` into `logits.grad()` (the
    /// probabilities are never stored), and, when `pick` is given, the replacement token into
    /// `picks`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(
        &mut self,
        logits: Buf,
        targets: IBuf,
        row_loss: Buf,
        grad_scale: f32,
        pick: Option<(Pick, IBuf)>,
        rows: usize,
        vocab: usize,
    );

    /// Writes the discriminator's input: `corrupted = original` with `picks[i]` at position
    /// `positions[i]`, and `is_replaced = 1` where the new token differs from the original.
    fn replace_tokens(
        &mut self,
        original: IBuf,
        positions: IBuf,
        picks: IBuf,
        corrupted: IBuf,
        is_replaced: Buf,
    );

    /// The discriminator's last projection (H → 1) fused with its loss, forward and backward in
    /// one pass over `h [tokens, H]`: `logits = h·w + b`; the per-token sigmoid binary
    /// cross-entropy against `labels` over the tokens whose `mask` is 1 into `row_loss` (0
    /// elsewhere); and, with `d = grad_scale · (σ(logit) − label)` (0 on padding),
    /// `h.grad() += d·w`, `w.grad() += Σ d·h`, `b.grad() += Σ d`. The gradients are complete when
    /// it returns, so the head needs no backward pass of its own.
    #[allow(clippy::too_many_arguments)]
    fn bce_head(
        &mut self,
        h: Buf,
        w: Buf,
        b: Buf,
        labels: Buf,
        mask: IBuf,
        logits: Buf,
        row_loss: Buf,
        grad_scale: f32,
    );

    /// The L2 norm of the whole gradient space.
    fn grad_norm(&mut self) -> f32;

    /// One AdamW update of `params` (a run of [`Space::Param`]) from its gradient scaled by
    /// `grad_scale` (which folds in clipping) and its moments.
    fn adamw(&mut self, params: Buf, grad_scale: f32, hyper: &AdamW);

    /// The optimizer step: measures the global gradient norm, clips to `max_norm` and applies
    /// [`Backend::adamw`] to each group with the clipping folded in. A non-finite norm skips the
    /// update, leaving the weights and moments as they were. The norm is read afterwards with
    /// [`Backend::last_grad_norm`], so that a recorded step needs no host round trip.
    fn optimizer_step(&mut self, groups: &[(Buf, AdamW)], max_norm: f32);

    /// The norm the last [`Backend::optimizer_step`] measured (waiting for it).
    fn last_grad_norm(&self) -> f32;

    /// Begins a training step whose changing values are `scalars` (the operations that follow
    /// pass the same values in their own arguments). `recording`, when given, fingerprints
    /// everything else the step's operations depend on besides the memory plan (shapes, loss
    /// scales, hyper-parameters). A backend that recorded a step with that fingerprint replays
    /// it and returns true: the caller then issues nothing for this step. Otherwise the caller
    /// issues the step's operations and then calls [`Backend::end_step`]. The default records
    /// nothing.
    fn begin_step(&mut self, scalars: StepScalars, recording: Option<u64>) -> bool {
        let _ = (scalars, recording);
        false
    }

    /// Ends the step [`Backend::begin_step`] began; a recording backend runs what it recorded.
    fn end_step(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn devices_parse_as_the_command_line_names_them() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }
}
