//! Launchers of `kernels/dropout.cu`: inverted dropout whose mask is drawn again in the backward
//! pass from the step's seed and the batch's first sequence, which the kernels read from the
//! step memory (`step.rs`).

use super::kernels::Arg;
use super::memory::Dtype;
use super::CudaBackend;
use crate::backend::{Dropout, DropoutOp};

impl CudaBackend {
    pub(super) fn launch_dropout_fwd(&mut self, op: &DropoutOp) {
        let (x, y, dropout) = (op.x, op.y, op.dropout);
        let n = y.len;
        assert!(x.len >= n, "dropout_fwd: {x:?} is shorter than {y:?}");
        if n == 0 {
            return;
        }
        let [p, s, site, dev_seed] = self.drop_args(Some(dropout), op.per_sequence());
        let args = [
            Arg::Ptr(self.input(x, Dtype::Bf16)),
            Arg::Ptr(self.output(y, Dtype::Bf16, false)),
            Arg::U64(n as u64),
            p,
            s,
            site,
            dev_seed,
        ];
        let blocks = n.div_ceil(4).div_ceil(256).min(8 * self.sms);
        self.run(self.kernels.dropout_fwd, (blocks, 1, 1), 256, &args);
    }

    pub(super) fn launch_dropout_bwd(&mut self, op: &DropoutOp) {
        let (dy, dx, dropout) = (op.y.grad(), op.x.grad(), op.dropout);
        let n = dx.len;
        assert!(dy.len >= n, "dropout_bwd: {dy:?} is shorter than {dx:?}");
        if n == 0 {
            return;
        }
        let [p, s, site, dev_seed] = self.drop_args(Some(dropout), op.per_sequence());
        let args = [
            Arg::Ptr(self.input(dy, Dtype::Bf16)),
            Arg::Ptr(self.output(dx, Dtype::Bf16, !op.overwrite_dx)),
            Arg::U64(n as u64),
            p,
            s,
            site,
            Arg::I32(i32::from(!op.overwrite_dx)),
            dev_seed,
        ];
        let blocks = n.div_ceil(4).div_ceil(256).min(8 * self.sms);
        self.run(self.kernels.dropout_bwd, (blocks, 1, 1), 256, &args);
    }

    /// A dropout's kernel arguments (see [`drop_args`]), reading the backend's step memory.
    pub(super) fn drop_args(&self, d: Option<Dropout>, per_sequence: u64) -> [Arg; 4] {
        drop_args(d, per_sequence, self.step_scalar(0))
    }
}

/// A dropout's kernel arguments: p (0 for none), the tensor's elements per sequence, the site,
/// and `step`, the step memory (which holds the step's seed and the batch's first sequence).
pub(super) fn drop_args(d: Option<Dropout>, per_sequence: u64, step: u64) -> [Arg; 4] {
    let d = d.unwrap_or(Dropout { p: 0.0, site: 0 });
    [
        Arg::F32(d.p),
        Arg::U64(per_sequence),
        Arg::U32(d.site),
        Arg::Ptr(step),
    ]
}
