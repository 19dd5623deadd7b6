//! The device ops: the fused operations of the ops level on **device** memory, run by the
//! engine's CUDA kernels on a stream the caller supplies, through an [`ElectraCudaOps`] handle
//! made for one device.
//!
//! # Tensors
//! The same [`ElectraTensor`] descriptor as the host ops, with `data` a device address (from
//! `cudaMalloc`/`cuMemAlloc`, in the device's primary context, which the CUDA runtime uses), and
//! the element types the kernels take: bf16 activations (`ELECTRA_DTYPE_BF16`), f32 parameters,
//! statistics and losses, u32 ids and masks. Rows must be contiguous (`row_stride` 0 or the row's
//! width), except the generator loss's logits; every address must be aligned to its element
//! size, and attention's bf16 tensors to 16 bytes.
//!
//! # Streams
//! Each call checks its arguments on the host, then enqueues its work on `stream` (a
//! `cudaStream_t` or `CUstream`; NULL is the legacy default stream) and returns without
//! synchronising: the buffers must stay valid, and unchanged by the caller, until the stream
//! has reached the work. A failed check returns before anything is enqueued. Errors of the work
//! itself surface at the caller's next synchronisation, as for any CUDA library.
//!
//! # Scratch and threads
//! The handle owns the kernels, a cuBLASLt handle and scratch memory that every call reuses, so
//! the calls through one handle must not overlap on the device: one thread at a time, and one
//! stream (or streams the caller orders with events). Use one handle per concurrent stream. A
//! call at a larger shape than any before may wait for the device once, to grow the scratch.
//!
//! # Checks before the handle
//! Descriptors are checked before the handle is used, so every argument error is reported the
//! same in a build without CUDA, where no handle can be made ([`electra_cuda_ops_create`]
//! returns `ELECTRA_STATUS_DEVICE`).

use super::ops::{arg_of, attention_dims, dims_of, dropout, linear_dims, Arg, ElectraDropout};
use super::ops::{ElectraTensor, ELECTRA_DTYPE_BF16, ELECTRA_DTYPE_F32, ELECTRA_DTYPE_U32};
use super::{check_out, deref_mut, fail, free, guard, hand_out, CResult, ElectraStatus, Failure};
use crate::backend::cuda::launch_args::{
    AttentionBwdArgs, AttentionFwdArgs, BceHeadArgs, Dtype, LayerNormBwdArgs, LayerNormFwdArgs,
    LinearBwdArgs, LinearFwdArgs, SoftmaxXentArgs,
};
use crate::backend::cuda::{CudaError, DeviceOps};
use crate::backend::{Dropout, LinearDims};
use std::ffi::c_void;

/// An opaque handle for the device ops on one CUDA device: its kernels, a cuBLASLt handle and
/// scratch memory.
pub struct ElectraCudaOps {
    ops: DeviceOps,
}

/// An error of the kernels' checks or of the device, as a status.
fn device_failure(e: CudaError) -> Failure {
    let status = match e {
        CudaError::Argument(_) => ElectraStatus::InvalidArgument,
        CudaError::Unsupported(_) => ElectraStatus::Shape,
        CudaError::NotBuilt
        | CudaError::NoDevice(_)
        | CudaError::Driver { .. }
        | CudaError::Blas { .. } => ElectraStatus::Device,
    };
    fail(status, e.to_string())
}

/// The bytes of an element of `dtype`.
fn elem_bytes(dtype: u32) -> u64 {
    if dtype == ELECTRA_DTYPE_BF16 {
        2
    } else {
        4
    }
}

/// A checked device tensor: one of `dtypes`, the shape `expected` (`dims` names its sizes), its
/// address aligned to its elements, and contiguous rows.
///
/// # Safety
/// `p` is NULL or points to an `ElectraTensor`.
unsafe fn dev(
    p: *const ElectraTensor,
    name: &str,
    dtypes: &[u32],
    expected: &[usize],
    dims: &str,
) -> CResult<u64> {
    let a = strided(p, name, dtypes, expected, dims)?;
    if a.stride != a.width && a.rows > 1 {
        return Err(fail(
            ElectraStatus::Shape,
            format!(
                "{name} has row_stride {}, expected 0 or {} (the CUDA kernels read contiguous rows)",
                a.stride, a.width
            ),
        ));
    }
    Ok(a.t.data as u64)
}

