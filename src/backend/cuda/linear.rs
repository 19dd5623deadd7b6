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
            ..
        } = *op;
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(inp > 0, "linear_fwd: no inputs");
        check_stride(op);
        assert!(x.len >= rows * inp && w.len >= out * inp && y.len >= rows * op.y_stride);
        assert!(
            b.is_none_or(|b| b.len >= out),
            "bias shorter than the output"
        );
        let p = forward_product(op);
        let wa = self.input(p.a, Dtype::Bf16);
        let xb = self.input(p.b, Dtype::Bf16);
        match gelu_pre {
            None => {
                let bias = b.map(|b| self.bias_operand(b.prefix(out), p.gemm.out));
                let d = self.output(p.d, p.gemm.out, false);
                self.gemm(p.gemm, wa, xb, d, 0.0, bias);
            }
            Some(pre) => {
                assert!(pre.len >= rows * out);
                let d = self.output(p.d, Dtype::Bf16, false);
                self.gemm(p.gemm, wa, xb, d, 0.0, None);
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
            ..
        } = *op;
        let (dy, dx, dw, db) = (y.grad(), x.grad(), w.grad(), b.map(Buf::grad));
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(inp > 0, "linear_bwd: no inputs");
        check_stride(op);
        assert!(x.len >= rows * inp && w.len >= out * inp && dy.len >= rows * op.y_stride);
        assert!(dw.len >= out * inp && db.is_none_or(|b| b.len >= out));
        assert!(dx.len >= rows * inp);
        let dbias = db.map_or(0, |d| self.output(d, Dtype::F32, true));
        let dy_b = match gelu_pre {
            Some(pre) => {
                assert!(pre.len >= rows * out);
                let dyp = self.input(dy, Dtype::Bf16);
                let prep = self.input(pre, Dtype::Bf16);
                let dpre = self.output(pre.grad(), Dtype::Bf16, false);
                self.bias_grad(dyp, prep, dpre, dbias, rows, (out, out));
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
                self.bias_grad(dyp, 0, 0, dbias, rows, (out, op.y_stride));
                dyp
            }
        };
        let [input_grad, weight_grad] = backward_products(op);
        let wa = self.input(input_grad.a, Dtype::Bf16);
        let d = self.output(input_grad.d, Dtype::Bf16, true);
        self.gemm(input_grad.gemm, wa, dy_b, d, 1.0, None);
        let xa = self.input(weight_grad.a, Dtype::Bf16);
        let d = self.output(weight_grad.d, Dtype::F32, true);
        self.gemm(weight_grad.gemm, xa, dy_b, d, 1.0, None);
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

    /// `bias_gelu_bwd` (with `pre`) or `bias_bwd`: `dpre = dy·gelu'(pre)` and `dbias += Σ dpre`,
    /// over `rows` rows of `width` values, `stride` apart in `dy` (`width` with GELU).
    fn bias_grad(
        &mut self,
        dy: u64,
        pre: u64,
        dpre: u64,
        dbias: u64,
        rows: usize,
        (width, stride): (usize, usize),
    ) {
        let col_blocks = width.div_ceil(BG_COLS);
        let groups = (2 * self.sms / col_blocks).clamp(1, rows.min(MAX_GRID_YZ));
        if dbias != 0 {
            ensure!(self, partials)(4 * groups * width);
            ensure!(self, counters)(4 * col_blocks);
        }
        let (partials, counters) = (self.scratch.partials.ptr, self.scratch.counters.ptr);
        let (rows, width) = (int(rows, "rows"), int(width, "width"));
        let stride = int(stride, "row stride");
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
                Arg::I32(stride),
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

/// A padded output row (`y_stride > out`) only where the launchers handle one: without GELU, and
/// not as a one-column f32 score, whose conversion to bf16 reads its rows as dense.
fn check_stride(op: &LinearOp) {
    let out = op.dims.out;
    assert!(
        op.y_stride == out || (op.y_stride > out && op.gelu_pre.is_none() && out > 1),
        "linear: row stride {} for {out} outputs",
        op.y_stride
    );
}

/// One matrix product of a linear layer as the launchers issue it: its cuBLASLt descriptor and
/// the buffers of its operands `A`, `B` and `D` (see [`Gemm`]). Stated apart from the launch so
/// that the operands' alignment can be checked on the host, by the same description.
#[derive(Clone, Copy, Debug)]
pub(super) struct Product {
    pub gemm: Gemm,
    pub a: Buf,
    pub b: Buf,
    pub d: Buf,
}

/// The forward product, `y = x·wᵀ (+ b)`, or `pre = x·wᵀ` before a GELU. Row-major `y [rows, out]`
/// is column-major `out × rows`, so cuBLASLt computes `yᵀ = w·xᵀ` with `w` read transposed. A
/// one-column output (a score per row) stays f32, as a loss reads it; the bias epilogue adds the
/// bias when no GELU follows (else the GELU kernel adds it).
pub(super) fn forward_product(op: &LinearOp) -> Product {
    let LinearDims { rows, inp, out } = op.dims;
    let d = op.gelu_pre.unwrap_or(op.y);
    Product {
        gemm: Gemm {
            m: out as u64,
            n: rows as u64,
            k: inp as u64,
            trans_a: true,
            trans_b: false,
            lda: inp as u64,
            ldb: inp as u64,
            ldd: op.y_stride as u64,
            out: if out == 1 && op.gelu_pre.is_none() {
                Dtype::F32
            } else {
                Dtype::Bf16
            },
            bias: op.gelu_pre.is_none() && op.b.is_some(),
        },
        a: op.w,
        b: op.x,
        d,
    }
}

/// The backward products, both reading the gradient at the product's output (`dpre` after a
/// GELU, else `dy`) as `B` and accumulating into `D`: the input gradient `dx += dy·w`
/// (column-major `dxᵀ = wᵀ·dyᵀ`) and the weight gradient `dw += dyᵀ·x` (column-major
/// `dwᵀ = xᵀ·dy`), in f32.
pub(super) fn backward_products(op: &LinearOp) -> [Product; 2] {
    let LinearDims { rows, inp, out } = op.dims;
    let dy = op.gelu_pre.unwrap_or(op.y).grad();
    let product = |n, k, trans_b, out_type| Gemm {
        m: inp as u64,
        n,
        k,
        trans_a: false,
        trans_b,
        lda: inp as u64,
        ldb: op.y_stride as u64,
        ldd: inp as u64,
        out: out_type,
        bias: false,
    };
    [
        Product {
            gemm: product(rows as u64, out as u64, false, Dtype::Bf16),
            a: op.w,
            b: dy,
            d: op.x.grad(),
        },
        Product {
            gemm: product(out as u64, rows as u64, true, Dtype::F32),
            a: op.x,
            b: dy,
            d: op.w.grad(),
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
            let [input_grad, weight_grad] = backward_products(op);
            for (pass, p) in [
                ("fwd", forward_product(op)),
                ("dx", input_grad),
                ("dw", weight_grad),
            ] {
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
