//! What each fused operation's CUDA launch takes once its buffers are resolved: device addresses,
//! sizes and the step memory's address, and the checks the kernels need of them (supported
//! sizes, alignment, 32-bit indexing, grid limits), which look at the values only, never at the
//! memory. The engine's launchers fill these from its buffers, and
//! the C ABI's device ops (`DeviceOps`) from a caller's device pointers; both then call the same
//! launch function beside the kernels (`attention.rs`, `layernorm.rs`, `linear.rs`,
//! `losses.rs`), which runs these checks and launches on the stream it is given. Shared with the
//! stub of builds without the `cuda` feature, so that the C ABI refuses the same arguments with
//! the same messages in every build, before it needs a device.

// Without CUDA, the C ABI fills these and runs their checks, but nothing launches them.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use super::CudaError;
use crate::backend::{AttentionDims, Dropout, LinearDims};

/// The largest grid dimension y or z.
pub const MAX_GRID_YZ: usize = 65_535;
/// The widest row the LayerNorm, embedding and head kernels hold in registers.
pub const MAX_WIDTH: usize = 1024;

/// `v` as a kernel's 32-bit int: the kernels index with `int`, so every size they take must
/// stay below 2^31 (`what` names it in the error).
pub fn checked_int(v: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| {
        CudaError::Argument(format!(
            "{what} = {v} exceeds the kernels' 32-bit indexing (at most {})",
            i32::MAX
        ))
    })
}

/// Refuses the first named address in `ptrs` that is not a multiple of `align` bytes (`op`
/// names the operation whose kernels need it).
pub fn check_aligned(op: &str, align: u64, ptrs: &[(&str, u64)]) -> Result<(), CudaError> {
    match ptrs.iter().find(|(_, p)| p % align != 0) {
        Some((name, p)) => Err(CudaError::Argument(format!(
            "{op}: {name} is at {p:#x}, which is not {align}-byte aligned (the kernels read it in \
             {align}-byte vectors)"
        ))),
        None => Ok(()),
    }
}

/// Rows of `width` must fit the row-per-warp kernels' registers.
pub fn check_width(width: usize, what: &str) -> Result<(), CudaError> {
    if width == 0 || width > MAX_WIDTH {
        return Err(CudaError::Unsupported(format!(
            "{what}: width {width} is outside the CUDA kernels' 1..={MAX_WIDTH}"
        )));
    }
    Ok(())
}

/// `rows` rows of `width` for a row-per-warp kernel: the width, and the sizes as ints.
fn check_rows(rows: usize, width: usize, what: &str) -> Result<(i32, i32), CudaError> {
    check_width(width, what)?;
    checked_int(rows.saturating_mul(width), "rows·width")?;
    Ok((checked_int(rows, "rows")?, checked_int(width, "width")?))
}

/// The attention kernels' sizes: a head size they have, a hidden size in 16-byte rows, a grid
/// within the device's limits and sizes within 32-bit indexing. Returns `seq` and `heads`.
fn check_attention(d: AttentionDims) -> Result<(i32, i32), CudaError> {
    if ![16, 32, 64].contains(&d.head_dim) {
        return Err(CudaError::Unsupported(format!(
            "attention: head size {} is not supported by the CUDA kernels (16, 32 or 64)",
            d.head_dim
        )));
    }
    if d.heads > MAX_GRID_YZ || d.batch > MAX_GRID_YZ {
        return Err(CudaError::Argument(format!(
            "attention: heads = {} and batch = {} must each be at most {MAX_GRID_YZ} (a grid \
             dimension)",
            d.heads, d.batch
        )));
    }
    let elems = d.batch.saturating_mul(d.seq).saturating_mul(3 * d.hidden());
    checked_int(elems, "batch·seq·3·hidden")?;
    Ok((checked_int(d.seq, "seq")?, checked_int(d.heads, "heads")?))
}

/// The element type of a buffer a kernel reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16,
    F32,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// `attention_fwd_d*`: `qkv` bf16 `[batch, seq, 3·hidden]`, `key_mask` u32 `[batch, seq]`,
/// `ctx` bf16 `[batch, seq, hidden]`, `lse` f32 `[batch, heads, seq]` (the row log-sum-exp the
/// backward reads) and, with dropout, `keep_bits` u32 `[batch, heads, seq, ceil(seq / 32)]`
/// (the mask as bits, which the backward reads; 0 without dropout). `step` is the step memory
/// (`StepValues`), which holds the dropout seed.
#[derive(Clone, Copy, Debug)]
pub struct AttentionFwdArgs {
    pub qkv: u64,
    pub key_mask: u64,
    pub ctx: u64,
    pub lse: u64,
    pub keep_bits: u64,
    pub dims: AttentionDims,
    pub dropout: Option<Dropout>,
    pub step: u64,
}