/// [`dev`] where rows may be padded: the checked descriptor itself.
///
/// # Safety
/// As for [`dev`].
unsafe fn strided<'a>(
    p: *const ElectraTensor,
    name: &'a str,
    dtypes: &[u32],
    expected: &[usize],
    dims: &str,
) -> CResult<Arg<'a>> {
    let a = arg_of(p, name, dtypes, expected, dims)?;
    let (addr, size) = (a.t.data as u64, elem_bytes(a.t.dtype));
    if addr % size != 0 {
        return Err(fail(
            ElectraStatus::InvalidArgument,
            format!("{name}.data is at {addr:#x}, not aligned to its {size}-byte elements"),
        ));
    }
    Ok(a)
}

/// [`dev`] for an optional tensor: NULL is address 0.
///
/// # Safety
/// As for [`dev`].
unsafe fn opt_dev(
    p: *const ElectraTensor,
    name: &str,
    dtypes: &[u32],
    expected: &[usize],
    dims: &str,
) -> CResult<u64> {
    if p.is_null() {
        Ok(0)
    } else {
        dev(p, name, dtypes, expected, dims)
    }
}

const BF16: &[u32] = &[ELECTRA_DTYPE_BF16];
const F32: &[u32] = &[ELECTRA_DTYPE_F32];
const U32: &[u32] = &[ELECTRA_DTYPE_U32];

/// The handle behind `ops`.
///
/// # Safety
/// `ops` is NULL or a live handle that no other thread uses during the call.
unsafe fn handle<'a>(ops: *mut ElectraCudaOps) -> CResult<&'a mut DeviceOps> {
    Ok(&mut deref_mut(ops, "ops")?.ops)
}

/// The dropout of an optional [`ElectraDropout`], and its seed (0 without).
///
/// # Safety
/// `p` is NULL or points to an `ElectraDropout`.
unsafe fn device_dropout(p: *const ElectraDropout) -> CResult<(Option<Dropout>, u64)> {
    Ok(match dropout(p)? {
        Some(m) => (
            Some(Dropout {
                p: m.p,
                site: m.site,
            }),
            m.seed,
        ),
        None => (None, 0),
    })
}

/// The forward pass's tensors, which the backward reads too, and the dropout's seed.
///
/// # Safety
/// Each pointer is NULL or points to its descriptor.
unsafe fn attention_args(
    qkv: *const ElectraTensor,
    key_mask: *const ElectraTensor,
    ctx: *const ElectraTensor,
    lse: *const ElectraTensor,
    keep_bits: *const ElectraTensor,
    heads: usize,
    dropout_: *const ElectraDropout,
) -> CResult<(AttentionFwdArgs, u64)> {
    let d = attention_dims(dims_of(qkv, "qkv", 3)?, heads)?;
    let (b, t, h, nh) = (d.batch, d.seq, d.hidden(), d.heads);
    let (dropout, seed) = device_dropout(dropout_)?;
    let a = AttentionFwdArgs {
        qkv: dev(qkv, "qkv", BF16, &[b, t, 3 * h], "batch, seq, 3·hidden")?,
        key_mask: dev(key_mask, "key_mask", U32, &[b, t], "batch, seq")?,
        ctx: dev(ctx, "ctx", BF16, &[b, t, h], "batch, seq, hidden")?,
        lse: dev(lse, "lse", F32, &[b, nh, t], "batch, heads, seq")?,
        keep_bits: opt_dev(
            keep_bits,
            "keep_bits",
            U32,
            &[b, nh, t, t.div_ceil(32)],
            "batch, heads, seq, ceil(seq / 32)",
        )?,
        dims: d,
        dropout,
        step: 0,
    };
    Ok((a, seed))
}

