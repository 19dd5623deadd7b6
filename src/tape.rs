//! The tape: the forward pass records each fused operation with the handles of what it saved, and
//! the backward pass walks the record in reverse.
//!
//! Every handle is fixed by the [`Arena`] for a batch shape, so the record is the same for every
//! step of that shape: clearing and refilling it allocates nothing once its capacity is reached.
//! With recording off (inference), the forward operations run and nothing is kept.

use crate::backend::{
    AttentionDims, Backend, Buf, Dropout, EmbeddingParams, IBuf, LayerNormParams, LayerNormSaved,
    LinearDims, Space,
};
use crate::profile::Profiler;

/// Activation buffers start at multiples of this many values: 16 bytes in the CUDA backend's
/// 4-byte activation slots, which its vector loads, its attention kernels and cuBLASLt's fast
/// paths need.
pub const ACT_ALIGN: usize = 4;

/// Hands out activation and integer buffers for one batch shape, by bumping offsets.
#[derive(Debug, Default)]
pub struct Arena {
    acts: usize,
    ints: usize,
}

impl Arena {
    /// A new activation buffer of `len` values, starting at a multiple of [`ACT_ALIGN`].
    pub fn acts(&mut self, len: usize) -> Buf {
        let b = Buf {
            space: Space::Act,
            offset: self.acts,
            len,
        };
        self.acts += len.next_multiple_of(ACT_ALIGN);
        b
    }

    /// A new integer buffer of `len` values.
    pub fn ints(&mut self, len: usize) -> IBuf {
        let b = IBuf {
            offset: self.ints,
            len,
        };
        self.ints += len;
        b
    }

    /// A LayerNorm's saved statistics for `rows` rows of `width`.
    pub fn layernorm(&mut self, rows: usize, width: usize) -> LayerNormSaved {
        LayerNormSaved {
            xhat: self.acts(rows * width),
            rstd: self.acts(rows),
        }
    }

    /// The activation and integer sizes handed out so far.
    pub fn used(&self) -> (usize, usize) {
        (self.acts, self.ints)
    }
}

/// One recorded operation and the handles its backward pass needs.
#[derive(Clone, Debug)]
enum Op {
    Embedding {
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        params: EmbeddingParams,
        out: Buf,
        saved: LayerNormSaved,
    },
    Linear {
        x: Buf,
        w: Buf,
        b: Option<Buf>,
        y: Buf,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    },
    LayerNorm {
        residual: Option<Buf>,
        x: Buf,
        params: LayerNormParams,
        y: Buf,
        saved: LayerNormSaved,
        rows: usize,
        width: usize,
    },
    Attention {
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    },
    Dropout {
        x: Buf,
        y: Buf,
        dropout: Dropout,
    },
    GatherRows {
        x: Buf,
        rows: IBuf,
        out: Buf,
        width: usize,
    },
}

/// The record of one forward pass.
#[derive(Debug, Default)]
pub struct Tape {
    ops: Vec<Op>,
    recording: bool,
    /// Times each operation when enabled (for `electra bench`).
    pub profiler: Profiler,
}

impl Tape {
    /// A tape that records (`true`, for training) or only runs the forward pass.
    pub fn new(recording: bool) -> Self {
        Tape {
            ops: vec![],
            recording,
            profiler: Profiler::default(),
        }
    }

    /// Forgets the last pass, keeping the capacity.
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    /// Switches recording on (training) or off (forward passes only).
    pub fn set_recording(&mut self, recording: bool) {
        self.recording = recording;
    }

    fn push(&mut self, op: Op) {
        if self.recording {
            self.ops.push(op);
        }
    }

    /// The embedding block for `ids.len` tokens in sequences of `seq`.
    #[allow(clippy::too_many_arguments)]
    pub fn embedding<B: Backend>(
        &mut self,
        be: &mut B,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        params: &EmbeddingParams,
        out: Buf,
        saved: LayerNormSaved,
    ) {
        self.profiler.time("embedding_fwd", be, |be| {
            be.embedding_fwd(ids, token_types, seq, params, out, saved)
        });
        self.push(Op::Embedding {
            ids,
            token_types,
            seq,
            params: *params,
            out,
            saved,
        });
    }