/// `attention_bwd_dq_d*` then `attention_bwd_dkdv_d*`: the forward's `qkv`, `key_mask`, `ctx`,
/// `lse` and `keep_bits`, the gradient `dctx` (bf16), `delta` (f32 `[batch, heads, seq]`,
/// written) and `dqkv` (bf16, accumulated, or set with `overwrite_dqkv`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionBwdArgs {
    pub qkv: u64,
    pub key_mask: u64,
    pub ctx: u64,
    pub dctx: u64,
    pub lse: u64,
    pub keep_bits: u64,
    pub delta: u64,
    pub dqkv: u64,
    pub dims: AttentionDims,
    pub dropout: Option<Dropout>,
    pub step: u64,
    pub overwrite_dqkv: bool,
}

/// `layernorm_residual_fwd_w*`: bf16 `x`, `residual` (0 for none), `y`, `xhat` `[rows, width]`;
/// f32 `gain`, `bias` `[width]` and `rstd` `[rows]`. The dropout on `x` (`None` for none) is
/// keyed by `per_sequence` elements of `x` per sequence and the step memory `step` (the seed and
/// the first sequence; 0 is allowed without dropout).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormFwdArgs {
    pub x: u64,
    pub residual: u64,
    pub gain: u64,
    pub bias: u64,
    pub y: u64,
    pub xhat: u64,
    pub rstd: u64,
    pub rows: usize,
    pub width: usize,
    pub eps: f32,
    pub dropout: Option<Dropout>,
    pub per_sequence: u64,
    pub step: u64,
}

/// `layernorm_residual_bwd_w*`: bf16 `dy`, `xhat`, and `dx`, `dresidual` (0 for none),
/// accumulated, or set with `overwrite_dx`, `overwrite_dresidual`; f32 `rstd`, `gain`, and
/// `dgain`, `dbias`, accumulated. `dx` gets the forward's dropout mask (the same `dropout`,
/// `per_sequence` and `step`). `partials` is the reduction's scratch
/// ([`layernorm_bwd_scratch`](super::layernorm) bytes).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormBwdArgs {
    pub dy: u64,
    pub xhat: u64,
    pub rstd: u64,
    pub gain: u64,
    pub dx: u64,
    pub dresidual: u64,
    pub dgain: u64,
    pub dbias: u64,
    pub partials: u64,
    pub rows: usize,
    pub width: usize,
    pub overwrite_dx: bool,
    pub overwrite_dresidual: bool,
    pub dropout: Option<Dropout>,
    pub per_sequence: u64,
    pub step: u64,
}

/// A linear layer's forward: bf16 `x [rows, in]`, `w [out, in]`; `y [rows, out]` of `y_dtype`,
/// its rows `y_stride` elements apart (more than `out` only without GELU). Without GELU (`pre` 0), the bias (0 for none) is added by cuBLASLt's epilogue and has
/// `y_dtype`, 16-byte aligned; with GELU, `pre` (bf16 `[rows, out]`) receives `x·wᵀ + b`, the
/// bias is f32 and `y` must be bf16.
#[derive(Clone, Copy, Debug)]
pub struct LinearFwdArgs {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub y: u64,
    pub y_dtype: Dtype,
    pub pre: u64,
    pub dims: LinearDims,
    pub y_stride: usize,
}

/// A linear layer's backward: bf16 `x`, `w`, `dy [rows, out]` (rows `y_stride` apart, as the
/// forward's `y`) and `pre` (0 without GELU, else `dpre`, bf16 `[rows, out]`, receives the
/// gradient at the pre-activation); accumulates `dx` (bf16; sets it with `overwrite_dx`), `dw`
/// (f32) and `dbias` (f32, 0 to skip). `partials`: the bias reduction's scratch.
#[derive(Clone, Copy, Debug)]
pub struct LinearBwdArgs {
    pub x: u64,
    pub w: u64,
    pub dy: u64,
    pub pre: u64,
    pub dpre: u64,
    pub dx: u64,
    pub dw: u64,
    pub dbias: u64,
    pub partials: u64,
    pub dims: LinearDims,
    pub y_stride: usize,
    pub overwrite_dx: bool,
}