/// Creates the device ops' handle for CUDA device `device` (its primary context): loads the
/// kernels, creates a cuBLASLt handle and allocates scratch, and writes the handle to `*out`.
/// `ELECTRA_STATUS_DEVICE` when the library was built without CUDA, or there is no such device
/// or driver. Destroy with [`electra_cuda_ops_destroy`].
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_ops_create(
    device: i32,
    out: *mut *mut ElectraCudaOps,
) -> ElectraStatus {
    guard(|| {
        check_out(out, "out")?;
        let ordinal = usize::try_from(device).map_err(|_| {
            fail(
                ElectraStatus::InvalidArgument,
                format!("device is {device}, expected a device ordinal >= 0"),
            )
        })?;
        let ops = DeviceOps::new(ordinal)
            .map_err(|e| fail(ElectraStatus::Device, format!("CUDA device {device}: {e}")))?;
        hand_out(out, ElectraCudaOps { ops });
        Ok(())
    })
}

/// Frees the handle after waiting for the device's queued work (which may still use its
/// scratch); NULL is ignored.
///
/// # Safety
/// `ops` is NULL or a handle from [`electra_cuda_ops_create`] not destroyed before.
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_ops_destroy(ops: *mut ElectraCudaOps) {
    // The drop only waits and frees; a failure there has nowhere to go and is ignored.
    free(ops)
}

/// Attention forward on the device: `qkv [batch, seq, 3·hidden]` bf16 (16-byte aligned),
/// `key_mask [batch, seq]` u32 → `ctx [batch, seq, hidden]` bf16 (16-byte aligned) and `lse
/// [batch, heads, seq]` f32, each row's log-sum-exp of the scaled scores, which the backward
/// reads (the CUDA kernels keep no probabilities, unlike the host op's `probs`). Head sizes 16,
/// 32 and 64. `dropout` NULL for none; with dropout, the mask is stored as bits in `keep_bits
/// [batch, heads, seq, ceil(seq / 32)]` u32 (bit `k % 32` of word `k / 32` of a query's row for
/// key `k`, 1 = kept), which the backward reads; NULL without dropout.
///
/// # Safety
/// `ops` is NULL or a live handle; each descriptor pointer is NULL or valid, and describes
/// device memory of the handle's device that stays valid until `stream` reaches the work.
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_attention_forward(
    ops: *mut ElectraCudaOps,
    qkv: *const ElectraTensor,
    key_mask: *const ElectraTensor,
    ctx: *const ElectraTensor,
    lse: *const ElectraTensor,
    keep_bits: *const ElectraTensor,
    heads: usize,
    dropout_: *const ElectraDropout,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let (a, seed) = attention_args(qkv, key_mask, ctx, lse, keep_bits, heads, dropout_)?;
        a.check().map_err(device_failure)?;
        handle(ops)?
            .attention_fwd(a, seed, stream)
            .map_err(device_failure)
    })
}

/// Attention backward on the device: from the forward's `qkv`, `key_mask`, `ctx`, `lse` and
/// `keep_bits`, and `dctx [batch, seq, hidden]` bf16, accumulates `dqkv [batch, seq, 3·hidden]`
/// bf16 (all bf16 tensors 16-byte aligned). `dropout` must be the forward pass's.
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_attention_backward(
    ops: *mut ElectraCudaOps,
    qkv: *const ElectraTensor,
    key_mask: *const ElectraTensor,
    ctx: *const ElectraTensor,
    lse: *const ElectraTensor,
    keep_bits: *const ElectraTensor,
    dctx: *const ElectraTensor,
    dqkv: *const ElectraTensor,
    heads: usize,
    dropout_: *const ElectraDropout,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let (f, seed) = attention_args(qkv, key_mask, ctx, lse, keep_bits, heads, dropout_)?;
        let (b, t, h) = (f.dims.batch, f.dims.seq, f.dims.hidden());
        let a = AttentionBwdArgs {
            qkv: f.qkv,
            key_mask: f.key_mask,
            ctx: f.ctx,
            lse: f.lse,
            keep_bits: f.keep_bits,
            dctx: dev(dctx, "dctx", BF16, &[b, t, h], "batch, seq, hidden")?,
            dqkv: dev(dqkv, "dqkv", BF16, &[b, t, 3 * h], "batch, seq, 3·hidden")?,
            delta: 0,
            dims: f.dims,
            dropout: f.dropout,
            step: 0,
            overwrite_dqkv: false,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?
            .attention_bwd(a, seed, stream)
            .map_err(device_failure)
    })
}

