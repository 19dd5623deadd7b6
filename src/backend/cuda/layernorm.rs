//! Launchers of `kernels/layernorm_residual.cu`: `y = LayerNorm(x + residual)` and its backward,
//! one row per warp.

use super::kernels::Arg;
use super::memory::Dtype;
use super::{int, width_kernel, CudaBackend};
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
        } = *op;
        let k = width_kernel(
            self.kernels.layernorm_residual_fwd_w256,
            self.kernels.layernorm_residual_fwd_w1024,
            width,
            "layernorm_fwd",
        );
        if rows == 0 {
            return;
        }
        let n = rows * width;
        assert!(x.len >= n && y.len >= n && saved.xhat.len >= n && saved.rstd.len >= rows);
        assert!(residual.is_none_or(|r| r.len >= n));
        assert!(p.gain.len >= width && p.bias.len >= width);
        let args = [
            Arg::Ptr(self.input(x, Dtype::Bf16)),
            Arg::Ptr(residual.map_or(0, |r| self.input(r, Dtype::Bf16))),
            Arg::Ptr(self.input(p.gain, Dtype::F32)),
            Arg::Ptr(self.input(p.bias, Dtype::F32)),
            Arg::Ptr(self.output(y, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.xhat, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.rstd, Dtype::F32, false)),
            Arg::Ptr(0),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(width, "width")),
            Arg::F32(p.eps),
            Arg::Ptr(0),
        ];
        self.run(k, (self.ln_grid(rows), 1, 1), LN_THREADS, &args);
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
        } = *op;
        let (dy, dx, dresidual) = (y.grad(), x.grad(), residual.map(Buf::grad));
        let k = width_kernel(
            self.kernels.layernorm_residual_bwd_w256,
            self.kernels.layernorm_residual_bwd_w1024,
            width,
            "layernorm_bwd",
        );
        if rows == 0 {
            return;
        }
        let n = rows * width;
        assert!(dy.len >= n && dx.len >= n && saved.xhat.len >= n && saved.rstd.len >= rows);
        assert!(dresidual.is_none_or(|r| r.len >= n));
        assert!(p.gain.len >= width && p.bias.len >= width);
        let grid = self.ln_grid(rows);
        ensure!(self, partials)(4 * grid * 2 * width);
        let args = [
            Arg::Ptr(self.input(dy, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.xhat, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.rstd, Dtype::F32)),
            Arg::Ptr(self.input(p.gain, Dtype::F32)),
            Arg::Ptr(self.output(dx, Dtype::Bf16, true)),
            Arg::Ptr(dresidual.map_or(0, |r| self.output(r, Dtype::Bf16, true))),
            Arg::Ptr(self.output(p.gain.grad(), Dtype::F32, true)),
            Arg::Ptr(self.output(p.bias.grad(), Dtype::F32, true)),
            Arg::Ptr(self.scratch.partials.ptr),
            Arg::Ptr(self.scratch.counters.ptr),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(width, "width")),
            Arg::I32(1),
            Arg::Ptr(0),
        ];
        self.run(k, (grid, 1, 1), LN_THREADS, &args);
    }

    /// The LayerNorm kernels' grid for `rows` rows: one row per warp per step, at most two
    /// blocks per multiprocessor, and fixed for a shape (their reductions depend on it).
    pub(super) fn ln_grid(&self, rows: usize) -> usize {
        rows.div_ceil(LN_WARPS).clamp(1, 2 * self.sms)
    }
}