/// `softmax_xent_fwd_bwd`: bf16 `logits` and `dlogits` (overwritten) with `ld` elements from one
/// row to the next, u32 `targets [rows]`, f32 `row_loss [rows]`, and with `pick_mode` 1
/// (argmax) or 2 (Gumbel-max, seeded from the step memory) the picks into u32 `picks [rows]`
/// (mode 0: none).
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxXentArgs {
    pub logits: u64,
    pub dlogits: u64,
    pub ld: usize,
    pub targets: u64,
    pub row_loss: u64,
    pub grad_scale: f32,
    pub pick_mode: i32,
    pub picks: u64,
    pub rows: usize,
    pub vocab: usize,
    pub step: u64,
}

/// `sigmoid_bce_head_fwd_bwd_w*`: bf16 `h [tokens, width]`, f32 `w [width]`, `b [1]`,
/// `labels [tokens]`, u32 `mask [tokens]`; writes f32 `logits`, `row_loss [tokens]` and
/// accumulates `dh` (bf16), `dw`, `db` (f32). `partials`: the reduction's scratch.
#[derive(Clone, Copy, Debug)]
pub struct BceHeadArgs {
    pub h: u64,
    pub w: u64,
    pub b: u64,
    pub labels: u64,
    pub mask: u64,
    pub logits: u64,
    pub row_loss: u64,
    pub dh: u64,
    pub dw: u64,
    pub db: u64,
    pub partials: u64,
    pub grad_scale: f32,
    pub tokens: usize,
    pub width: usize,
}

impl AttentionFwdArgs {
    /// What the kernels need (see `check_attention`), and 16-byte aligned `qkv` and `ctx`.
    /// Returns `seq` and `heads` as kernel ints.
    pub fn check(&self) -> Result<(i32, i32), CudaError> {
        let ints = check_attention(self.dims)?;
        check_aligned("attention", 16, &[("qkv", self.qkv), ("ctx", self.ctx)])?;
        check_keep_bits(self.dropout, self.keep_bits)?;
        Ok(ints)
    }
}

impl AttentionBwdArgs {
    /// As the forward's, with `dctx` and `dqkv` aligned too.
    pub fn check(&self) -> Result<(i32, i32), CudaError> {
        let ints = check_attention(self.dims)?;
        let ptrs = [
            ("qkv", self.qkv),
            ("ctx", self.ctx),
            ("dctx", self.dctx),
            ("dqkv", self.dqkv),
        ];
        check_aligned("attention", 16, &ptrs)?;
        check_keep_bits(self.dropout, self.keep_bits)?;
        Ok(ints)
    }
}

/// With dropout, the forward stores its mask as bits that the backward reads: `keep_bits` must
/// be given.
fn check_keep_bits(dropout: Option<Dropout>, keep_bits: u64) -> Result<(), CudaError> {
    if dropout.is_some() && keep_bits == 0 {
        return Err(CudaError::Argument(
            "attention: dropout needs keep_bits (u32 [batch, heads, seq, ceil(seq / 32)]), where \
             the forward stores the mask for the backward"
                .into(),
        ));
    }
    Ok(())
}

impl LayerNormFwdArgs {
    /// A width the kernels hold; returns `rows` and `width` as kernel ints.
    pub fn check(&self) -> Result<(i32, i32), CudaError> {
        check_rows(self.rows, self.width, "layernorm_fwd")
    }
}

impl LayerNormBwdArgs {
    /// A width the kernels hold; returns `rows` and `width` as kernel ints.
    pub fn check(&self) -> Result<(i32, i32), CudaError> {
        check_rows(self.rows, self.width, "layernorm_bwd")
    }
}

/// The output's row stride: `out`, or more (rows padded for the alignment of the next product)
/// without GELU, whose kernels read dense rows, and for more than one column. Returns it as a
/// kernel int.
fn check_y_stride(d: LinearDims, y_stride: usize, gelu: bool) -> Result<i32, CudaError> {
    if y_stride != d.out && (y_stride < d.out || gelu || d.out == 1) {
        return Err(CudaError::Argument(format!(
            "linear: y's row stride is {y_stride} for {} outputs: expected {}, or more without \
             GELU and for more than one output",
            d.out, d.out
        )));
    }
    checked_int(d.rows.saturating_mul(y_stride), "rows·y's row stride")?;
    checked_int(y_stride, "y's row stride")
}

/// A linear layer's sizes: at least one input column and sizes within 32-bit indexing. Returns
/// `rows` and `out`.
fn check_linear(d: LinearDims) -> Result<(i32, i32), CudaError> {
    if d.inp == 0 {
        return Err(CudaError::Argument(
            "linear: x has no columns (in = 0)".into(),
        ));
    }
    checked_int(d.rows.saturating_mul(d.inp.max(d.out)), "rows·max(in, out)")?;
    checked_int(d.out.saturating_mul(d.inp), "out·in")?;
    Ok((checked_int(d.rows, "rows")?, checked_int(d.out, "out")?))
}