/// Residual + LayerNorm forward on the device: `y = LayerNorm(x + residual)·gain + bias` over
/// rows of `x [rows, width]` bf16 (`residual` bf16, NULL for none; `gain`, `bias` `[width]`
/// f32), saving `xhat [rows, width]` bf16 and `rstd [rows]` f32. Widths 1 to 1024.
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_layernorm_forward(
    ops: *mut ElectraCudaOps,
    x: *const ElectraTensor,
    residual: *const ElectraTensor,
    gain: *const ElectraTensor,
    bias: *const ElectraTensor,
    eps: f32,
    y: *const ElectraTensor,
    xhat: *const ElectraTensor,
    rstd: *const ElectraTensor,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(x, "x", 2)?;
        let (rows, width) = (s[0], s[1]);
        let rw = [rows, width];
        if eps.is_nan() || eps <= 0.0 {
            return Err(fail(
                ElectraStatus::InvalidArgument,
                format!("eps is {eps}, expected > 0"),
            ));
        }
        let a = LayerNormFwdArgs {
            x: dev(x, "x", BF16, &rw, "rows, width")?,
            residual: opt_dev(residual, "residual", BF16, &rw, "x's shape")?,
            gain: dev(gain, "gain", F32, &[width], "width")?,
            bias: dev(bias, "bias", F32, &[width], "width")?,
            y: dev(y, "y", BF16, &rw, "x's shape")?,
            xhat: dev(xhat, "xhat", BF16, &rw, "x's shape")?,
            rstd: dev(rstd, "rstd", F32, &[rows], "rows")?,
            rows,
            width,
            eps,
            dropout: None,
            per_sequence: 0,
            step: 0,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?
            .layernorm_fwd(a, stream)
            .map_err(device_failure)
    })
}

/// Residual + LayerNorm backward on the device: from `dy [rows, width]` bf16, `gain` f32 and
/// the saved `xhat` (bf16), `rstd` (f32), accumulates `dx` (bf16; the same into `dresidual`,
/// bf16, NULL when the forward had no residual), `dgain` and `dbias` (f32).
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_layernorm_backward(
    ops: *mut ElectraCudaOps,
    dy: *const ElectraTensor,
    gain: *const ElectraTensor,
    xhat: *const ElectraTensor,
    rstd: *const ElectraTensor,
    dx: *const ElectraTensor,
    dresidual: *const ElectraTensor,
    dgain: *const ElectraTensor,
    dbias: *const ElectraTensor,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(dy, "dy", 2)?;
        let (rows, width) = (s[0], s[1]);
        let rw = [rows, width];
        let a = LayerNormBwdArgs {
            dy: dev(dy, "dy", BF16, &rw, "rows, width")?,
            gain: dev(gain, "gain", F32, &[width], "width")?,
            xhat: dev(xhat, "xhat", BF16, &rw, "dy's shape")?,
            rstd: dev(rstd, "rstd", F32, &[rows], "rows")?,
            dx: dev(dx, "dx", BF16, &rw, "dy's shape")?,
            dresidual: opt_dev(dresidual, "dresidual", BF16, &rw, "dy's shape")?,
            dgain: dev(dgain, "dgain", F32, &[width], "width")?,
            dbias: dev(dbias, "dbias", F32, &[width], "width")?,
            partials: 0,
            rows,
            width,
            overwrite_dx: false,
            overwrite_dresidual: false,
            dropout: None,
            per_sequence: 0,
            step: 0,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?
            .layernorm_bwd(a, stream)
            .map_err(device_failure)
    })
}

