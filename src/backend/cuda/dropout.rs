//! Launchers of `kernels/dropout.cu`: inverted dropout whose mask is drawn again in the backward
//! pass from the step's seed and the batch's first sequence, which the kernels read from the
//! step memory (`step.rs`).

use super::kernels::{Arg, Kernel, Launcher};
use super::memory::Dtype;
use super::{CudaBackend, CudaError};
use crate::backend::{Dropout, DropoutOp};

/// `dropout_fwd` / `dropout_bwd` on `n` bf16 values: `y = dropout(x)`, or `dx (+)= dropout'(dy)`
/// with the same mask, drawn from the step memory `step` and each element's place in its
/// sequence (`per_sequence` elements each).
#[derive(Clone, Copy, Debug)]
pub(super) struct DropoutArgs {
    /// `x`, or `dy` backward.
    pub input: u64,
    /// `y`, or `dx` backward.
    pub output: u64,
    pub n: usize,
    pub dropout: Dropout,
    pub per_sequence: u64,
    pub step: u64,
    /// Backward only: set `dx` rather than add to it.
    pub overwrite: bool,
}

/// Launches `dropout_fwd` on `l`'s stream.
///
/// # Safety
/// The addresses hold the values [`DropoutArgs`] describes.
pub(super) unsafe fn dropout_fwd(l: &Launcher, a: &DropoutArgs) -> Result<(), CudaError> {
    run_dropout(l, l.kernels.dropout_fwd, a, None)
}

/// Launches `dropout_bwd` on `l`'s stream.
///
/// # Safety
/// As for [`dropout_fwd`].
pub(super) unsafe fn dropout_bwd(l: &Launcher, a: &DropoutArgs) -> Result<(), CudaError> {
    run_dropout(l, l.kernels.dropout_bwd, a, Some(!a.overwrite))
}

/// Launches either dropout kernel, four values a thread, at most eight blocks a multiprocessor.
/// Their parameters differ only in the backward's `accumulate` flag before the step memory.
unsafe fn run_dropout(
    l: &Launcher,
    k: Kernel,
    a: &DropoutArgs,
    accumulate: Option<bool>,
) -> Result<(), CudaError> {
    if a.n == 0 {
        return Ok(());
    }
    let [p, s, site, step] = drop_args(Some(a.dropout), a.per_sequence, a.step);
    let mut args = [
        Arg::Ptr(a.input),
        Arg::Ptr(a.output),
        Arg::U64(a.n as u64),
        p,
        s,
        site,
        step,
        step,
    ];
    // The backward's flag goes before the step memory, which then moves one place on.
    let count = match accumulate {
        Some(acc) => {
            args[6] = Arg::I32(i32::from(acc));
            8
        }
        None => 7,
    };
    let blocks = a.n.div_ceil(4).div_ceil(256).min(8 * l.sms);
    l.run(k, (blocks, 1, 1), 256, &args[..count])
}

impl CudaBackend {
    pub(super) fn launch_dropout_fwd(&mut self, op: &DropoutOp) {
        let (x, y) = (op.x, op.y);
        assert!(x.len >= y.len, "dropout_fwd: {x:?} is shorter than {y:?}");
        if y.len == 0 {
            return;
        }
        let args = DropoutArgs {
            input: self.input(x, Dtype::Bf16),
            output: self.output(y, Dtype::Bf16, false),
            n: y.len,
            dropout: op.dropout,
            per_sequence: op.per_sequence(),
            step: self.step_scalar(0),
            overwrite: true,
        };
        // SAFETY: both buffers hold `n` values (checked above).
        Self::launched(unsafe { dropout_fwd(&self.launcher(), &args) });
    }

    pub(super) fn launch_dropout_bwd(&mut self, op: &DropoutOp) {
        let (dy, dx) = (op.y.grad(), op.x.grad());
        assert!(
            dy.len >= dx.len,
            "dropout_bwd: {dy:?} is shorter than {dx:?}"
        );
        if dx.len == 0 {
            return;
        }
        let args = DropoutArgs {
            input: self.input(dy, Dtype::Bf16),
            output: self.output(dx, Dtype::Bf16, !op.overwrite_dx),
            n: dx.len,
            dropout: op.dropout,
            per_sequence: op.per_sequence(),
            step: self.step_scalar(0),
            overwrite: op.overwrite_dx,
        };
        // SAFETY: both buffers hold `n` values (checked above).
        Self::launched(unsafe { dropout_bwd(&self.launcher(), &args) });
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