impl LinearFwdArgs {
    /// The sizes; with GELU a bf16 `y`; without, a 16-byte aligned bias (cuBLASLt's epilogue
    /// reads it in 16-byte accesses). Returns `rows` and `out` as kernel ints.
    pub fn check(&self) -> Result<(i32, i32), CudaError> {
        let ints = check_linear(self.dims)?;
        check_y_stride(self.dims, self.y_stride, self.pre != 0)?;
        if self.pre != 0 && self.y_dtype != Dtype::Bf16 {
            return Err(CudaError::Argument(
                "linear: with GELU, y is bf16 (bias_gelu_fwd writes bf16)".into(),
            ));
        }
        if self.pre == 0 && self.bias != 0 {
            check_aligned("linear", 16, &[("b", self.bias)])?;
        }
        Ok(ints)
    }
}

impl LinearBwdArgs {
    /// The sizes; returns `rows`, `out` and `dy`'s row stride as kernel ints.
    pub fn check(&self) -> Result<(i32, i32, i32), CudaError> {
        let (rows, out) = check_linear(self.dims)?;
        Ok((
            rows,
            out,
            check_y_stride(self.dims, self.y_stride, self.pre != 0)?,
        ))
    }
}

impl SoftmaxXentArgs {
    /// `0 < vocab <= ld`, a known pick mode with somewhere to write the picks, sizes within 32-bit
    /// indexing. Returns `ld`, `rows` and `vocab` as kernel ints.
    pub fn check(&self) -> Result<(i32, i32, i32), CudaError> {
        if self.vocab == 0 || self.ld < self.vocab {
            return Err(CudaError::Argument(format!(
                "softmax_xent: vocab = {} with a row stride of {}: expected 0 < vocab <= row \
                 stride",
                self.vocab, self.ld
            )));
        }
        if !(0..=2).contains(&self.pick_mode) || (self.pick_mode != 0 && self.picks == 0) {
            return Err(CudaError::Argument(format!(
                "softmax_xent: pick mode {} (0 none, 1 argmax, 2 Gumbel; 1 and 2 need picks)",
                self.pick_mode
            )));
        }
        checked_int(self.rows.saturating_mul(self.ld), "rows·row stride")?;
        Ok((
            checked_int(self.ld, "row stride")?,
            checked_int(self.rows, "rows")?,
            checked_int(self.vocab, "vocab")?,
        ))
    }
}

impl BceHeadArgs {
    /// A width the kernels hold; returns `tokens` and `width` as kernel ints.
    pub fn check(&self) -> Result<(i32, i32), CudaError> {
        check_rows(self.tokens, self.width, "bce_head")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(y_stride: usize, out: usize, gelu: bool) -> LinearFwdArgs {
        LinearFwdArgs {
            x: 256,
            w: 256,
            bias: 0,
            y: 256,
            y_dtype: Dtype::Bf16,
            pre: if gelu { 256 } else { 0 },
            dims: LinearDims {
                rows: 4,
                inp: 8,
                out,
            },
            y_stride,
        }
    }

    /// A padded output row is taken where the products read it (no GELU, several columns), and
    /// refused, naming the stride, where a kernel would read the rows as dense or overlap them.
    #[test]
    fn a_padded_output_row_is_taken_only_without_gelu() {
        assert!(forward(30, 30, false).check().is_ok());
        assert!(forward(32, 30, false).check().is_ok());
        assert!(forward(30, 30, true).check().is_ok());
        for (y_stride, out, gelu) in [(32, 30, true), (29, 30, false), (8, 1, false)] {
            let e = forward(y_stride, out, gelu)
                .check()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("row stride is {y_stride} for {out} outputs")),
                "{e}"
            );
        }
        let backward = LinearBwdArgs {
            x: 256,
            w: 256,
            dy: 256,
            pre: 0,
            dpre: 0,
            dx: 256,
            dw: 256,
            dbias: 0,
            partials: 0,
            dims: LinearDims {
                rows: 4,
                inp: 8,
                out: 30,
            },
            y_stride: 32,
            overwrite_dx: false,
        };
        assert_eq!(backward.check().unwrap(), (4, 30, 32));
        let gelu = LinearBwdArgs {
            pre: 256,
            ..backward
        };
        assert!(gelu.check().is_err());
    }
}