/// Linear layer with fused bias and GELU on the device, forward: `y = x·wᵀ + b` for
/// `x [rows, in]`, `w [out, in]` (bf16, PyTorch's layout). Without `pre` (NULL): `y` bf16 or f32
/// and `b [out]` (NULL for none) of `y`'s dtype, 16-byte aligned (cuBLASLt's bias epilogue reads
/// it). With `pre [rows, out]` bf16: `pre = x·wᵀ + b` with `b` f32, and `y = gelu(pre)` bf16.
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_linear_forward(
    ops: *mut ElectraCudaOps,
    x: *const ElectraTensor,
    w: *const ElectraTensor,
    b: *const ElectraTensor,
    y: *const ElectraTensor,
    pre: *const ElectraTensor,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let d = linear_dims(x, w)?;
        let LinearDims { rows, inp, out } = d;
        let pre_addr = opt_dev(pre, "pre", BF16, &[rows, out], "rows, out")?;
        let (y_addr, y_dtype, bias) = if pre_addr == 0 {
            let y_arg = strided(
                y,
                "y",
                &[ELECTRA_DTYPE_BF16, ELECTRA_DTYPE_F32],
                &[rows, out],
                "rows, out",
            )?;
            let y_dtype = y_arg.t.dtype;
            let y_addr = dev(y, "y", &[y_dtype], &[rows, out], "rows, out")?;
            let bias = opt_dev(b, "b", &[y_dtype], &[out], "out; y's dtype without pre")?;
            (y_addr, y_dtype, bias)
        } else {
            let y_addr = dev(y, "y", BF16, &[rows, out], "rows, out")?;
            let bias = opt_dev(b, "b", F32, &[out], "out; f32 with pre")?;
            (y_addr, ELECTRA_DTYPE_BF16, bias)
        };
        let a = LinearFwdArgs {
            x: dev(x, "x", BF16, &[rows, inp], "rows, in")?,
            w: dev(w, "w", BF16, &[out, inp], "out, in")?,
            bias,
            y: y_addr,
            y_dtype: if y_dtype == ELECTRA_DTYPE_F32 {
                Dtype::F32
            } else {
                Dtype::Bf16
            },
            pre: pre_addr,
            dims: d,
            y_stride: out,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?.linear_fwd(a, stream).map_err(device_failure)
    })
}

/// Linear layer backward on the device: from `x`, `w` and `dy [rows, out]` (bf16), and `pre`
/// (bf16) when the forward pass applied GELU (NULL otherwise), accumulates `dx [rows, in]`
/// (bf16), `dw [out, in]` (f32) and `db [out]` (f32, NULL to skip).
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_linear_backward(
    ops: *mut ElectraCudaOps,
    x: *const ElectraTensor,
    w: *const ElectraTensor,
    dy: *const ElectraTensor,
    pre: *const ElectraTensor,
    dx: *const ElectraTensor,
    dw: *const ElectraTensor,
    db: *const ElectraTensor,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let d = linear_dims(x, w)?;
        let LinearDims { rows, inp, out } = d;
        let a = LinearBwdArgs {
            x: dev(x, "x", BF16, &[rows, inp], "rows, in")?,
            w: dev(w, "w", BF16, &[out, inp], "out, in")?,
            dy: dev(dy, "dy", BF16, &[rows, out], "rows, out")?,
            pre: opt_dev(pre, "pre", BF16, &[rows, out], "rows, out")?,
            dpre: 0,
            dx: dev(dx, "dx", BF16, &[rows, inp], "rows, in")?,
            dw: dev(dw, "dw", F32, &[out, inp], "out, in")?,
            dbias: opt_dev(db, "db", F32, &[out], "out")?,
            partials: 0,
            dims: d,
            y_stride: out,
            overwrite_dx: false,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?.linear_bwd(a, stream).map_err(device_failure)
    })
}

/// The generator's loss with the argmax replacement on the device, one pass over each row of
/// `logits [rows, vocab]` bf16 (rows may be padded: `row_stride`, which `dlogits` must share):
/// the cross-entropy against `targets [rows]` (u32, each below vocab: not checked on the device)
/// into `row_loss [rows]` f32, its gradient times `grad_scale` into `dlogits [rows, vocab]` bf16
/// (overwritten; it may be `logits` itself), and the most likely token of each row into
/// `picks [rows]` (u32; NULL to skip).
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_generator_loss(
    ops: *mut ElectraCudaOps,
    logits: *const ElectraTensor,
    targets: *const ElectraTensor,
    grad_scale: f32,
    row_loss: *const ElectraTensor,
    dlogits: *const ElectraTensor,
    picks: *const ElectraTensor,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(logits, "logits", 2)?;
        let (rows, vocab) = (s[0], s[1]);
        let lg = strided(logits, "logits", BF16, &[rows, vocab], "rows, vocab")?;
        let dl = strided(dlogits, "dlogits", BF16, &[rows, vocab], "rows, vocab")?;
        if dl.stride != lg.stride && rows > 1 {
            return Err(fail(
                ElectraStatus::Shape,
                format!(
                    "dlogits has row_stride {}, expected logits' {}",
                    dl.stride, lg.stride
                ),
            ));
        }
        let picks = opt_dev(picks, "picks", U32, &[rows], "rows")?;
        let a = SoftmaxXentArgs {
            logits: lg.t.data as u64,
            dlogits: dl.t.data as u64,
            ld: lg.stride,
            targets: dev(targets, "targets", U32, &[rows], "rows")?,
            row_loss: dev(row_loss, "row_loss", F32, &[rows], "rows")?,
            grad_scale,
            pick_mode: if picks == 0 { 0 } else { 1 },
            picks,
            rows,
            vocab,
            step: 0,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?.softmax_xent(a, stream).map_err(device_failure)
    })
}

