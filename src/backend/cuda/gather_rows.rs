//! Launchers of `kernels/gather_rows.cu`: picking rows (the generator's masked positions, the
//! classifier's `[CLS]`) and scattering their gradients back.

use super::kernels::Arg;
use super::memory::Dtype;
use super::{int, CudaBackend, MAX_GRID_YZ};
use crate::backend::GatherRowsOp;

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
        let args = [
            Arg::Ptr(self.input(x, Dtype::Bf16)),
            Arg::Ptr(self.iaddr(rows)),
            Arg::Ptr(self.output(out, Dtype::Bf16, false)),
            Arg::I32(int(n, "rows")),
            Arg::I32(int(width, "width")),
            Arg::Ptr(0),
        ];
        let grid = (width.div_ceil(1024), n.min(MAX_GRID_YZ), 1);
        self.run(self.kernels.gather_rows_fwd, grid, 128, &args);
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
        let args = [
            Arg::Ptr(self.input(dout, Dtype::Bf16)),
            Arg::Ptr(self.iaddr(rows)),
            Arg::Ptr(self.output(dx, Dtype::Bf16, true)),
            Arg::I32(int(n, "rows")),
            Arg::I32(int(width, "width")),
            Arg::I32(1),
            Arg::Ptr(0),
        ];
        let grid = (width.div_ceil(1024), n.min(MAX_GRID_YZ), 1);
        self.run(self.kernels.gather_rows_bwd, grid, 128, &args);
    }
}
