//! Launchers of the two losses and the replacement between them: `kernels/softmax_xent.cu` (the
//! generator's loss, its gradient and the argmax or Gumbel pick in one pass over each row) and
//! `kernels/sigmoid_bce.cu` (the discriminator's H → 1 projection, its loss and their backward in
//! one pass, and `replace_tokens`), and `kernels/loss_sums.cu` (the sums of a step's metrics).

use super::kernels::{Arg, Launcher};
use super::launch_args::{checked_int, BceHeadArgs, SoftmaxXentArgs};
use super::memory::Dtype;
use super::partial_sums::{sum_partial_rows, PartialRows};
use super::{try_width_kernel, CudaBackend, CudaError};
use crate::backend::{BceHeadOp, LossSumsOp, Pick, ReplaceTokensOp, SoftmaxXentOp, LOSS_SUMS};

/// Threads per row of the softmax cross-entropy.
const SX_THREADS: u32 = 512;
/// Threads of `loss_sums`' one block (`LS_THREADS` in `kernels/loss_sums.cu`).
const LS_THREADS: u32 = 512;
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
            logits.len >= rows * row_stride,
            "softmax_xent: logits too short"
        );
        assert!(targets.len >= rows && row_loss.len >= rows);
        let (pick_mode, picks) = match pick {
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
        let a = SoftmaxXentArgs {
            logits: self.input(logits, Dtype::Bf16),
            dlogits: self.output(logits.grad(), Dtype::Bf16, false),
            ld: row_stride,
            targets: self.iaddr(targets),
            row_loss: self.output(row_loss.prefix(rows), Dtype::F32, false),
            grad_scale,
            pick_mode,
            picks,
            rows,
            vocab,
            step: self.step_scalar(0),
        };
        // SAFETY: the buffers were checked to hold `rows` rows above.
        Self::launched(unsafe { softmax_xent(&self.launcher(), &a) });
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
        let args = ReplaceTokensArgs {
            original: self.iaddr(original),
            positions: self.iaddr(positions),
            picks: self.iaddr(picks),
            corrupted: self.iaddr(corrupted),
            is_replaced: self.output(is_replaced, Dtype::F32, false),
            tokens,
            positions_len: n,
        };
        // SAFETY: the buffers hold `tokens` and `n` values (checked above).
        Self::launched(unsafe { replace_tokens(&self.launcher(), &args) });
    }

    pub(super) fn launch_loss_sums(&mut self, op: &LossSumsOp) {
        let LossSumsOp {
            gen_row_loss,
            disc_row_loss,
            disc_logits,
            is_replaced,
            mask,
            picks,
            targets,
            first,
        } = *op;
        let (masked, tokens) = op.sizes();
        let args = LossSumsArgs {
            gen_row_loss: self.input(gen_row_loss, Dtype::F32),
            disc_row_loss: self.input(disc_row_loss, Dtype::F32),
            disc_logits: self.input(disc_logits, Dtype::F32),
            is_replaced: self.input(is_replaced, Dtype::F32),
            mask: self.iaddr(mask),
            picks: picks.map_or(0, |p| self.iaddr(p)),
            targets: self.iaddr(targets),
            masked,
            tokens,
            first,
            sums: self.scratch.loss_sums.ptr,
        };
        // SAFETY: the buffers hold `masked` and `tokens` values (checked above), the scratch
        // LOSS_SUMS f64.
        Self::launched(unsafe { loss_sums(&self.launcher(), &args) });
    }

    /// The sums the last `loss_sums` launches left, read back.
    pub(super) fn fetch_loss_sums(&self) -> [f64; LOSS_SUMS] {
        let mut sums = [0.0f64; LOSS_SUMS];
        let src = self.scratch.loss_sums.ptr;
        // SAFETY: the scratch holds LOSS_SUMS f64.
        unsafe { self.read_back(src, &mut sums, format_args!("the step's loss sums")) };
        sums
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
        if tokens == 0 {
            return;
        }
        assert_eq!(b.len, 1, "bce_head: one bias");
        assert!(h.len >= tokens * width && logits.len >= tokens);
        assert!(labels.len >= tokens && mask.len >= tokens);
        ensure!(self, partials)(bce_head_scratch(self.sms, tokens, width));
        let h = h.prefix(tokens * width);
        let a = BceHeadArgs {
            h: self.input(h, Dtype::Bf16),
            w: self.input(w, Dtype::F32),
            b: self.input(b, Dtype::F32),
            labels: self.input(labels, Dtype::F32),
            mask: self.iaddr(mask),
            logits: self.output(logits.prefix(tokens), Dtype::F32, false),
            row_loss: self.output(row_loss, Dtype::F32, false),
            dh: self.output(h.grad(), Dtype::Bf16, true),
            dw: self.output(w.grad(), Dtype::F32, true),
            db: self.output(b.grad(), Dtype::F32, true),
            partials: self.scratch.partials.ptr,
            grad_scale,
            tokens,
            width,
        };
        // SAFETY: the buffers were checked to hold `tokens` rows above, the partials sized.
        Self::launched(unsafe { bce_head(&self.launcher(), &a) });
    }
}

/// Launches the generator's loss (`softmax_xent_fwd_bwd`, one block per row) on `l`'s stream
/// after checking the sizes.
///
/// # Safety
/// The addresses hold the tensors [`SoftmaxXentArgs`] describes.
pub(super) unsafe fn softmax_xent(l: &Launcher, a: &SoftmaxXentArgs) -> Result<(), CudaError> {
    let (ld, rows, vocab) = a.check()?;
    if a.rows == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(a.logits),
        Arg::Ptr(a.dlogits),
        Arg::I32(ld),
        Arg::Ptr(a.targets),
        Arg::Ptr(a.row_loss),
        Arg::F32(a.grad_scale),
        Arg::I32(a.pick_mode),
        Arg::Ptr(a.picks),
        Arg::I32(rows),
        Arg::I32(vocab),
        Arg::Ptr(0),
        Arg::Ptr(0),
        Arg::Ptr(a.step),
    ];
    l.run(
        l.kernels.softmax_xent_fwd_bwd,
        (a.rows, 1, 1),
        SX_THREADS,
        &args,
    )
}

