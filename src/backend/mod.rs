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

use crate::comm::Collective;

pub mod cpu;
mod ops;
mod profiled;
pub use ops::*;
pub use profiled::Profiled;
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
    /// Gradients of activations, laid out exactly like [`Space::Act`]. Backward operations add
    /// to the gradients of their inputs; nothing zeroes the space before a step: the tape zeroes
    /// each range before its first writer (see [`crate::tape`]).
    ActGrad,
    /// The sum of the gradients of an optimizer step's earlier micro-batches, laid out like
    /// [`Space::Param`]; sized only for gradient accumulation ([`Sizes::grad_sum`]).
    GradSum,
}

impl Space {
    pub(crate) const ALL: [Space; 7] = [
        Space::Param,
        Space::Grad,
        Space::AdamM,
        Space::AdamV,
        Space::Act,
        Space::ActGrad,
        Space::GradSum,
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

    /// The `len` values of this buffer that follow its first `skip`.
    pub fn range(self, skip: usize, len: usize) -> Buf {
        assert!(
            skip + len <= self.len,
            "values {skip}..{} of a buffer of {}",
            skip + len,
            self.len
        );
        Buf {
            offset: self.offset + skip,
            len,
            ..self
        }
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
    /// Values in [`Space::GradSum`]: `params` when gradients are accumulated over
    /// micro-batches, else 0.
    pub grad_sum: usize,
}

/// The fused operations of an ELECTRA training step. Implemented by the CPU reference and by the
/// CUDA backend; the CPU implementation is the specification the kernels are tested against.
///
/// Forward operations overwrite their outputs. Backward operations accumulate (`+=`) into every
/// gradient they produce, except an activation gradient whose operation has its `overwrite_`
/// flag set (by the tape, for the first writer of that gradient), which it sets (`=`).
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

    /// [`EmbeddingOp`]'s forward pass.
    fn embedding_fwd(&mut self, op: &EmbeddingOp);

    /// [`EmbeddingOp`]'s backward pass.
    fn embedding_bwd(&mut self, op: &EmbeddingOp);

    /// [`LinearOp`]'s forward pass.
    fn linear_fwd(&mut self, op: &LinearOp);

    /// [`LinearOp`]'s backward pass.
    fn linear_bwd(&mut self, op: &LinearOp);

    /// [`LayerNormOp`]'s forward pass.
    fn layernorm_fwd(&mut self, op: &LayerNormOp);

    /// [`LayerNormOp`]'s backward pass.
    fn layernorm_bwd(&mut self, op: &LayerNormOp);

    /// [`AttentionOp`]'s forward pass.
    fn attention_fwd(&mut self, op: &AttentionOp);

    /// [`AttentionOp`]'s backward pass.
    fn attention_bwd(&mut self, op: &AttentionOp);

    /// [`DropoutOp`]'s forward pass.
    fn dropout_fwd(&mut self, op: &DropoutOp);

    /// [`DropoutOp`]'s backward pass.
    fn dropout_bwd(&mut self, op: &DropoutOp);

    /// [`GatherRowsOp`]'s forward pass.
    fn gather_rows(&mut self, op: &GatherRowsOp);

    /// [`GatherRowsOp`]'s backward pass.
    fn gather_rows_bwd(&mut self, op: &GatherRowsOp);

    /// [`SoftmaxXentOp`]: the loss, its gradient and the replacement in one pass.
    fn softmax_xent(&mut self, op: &SoftmaxXentOp);

    /// [`ReplaceTokensOp`].
    fn replace_tokens(&mut self, op: &ReplaceTokensOp);

    /// [`BceHeadOp`]: forward and backward in one pass.
    fn bce_head(&mut self, op: &BceHeadOp);

    /// [`AccumulateOp`].
    fn accumulate(&mut self, op: &AccumulateOp);

    /// [`LossSumsOp`]: the sums of a step's metrics, held by the backend.
    fn loss_sums(&mut self, op: &LossSumsOp);

    /// The sums the last [`Backend::loss_sums`] calls left (waiting for them): a step's
    /// metrics cost one small read, however many tokens it had.
    fn read_loss_sums(&self) -> [f64; LOSS_SUMS];

    /// Sums `buf` over the ranks of `comm`, in place. This default sums through the host
    /// ([`all_reduce_on_host`]); a device backend with its own collectives overrides it.
    fn all_reduce(&mut self, buf: Buf, comm: &dyn Collective) {
        all_reduce_on_host(self, buf, comm);
    }

    /// The L2 norm of the whole gradient space.
    fn grad_norm(&mut self) -> f32;

    /// One AdamW update of `group` from its gradient scaled by `grad_scale` (which folds in
    /// clipping) and its moments, at the step's learning rate times the group's scale.
    fn adamw(&mut self, group: &ParamGroup, grad_scale: f32);

    /// [`OptimizerStep`]: measures the global gradient norm, clips and applies
    /// [`Backend::adamw`] to each group with the clipping folded in. A non-finite norm skips the
    /// update, leaving the weights and moments as they were. The norm is read afterwards with
    /// [`Backend::last_grad_norm`], so that a recorded step needs no host round trip.
    fn optimizer_step(&mut self, op: &OptimizerStep);

    /// The norm the last [`Backend::optimizer_step`] measured (waiting for it).
    fn last_grad_norm(&self) -> f32;

    /// Begins a training step whose changing values are `scalars`: every operation until the
    /// next `begin_step` reads its learning rate and seeds from them. `recording`, when given,
    /// fingerprints everything else the step's operations depend on besides the memory plan
    /// (shapes, loss scales, hyper-parameters). A backend that recorded a step with that
    /// fingerprint replays it and returns true: the caller then issues nothing for this step.
    /// Otherwise the caller issues the step's operations and then calls [`Backend::end_step`].
    fn begin_step(&mut self, scalars: StepScalars, recording: Option<u64>) -> bool;

    /// Ends the step [`Backend::begin_step`] began; a recording backend runs what it recorded.
    fn end_step(&mut self) {}
}

/// Sums `buf` over the ranks of `comm` by copying it to the host, summing there with the
/// collective, and writing the sum back. Does nothing for a world of one.
pub fn all_reduce_on_host<B: Backend + ?Sized>(be: &mut B, buf: Buf, comm: &dyn Collective) {
    if comm.world() == 1 {
        return;
    }
    let mut host = vec![0.0; buf.len];
    be.read(buf, &mut host);
    comm.all_reduce_sum_f32(&mut host);
    be.write(buf, &host);
}

#[cfg(test)]
mod tests {
    use super::{AttentionDims, Buf, Device, Space};