/// The discriminator's per-token head fused with its loss on the device, forward and backward:
/// for `h [tokens, hidden]` bf16, `w [hidden]`, `b [1]`, `labels [tokens]` (f32) and
/// `mask [tokens]` (u32): `logits [tokens]` and `row_loss [tokens]` (f32, overwritten) as the
/// host op computes them, and accumulates `dh` (bf16), `dw` and `db` (f32). Hidden sizes 1 to
/// 1024.
///
/// # Safety
/// As for [`electra_cuda_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_cuda_bce_head(
    ops: *mut ElectraCudaOps,
    h: *const ElectraTensor,
    w: *const ElectraTensor,
    b: *const ElectraTensor,
    labels: *const ElectraTensor,
    mask: *const ElectraTensor,
    grad_scale: f32,
    logits: *const ElectraTensor,
    row_loss: *const ElectraTensor,
    dh: *const ElectraTensor,
    dw: *const ElectraTensor,
    db: *const ElectraTensor,
    stream: *mut c_void,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(h, "h", 2)?;
        let (tokens, hidden) = (s[0], s[1]);
        let a = BceHeadArgs {
            h: dev(h, "h", BF16, &[tokens, hidden], "tokens, hidden")?,
            w: dev(w, "w", F32, &[hidden], "hidden")?,
            b: dev(b, "b", F32, &[1], "one bias")?,
            labels: dev(labels, "labels", F32, &[tokens], "tokens")?,
            mask: dev(mask, "mask", U32, &[tokens], "tokens")?,
            logits: dev(logits, "logits", F32, &[tokens], "tokens")?,
            row_loss: dev(row_loss, "row_loss", F32, &[tokens], "tokens")?,
            dh: dev(dh, "dh", BF16, &[tokens, hidden], "tokens, hidden")?,
            dw: dev(dw, "dw", F32, &[hidden], "hidden")?,
            db: dev(db, "db", F32, &[1], "one bias")?,
            partials: 0,
            grad_scale,
            tokens,
            width: hidden,
        };
        a.check().map_err(device_failure)?;
        handle(ops)?.bce_head(a, stream).map_err(device_failure)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a build without the `cuda` feature answers (the C test, which may run against either
    /// build of the library, accepts both answers).
    #[test]
    #[cfg(not(feature = "cuda"))]
    fn a_build_without_cuda_says_so() {
        let mut ops = std::ptr::null_mut();
        // SAFETY: `ops` is writable.
        let status = unsafe { electra_cuda_ops_create(0, &mut ops) };
        assert_eq!(status, ElectraStatus::Device);
        assert!(ops.is_null());
        // SAFETY: the thread's last error, valid until the next call.
        let message = unsafe { std::ffi::CStr::from_ptr(super::super::electra_last_error()) };
        let message = message.to_str().unwrap();
        assert!(
            message.starts_with("CUDA device 0: built without CUDA"),
            "{message}"
        );
    }

    /// The kernels' checks map to the statuses the header documents.
    #[test]
    fn the_kernels_checks_map_to_statuses() {
        for (e, status) in [
            (
                CudaError::Argument("a".into()),
                ElectraStatus::InvalidArgument,
            ),
            (CudaError::Unsupported("b".into()), ElectraStatus::Shape),
            (CudaError::NotBuilt, ElectraStatus::Device),
            (CudaError::NoDevice("c".into()), ElectraStatus::Device),
        ] {
            let message = e.to_string();
            let f = device_failure(e);
            assert_eq!((f.status, f.message), (status, message));
        }
    }
}
