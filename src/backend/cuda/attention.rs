//! Launchers of `kernels/attention.cu`: flash-style self-attention with the key-padding mask and
//! dropout on the probabilities, forward and backward (`dq`, then `dk`/`dv`), one kernel per head
//! size. The engine resolves its buffers here; [`attention_fwd`] and [`attention_bwd`] check the
//! addresses and sizes and launch, for the engine and for the C ABI's device ops alike.

use super::dropout::drop_args;
use super::kernels::{Arg, Kernel, Kernels, Launcher};
use super::launch_args::{AttentionBwdArgs, AttentionFwdArgs};
use super::memory::Dtype;
use super::{CudaBackend, CudaError};
use crate::backend::{AttentionDims, AttentionOp, Buf};

/// Queries (and keys) per tile.
const ATT_TILE: usize = 64;
/// Threads per block.
const ATT_THREADS: u32 = 128;

impl CudaBackend {
    pub(super) fn launch_attention_fwd(&mut self, op: &AttentionOp) {
        let AttentionOp {
            qkv,
            key_mask,
            ctx,
            dims,
            dropout,
            ..
        } = *op;
        let AttentionDims { batch, seq, .. } = dims;
        let (tokens, h) = (batch * seq, dims.hidden());
        if tokens == 0 {
            return;
        }
        self.check_attention(op);
        let (lse, keep_bits) = saved(op);
        let a = AttentionFwdArgs {
            qkv: self.input(qkv, Dtype::Bf16),
            key_mask: self.iaddr(key_mask),
            ctx: self.output(ctx.prefix(tokens * h), Dtype::Bf16, false),
            lse: self.output(lse, Dtype::F32, false),
            keep_bits: keep_bits.map_or(0, |bits| self.output(bits, Dtype::F32, false)),
            dims,
            dropout,
            step: self.step_scalar(0),
        };
        // SAFETY: `check_attention` checked that the buffers hold the shapes `dims` describes.
        Self::launched(unsafe { attention_fwd(&self.launcher(), &a) });
    }

    pub(super) fn launch_attention_bwd(&mut self, op: &AttentionOp) {
        let AttentionOp {
            qkv,
            key_mask,
            ctx,
            probs,
            dims,
            dropout,
            overwrite_dqkv,
        } = *op;
        let (dctx, dqkv) = (ctx.grad(), qkv.grad());
        let AttentionDims { batch, seq, .. } = dims;
        let (tokens, h) = (batch * seq, dims.hidden());
        if tokens == 0 {
            return;
        }
        self.check_attention(op);
        assert!(dctx.len >= tokens * h && dqkv.len >= tokens * 3 * h);
        let (lse, keep_bits) = saved(op);
        let a = AttentionBwdArgs {
            qkv: self.input(qkv, Dtype::Bf16),
            key_mask: self.iaddr(key_mask),
            ctx: self.input(ctx, Dtype::Bf16),
            dctx: self.input(dctx, Dtype::Bf16),
            lse: self.input(lse, Dtype::F32),
            keep_bits: keep_bits.map_or(0, |bits| self.input(bits, Dtype::F32)),
            delta: self.output(probs.grad().prefix(lse.len), Dtype::F32, false),
            dqkv: self.output(dqkv.prefix(tokens * 3 * h), Dtype::Bf16, !overwrite_dqkv),
            dims,
            dropout,
            step: self.step_scalar(0),
            overwrite_dqkv,
        };
        // SAFETY: as in the forward pass, and the gradients were checked above.
        Self::launched(unsafe { attention_bwd(&self.launcher(), &a) });
    }

    /// The engine's buffers hold what `op.dims` describes.
    fn check_attention(&self, op: &AttentionOp) {
        let AttentionOp {
            qkv,
            key_mask,
            ctx,
            probs,
            dims: d,
            ..
        } = *op;
        let (tokens, h) = (d.batch * d.seq, d.hidden());
        assert!(
            qkv.len >= tokens * 3 * h && ctx.len >= tokens * h,
            "attention: buffers too short"
        );
        assert!(
            probs.len >= d.saved_len(),
            "attention: no room for the row statistics and the dropout mask"
        );
        assert!(key_mask.len >= tokens, "attention: key mask too short");
    }
}

