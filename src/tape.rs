//! The tape: the forward pass records each fused operation with the handles of what it saved, and
//! the backward pass walks the record in reverse.
//!
//! Every handle is fixed by the [`Arena`] for a batch shape, so the record is the same for every
//! step of that shape: clearing and refilling it allocates nothing once its capacity is reached.
//! With recording off (inference), the forward operations run and nothing is kept.
//!
//! # Activation gradients
//! The backward operations add to the gradients of their inputs, since an activation read by two
//! operations gets a gradient from each. Nothing zeroes the activation gradients before a step:
//! the backward pass zeroes each range just before the first operation that adds to it (or
//! that reads it when nothing wrote it: an output no loss depends on), or, when that operation
//! can, has it set the range instead of adding to it ([`LinearOp::overwrite_dx`],
//! [`AttentionOp::overwrite_dqkv`], [`DropoutOp::overwrite_dx`],
//! [`LayerNormOp::overwrite_dx`] and [`LayerNormOp::overwrite_dresidual`]). Ranges no backward
//! pass touches (the CPU's attention scratch on the GPU, the other half of a bf16 value's 4-byte
//! slot) cost nothing, and the values of the last step never leak into this one.

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

    /// The gradient at this operation's output, which its backward pass reads.
    fn output_grad(&self) -> Buf {
        match self {
            Op::Embedding(op) => op.out.grad().prefix(op.ids.len * op.params.norm.gain.len),
            Op::Linear(op) => op.y.grad().prefix(op.dims.rows * op.y_stride),
            Op::LayerNorm(op) => op.y.grad().prefix(op.rows * op.width),
            Op::Attention(op) => {
                let d = op.dims;
                op.ctx.grad().prefix(d.batch * d.seq * d.hidden())
            }
            Op::Dropout(op) => op.y.grad().prefix(op.x.len),
            Op::GatherRows(op) => op.out.grad().prefix(op.rows.len * op.width),
        }
    }

    /// The activation gradients this operation's backward pass adds to (parameter gradients
    /// aside, and the scratch a backend overwrites).
    fn input_grads(&self) -> [Option<Buf>; 2] {
        match self {
            Op::Embedding(_) => [None, None],
            Op::Linear(op) => {
                let dx = op.x.grad().prefix(op.dims.rows * op.dims.inp);
                [Some(dx), None]
            }
            Op::LayerNorm(op) => {
                let n = op.rows * op.width;
                let dres = op.residual.map(|r| r.grad().prefix(n));
                [Some(op.x.grad().prefix(n)), dres]
            }
            Op::Attention(op) => {
                let d = op.dims;
                [
                    Some(op.qkv.grad().prefix(d.batch * d.seq * 3 * d.hidden())),
                    None,
                ]
            }
            Op::Dropout(op) => [Some(op.x.grad()), None],
            Op::GatherRows(op) => [Some(op.x.grad()), None],
        }
    }

    /// The flags that make the backward pass set each of [`Op::input_grads`] rather than add to
    /// it: `None` for a gradient the operation can only add to.
    fn overwrite_flags(&mut self) -> [Option<&mut bool>; 2] {
        match self {
            Op::Linear(op) => [Some(&mut op.overwrite_dx), None],
            Op::Attention(op) => [Some(&mut op.overwrite_dqkv), None],
            Op::Dropout(op) => [Some(&mut op.overwrite_dx), None],
            Op::LayerNorm(op) => [
                Some(&mut op.overwrite_dx),
                op.residual.is_some().then_some(&mut op.overwrite_dresidual),
            ],
            Op::Embedding(_) | Op::GatherRows(_) => [None, None],
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
    /// The activation-gradient ranges zeroed in the last backward pass, each with the index of
    /// the operation before whose backward pass it was zeroed (kept to reuse its memory).
    zeroed: Vec<(usize, Buf)>,
    /// The activation-gradient ranges that hold this pass's values, sorted, disjoint, merged.
    held: Vec<(usize, usize)>,
}

/// How much of a range of activation gradients holds this backward pass's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Nothing,
    All,
    Part,
}

