//! The tape: the forward pass records each fused operation with the handles of what it saved, and
//! the backward pass walks the record in reverse.
//!
//! Every handle is fixed by the [`Arena`] for a batch shape, so the record is the same for every
//! step of that shape: clearing and refilling it allocates nothing once its capacity is reached.
//! With recording off (inference), the forward operations run and nothing is kept.

use crate::backend::{
    AttentionOp, Backend, Buf, DropoutOp, EmbeddingOp, GatherRowsOp, IBuf, LayerNormOp,
    LayerNormSaved, LinearOp, Space,
};

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

/// One recorded operation: the parameters its forward pass ran with, which are all its backward
/// pass needs.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// The embedding block.
    Embedding(EmbeddingOp),
    /// A linear layer, with GELU or without.
    Linear(LinearOp),
    /// LayerNorm, with a residual or without.
    LayerNorm(LayerNormOp),
    /// Self-attention.
    Attention(AttentionOp),
    /// Dropout.
    Dropout(DropoutOp),
    /// Picking rows.
    GatherRows(GatherRowsOp),
}

macro_rules! op_from {
    ($($variant:ident($op:ty)),*) => {$(
        impl From<$op> for Op {
            fn from(op: $op) -> Op {
                Op::$variant(op)
            }
        }
    )*};
}
op_from!(
    Embedding(EmbeddingOp),
    Linear(LinearOp),
    LayerNorm(LayerNormOp),
    Attention(AttentionOp),
    Dropout(DropoutOp),
    GatherRows(GatherRowsOp)
);

impl Op {
    fn forward<B: Backend>(&self, be: &mut B) {
        match self {
            Op::Embedding(op) => be.embedding_fwd(op),
            Op::Linear(op) => be.linear_fwd(op),
            Op::LayerNorm(op) => be.layernorm_fwd(op),
            Op::Attention(op) => be.attention_fwd(op),
            Op::Dropout(op) => be.dropout_fwd(op),
            Op::GatherRows(op) => be.gather_rows(op),
        }
    }

    fn backward<B: Backend>(&self, be: &mut B) {
        match self {
            Op::Embedding(op) => be.embedding_bwd(op),
            Op::Linear(op) => be.linear_bwd(op),
            Op::LayerNorm(op) => be.layernorm_bwd(op),
            Op::Attention(op) => be.attention_bwd(op),
            Op::Dropout(op) => be.dropout_bwd(op),
            Op::GatherRows(op) => be.gather_rows_bwd(op),
        }
    }
}

/// The record of one forward pass.
#[derive(Debug, Default)]
pub struct Tape {
    ops: Vec<Op>,
    recording: bool,
}

impl Tape {
    /// A tape that records (`true`, for training) or only runs the forward pass.
    pub fn new(recording: bool) -> Self {
        Tape {
            ops: vec![],
            recording,
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

    /// Runs an operation's forward pass and, when recording, keeps it for the backward pass.
    pub fn run<B: Backend>(&mut self, be: &mut B, op: impl Into<Op>) {
        let op = op.into();
        op.forward(be);
        if self.recording {
            self.ops.push(op);
        }
    }

    /// The operations of the last recorded pass, in the order they ran.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Propagates the gradients already seeded in the loss outputs back to every parameter.
    pub fn backward<B: Backend>(&mut self, be: &mut B) {
        for op in self.ops.iter().rev() {
            op.backward(be);
        }
    }
}
