//! Launchers of the linear layers: cuBLASLt for the products (`blas.rs`) and
//! `kernels/bias_gelu.cu` for the bias and GELU around them. The engine resolves its buffers
//! here; [`linear_fwd`] and [`linear_bwd`] check them and launch, for the engine and the C
//! ABI's device ops.

use cudarc::driver::result;

use super::blas::{Blas, Fold, Gemm};
use super::kernels::{Arg, Launcher};
use super::launch_args::{LinearBwdArgs, LinearFwdArgs, MAX_GRID_YZ};
use super::memory::Dtype;
use super::optim::{accumulate, params_to_bf16, AccumulateArgs};
use super::partial_sums::{sum_partial_rows, PartialRows};
use super::{CudaBackend, CudaError};
use crate::backend::{Buf, LinearDims, LinearOp};

/// Threads of the bias kernels.
const BG_THREADS: u32 = 128;
/// Columns one block of the bias kernels covers.
const BG_COLS: usize = 1024;

impl CudaBackend {
    /// How many algorithms cuBLASLt offers for the weight-gradient product of a `dims` layer
    /// whose output gradient's rows are `dy_stride` apart, with its bias gradient folded in
    /// (see [`Blas::bias_grad_epilogue_algorithms`]); 0: none.
    pub fn bias_grad_epilogue_algorithms(
        &self,
        dims: LinearDims,
        dy_stride: usize,
    ) -> Result<usize, CudaError> {
        self.bind();
        let [_, weight_grad] = backward_products(dims, dy_stride, (0u64, 0, 0, 0, 0));
        self.blas.bias_grad_epilogue_algorithms(weight_grad.gemm)
    }

