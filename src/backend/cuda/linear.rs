//! Launchers of the linear layers: cuBLASLt for the products (`blas.rs`) and
//! `kernels/bias_gelu.cu` for the bias and GELU around them. The engine resolves its buffers
//! here; [`linear_fwd`] and [`linear_bwd`] check them and launch, for the engine and the C
//! ABI's device ops.

use cudarc::driver::result;

use super::blas::{Blas, Gemm};
use super::kernels::{Arg, Launcher};
use super::launch_args::{LinearBwdArgs, LinearFwdArgs, MAX_GRID_YZ};
use super::memory::Dtype;
use super::{CudaBackend, CudaError};
use crate::backend::{Buf, LinearDims, LinearOp};

/// Threads of the bias kernels.
const BG_THREADS: u32 = 128;
/// Columns one block of the bias kernels covers.
const BG_COLS: usize = 1024;

impl CudaBackend {
    pub(super) fn launch_linear_fwd(&mut self, op: &LinearOp) {
        let LinearOp {
            x,
            w,
            b,
            y,
            gelu_pre,
            dims,
        } = *op;
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(x.len >= rows * inp && w.len >= out * inp && y.len >= rows * out);
        assert!(
            b.is_none_or(|b| b.len >= out),
            "bias shorter than the output"
        );
        assert!(gelu_pre.is_none_or(|p| p.len >= rows * out));
        // A one-column output (a score per row) stays f32, as a loss reads it.
        let y_dtype = if gelu_pre.is_none() && out == 1 {
            Dtype::F32
        } else {
            Dtype::Bf16
        };
        let a = LinearFwdArgs {
            w: self.input(w, Dtype::Bf16),
            x: self.input(x, Dtype::Bf16),
            bias: match (b, gelu_pre) {
                (None, _) => 0,
                // The epilogue's bias, in the output's type.
                (Some(b), None) => self.bias_operand(b.prefix(out), y_dtype),
                (Some(b), Some(_)) => self.input(b, Dtype::F32),
            },
            pre: gelu_pre.map_or(0, |p| self.output(p, Dtype::Bf16, false)),
            y: self.output(y, y_dtype, false),
            y_dtype,
            dims,
        };
        let (l, blas) = self.launcher_with_blas();
        // SAFETY: the buffers were checked to hold the matrices `dims` describes.
        Self::launched(unsafe { linear_fwd(&l, blas, &a) });
    }

    pub(super) fn launch_linear_bwd(&mut self, op: &LinearOp) {
        let LinearOp {
            x,
            w,
            b,
            y,
            gelu_pre,
            dims,
        } = *op;
        let (dy, dx, dw, db) = (y.grad(), x.grad(), w.grad(), b.map(Buf::grad));
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(x.len >= rows * inp && w.len >= out * inp && dy.len >= rows * out);
        assert!(dw.len >= out * inp && db.is_none_or(|b| b.len >= out));
        assert!(dx.len >= rows * inp);
        assert!(gelu_pre.is_none_or(|p| p.len >= rows * out));
        if db.is_some() {
            let (partials, counters) = bias_grad_scratch(self.sms, rows, out);
            ensure!(self, partials)(partials);
            ensure!(self, counters)(counters);
        }
        let dbias = db.map_or(0, |d| self.output(d, Dtype::F32, true));
        let (dy, pre, dpre) = match gelu_pre {
            Some(pre) => (
                self.input(dy, Dtype::Bf16),
                self.input(pre, Dtype::Bf16),
                self.output(pre.grad(), Dtype::Bf16, false),
            ),
            None if self.tag_of(dy) == Some(Dtype::F32) => {
                // A one-column output's f32 gradient, rounded to bf16 for the products.
                let n = rows * out;
                ensure!(self, convert)(2 * n);
                let conv = self.scratch.convert.ptr;
                let args = [Arg::Ptr(self.addr(dy)), Arg::Ptr(conv), Arg::U64(n as u64)];
                let blocks = n.div_ceil(256).min(4 * self.sms);
                self.run(self.kernels.params_to_bf16, (blocks, 1, 1), 256, &args);
                (conv, 0, 0)
            }
            None => (self.input(dy, Dtype::Bf16), 0, 0),
        };
        let a = LinearBwdArgs {
            x: self.input(x, Dtype::Bf16),
            w: self.input(w, Dtype::Bf16),
            dy,
            pre,
            dpre,
            dx: self.output(dx, Dtype::Bf16, true),
            dw: self.output(dw, Dtype::F32, true),
            dbias,
            partials: self.scratch.partials.ptr,
            counters: self.scratch.counters.ptr,
            dims,
        };
        let (l, blas) = self.launcher_with_blas();
        // SAFETY: as in the forward pass; the bias reduction's scratch was sized above.
        Self::launched(unsafe { linear_bwd(&l, blas, &a) });
    }

    /// A copy of a bias vector the bias epilogue can read (16-byte aligned), as `dtype`.
    fn bias_operand(&mut self, b: Buf, dtype: Dtype) -> u64 {
        let src = self.input(b, dtype);
        if src.is_multiple_of(16) {
            return src;
        }
        let bytes = b.len * dtype.bytes();
        ensure!(self, bias)(bytes);
        let dst = self.scratch.bias.ptr;
        // SAFETY: both ranges are in bounds; stream-ordered before the product that reads it.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA: staging a bias vector: {e}"));
        dst
    }
}