    #[test]
    fn devices_parse_as_the_command_line_names_them() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn attention_saves_room_for_the_probabilities_or_the_kernels_statistics_and_bits() {
        let dims = |batch, seq| AttentionDims {
            batch,
            seq,
            heads: 4,
            head_dim: 64,
        };
        // ceil(seq / 32) words of bits for each of the batch · heads · seq query rows.
        assert_eq!(dims(2, 128).keep_words(), 2 * 4 * 128 * 4);
        assert_eq!(dims(2, 37).keep_words(), 2 * 4 * 37 * 2);
        // The CPU's probabilities are the larger from two tokens on; one token needs the
        // log-sum-exp and a word of bits for each row.
        assert_eq!(dims(2, 128).saved_len(), 2 * 4 * 128 * 128);
        assert_eq!(dims(2, 2).saved_len(), 2 * 4 * 2 * 2);
        assert_eq!(dims(2, 1).saved_len(), 2 * 4 * 2);
    }

    #[test]
    fn a_range_is_the_values_after_a_skip() {
        let b = Buf {
            space: Space::Act,
            offset: 100,
            len: 50,
        };
        let r = b.range(20, 30);
        assert_eq!((r.space, r.offset, r.len), (Space::Act, 120, 30));
        assert!(std::panic::catch_unwind(|| b.range(21, 30)).is_err());
    }
}