    /// A linear layer, with GELU when `gelu_pre` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn linear<B: Backend>(
        &mut self,
        be: &mut B,
        x: Buf,
        w: Buf,
        b: Option<Buf>,
        y: Buf,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    ) {
        let name = if gelu_pre.is_some() {
            "linear_gelu_fwd"
        } else {
            "linear_fwd"
        };
        self.profiler.time_labelled(
            || format!("{name} {dims}"),
            be,
            |be| be.linear_fwd(x, w, b, y, gelu_pre, dims),
        );
        self.push(Op::Linear {
            x,
            w,
            b,
            y,
            gelu_pre,
            dims,
        });
    }

    /// LayerNorm of `x + residual`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm<B: Backend>(
        &mut self,
        be: &mut B,
        x: Buf,
        residual: Option<Buf>,
        params: &LayerNormParams,
        y: Buf,
        saved: LayerNormSaved,
        rows: usize,
        width: usize,
    ) {
        self.profiler.time("layernorm_fwd", be, |be| {
            be.layernorm_fwd(x, residual, params, y, saved, rows, width)
        });
        self.push(Op::LayerNorm {
            residual,
            x,
            params: *params,
            y,
            saved,
            rows,
            width,
        });
    }

    /// Self-attention with a key-padding mask, and dropout on the probabilities.
    #[allow(clippy::too_many_arguments)]
    pub fn attention<B: Backend>(
        &mut self,
        be: &mut B,
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    ) {
        self.profiler.time("attention_fwd", be, |be| {
            be.attention_fwd(qkv, key_mask, ctx, probs, dims, dropout)
        });
        self.push(Op::Attention {
            qkv,
            key_mask,
            ctx,
            probs,
            dims,
            dropout,
        });
    }

    /// Inverted dropout of `x` into `y`.
    pub fn dropout<B: Backend>(&mut self, be: &mut B, x: Buf, y: Buf, dropout: Dropout) {
        self.profiler
            .time("dropout_fwd", be, |be| be.dropout_fwd(x, y, dropout));
        self.push(Op::Dropout { x, y, dropout });
    }

    /// Picks rows of `x`.
    pub fn gather_rows<B: Backend>(
        &mut self,
        be: &mut B,
        x: Buf,
        rows: IBuf,
        out: Buf,
        width: usize,
    ) {
        self.profiler
            .time("gather_rows", be, |be| be.gather_rows(x, rows, out, width));
        self.push(Op::GatherRows {
            x,
            rows,
            out,
            width,
        });
    }

    /// Propagates the gradients already seeded in the loss outputs back to every parameter.
    pub fn backward<B: Backend>(&mut self, be: &mut B) {
        for op in self.ops.iter().rev() {
            self.profiler
                .time_labelled(|| op.backward_label(), be, |be| op.backward(be));
        }
    }
}

impl Op {
    /// The profiler's label: the operation's name, with the shape for the matrix products.
    fn backward_label(&self) -> String {
        match self {
            Op::Linear { dims, .. } => format!("{} {dims}", self.backward_name()),
            _ => self.backward_name().to_string(),
        }
    }

    fn backward_name(&self) -> &'static str {
        match self {
            Op::Embedding { .. } => "embedding_bwd",
            Op::Linear {
                gelu_pre: Some(_), ..
            } => "linear_gelu_bwd",
            Op::Linear { .. } => "linear_bwd",
            Op::LayerNorm { .. } => "layernorm_bwd",
            Op::Attention { .. } => "attention_bwd",
            Op::Dropout { .. } => "dropout_bwd",
            Op::GatherRows { .. } => "gather_rows_bwd",
        }
    }

    fn backward<B: Backend>(&self, be: &mut B) {
        match *self {
            Op::Embedding {
                ids,
                token_types,
                seq,
                ref params,
                out,
                saved,
            } => be.embedding_bwd(ids, token_types, seq, params, out.grad(), saved),
            Op::Linear {
                x,
                w,
                b,
                y,
                gelu_pre,
                dims,
            } => be.linear_bwd(
                x,
                w,
                y.grad(),
                Some(x.grad()),
                w.grad(),
                b.map(Buf::grad),
                gelu_pre,
                dims,
            ),
            Op::LayerNorm {
                residual,
                x,
                ref params,
                y,
                saved,
                rows,
                width,
            } => be.layernorm_bwd(
                y.grad(),
                params,
                saved,
                x.grad(),
                residual.map(Buf::grad),
                rows,
                width,
            ),
            Op::Attention {
                qkv,
                key_mask,
                ctx,
                probs,
                dims,
                dropout,
            } => be.attention_bwd(
                qkv,
                key_mask,
                ctx,
                probs,
                ctx.grad(),
                qkv.grad(),
                dims,
                dropout,
            ),
            Op::Dropout { x, y, dropout } => be.dropout_bwd(y.grad(), x.grad(), dropout),
            Op::GatherRows {
                x,
                rows,
                out,
                width,
            } => be.gather_rows_bwd(out.grad(), rows, x.grad(), width),
        }
    }
}
