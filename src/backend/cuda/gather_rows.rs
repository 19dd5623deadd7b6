//! Launchers of `kernels/gather_rows.cu`: picking rows (the generator's masked positions, the
//! classifier's `[CLS]`) and scattering their gradients back.

use super::kernels::{Arg, Launcher};
use super::launch_args::checked_int;
use super::memory::Dtype;
use super::{CudaBackend, CudaError, MAX_GRID_YZ};
use crate::backend::GatherRowsOp;

/// `gather_rows_fwd`: bf16 `output[i] = input[rows[i]]`, `n` rows of `width`; or
/// `gather_rows_bwd`: `input[rows[i]] += output[i]` (the gradients, backward).
#[derive(Clone, Copy, Debug)]
pub(super) struct GatherRowsArgs {
    /// `x`, or `dx` backward.
    pub rows_of: u64,
    /// The u32 row indices.
    pub rows: u64,
    /// `out`, or `dout` backward.
    pub picked: u64,
    pub n: usize,
    pub width: usize,
}

/// A gather's launch shape: 1,024 columns a block, a row a grid row, and `n` and `width` as
/// kernel ints.
struct GatherShape {
    grid: (usize, usize, usize),
    n: i32,
    width: i32,
}

impl GatherRowsArgs {
    /// The launch shape; None when there is nothing to move.
    fn shape(&self) -> Result<Option<GatherShape>, CudaError> {
        if self.n == 0 || self.width == 0 {
            return Ok(None);
        }
        Ok(Some(GatherShape {
            grid: (self.width.div_ceil(1024), self.n.min(MAX_GRID_YZ), 1),
            n: checked_int(self.n, "rows")?,
            width: checked_int(self.width, "width")?,
        }))
    }
}

/// Launches `gather_rows_fwd` on `l`'s stream.
///
/// # Safety
/// The addresses hold what [`GatherRowsArgs`] describes, every index a row of `rows_of`.
pub(super) unsafe fn gather_rows_fwd(l: &Launcher, a: &GatherRowsArgs) -> Result<(), CudaError> {
    let Some(shape) = a.shape()? else {
        return Ok(());
    };
    let args = [
        Arg::Ptr(a.rows_of),
        Arg::Ptr(a.rows),
        Arg::Ptr(a.picked),
        Arg::I32(shape.n),
        Arg::I32(shape.width),
        Arg::Ptr(0),
    ];
    l.run(l.kernels.gather_rows_fwd, shape.grid, 128, &args)
}

/// Launches `gather_rows_bwd` on `l`'s stream, adding into the picked rows' gradients.
///
/// # Safety
/// As for [`gather_rows_fwd`].
pub(super) unsafe fn gather_rows_bwd(l: &Launcher, a: &GatherRowsArgs) -> Result<(), CudaError> {
    let Some(shape) = a.shape()? else {
        return Ok(());
    };
    let args = [
        Arg::Ptr(a.picked),
        Arg::Ptr(a.rows),
        Arg::Ptr(a.rows_of),
        Arg::I32(shape.n),
        Arg::I32(shape.width),
        Arg::I32(1),
        Arg::Ptr(0),
    ];
    l.run(l.kernels.gather_rows_bwd, shape.grid, 128, &args)
}

impl CudaBackend {
    pub(super) fn launch_gather_rows(&mut self, op: &GatherRowsOp) {
        let GatherRowsOp {
            x,
            rows,
            out,
            width,
        } = *op;
        let n = rows.len;
        if n == 0 || width == 0 {
            return;
        }
        assert!(out.len >= n * width, "gather_rows: {out:?} is too short");
        let args = GatherRowsArgs {
            rows_of: self.input(x, Dtype::Bf16),
            rows: self.iaddr(rows),
            picked: self.output(out, Dtype::Bf16, false),
            n,
            width,
        };
        // SAFETY: `out` holds the `n` rows (checked above); the indices are the batch's.
        Self::launched(unsafe { gather_rows_fwd(&self.launcher(), &args) });
    }

    pub(super) fn launch_gather_rows_bwd(&mut self, op: &GatherRowsOp) {
        let GatherRowsOp { rows, width, .. } = *op;
        let (dout, dx) = (op.out.grad(), op.x.grad());
        let n = rows.len;
        if n == 0 || width == 0 {
            return;
        }
        assert!(
            dout.len >= n * width,
            "gather_rows_bwd: {dout:?} is too short"
        );
        let args = GatherRowsArgs {
            picked: self.input(dout, Dtype::Bf16),
            rows: self.iaddr(rows),
            rows_of: self.output(dx, Dtype::Bf16, true),
            n,
            width,
        };
        // SAFETY: as forward.
        Self::launched(unsafe { gather_rows_bwd(&self.launcher(), &args) });
    }
}