/// Where `op.probs` keeps what the backward reads: the log-sum-exp of each query row, then (with
/// dropout) the mask as bits, u32 words in the buffer's 4-byte slots.
fn saved(op: &AttentionOp) -> (Buf, Option<Buf>) {
    let d = op.dims;
    let rows = d.batch * d.heads * d.seq;
    let bits = op.dropout.map(|_| op.probs.range(rows, d.keep_words()));
    (op.probs.prefix(rows), bits)
}

/// The forward, dq and dk/dv kernels for a head size.
fn attention_kernels(k: &Kernels, d: AttentionDims) -> Result<(Kernel, Kernel, Kernel), CudaError> {
    Ok(match d.head_dim {
        16 => (
            k.attention_fwd_d16,
            k.attention_bwd_dq_d16,
            k.attention_bwd_dkdv_d16,
        ),
        32 => (
            k.attention_fwd_d32,
            k.attention_bwd_dq_d32,
            k.attention_bwd_dkdv_d32,
        ),
        64 => (
            k.attention_fwd_d64,
            k.attention_bwd_dq_d64,
            k.attention_bwd_dkdv_d64,
        ),
        other => {
            return Err(CudaError::Unsupported(format!(
                "attention: head size {other} is not supported by the CUDA kernels (16, 32 or 64)"
            )))
        }
    })
}

/// Launches the attention forward pass on `l`'s stream after checking `a`
/// ([`AttentionFwdArgs::check`]).
///
/// # Safety
/// The addresses hold the tensors [`AttentionFwdArgs`] describes for `a.dims`.
pub(super) unsafe fn attention_fwd(l: &Launcher, a: &AttentionFwdArgs) -> Result<(), CudaError> {
    let d = a.dims;
    let (seq, heads) = a.check()?;
    let (fwd, _, _) = attention_kernels(l.kernels, d)?;
    if d.batch * d.seq == 0 {
        return Ok(());
    }
    let [p, s, site, step] = drop_args(a.dropout, d.probs_per_sequence(), a.step);
    let args = [
        Arg::Ptr(a.qkv),
        Arg::Ptr(a.key_mask),
        Arg::Ptr(a.ctx),
        Arg::Ptr(a.lse),
        Arg::Ptr(a.keep_bits),
        Arg::I32(seq),
        Arg::I32(heads),
        p,
        s,
        site,
        step,
    ];
    let grid = (d.seq.div_ceil(ATT_TILE), d.heads, d.batch);
    l.run(fwd, grid, ATT_THREADS, &args)
}

/// Launches the attention backward pass (`dq`, then `dk`/`dv`) on `l`'s stream after checking
/// `a` ([`AttentionBwdArgs::check`]).
///
/// # Safety
/// The addresses hold the tensors [`AttentionBwdArgs`] describes for `a.dims`.
pub(super) unsafe fn attention_bwd(l: &Launcher, a: &AttentionBwdArgs) -> Result<(), CudaError> {
    let d = a.dims;
    let (seq, heads) = a.check()?;
    let (_, dq, dkdv) = attention_kernels(l.kernels, d)?;
    if d.batch * d.seq == 0 {
        return Ok(());
    }
    let [p, s, site, step] = drop_args(a.dropout, d.probs_per_sequence(), a.step);
    let grid = (d.seq.div_ceil(ATT_TILE), d.heads, d.batch);
    let args = [
        Arg::Ptr(a.qkv),
        Arg::Ptr(a.key_mask),
        Arg::Ptr(a.ctx),
        Arg::Ptr(a.dctx),
        Arg::Ptr(a.lse),
        Arg::Ptr(a.keep_bits),
        Arg::Ptr(a.delta),
        Arg::Ptr(a.dqkv),
        Arg::I32(seq),
        Arg::I32(heads),
        Arg::I32(i32::from(!a.overwrite_dqkv)),
        p,
        s,
        site,
        step,
    ];
    l.run(dq, grid, ATT_THREADS, &args)?;
    let args = [
        Arg::Ptr(a.qkv),
        Arg::Ptr(a.key_mask),
        Arg::Ptr(a.dctx),
        Arg::Ptr(a.lse),
        Arg::Ptr(a.keep_bits),
        Arg::Ptr(a.delta),
        Arg::Ptr(a.dqkv),
        Arg::I32(seq),
        Arg::I32(heads),
        Arg::I32(i32::from(!a.overwrite_dqkv)),
        p,
        s,
        site,
        step,
    ];
    l.run(dkdv, grid, ATT_THREADS, &args)
}