    pub(super) fn launch_linear_fwd(&mut self, op: &LinearOp) {
        let LinearOp {
            x,
            w,
            b,
            y,
            gelu_pre,
            dims,
            y_stride,
            overwrite_dx: _,
        } = *op;
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(x.len >= rows * inp && w.len >= out * inp && y.len >= rows * y_stride);
        assert!(
            b.is_none_or(|b| b.len >= out),
            "bias shorter than the output"
        );
        assert!(gelu_pre.is_none_or(|p| p.len >= rows * out));
        let y_dtype = output_dtype(out, gelu_pre.is_some());
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
            y_stride,
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
            y_stride,
            overwrite_dx,
        } = *op;
        let (dy, dx, dw, db) = (y.grad(), x.grad(), w.grad(), b.map(Buf::grad));
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(x.len >= rows * inp && w.len >= out * inp && dy.len >= rows * y_stride);
        assert!(dw.len >= out * inp && db.is_none_or(|b| b.len >= out));
        assert!(dx.len >= rows * inp);
        assert!(gelu_pre.is_none_or(|p| p.len >= rows * out));
        if db.is_some() {
            ensure!(self, partials)(bias_grad_scratch(self.sms, rows, out));
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
                let src = self.addr(dy);
                // SAFETY: `dy` holds `n` floats, the scratch room for `n` bf16 values.
                Self::launched(unsafe { params_to_bf16(&self.launcher(), src, conv, n) });
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
            dx: self.output(dx, Dtype::Bf16, !overwrite_dx),
            dw: self.output(dw, Dtype::F32, true),
            dbias,
            partials: self.scratch.partials.ptr,
            dims,
            y_stride,
            overwrite_dx,
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

/// The bytes of f32 partial sums the bias gradient's reduction needs.
pub(super) fn bias_grad_scratch(sms: usize, rows: usize, width: usize) -> usize {
    let (_, groups) = bias_grid(sms, 2, rows, width);
    4 * groups * width
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
    let LinearDims { rows, out, .. } = a.dims;
    if rows == 0 || out == 0 {
        return Ok(());
    }
    a.check()?;
    if a.pre == 0 {
        let mut p = forward_product(a.dims, a.y_stride, a.y_dtype, (a.w, a.x, a.y));
        let bias = (a.bias != 0).then_some(a.bias);
        if bias.is_some() {
            p.gemm.fold = Fold::Bias;
        }
        return l.gemm(blas, p.gemm, (p.a, p.b, p.d), 0.0, bias);
    }
    let p = forward_product(a.dims, out, Dtype::Bf16, (a.w, a.x, a.pre));
    l.gemm(blas, p.gemm, (p.a, p.b, p.d), 0.0, None)?;
    bias_gelu_fwd(l, a)
}

/// The GELU layer's forward after its product: `bias_gelu_fwd` (`pre += b`, `y = gelu(pre)`).
///
/// # Safety
/// As for [`linear_fwd`], with `a.pre` set.
pub(super) unsafe fn bias_gelu_fwd(l: &Launcher, a: &LinearFwdArgs) -> Result<(), CudaError> {
    let LinearDims { rows, out, .. } = a.dims;
    let (rows_i, out_i) = a.check()?;
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
/// bias gradient's partial sums) or `bias_bwd` (the partial sums) and the sums of those, then
/// cuBLASLt `dx += dy·w` (bf16; `=` with `overwrite_dx`) and `dw += dyᵀ·x` (f32). Where `blas`
/// folds the bias gradient into the last product ([`Blas::folds_bias_grad`]), that product
/// writes it into `partials` instead, and `accumulate` adds it to `dbias`; `bias_gelu_bwd`
/// then only writes `dpre`.
///
/// # Safety
/// The addresses hold the tensors [`LinearBwdArgs`] describes for `a.dims`; with `dbias`,
/// `partials` holds [`bias_grad_scratch`] bytes.
pub(super) unsafe fn linear_bwd(
    l: &Launcher,
    blas: &mut Blas,
    a: &LinearBwdArgs,
) -> Result<(), CudaError> {
    let LinearDims { rows, out, .. } = a.dims;
    if rows == 0 || out == 0 {
        return Ok(());
    }
    let dy_b = if a.pre != 0 { a.dpre } else { a.dy };
    // The GELU's gradient is dense; a padded `dy` is read in place.
    let dy_stride = if a.pre != 0 { out } else { a.y_stride };
    let [input_grad, mut p] = backward_products(a.dims, dy_stride, (a.x, a.w, dy_b, a.dx, a.dw));
    let fold = a.dbias != 0 && blas.folds_bias_grad(p.gemm, (p.a, p.b, p.d))?;
    bias_grads(l, a, fold)?;
    let dx_beta = if a.overwrite_dx { 0.0 } else { 1.0 };
    l.gemm(
        blas,
        input_grad.gemm,
        (input_grad.a, input_grad.b, input_grad.d),
        dx_beta,
        None,
    )?;
    if fold {
        p.gemm.fold = Fold::BiasGrad;
    }
    l.gemm(
        blas,
        p.gemm,
        (p.a, p.b, p.d),
        1.0,
        fold.then_some(a.partials),
    )?;
    if fold {
        // The product wrote the bias gradient; gradients accumulate.
        let add = AccumulateArgs {
            src: a.partials,
            dst: a.dbias,
            n: out,
            overwrite: false,
        };
        accumulate(l, &add)?;
    }
    Ok(())
}

/// The backward's kernels before its products: `bias_gelu_bwd` (`dpre` and the bias gradient's
/// partial sums) or `bias_bwd` (the partial sums; nothing without a bias), then the sums of the
/// partials into `dbias`; with `folded` (the weight-gradient product gives the bias gradient),
/// only `dpre`.
///
/// # Safety
/// As for [`linear_bwd`].
pub(super) unsafe fn bias_grads(
    l: &Launcher,
    a: &LinearBwdArgs,
    folded: bool,
) -> Result<(), CudaError> {
    let LinearDims { rows, out, .. } = a.dims;
    let (rows_i, out_i, ld) = a.check()?;
    let (col_blocks, groups) = bias_grid(l.sms, 2, rows, out);
    let grid = (col_blocks, groups, 1);
    let sums = a.dbias != 0 && !folded;
    let partials = if sums { a.partials } else { 0 };
    if a.pre != 0 {
        let args = [
            Arg::Ptr(a.dy),
            Arg::Ptr(a.pre),
            Arg::Ptr(a.dpre),
            Arg::Ptr(partials),
            Arg::I32(rows_i),
            Arg::I32(out_i),
            Arg::Ptr(0),
        ];
        l.run(l.kernels.bias_gelu_bwd, grid, BG_THREADS, &args)?;
    } else if sums {
        let args = [
            Arg::Ptr(a.dy),
            Arg::Ptr(partials),
            Arg::I32(rows_i),
            Arg::I32(out_i),
            Arg::I32(ld),
            Arg::Ptr(0),
        ];
        l.run(l.kernels.bias_bwd, grid, BG_THREADS, &args)?;
    }
    if sums {
        let bias_rows = PartialRows {
            partials,
            parts: groups,
            ld: out,
            cols: out,
            split: out,
            out_a: a.dbias,
            out_b: 0,
        };
        sum_partial_rows(l, &bias_rows)?;
    }
    Ok(())
}

/// The type of a linear layer's output: a one-column output (a score per row) stays f32, as a
/// loss reads it; every other is bf16.
pub(super) fn output_dtype(out: usize, gelu: bool) -> Dtype {
    if out == 1 && !gelu {
        Dtype::F32
    } else {
        Dtype::Bf16
    }
}

/// One matrix product of a linear layer as the launchers issue it: its cuBLASLt descriptor and
/// its operands `A`, `B` and `D` (see [`Gemm`]): device addresses at a launch, the engine's
/// buffers in the host test of their alignment, so that both read one description.
#[derive(Clone, Copy, Debug)]
pub(super) struct Product<T> {
    pub gemm: Gemm,
    pub a: T,
    pub b: T,
    pub d: T,
}

/// The forward product `d = x·wᵀ` of type `out_type`, rows `d_stride` elements apart, without its
/// bias (the caller sets the epilogue's). Row-major `d [rows, out]` is column-major
/// `out × rows`, so cuBLASLt computes `dᵀ = w·xᵀ` with `w` read transposed.
pub(super) fn forward_product<T>(
    dims: LinearDims,
    d_stride: usize,
    out_type: Dtype,
    (w, x, d): (T, T, T),
) -> Product<T> {
    let LinearDims { rows, inp, out } = dims;
    Product {
        gemm: Gemm {
            m: out as u64,
            n: rows as u64,
            k: inp as u64,
            trans_a: true,
            trans_b: false,
            lda: inp as u64,
            ldb: inp as u64,
            ldd: d_stride as u64,
            out: out_type,
            fold: Fold::None,
        },
        a: w,
        b: x,
        d,
    }
}

/// The backward products, both reading the gradient at the product's output, `dy` (rows
/// `dy_stride` elements apart), as `B` and accumulating into `D`: the input gradient
/// `dx += dy·w` (column-major `dxᵀ = wᵀ·dyᵀ`, bf16) and the weight gradient `dw += dyᵀ·x`
/// (column-major `dwᵀ = xᵀ·dy`, f32).
pub(super) fn backward_products<T: Copy>(
    dims: LinearDims,
    dy_stride: usize,
    (x, w, dy, dx, dw): (T, T, T, T, T),
) -> [Product<T>; 2] {
    let LinearDims { rows, inp, out } = dims;
    let gemm = |n, k, trans_b, out_type| Gemm {
        m: inp as u64,
        n,
        k,
        trans_a: false,
        trans_b,
        lda: inp as u64,
        ldb: dy_stride as u64,
        ldd: inp as u64,
        out: out_type,
        fold: Fold::None,
    };
    [
        Product {
            gemm: gemm(rows as u64, out as u64, false, Dtype::Bf16),
            a: w,
            b: dy,
            d: dx,
        },
        Product {
            gemm: gemm(out as u64, rows as u64, true, Dtype::F32),
            a: x,
            b: dy,
            d: dw,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::super::blas::alignment;
    use super::super::memory::byte_offset;
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::data::Batch;
    use crate::model::{config::ElectraConfig, Model};
    use crate::tape::Op;
    use crate::train::{TrainConfig, Trainer};

    /// The operand alignments (bytes, at most 256) of every product of one training step of
    /// `preset` (the BERT vocabulary, a short batch: alignment depends on the model's sizes and
    /// the buffers' offsets, not on the batch), labelled by the layer's shape.
    fn product_alignments(preset: &str) -> Vec<(String, [u32; 3])> {
        let model = Model::new(ElectraConfig::preset(preset).unwrap());
        let values = model.initial_values(1).unwrap();
        let special = model.config.special_tokens;
        let batch = Batch::random(2, 16, model.config.vocab_size, 3, &special);
        let mut trainer =
            Trainer::new(CpuBackend::new(), model, TrainConfig::default(), &values).unwrap();
        trainer.train_step(&batch).unwrap();
        let mut out = vec![];
        for op in trainer.recorded_ops() {
            let Op::Linear(op) = op else { continue };
            let (dims, gelu) = (op.dims, op.gelu_pre.is_some());
            let y_type = output_dtype(dims.out, gelu);
            let y = op.gelu_pre.unwrap_or(op.y);
            let forward = forward_product(dims, op.y_stride, y_type, (op.w, op.x, y));
            let [input_grad, weight_grad] = backward_products(
                dims,
                op.y_stride,
                (op.x, op.w, y.grad(), op.x.grad(), op.w.grad()),
            );
            for (pass, p) in [("fwd", forward), ("dx", input_grad), ("dw", weight_grad)] {
                let g = p.gemm;
                let (d_type, d_bytes) = (g.out, g.out.bytes());
                out.push((
                    format!("{preset} {} {pass}", op.dims),
                    [
                        alignment(byte_offset(p.a, Dtype::Bf16), g.lda, 2),
                        alignment(byte_offset(p.b, Dtype::Bf16), g.ldb, 2),
                        alignment(byte_offset(p.d, d_type), g.ldd, d_bytes),
                    ],
                ));
            }
        }
        assert!(out.len() >= 3 * 8, "{preset}: too few products recorded");
        out
    }

    /// cuBLASLt's fast kernels need every column of A, B and D to start on 16 bytes; a product
    /// with a less aligned operand is planned for (and runs) a slower algorithm. Every product of
    /// a step of each preset is held to it.
    #[test]
    fn every_product_of_a_training_step_has_16_byte_aligned_operands() {
        for preset in ["tiny", "small", "base"] {
            let misaligned: Vec<_> = product_alignments(preset)
                .into_iter()
                .filter(|(_, a)| a.iter().any(|&x| x < 16))
                .collect();
            assert!(
                misaligned.is_empty(),
                "products with an operand not 16-byte aligned (A, B, D): {misaligned:?}"
            );
        }
    }
}
