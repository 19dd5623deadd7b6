//! Launchers of `kernels/layernorm_residual.cu`: `y = LayerNorm(dropout(x) + residual)` and its
//! backward, one row per warp. The engine resolves its buffers here; [`layernorm_fwd`] and
//! [`layernorm_bwd`] check the sizes and launch, for the engine and the C ABI's device ops.

use super::dropout::drop_args;
use super::kernels::{Arg, Launcher};
use super::launch_args::{LayerNormBwdArgs, LayerNormFwdArgs};
use super::memory::Dtype;
use super::partial_sums::{sum_partial_rows, PartialRows};
use super::{try_width_kernel, CudaBackend, CudaError};
use crate::backend::{Buf, LayerNormOp};

/// Rows (warps) per block of the LayerNorm, embedding and head kernels.
const LN_WARPS: usize = 8;
/// Threads per block of the LayerNorm and embedding kernels.
pub(super) const LN_THREADS: u32 = 256;

impl CudaBackend {
    pub(super) fn launch_layernorm_fwd(&mut self, op: &LayerNormOp) {
        let LayerNormOp {
            x,
            residual,
            params: ref p,
            y,
            saved,
            rows,
            width,
            ..
        } = *op;
        if rows == 0 {
            return;
        }
        let n = rows * width;
        assert!(x.len >= n && y.len >= n && saved.xhat.len >= n && saved.rstd.len >= rows);
        assert!(residual.is_none_or(|r| r.len >= n));
        assert!(p.gain.len >= width && p.bias.len >= width);
        let a = LayerNormFwdArgs {
            x: self.input(x, Dtype::Bf16),
            residual: residual.map_or(0, |r| self.input(r, Dtype::Bf16)),
            gain: self.input(p.gain, Dtype::F32),
            bias: self.input(p.bias, Dtype::F32),
            y: self.output(y, Dtype::Bf16, false),
            xhat: self.output(saved.xhat, Dtype::Bf16, false),
            rstd: self.output(saved.rstd, Dtype::F32, false),
            rows,
            width,
            eps: p.eps,
            dropout: op.dropout,
            per_sequence: op.per_sequence(),
            step: self.step_scalar(0),
        };
        // SAFETY: the buffers were checked to hold `rows` rows of `width` above.
        Self::launched(unsafe { layernorm_fwd(&self.launcher(), &a) });
    }

    pub(super) fn launch_layernorm_bwd(&mut self, op: &LayerNormOp) {
        let LayerNormOp {
            x,
            residual,
            params: ref p,
            y,
            saved,
            rows,
            width,
            overwrite_dx,
            overwrite_dresidual,
            ..
        } = *op;
        let (dy, dx, dresidual) = (y.grad(), x.grad(), residual.map(Buf::grad));
        if rows == 0 {
            return;
        }
        let n = rows * width;
        assert!(dy.len >= n && dx.len >= n && saved.xhat.len >= n && saved.rstd.len >= rows);
        assert!(dresidual.is_none_or(|r| r.len >= n));
        assert!(p.gain.len >= width && p.bias.len >= width);
        ensure!(self, partials)(layernorm_bwd_scratch(self.sms, rows, width));
        let a = LayerNormBwdArgs {
            dy: self.input(dy, Dtype::Bf16),
            xhat: self.input(saved.xhat, Dtype::Bf16),
            rstd: self.input(saved.rstd, Dtype::F32),
            gain: self.input(p.gain, Dtype::F32),
            dx: self.output(dx, Dtype::Bf16, !overwrite_dx),
            dresidual: dresidual.map_or(0, |r| self.output(r, Dtype::Bf16, !overwrite_dresidual)),
            dgain: self.output(p.gain.grad(), Dtype::F32, true),
            dbias: self.output(p.bias.grad(), Dtype::F32, true),
            partials: self.scratch.partials.ptr,
            rows,
            width,
            overwrite_dx,
            overwrite_dresidual,
            dropout: op.dropout,
            per_sequence: op.per_sequence(),
            step: self.step_scalar(0),
        };
        // SAFETY: as in the forward pass, and the partials were sized for this shape.
        Self::launched(unsafe { layernorm_bwd(&self.launcher(), &a) });
    }
}

/// The backward LayerNorm kernels' grid for `rows` rows on `sms` multiprocessors: one row per
/// warp per step, at most two blocks per multiprocessor (each block leaves a partial row of the
/// gain and bias gradients, which [`sum_norm_partials`] adds up), and fixed for a shape (their
/// reductions depend on it).
pub(super) fn ln_grid(sms: usize, rows: usize) -> usize {
    rows.div_ceil(LN_WARPS).clamp(1, 2 * sms)
}

