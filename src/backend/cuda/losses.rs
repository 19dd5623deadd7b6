//! Launchers of the two losses and the replacement between them: `kernels/softmax_xent.cu` (the
//! generator's loss, its gradient and the argmax or Gumbel pick in one pass over each row) and
//! `kernels/sigmoid_bce.cu` (the discriminator's H → 1 projection, its loss and their backward in
//! one pass, and `replace_tokens`).

use super::kernels::Arg;
use super::memory::Dtype;
use super::{int, width_kernel, CudaBackend};
use crate::backend::{BceHeadOp, Pick, ReplaceTokensOp, SoftmaxXentOp};

/// Threads per row of the softmax cross-entropy.
const SX_THREADS: u32 = 512;
/// Tokens (warps) per block of the BCE head.
const BCE_WARPS: usize = 8;
/// Threads per block of the BCE head.
const BCE_THREADS: u32 = 256;

impl CudaBackend {
    pub(super) fn launch_softmax_xent(&mut self, op: &SoftmaxXentOp) {
        let SoftmaxXentOp {
            logits,
            row_stride,
            targets,
            row_loss,
            grad_scale,
            pick,
            rows,
            vocab,
        } = *op;
        if rows == 0 {
            return;
        }
        assert!(
            vocab > 0 && row_stride >= vocab && logits.len >= rows * row_stride,
            "softmax_xent: logits too short"
        );
        assert!(targets.len >= rows && row_loss.len >= rows);
        let (mode, picks) = match pick {
            None => (0, 0),
            Some((mode, picks)) => {
                assert!(picks.len >= rows, "softmax_xent: picks too short");
                let addr = self.iaddr(picks);
                match mode {
                    Pick::Argmax => (1, addr),
                    Pick::Gumbel => (2, addr),
                }
            }
        };
        let v = int(vocab, "vocab");
        let args = [
            Arg::Ptr(self.input(logits, Dtype::Bf16)),
            Arg::Ptr(self.output(logits.grad(), Dtype::Bf16, false)),
            Arg::I32(int(row_stride, "row stride")),
            Arg::Ptr(self.iaddr(targets)),
            Arg::Ptr(self.output(row_loss.prefix(rows), Dtype::F32, false)),
            Arg::F32(grad_scale),
            Arg::I32(mode),
            Arg::Ptr(picks),
            Arg::I32(int(rows, "rows")),
            Arg::I32(v),
            Arg::Ptr(0),
            Arg::Ptr(0),
            Arg::Ptr(self.step_scalar(0)),
        ];
        self.run(
            self.kernels.softmax_xent_fwd_bwd,
            (rows, 1, 1),
            SX_THREADS,
            &args,
        );
    }

    pub(super) fn launch_replace_tokens(&mut self, op: &ReplaceTokensOp) {
        let ReplaceTokensOp {
            original,
            positions,
            picks,
            corrupted,
            is_replaced,
        } = *op;
        let (tokens, n) = (original.len, positions.len);
        assert_eq!(corrupted.len, tokens, "replace_tokens: corrupted ids");
        assert_eq!(is_replaced.len, tokens, "replace_tokens: labels");
        assert!(picks.len >= n, "replace_tokens: picks too short");
        let args = [
            Arg::Ptr(self.iaddr(original)),
            Arg::Ptr(self.iaddr(positions)),
            Arg::Ptr(self.iaddr(picks)),
            Arg::Ptr(self.iaddr(corrupted)),
            Arg::Ptr(self.output(is_replaced, Dtype::F32, false)),
            Arg::I32(int(tokens, "tokens")),
            Arg::I32(int(n, "positions")),
            Arg::Ptr(0),
        ];
        self.run(self.kernels.replace_tokens, (1, 1, 1), 1024, &args);
    }

    pub(super) fn launch_bce_head(&mut self, op: &BceHeadOp) {
        let BceHeadOp {
            h,
            w,
            b,
            labels,
            mask,
            logits,
            row_loss,
            grad_scale,
        } = *op;
        let (tokens, width) = (row_loss.len, w.len);
        let k = width_kernel(
            self.kernels.sigmoid_bce_head_fwd_bwd_w256,
            self.kernels.sigmoid_bce_head_fwd_bwd_w1024,
            width,
            "bce_head",
        );
        if tokens == 0 {
            return;
        }
        assert_eq!(b.len, 1, "bce_head: one bias");
        assert!(h.len >= tokens * width && logits.len >= tokens);
        assert!(labels.len >= tokens && mask.len >= tokens);
        int(tokens * width, "tokens·hidden");
        let grid = tokens.div_ceil(BCE_WARPS).min(2 * self.sms);
        ensure!(self, partials)(4 * grid * (width + 1));
        let h = h.prefix(tokens * width);
        let args = [
            Arg::Ptr(self.input(h, Dtype::Bf16)),
            Arg::Ptr(self.input(w, Dtype::F32)),
            Arg::Ptr(self.input(b, Dtype::F32)),
            Arg::Ptr(self.input(labels, Dtype::F32)),
            Arg::Ptr(self.iaddr(mask)),
            Arg::Ptr(self.output(logits.prefix(tokens), Dtype::F32, false)),
            Arg::Ptr(self.output(row_loss, Dtype::F32, false)),
            Arg::Ptr(self.output(h.grad(), Dtype::Bf16, true)),
            Arg::Ptr(self.output(w.grad(), Dtype::F32, true)),
            Arg::Ptr(self.output(b.grad(), Dtype::F32, true)),
            Arg::Ptr(self.scratch.partials.ptr),
            Arg::Ptr(self.scratch.counters.ptr),
            Arg::F32(grad_scale),
            Arg::I32(int(tokens, "tokens")),
            Arg::I32(int(width, "hidden")),
            Arg::I32(1),
            Arg::Ptr(0),
        ];
        self.run(k, (grid, 1, 1), BCE_THREADS, &args);
    }
}