/// The bias kernels' grid for `rows` × `width` on `sms` multiprocessors: blocks of columns, and
/// groups of rows (fixed for a shape, as the reduction's order depends on it).
fn bias_grid(sms: usize, per_sm: usize, rows: usize, width: usize) -> (usize, usize) {
    let col_blocks = width.div_ceil(BG_COLS);
    let groups = (per_sm * sms / col_blocks).clamp(1, rows.min(MAX_GRID_YZ));
    (col_blocks, groups)
}

/// The bytes of f32 partial sums and of u32 counters the bias gradient's reduction needs.
pub(super) fn bias_grad_scratch(sms: usize, rows: usize, width: usize) -> (usize, usize) {
    let (col_blocks, groups) = bias_grid(sms, 2, rows, width);
    (4 * groups * width, 4 * col_blocks)
}

/// Launches a linear layer's forward pass on `l`'s stream: `y = x·wᵀ + b` by cuBLASLt, or with
/// GELU `pre = x·wᵀ` by cuBLASLt, then `bias_gelu_fwd` (`pre += b`, `y = gelu(pre)`).
///
/// # Safety
/// The addresses hold the tensors [`LinearFwdArgs`] describes for `a.dims`.
pub(super) unsafe fn linear_fwd(
    l: &Launcher,
    blas: &mut Blas,
    a: &LinearFwdArgs,
) -> Result<(), CudaError> {
    let LinearDims { rows, inp, out } = a.dims;
    if rows == 0 || out == 0 {
        return Ok(());
    }
    let (rows_i, out_i) = a.check()?;
    let mut g = Gemm {
        m: out as u64,
        n: rows as u64,
        k: inp as u64,
        trans_a: true,
        trans_b: false,
        lda: inp as u64,
        ldb: inp as u64,
        ldd: out as u64,
        out: a.y_dtype,
        bias: false,
    };
    if a.pre == 0 {
        g.bias = a.bias != 0;
        return l.gemm(blas, g, (a.w, a.x, a.y), 0.0, g.bias.then_some(a.bias));
    }
    g.out = Dtype::Bf16;
    l.gemm(blas, g, (a.w, a.x, a.pre), 0.0, None)?;
    let (col_blocks, groups) = bias_grid(l.sms, 4, rows, out);
    let args = [
        Arg::Ptr(a.pre),
        Arg::Ptr(a.bias),
        Arg::Ptr(a.pre),
        Arg::Ptr(a.y),
        Arg::I32(rows_i),
        Arg::I32(out_i),
        Arg::Ptr(0),
    ];
    l.run(
        l.kernels.bias_gelu_fwd,
        (col_blocks, groups, 1),
        BG_THREADS,
        &args,
    )
}

/// Launches a linear layer's backward pass on `l`'s stream: `bias_gelu_bwd` (`dpre` and the
/// bias gradient) or `bias_bwd` (the bias gradient), then cuBLASLt `dx += dy·w` (bf16) and
/// `dw += dyᵀ·x` (f32).
///
/// # Safety
/// The addresses hold the tensors [`LinearBwdArgs`] describes for `a.dims`; with `dbias`,
/// `partials` and `counters` hold [`bias_grad_scratch`] bytes (the counters zero).
pub(super) unsafe fn linear_bwd(
    l: &Launcher,
    blas: &mut Blas,
    a: &LinearBwdArgs,
) -> Result<(), CudaError> {
    let LinearDims { rows, inp, out } = a.dims;
    if rows == 0 || out == 0 {
        return Ok(());
    }
    let (rows_i, out_i) = a.check()?;
    let (col_blocks, groups) = bias_grid(l.sms, 2, rows, out);
    let grid = (col_blocks, groups, 1);
    let dy_b = if a.pre != 0 {
        let args = [
            Arg::Ptr(a.dy),
            Arg::Ptr(a.pre),
            Arg::Ptr(a.dpre),
            Arg::Ptr(a.dbias),
            Arg::Ptr(a.partials),
            Arg::Ptr(a.counters),
            Arg::I32(rows_i),
            Arg::I32(out_i),
            Arg::Ptr(0),
        ];
        l.run(l.kernels.bias_gelu_bwd, grid, BG_THREADS, &args)?;
        a.dpre
    } else {
        if a.dbias != 0 {
            let args = [
                Arg::Ptr(a.dy),
                Arg::Ptr(a.dbias),
                Arg::Ptr(a.partials),
                Arg::Ptr(a.counters),
                Arg::I32(rows_i),
                Arg::I32(out_i),
                Arg::Ptr(0),
            ];
            l.run(l.kernels.bias_bwd, grid, BG_THREADS, &args)?;
        }
        a.dy
    };
    let g = Gemm {
        m: inp as u64,
        n: rows as u64,
        k: out as u64,
        trans_a: false,
        trans_b: false,
        lda: inp as u64,
        ldb: out as u64,
        ldd: inp as u64,
        out: Dtype::Bf16,
        bias: false,
    };
    l.gemm(blas, g, (a.w, dy_b, a.dx), 1.0, None)?;
    let g = Gemm {
        m: inp as u64,
        n: out as u64,
        k: rows as u64,
        trans_a: false,
        trans_b: true,
        lda: inp as u64,
        ldb: out as u64,
        ldd: inp as u64,
        out: Dtype::F32,
        bias: false,
    };
    l.gemm(blas, g, (a.x, dy_b, a.dw), 1.0, None)
}