/// The forward LayerNorm kernels' grid: one warp per row. They sum nothing across rows, so their
/// results do not depend on the grid, and a warp's next row would wait for this row's statistics:
/// as many warps as rows keep the most loads in flight.
pub(super) fn ln_fwd_grid(rows: usize) -> usize {
    rows.div_ceil(LN_WARPS).max(1)
}

/// The bytes of f32 partial sums the backward's gain and bias reduction needs.
pub(super) fn layernorm_bwd_scratch(sms: usize, rows: usize, width: usize) -> usize {
    4 * ln_grid(sms, rows) * 2 * width
}

/// Launches the residual + LayerNorm forward pass on `l`'s stream after checking the width.
///
/// # Safety
/// The addresses hold the tensors [`LayerNormFwdArgs`] describes.
pub(super) unsafe fn layernorm_fwd(l: &Launcher, a: &LayerNormFwdArgs) -> Result<(), CudaError> {
    let k = try_width_kernel(
        l.kernels.layernorm_residual_fwd_w256,
        l.kernels.layernorm_residual_fwd_w1024,
        a.width,
        "layernorm_fwd",
    )?;
    let (rows, width) = a.check()?;
    if a.rows == 0 {
        return Ok(());
    }
    let [p, s, site, step] = drop_args(a.dropout, a.per_sequence, a.step);
    let args = [
        Arg::Ptr(a.x),
        Arg::Ptr(a.residual),
        Arg::Ptr(a.gain),
        Arg::Ptr(a.bias),
        Arg::Ptr(a.y),
        Arg::Ptr(a.xhat),
        Arg::Ptr(a.rstd),
        Arg::Ptr(0),
        Arg::I32(rows),
        Arg::I32(width),
        Arg::F32(a.eps),
        p,
        s,
        site,
        step,
        Arg::Ptr(0),
    ];
    l.run(k, (ln_fwd_grid(a.rows), 1, 1), LN_THREADS, &args)
}

/// Launches the residual + LayerNorm backward pass on `l`'s stream after checking the width, then
/// the sums of its partial rows into the gain's and bias's gradients.
///
/// # Safety
/// The addresses hold the tensors [`LayerNormBwdArgs`] describes, and `partials` holds
/// [`layernorm_bwd_scratch`] bytes.
pub(super) unsafe fn layernorm_bwd(l: &Launcher, a: &LayerNormBwdArgs) -> Result<(), CudaError> {
    let k = try_width_kernel(
        l.kernels.layernorm_residual_bwd_w256,
        l.kernels.layernorm_residual_bwd_w1024,
        a.width,
        "layernorm_bwd",
    )?;
    let (rows, width) = a.check()?;
    if a.rows == 0 {
        return Ok(());
    }
    let [p, s, site, step] = drop_args(a.dropout, a.per_sequence, a.step);
    let args = [
        Arg::Ptr(a.dy),
        Arg::Ptr(a.xhat),
        Arg::Ptr(a.rstd),
        Arg::Ptr(a.gain),
        Arg::Ptr(a.dx),
        Arg::Ptr(a.dresidual),
        Arg::Ptr(a.partials),
        Arg::I32(rows),
        Arg::I32(width),
        Arg::I32(i32::from(!a.overwrite_dx)),
        Arg::I32(i32::from(!a.overwrite_dresidual)),
        p,
        s,
        site,
        step,
        Arg::Ptr(0),
    ];
    let grid = ln_grid(l.sms, a.rows);
    l.run(k, (grid, 1, 1), LN_THREADS, &args)?;
    sum_norm_partials(l, a.partials, grid, a.width, (a.dgain, a.dbias))
}

/// Adds the `parts` partial rows a LayerNorm backward left (`[gain's | bias's]`, `2 · width`
/// each) into the gain's and bias's gradients.
///
/// # Safety
/// `partials` holds the rows; `dgain` and `dbias` `width` floats each.
pub(super) unsafe fn sum_norm_partials(
    l: &Launcher,
    partials: u64,
    parts: usize,
    width: usize,
    (dgain, dbias): (u64, u64),
) -> Result<(), CudaError> {
    let rows = PartialRows {
        partials,
        parts,
        ld: 2 * width,
        cols: 2 * width,
        split: width,
        out_a: dgain,
        out_b: dbias,
    };
    sum_partial_rows(l, &rows)
}