/// The BCE head's grid for `tokens` on `sms` multiprocessors (fixed for a shape: its
/// reduction's order depends on it).
fn bce_grid(sms: usize, tokens: usize) -> usize {
    tokens.div_ceil(BCE_WARPS).min(2 * sms)
}

/// The bytes of f32 partial sums the BCE head's reduction of `dw` and `db` needs.
pub(super) fn bce_head_scratch(sms: usize, tokens: usize, width: usize) -> usize {
    4 * bce_grid(sms, tokens) * (width + 1)
}

/// Launches the discriminator's head and loss (`sigmoid_bce_head_fwd_bwd_w*`) on `l`'s stream
/// after checking the sizes.
///
/// # Safety
/// The addresses hold the tensors [`BceHeadArgs`] describes; `partials` holds
/// [`bce_head_scratch`] bytes.
pub(super) unsafe fn bce_head(l: &Launcher, a: &BceHeadArgs) -> Result<(), CudaError> {
    let k = try_width_kernel(
        l.kernels.sigmoid_bce_head_fwd_bwd_w256,
        l.kernels.sigmoid_bce_head_fwd_bwd_w1024,
        a.width,
        "bce_head",
    )?;
    let (tokens, width) = a.check()?;
    if a.tokens == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(a.h),
        Arg::Ptr(a.w),
        Arg::Ptr(a.b),
        Arg::Ptr(a.labels),
        Arg::Ptr(a.mask),
        Arg::Ptr(a.logits),
        Arg::Ptr(a.row_loss),
        Arg::Ptr(a.dh),
        Arg::Ptr(a.partials),
        Arg::F32(a.grad_scale),
        Arg::I32(tokens),
        Arg::I32(width),
        Arg::I32(1),
        Arg::Ptr(0),
    ];
    let grid = bce_grid(l.sms, a.tokens);
    l.run(k, (grid, 1, 1), BCE_THREADS, &args)?;
    // Each block's row [dw | db] of partial sums, added into dw and db.
    let rows = PartialRows {
        partials: a.partials,
        parts: grid,
        ld: a.width + 1,
        cols: a.width + 1,
        split: a.width,
        out_a: a.dw,
        out_b: a.db,
    };
    sum_partial_rows(l, &rows)
}

/// `replace_tokens`: u32 `corrupted [tokens]` is `original` with `picks[i]` at `positions[i]`
/// (`positions_len` of them), f32 `is_replaced [tokens]` 1 where the pick differs.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReplaceTokensArgs {
    pub original: u64,
    pub positions: u64,
    pub picks: u64,
    pub corrupted: u64,
    pub is_replaced: u64,
    pub tokens: usize,
    pub positions_len: usize,
}

/// Launches `replace_tokens` (one block) on `l`'s stream.
///
/// # Safety
/// The addresses hold what [`ReplaceTokensArgs`] describes, every position below `tokens`.
pub(super) unsafe fn replace_tokens(l: &Launcher, a: &ReplaceTokensArgs) -> Result<(), CudaError> {
    let args = [
        Arg::Ptr(a.original),
        Arg::Ptr(a.positions),
        Arg::Ptr(a.picks),
        Arg::Ptr(a.corrupted),
        Arg::Ptr(a.is_replaced),
        Arg::I32(checked_int(a.tokens, "tokens")?),
        Arg::I32(checked_int(a.positions_len, "positions")?),
        Arg::Ptr(0),
    ];
    l.run(l.kernels.replace_tokens, (1, 1, 1), 1024, &args)
}

/// `loss_sums`: the [`LossSumsOp`] sums over f32 `gen_row_loss [masked]`, f32 `disc_row_loss`,
/// `disc_logits`, `is_replaced` and u32 `mask [tokens]`, u32 `picks` (0 for none) and `targets
/// [masked]`, into f64 `sums [LOSS_SUMS]`, overwritten when `first`, else added to.
#[derive(Clone, Copy, Debug)]
pub(super) struct LossSumsArgs {
    pub gen_row_loss: u64,
    pub disc_row_loss: u64,
    pub disc_logits: u64,
    pub is_replaced: u64,
    pub mask: u64,
    pub picks: u64,
    pub targets: u64,
    pub masked: usize,
    pub tokens: usize,
    pub first: bool,
    pub sums: u64,
}

/// Launches `loss_sums` (one block) on `l`'s stream.
///
/// # Safety
/// The addresses hold what [`LossSumsArgs`] describes.
pub(super) unsafe fn loss_sums(l: &Launcher, a: &LossSumsArgs) -> Result<(), CudaError> {
    let args = [
        Arg::Ptr(a.gen_row_loss),
        Arg::Ptr(a.disc_row_loss),
        Arg::Ptr(a.disc_logits),
        Arg::Ptr(a.is_replaced),
        Arg::Ptr(a.mask),
        Arg::Ptr(a.picks),
        Arg::Ptr(a.targets),
        Arg::I32(checked_int(a.masked, "masked rows")?),
        Arg::I32(checked_int(a.tokens, "tokens")?),
        Arg::I32(i32::from(!a.first)),
        Arg::Ptr(a.sums),
    ];
    l.run(l.kernels.loss_sums, (1, 1, 1), LS_THREADS, &args)
}