impl Tape {
    /// A tape that records (`true`, for training) or only runs the forward pass.
    pub fn new(recording: bool) -> Self {
        Tape {
            recording,
            ..Tape::default()
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

    /// Propagates the gradients the losses left in `seeds` (activation gradients written before
    /// this pass, holding this step's values) back to every parameter, zeroing each other
    /// activation gradient just before the first operation that adds to it or reads it (see the
    /// module's documentation).
    ///
    /// # Panics
    /// If an operation adds to or reads a range that is only partly this pass's: the model
    /// addresses each gradient whole or by a prefix, and its first writer covers what later ones
    /// touch.
    pub fn backward<B: Backend>(&mut self, be: &mut B, seeds: &[Buf]) {
        self.plan_zeroing(seeds);
        let mut zeroed = self.zeroed.iter().peekable();
        for (i, op) in self.ops.iter().enumerate().rev() {
            while let Some(&(_, range)) = zeroed.next_if(|(at, _)| *at == i) {
                be.fill(range, 0.0);
            }
            op.backward(be);
        }
    }

    /// The activation-gradient ranges the last backward pass zeroed, each with the index (into
    /// [`Tape::ops`]) of the operation before whose backward pass it was zeroed, in the order
    /// the pass ran.
    pub fn zeroed(&self) -> &[(usize, Buf)] {
        &self.zeroed
    }

    /// Fills `zeroed` for a backward pass over the recorded operations after `seeds`, and tells
    /// each operation that can set its input's gradient whether it is that gradient's first
    /// writer.
    fn plan_zeroing(&mut self, seeds: &[Buf]) {
        self.zeroed.clear();
        self.held.clear();
        for &seed in seeds {
            self.hold(seed);
        }
        for i in (0..self.ops.len()).rev() {
            let op = self.ops[i];
            let can_overwrite = self.ops[i].overwrite_flags().map(|f| f.is_some());
            let mut overwrite = [false; 2];
            let [dx, other] = op.input_grads();
            let ranges = [
                (Some(op.output_grad()), None),
                (dx, Some(0)),
                (other, Some(1)),
            ];
            for (range, input) in ranges.map(|(r, k)| (r.filter(|r| r.len > 0), k)) {
                let Some(range) = range else { continue };
                match self.held_of(range) {
                    Held::All => {}
                    Held::Nothing => {
                        // The operation sets its input's gradient itself (a linear layer's
                        // `beta = 0`, the kernels' overwrite mode).
                        match input.filter(|&k| can_overwrite[k]) {
                            Some(k) => overwrite[k] = true,
                            None => self.zeroed.push((i, range)),
                        }
                        self.hold(range);
                    }
                    Held::Part => panic!(
                        "tape: operation {i} ({op:?}) {} {range:?}, of which only a part holds \
                         this pass's gradients",
                        if input.is_some() { "adds to" } else { "reads" }
                    ),
                }
            }
            for (flag, set) in self.ops[i].overwrite_flags().into_iter().zip(overwrite) {
                if let Some(flag) = flag {
                    *flag = set;
                }
            }
        }
    }

    fn held_of(&self, b: Buf) -> Held {
        assert_eq!(
            b.space,
            Space::ActGrad,
            "{b:?} is not an activation gradient"
        );
        let (start, end) = (b.offset, b.end());
        let mut covered = 0;
        for &(s, e) in &self.held {
            covered += e.min(end).saturating_sub(s.max(start));
        }
        match covered {
            0 => Held::Nothing,
            c if c == end - start => Held::All,
            _ => Held::Part,
        }
    }

    /// Records that `b` holds this pass's values.
    fn hold(&mut self, b: Buf) {
        assert_eq!(
            b.space,
            Space::ActGrad,
            "{b:?} is not an activation gradient"
        );
        let (mut start, mut end) = (b.offset, b.end());
        self.held.retain(|&(s, e)| {
            let touches = s <= end && start <= e;
            if touches {
                start = start.min(s);
                end = end.max(e);
            }
            !touches
        });
        let at = self.held.partition_point(|&(s, _)| s < start);
        self.held.insert(at, (start, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Dropout, LayerNormParams, LinearDims};

    /// Rows of 4 gathered from `x` into `out`: an operation that reads `out`'s gradient and can
    /// only add to `x`'s.
    fn gather(x: Buf, out: Buf) -> Op {
        Op::GatherRows(GatherRowsOp {
            x,
            rows: IBuf {
                offset: 0,
                len: out.len / 4,
            },
            out,
            width: 4,
        })
    }

    fn dropout(x: Buf, y: Buf) -> Op {
        Op::Dropout(DropoutOp {
            x,
            y,
            dropout: Dropout { p: 0.1, site: 0 },
            sequences: 1,
            overwrite_dx: false,
        })
    }

    fn linear(x: Buf, y: Buf) -> Op {
        Op::Linear(LinearOp {
            x,
            w: Buf {
                space: Space::Param,
                offset: 0,
                len: 8,
            },
            b: None,
            y,
            y_stride: 2,
            gelu_pre: None,
            dims: LinearDims {
                rows: 2,
                inp: 4,
                out: 2,
            },
            overwrite_dx: false,
        })
    }

    /// `y = LayerNorm(x + residual)` over 2 rows of 4.
    fn layernorm(x: Buf, residual: Option<Buf>, y: Buf) -> Op {
        let param = |offset| Buf {
            space: Space::Param,
            offset,
            len: 4,
        };
        Op::LayerNorm(LayerNormOp {
            x,
            residual,
            params: LayerNormParams {
                gain: param(0),
                bias: param(4),
                eps: 1e-12,
            },
            y,
            saved: Arena::default().layernorm(2, 4),
            rows: 2,
            width: 4,
            dropout: None,
            sequences: 1,
            overwrite_dx: false,
            overwrite_dresidual: false,
        })
    }

    fn tape(ops: &[Op]) -> Tape {
        Tape {
            ops: ops.to_vec(),
            ..Tape::new(true)
        }
    }

    fn overwrites(t: &Tape, i: usize) -> bool {
        match t.ops[i] {
            Op::Linear(op) => op.overwrite_dx,
            Op::Dropout(op) => op.overwrite_dx,
            Op::Attention(op) => op.overwrite_dqkv,
            _ => false,
        }
    }

    /// `a` read by two operations that can only add: the later one (the first to run backward)
    /// has the gradient zeroed before it, the earlier one adds to it; an output whose gradient
    /// nothing wrote is zeroed before its reader; a seed is not touched.
    #[test]
    fn the_first_writer_of_each_gradient_zeroes_it() {
        let mut arena = Arena::default();
        let [a, b, c] = [8, 8, 8].map(|n| arena.acts(n));
        let mut t = tape(&[gather(a, b), gather(a, c)]);
        t.plan_zeroing(&[b.grad()]);
        assert_eq!(t.zeroed(), [(1, c.grad()), (1, a.grad())]);
        // With both outputs seeded, only the shared input's gradient is zeroed, once.
        t.plan_zeroing(&[b.grad(), c.grad()]);
        assert_eq!(t.zeroed(), [(1, a.grad())]);
    }

    /// A linear layer or a dropout that is the first writer of its input's gradient sets it
    /// instead of having it zeroed; one that comes second adds to it.
    #[test]
    fn an_operation_writing_first_overwrites_when_it_can() {
        let mut arena = Arena::default();
        let [a, b, c] = [8, 4, 8].map(|n| arena.acts(n));
        for first in [linear(a, b), dropout(a, c)] {
            let other = match first {
                Op::Linear(_) => gather(a, c),
                _ => linear(a, b),
            };
            let mut t = tape(&[other, first]);
            t.plan_zeroing(&[b.grad(), c.grad()]);
            assert!(t.zeroed().is_empty(), "{:?}", t.zeroed());
            assert!(overwrites(&t, 1) && !overwrites(&t, 0));
        }
        let mut t = tape(&[linear(a, b), gather(a, c)]);
        t.plan_zeroing(&[b.grad(), c.grad()]);
        assert_eq!(t.zeroed(), [(1, a.grad())]);
        assert!(!overwrites(&t, 0));
    }

    /// A LayerNorm decides for each of its two inputs: it sets the branch's gradient, which it
    /// writes first, and adds to the residual's, which a later layer (earlier in the backward
    /// pass) wrote; without a residual, it has no second flag to set.
    #[test]
    fn a_layernorm_overwrites_each_input_it_writes_first() {
        let mut arena = Arena::default();
        let [x, res, y, z] = [8, 8, 8, 4].map(|n| arena.acts(n));
        let flags = |t: &Tape, i: usize| match t.ops[i] {
            Op::LayerNorm(op) => (op.overwrite_dx, op.overwrite_dresidual),
            _ => unreachable!(),
        };
        let mut t = tape(&[layernorm(x, Some(res), y), linear(res, z)]);
        t.plan_zeroing(&[y.grad(), z.grad()]);
        assert!(t.zeroed().is_empty(), "{:?}", t.zeroed());
        assert!(overwrites(&t, 1));
        assert_eq!(flags(&t, 0), (true, false));
        // Alone, it sets both.
        let mut t = tape(&[layernorm(x, Some(res), y)]);
        t.plan_zeroing(&[y.grad()]);
        assert_eq!(flags(&t, 0), (true, true));
        assert!(t.zeroed().is_empty(), "{:?}", t.zeroed());
        let mut t = tape(&[layernorm(x, None, y)]);
        t.plan_zeroing(&[y.grad()]);
        assert_eq!(flags(&t, 0), (true, false));
    }

    /// A gradient read whole when only its prefix holds this pass's values is a model the
    /// zeroing cannot serve: it stops, naming the range.
    #[test]
    #[should_panic(expected = "of which only a part holds this pass's gradients")]
    fn a_gradient_partly_written_stops_the_pass() {
        let mut arena = Arena::default();
        let [a, b] = [8, 8].map(|n| arena.acts(n));
        tape(&[gather(a, b)]).plan_zeroing(&[b.grad().prefix(4)]);
    }
}
