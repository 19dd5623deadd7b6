//! Launcher of `kernels/partial_sums.cu`: the column sums that finish the bias gradients of the
//! linear layers and the gain and bias gradients of the LayerNorms, whose kernels leave one row
//! of partial sums per block.

use super::kernels::{Arg, Launcher};
use super::launch_args::checked_int;
use super::CudaError;

/// Threads per block of `sum_partial_rows`: 8 warps, each over every 8th partial row.
const PS_THREADS: u32 = 256;
/// Columns per block: one per lane.
const PS_COLS: usize = 32;

/// `parts` rows of partial sums at `partials`, `ld` floats apart, whose first `cols` columns are
/// added up: columns below `split` into `out_a`, the rest into `out_b` (0 when `split == cols`).
#[derive(Clone, Copy, Debug)]
pub(super) struct PartialRows {
    pub partials: u64,
    pub parts: usize,
    pub ld: usize,
    pub cols: usize,
    pub split: usize,
    pub out_a: u64,
    pub out_b: u64,
}

/// Adds each column of the partial rows into its output (`out += Σ partials`, in the kernel's
/// fixed order), on `l`'s stream after the kernel that wrote them.
///
/// # Safety
/// `partials` holds `parts` rows of `ld` floats, `out_a` `split` floats and `out_b`
/// `cols − split`.
pub(super) unsafe fn sum_partial_rows(l: &Launcher, a: &PartialRows) -> Result<(), CudaError> {
    assert!(
        a.split <= a.cols && a.cols <= a.ld,
        "sum_partial_rows: {a:?}"
    );
    assert!(
        a.out_b != 0 || a.split == a.cols,
        "sum_partial_rows: {a:?} has no out_b"
    );
    // The kernel's offsets are 64-bit; its counts are ints.
    let args = [
        Arg::Ptr(a.partials),
        Arg::I32(checked_int(a.parts, "partial rows")?),
        Arg::I32(checked_int(a.ld, "partial row length")?),
        Arg::I32(checked_int(a.cols, "partial columns")?),
        Arg::I32(checked_int(a.split, "partial columns of the first output")?),
        Arg::Ptr(a.out_a),
        Arg::Ptr(a.out_b),
    ];
    l.run(
        l.kernels.sum_partial_rows,
        (a.cols.div_ceil(PS_COLS), 1, 1),
        PS_THREADS,
        &args,
    )
}
