//! Launchers of `kernels/attention.cu`: flash-style self-attention with the key-padding mask and
//! dropout on the probabilities, forward and backward (`dq`, then `dk`/`dv`), one kernel per head
//! size.

use super::kernels::{Arg, Kernel};
use super::memory::Dtype;
use super::{int, CudaBackend, MAX_GRID_YZ};
use crate::backend::{AttentionDims, AttentionOp};

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
            probs,
            dims,
            dropout,
        } = *op;
        let k = self.attention_kernels(dims).0;
        let AttentionDims {
            batch, seq, heads, ..
        } = dims;
        let (tokens, h) = (batch * seq, dims.hidden());
        if tokens == 0 {
            return;
        }
        self.check_attention(op);
        let qkv_p = self.input(qkv, Dtype::Bf16);
        let ctx_p = self.output(ctx.prefix(tokens * h), Dtype::Bf16, false);
        let lse = self.output(probs.prefix(batch * heads * seq), Dtype::F32, false);
        assert!(
            qkv_p.is_multiple_of(16) && ctx_p.is_multiple_of(16),
            "attention needs 16-byte aligned buffers"
        );
        let [p, s, site, dev_seed] = self.drop_args(dropout, dims.probs_per_sequence());
        let args = [
            Arg::Ptr(qkv_p),
            Arg::Ptr(self.iaddr(key_mask)),
            Arg::Ptr(ctx_p),
            Arg::Ptr(lse),
            Arg::I32(int(seq, "seq")),
            Arg::I32(int(heads, "heads")),
            p,
            s,
            site,
            dev_seed,
        ];
        self.run(
            k,
            (seq.div_ceil(ATT_TILE), heads, batch),
            ATT_THREADS,
            &args,
        );
    }

    pub(super) fn launch_attention_bwd(&mut self, op: &AttentionOp) {
        let AttentionOp {
            qkv,
            key_mask,
            ctx,
            probs,
            dims,
            dropout,
        } = *op;
        let (dctx, dqkv) = (ctx.grad(), qkv.grad());
        let (_, dq, dkdv) = self.attention_kernels(dims);
        let AttentionDims {
            batch, seq, heads, ..
        } = dims;
        let (tokens, h) = (batch * seq, dims.hidden());
        if tokens == 0 {
            return;
        }
        self.check_attention(op);
        assert!(dctx.len >= tokens * h && dqkv.len >= tokens * 3 * h);
        let stats = batch * heads * seq;
        let qkv_p = self.input(qkv, Dtype::Bf16);
        let ctx_p = self.input(ctx, Dtype::Bf16);
        let dctx_p = self.input(dctx, Dtype::Bf16);
        let lse = self.input(probs.prefix(stats), Dtype::F32);
        let delta = self.output(probs.grad().prefix(stats), Dtype::F32, false);
        let dqkv_p = self.output(dqkv.prefix(tokens * 3 * h), Dtype::Bf16, true);
        assert!(
            [qkv_p, ctx_p, dctx_p, dqkv_p]
                .iter()
                .all(|a| a.is_multiple_of(16)),
            "attention needs 16-byte aligned buffers"
        );
        let mask = self.iaddr(key_mask);
        let (seq_i, heads_i) = (int(seq, "seq"), int(heads, "heads"));
        let [p, s, site, dev_seed] = self.drop_args(dropout, dims.probs_per_sequence());
        let grid = (seq.div_ceil(ATT_TILE), heads, batch);
        let args = [
            Arg::Ptr(qkv_p),
            Arg::Ptr(mask),
            Arg::Ptr(ctx_p),
            Arg::Ptr(dctx_p),
            Arg::Ptr(lse),
            Arg::Ptr(delta),
            Arg::Ptr(dqkv_p),
            Arg::I32(seq_i),
            Arg::I32(heads_i),
            Arg::I32(1),
            p,
            s,
            site,
            dev_seed,
        ];
        self.run(dq, grid, ATT_THREADS, &args);
        let args = [
            Arg::Ptr(qkv_p),
            Arg::Ptr(mask),
            Arg::Ptr(dctx_p),
            Arg::Ptr(lse),
            Arg::Ptr(delta),
            Arg::Ptr(dqkv_p),
            Arg::I32(seq_i),
            Arg::I32(heads_i),
            Arg::I32(1),
            p,
            s,
            site,
            dev_seed,
        ];
        self.run(dkdv, grid, ATT_THREADS, &args);
    }

    /// The forward, dq and dk/dv kernels for a head size.
    fn attention_kernels(&self, d: AttentionDims) -> (Kernel, Kernel, Kernel) {
        let k = &self.kernels;
        match d.head_dim {
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
            other => panic!(
                "attention: head size {other} is not supported by the CUDA kernels (16, 32 or 64)"
            ),
        }
    }

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
            h.is_multiple_of(8),
            "attention: hidden size {h} is not a multiple of 8"
        );
        assert!(
            d.heads <= MAX_GRID_YZ && d.batch <= MAX_GRID_YZ,
            "attention: grid too large"
        );
        int(tokens * 3 * h, "batch·seq·3·hidden");
        assert!(
            qkv.len >= tokens * 3 * h && ctx.len >= tokens * h,
            "attention: buffers too short"
        );
        assert!(
            probs.len >= d.batch * d.heads * d.seq,
            "attention: no room for the row statistics"
        );
        assert!(key_mask.len >= tokens, "attention: key mask too short");
    }
}
