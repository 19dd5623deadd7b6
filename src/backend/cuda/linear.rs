//! Launchers of the linear layers: cuBLASLt for the products (`blas.rs`) and
//! `kernels/bias_gelu.cu` for the bias and GELU around them.

use cudarc::driver::result;

use super::blas::Gemm;
use super::kernels::Arg;
use super::memory::Dtype;
use super::{int, CudaBackend, MAX_GRID_YZ};
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
        assert!(inp > 0, "linear_fwd: no inputs");
        assert!(x.len >= rows * inp && w.len >= out * inp && y.len >= rows * out);
        assert!(
            b.is_none_or(|b| b.len >= out),
            "bias shorter than the output"
        );
        let wa = self.input(w, Dtype::Bf16);
        let xb = self.input(x, Dtype::Bf16);
        let mut g = Gemm {
            m: out as u64,
            n: rows as u64,
            k: inp as u64,
            trans_a: true,
            trans_b: false,
            lda: inp as u64,
            ldb: inp as u64,
            ldd: out as u64,
            out: Dtype::Bf16,
            bias: false,
        };
        match gelu_pre {
            None => {
                // A one-column output (a score per row) stays f32, as a loss reads it.
                g.out = if out == 1 { Dtype::F32 } else { Dtype::Bf16 };
                let bias = b.map(|b| self.bias_operand(b.prefix(out), g.out));
                g.bias = bias.is_some();
                let d = self.output(y, g.out, false);
                self.gemm(g, wa, xb, d, 0.0, bias);
            }
            Some(pre) => {
                assert!(pre.len >= rows * out);
                let d = self.output(pre, Dtype::Bf16, false);
                self.gemm(g, wa, xb, d, 0.0, None);
                let bias = b.map_or(0, |b| self.input(b, Dtype::F32));
                let yd = self.output(y, Dtype::Bf16, false);
                let col_blocks = out.div_ceil(BG_COLS);
                let groups = (4 * self.sms / col_blocks).clamp(1, rows.min(MAX_GRID_YZ));
                let args = [
                    Arg::Ptr(d),
                    Arg::Ptr(bias),
                    Arg::Ptr(d),
                    Arg::Ptr(yd),
                    Arg::I32(int(rows, "rows")),
                    Arg::I32(int(out, "out")),
                    Arg::Ptr(0),
                ];
                self.run(
                    self.kernels.bias_gelu_fwd,
                    (col_blocks, groups, 1),
                    BG_THREADS,
                    &args,
                );
            }
        }
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
        assert!(inp > 0, "linear_bwd: no inputs");
        assert!(x.len >= rows * inp && w.len >= out * inp && dy.len >= rows * out);
        assert!(dw.len >= out * inp && db.is_none_or(|b| b.len >= out));
        assert!(dx.len >= rows * inp);
        let dbias = db.map_or(0, |d| self.output(d, Dtype::F32, true));
        let dy_b = match gelu_pre {
            Some(pre) => {
                assert!(pre.len >= rows * out);
                let dyp = self.input(dy, Dtype::Bf16);
                let prep = self.input(pre, Dtype::Bf16);
                let dpre = self.output(pre.grad(), Dtype::Bf16, false);
                self.bias_grad(dyp, prep, dpre, dbias, rows, out);
                dpre
            }
            None => {
                let dyp = if self.tag_of(dy) == Some(Dtype::F32) {
                    // A one-column output's f32 gradient, rounded to bf16 for the products.
                    let n = rows * out;
                    ensure!(self, convert)(2 * n);
                    let conv = self.scratch.convert.ptr;
                    let args = [Arg::Ptr(self.addr(dy)), Arg::Ptr(conv), Arg::U64(n as u64)];
                    let blocks = n.div_ceil(256).min(4 * self.sms);
                    self.run(self.kernels.params_to_bf16, (blocks, 1, 1), 256, &args);
                    conv
                } else {
                    self.input(dy, Dtype::Bf16)
                };
                self.bias_grad(dyp, 0, 0, dbias, rows, out);
                dyp
            }
        };
        let wa = self.input(w, Dtype::Bf16);
        let d = self.output(dx, Dtype::Bf16, true);
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
        self.gemm(g, wa, dy_b, d, 1.0, None);
        let xa = self.input(x, Dtype::Bf16);
        let d = self.output(dw, Dtype::F32, true);
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
        self.gemm(g, xa, dy_b, d, 1.0, None);
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

    /// `bias_gelu_bwd` (with `pre`) or `bias_bwd`: `dpre = dy·gelu'(pre)` and `dbias += Σ dpre`.
    fn bias_grad(&mut self, dy: u64, pre: u64, dpre: u64, dbias: u64, rows: usize, width: usize) {
        let col_blocks = width.div_ceil(BG_COLS);
        let groups = (2 * self.sms / col_blocks).clamp(1, rows.min(MAX_GRID_YZ));
        if dbias != 0 {
            ensure!(self, partials)(4 * groups * width);
            ensure!(self, counters)(4 * col_blocks);
        }
        let (partials, counters) = (self.scratch.partials.ptr, self.scratch.counters.ptr);
        let (rows, width) = (int(rows, "rows"), int(width, "width"));
        if pre != 0 {
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(pre),
                Arg::Ptr(dpre),
                Arg::Ptr(dbias),
                Arg::Ptr(partials),
                Arg::Ptr(counters),
                Arg::I32(rows),
                Arg::I32(width),
                Arg::Ptr(0),
            ];
            self.run(
                self.kernels.bias_gelu_bwd,
                (col_blocks, groups, 1),
                BG_THREADS,
                &args,
            );
        } else if dbias != 0 {
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(dbias),
                Arg::Ptr(partials),
                Arg::Ptr(counters),
                Arg::I32(rows),
                Arg::I32(width),
                Arg::Ptr(0),
            ];
            self.run(
                self.kernels.bias_bwd,
                (col_blocks, groups, 1),
                BG_THREADS,
                &args,
            );
        }
    }
}
