//! The ops level: each fused operation of the kernels on caller memory, described by
//! [`ElectraTensor`]s, computed by the CPU reference (host pointers); `cuda_ops` has the same
//! operations on device pointers and a caller's stream, run by the CUDA kernels. The operations
//! hold no state; outputs must not overlap inputs. Outputs named as gradients (`d…`) are accumulated
//! (`+=`), as in a backward pass over shared weights, so zero them first for a plain result;
//! every other output is overwritten.

use super::{fail, guard, CResult, ElectraStatus};
use crate::backend::cpu::{attention, bce_head, layernorm, linear, losses};
use crate::backend::{AttentionDims, DropoutMask, LinearDims, Pick};
use std::borrow::Cow;
use std::ffi::c_void;

/// `float` elements.
pub const ELECTRA_DTYPE_F32: u32 = 0;
/// `uint32_t` elements (token ids, masks, targets).
pub const ELECTRA_DTYPE_U32: u32 = 1;
/// bfloat16 elements (`uint16_t` bits: the upper half of an f32), the activations of the CUDA
/// device ops (`electra_cuda_*`).
pub const ELECTRA_DTYPE_BF16: u32 = 2;

/// A tensor in the caller's memory: `shape[0..rank]` row-major, where a row (the last dimension)
/// may be followed by padding: row `r` starts `r · row_stride` elements after `data`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElectraTensor {
    /// The first element: host memory for the ops, device memory for the device ops
    /// (`electra_cuda_*`).
    pub data: *mut c_void,
    /// `ELECTRA_DTYPE_F32`, `ELECTRA_DTYPE_U32` or `ELECTRA_DTYPE_BF16` (device ops only).
    pub dtype: u32,
    /// The number of dimensions, 1 to 4.
    pub rank: u32,
    /// The sizes; entries past `rank` are ignored.
    pub shape: [usize; 4],
    /// Elements from the start of one row to the next; 0 means `shape[rank - 1]` (contiguous).
    pub row_stride: usize,
}

/// Dropout applied inside an operation: element `i` of the buffer it applies to is kept (and
/// scaled by 1/(1−p)) when the Philox draw keyed by (`seed`, `site`, `i`) is at least `p`, as in
/// the engine's training steps.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElectraDropout {
    /// The probability of dropping an element, in [0, 1).
    pub p: f32,
    /// The step's dropout seed.
    pub seed: u64,
    /// Numbers the place in the pass.
    pub site: u32,
}

/// Element types the tensors can hold.
trait Elem: Copy + Default {
    const DTYPE: u32;
}
impl Elem for f32 {
    const DTYPE: u32 = ELECTRA_DTYPE_F32;
}
impl Elem for u32 {
    const DTYPE: u32 = ELECTRA_DTYPE_U32;
}

pub(super) fn dtype_name(d: u32) -> String {
    match d {
        ELECTRA_DTYPE_F32 => "f32".into(),
        ELECTRA_DTYPE_U32 => "u32".into(),
        ELECTRA_DTYPE_BF16 => "bf16".into(),
        other => format!("unknown dtype {other}"),
    }
}

/// A checked tensor argument: its name, its descriptor, and the geometry of its rows.
pub(super) struct Arg<'a> {
    pub(super) name: &'a str,
    pub(super) t: ElectraTensor,
    pub(super) rows: usize,
    pub(super) width: usize,
    pub(super) stride: usize,
}

/// Checks the tensor `name` has element type `T` and the shape `expected` (with `dims`, the
/// names of the sizes, for the message).
///
/// # Safety
/// `p` is NULL or points to an `ElectraTensor`.
unsafe fn arg<'a, T: Elem>(
    p: *const ElectraTensor,
    name: &'a str,
    expected: &[usize],
    dims: &str,
) -> CResult<Arg<'a>> {
    arg_of(p, name, &[T::DTYPE], expected, dims)
}

/// Checks the tensor `name` has one of the element types `dtypes` and the shape `expected`
/// (with `dims`, the names of the sizes, for the message).
///
/// # Safety
/// `p` is NULL or points to an `ElectraTensor`.
pub(super) unsafe fn arg_of<'a>(
    p: *const ElectraTensor,
    name: &'a str,
    dtypes: &[u32],
    expected: &[usize],
    dims: &str,
) -> CResult<Arg<'a>> {
    let t = *p
        .as_ref()
        .ok_or_else(|| fail(ElectraStatus::NullPointer, format!("{name} is NULL")))?;
    if !dtypes.contains(&t.dtype) {
        let names: Vec<String> = dtypes.iter().map(|&d| dtype_name(d)).collect();
        return Err(fail(
            ElectraStatus::Dtype,
            format!(
                "{name} has dtype {}, expected {}",
                dtype_name(t.dtype),
                names.join(" or ")
            ),
        ));
    }
    let rank = t.rank as usize;
    let given = &t.shape[..rank.min(4)];
    if !(1..=4).contains(&rank) || given != expected {
        return Err(fail(
            ElectraStatus::Shape,
            format!("{name} has shape {given:?} (rank {rank}), expected {expected:?} ({dims})"),
        ));
    }
    let width = expected[rank - 1];
    let rows: usize = expected[..rank - 1].iter().product();
    let stride = if t.row_stride == 0 {
        width
    } else {
        t.row_stride
    };
    if stride < width {
        return Err(fail(
            ElectraStatus::Shape,
            format!("{name} has row_stride {stride}, expected at least the row's {width} elements"),
        ));
    }
    if t.data.is_null() && rows * width > 0 {
        return Err(fail(
            ElectraStatus::NullPointer,
            format!("{name}.data is NULL"),
        ));
    }
    Ok(Arg {
        name,
        t,
        rows,
        width,
        stride,
    })
}

impl Arg<'_> {
    /// The elements, borrowed when the rows are contiguous, else gathered.
    ///
    /// # Safety
    /// The descriptor points to `rows` rows of `stride` elements of `T` (the last may stop at
    /// `width`) that outlive the call.
    unsafe fn read<'b, T: Elem>(&self) -> Cow<'b, [T]> {
        let base = self.t.data as *const T;
        if self.stride == self.width || self.rows <= 1 {
            return Cow::Borrowed(std::slice::from_raw_parts(base, self.rows * self.width));
        }
        let mut v = Vec::with_capacity(self.rows * self.width);
        for r in 0..self.rows {
            v.extend_from_slice(std::slice::from_raw_parts(
                base.add(r * self.stride),
                self.width,
            ));
        }
        Cow::Owned(v)
    }

    /// A writable copy of the elements (their current values, for outputs accumulated into).
    ///
    /// # Safety
    /// As for [`Arg::read`].
    unsafe fn out<T: Elem>(&self) -> Out<T> {
        Out {
            values: self.read::<T>().into_owned(),
            arg: (self.t.data as *mut T, self.rows, self.width, self.stride),
        }
    }
}

/// An output computed into a buffer of its own and copied into the caller's memory only when the
/// operation has succeeded, so a failed call leaves the caller's memory as it was.
struct Out<T> {
    values: Vec<T>,
    arg: (*mut T, usize, usize, usize),
}

impl<T: Elem> Out<T> {
    /// Copies the result into the caller's rows.
    ///
    /// # Safety
    /// The descriptor this came from points to writable memory for its rows.
    unsafe fn commit(self) {
        let (base, rows, width, stride) = self.arg;
        for r in 0..rows {
            let dst = std::slice::from_raw_parts_mut(base.add(r * stride), width);
            dst.copy_from_slice(&self.values[r * width..(r + 1) * width]);
        }
    }
}

/// The optional tensor `name`: NULL is `None`.
///
/// # Safety
/// As for [`arg`].
unsafe fn opt_arg<'a, T: Elem>(
    p: *const ElectraTensor,
    name: &'a str,
    expected: &[usize],
    dims: &str,
) -> CResult<Option<Arg<'a>>> {
    if p.is_null() {
        Ok(None)
    } else {
        arg::<T>(p, name, expected, dims).map(Some)
    }
}

/// The leading sizes of `p` (for the shapes the others must have); NULL and rank are checked.
///
/// # Safety
/// `p` is NULL or points to an `ElectraTensor`.
pub(super) unsafe fn dims_of(
    p: *const ElectraTensor,
    name: &str,
    rank: usize,
) -> CResult<[usize; 4]> {
    let t = p
        .as_ref()
        .ok_or_else(|| fail(ElectraStatus::NullPointer, format!("{name} is NULL")))?;
    if t.rank as usize != rank {
        return Err(fail(
            ElectraStatus::Shape,
            format!("{name} has rank {}, expected {rank}", t.rank),
        ));
    }
    Ok(t.shape)
}

/// The dropout mask of an optional [`ElectraDropout`].
///
/// # Safety
/// `p` is NULL or points to an `ElectraDropout`.
pub(super) unsafe fn dropout(p: *const ElectraDropout) -> CResult<Option<DropoutMask>> {
    let Some(d) = p.as_ref() else { return Ok(None) };
    if !(0.0..1.0).contains(&d.p) {
        return Err(fail(
            ElectraStatus::InvalidArgument,
            format!("dropout.p is {}, expected a probability in [0, 1)", d.p),
        ));
    }
    Ok(Some(DropoutMask {
        p: d.p,
        seed: d.seed,
        site: d.site,
        offset: 0,
    }))
}

/// The attention sizes from `qkv [batch, seq, 3·hidden]` and `heads`.
pub(super) fn attention_dims(q: [usize; 4], heads: usize) -> CResult<AttentionDims> {
    let (batch, seq, three_h) = (q[0], q[1], q[2]);
    if three_h % 3 != 0 || heads == 0 || (three_h / 3) % heads != 0 {
        return Err(fail(
            ElectraStatus::Shape,
            format!(
                "qkv's last dimension is {three_h}, expected 3 · hidden with hidden a multiple \
                 of heads = {heads}"
            ),
        ));
    }
    Ok(AttentionDims {
        batch,
        seq,
        heads,
        head_dim: three_h / 3 / heads,
    })
}

/// Multi-head self-attention forward: `qkv [batch, seq, 3·hidden]` f32 (queries, keys, values
/// side by side, heads contiguous in each), `key_mask [batch, seq]` u32 (1 real, 0 padding: never
/// attended to) → `ctx [batch, seq, hidden]`, and `probs [batch, heads, seq, seq]`, the
/// probabilities before dropout, which the backward pass reads. `dropout` NULL for none.
///
/// # Safety
/// Each pointer is NULL or points to a valid descriptor of memory as it describes.
#[no_mangle]
pub unsafe extern "C" fn electra_attention_forward(
    qkv: *const ElectraTensor,
    key_mask: *const ElectraTensor,
    ctx: *const ElectraTensor,
    probs: *const ElectraTensor,
    heads: usize,
    dropout_: *const ElectraDropout,
) -> ElectraStatus {
    guard(|| {
        let d = attention_dims(dims_of(qkv, "qkv", 3)?, heads)?;
        let (b, t, h, nh) = (d.batch, d.seq, d.hidden(), d.heads);
        let names = "batch, seq, 3·hidden";
        let qkv = arg::<f32>(qkv, "qkv", &[b, t, 3 * h], names)?;
        let mask = arg::<u32>(key_mask, "key_mask", &[b, t], "batch, seq")?;
        let ctx = arg::<f32>(ctx, "ctx", &[b, t, h], "batch, seq, hidden")?;
        let probs = arg::<f32>(probs, "probs", &[b, nh, t, t], "batch, heads, seq, seq")?;
        let drop = dropout(dropout_)?;
        let (mut c, mut p) = (ctx.out::<f32>(), probs.out::<f32>());
        let mut scratch = vec![0.0; p.values.len()];
        let (q, m) = (qkv.read::<f32>(), mask.read::<u32>());
        let pass = attention::Pass {
            dims: d,
            key_mask: &m,
            dropout: drop,
        };
        attention::forward(&q, &mut c.values, &mut p.values, &mut scratch, &pass);
        c.commit();
        p.commit();
        Ok(())
    })
}

/// Attention backward: from `qkv`, `key_mask` and `probs` as the forward pass left them, and
/// `dctx [batch, seq, hidden]`, accumulates `dqkv [batch, seq, 3·hidden]`. `dropout` must be
/// the forward pass's.
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_attention_backward(
    qkv: *const ElectraTensor,
    key_mask: *const ElectraTensor,
    probs: *const ElectraTensor,
    dctx: *const ElectraTensor,
    dqkv: *const ElectraTensor,
    heads: usize,
    dropout_: *const ElectraDropout,
) -> ElectraStatus {
    guard(|| {
        let d = attention_dims(dims_of(qkv, "qkv", 3)?, heads)?;
        let (b, t, h, nh) = (d.batch, d.seq, d.hidden(), d.heads);
        let qkv = arg::<f32>(qkv, "qkv", &[b, t, 3 * h], "batch, seq, 3·hidden")?;
        let mask = arg::<u32>(key_mask, "key_mask", &[b, t], "batch, seq")?;
        let probs = arg::<f32>(probs, "probs", &[b, nh, t, t], "batch, heads, seq, seq")?;
        let dctx = arg::<f32>(dctx, "dctx", &[b, t, h], "batch, seq, hidden")?;
        let dqkv = arg::<f32>(dqkv, "dqkv", &[b, t, 3 * h], "batch, seq, 3·hidden")?;
        let drop = dropout(dropout_)?;
        let mut dq = dqkv.out::<f32>();
        let n = b * nh * t * t;
        let (mut dscores, mut scratch) = (vec![0.0; n], vec![0.0; n]);
        let (q, m, p, dc) = (qkv.read(), mask.read(), probs.read(), dctx.read());
        let pass = attention::Pass {
            dims: d,
            key_mask: &m,
            dropout: drop,
        };
        let (dqv, ds) = (&mut dq.values, &mut dscores);
        attention::backward(&q, &p, &dc, dqv, ds, &mut scratch, &pass);
        dq.commit();
        Ok(())
    })
}

/// Residual + LayerNorm forward: `y = LayerNorm(x + residual)·gain + bias` over rows of
/// `x [rows, width]` (`residual` NULL for none; `gain`, `bias` `[width]`), saving `xhat
/// [rows, width]` and `rstd [rows]` for the backward pass.
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_layernorm_forward(
    x: *const ElectraTensor,
    residual: *const ElectraTensor,
    gain: *const ElectraTensor,
    bias: *const ElectraTensor,
    eps: f32,
    y: *const ElectraTensor,
    xhat: *const ElectraTensor,
    rstd: *const ElectraTensor,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(x, "x", 2)?;
        let (rows, width) = (s[0], s[1]);
        let rw = [rows, width];
        let x = arg::<f32>(x, "x", &rw, "rows, width")?;
        let residual = opt_arg::<f32>(residual, "residual", &rw, "x's shape")?;
        let gain = arg::<f32>(gain, "gain", &[width], "width")?;
        let bias = arg::<f32>(bias, "bias", &[width], "width")?;
        let y = arg::<f32>(y, "y", &rw, "x's shape")?;
        let xhat = arg::<f32>(xhat, "xhat", &rw, "x's shape")?;
        let rstd = arg::<f32>(rstd, "rstd", &[rows], "rows")?;
        if eps.is_nan() || eps <= 0.0 {
            return Err(fail(
                ElectraStatus::InvalidArgument,
                format!("eps is {eps}, expected > 0"),
            ));
        }
        let (mut yo, mut xo, mut ro) = (y.out::<f32>(), xhat.out::<f32>(), rstd.out::<f32>());
        let res = residual.as_ref().map(|r| r.read::<f32>());
        let (xv, g, bv) = (x.read(), gain.read(), bias.read());
        let norm = layernorm::Norm {
            gain: &g,
            bias: &bv,
            eps,
        };
        let (yv, xv2, rv) = (&mut yo.values, &mut xo.values, &mut ro.values);
        layernorm::forward(&xv, res.as_deref(), &norm, yv, xv2, rv);
        yo.commit();
        xo.commit();
        ro.commit();
        Ok(())
    })
}

/// Residual + LayerNorm backward: from `dy [rows, width]`, `gain` and the saved `xhat`, `rstd`,
/// accumulates `dx` (and the same into `dresidual`, NULL when the forward had no residual),
/// `dgain` and `dbias`.
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_layernorm_backward(
    dy: *const ElectraTensor,
    gain: *const ElectraTensor,
    xhat: *const ElectraTensor,
    rstd: *const ElectraTensor,
    dx: *const ElectraTensor,
    dresidual: *const ElectraTensor,
    dgain: *const ElectraTensor,
    dbias: *const ElectraTensor,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(dy, "dy", 2)?;
        let (rows, width) = (s[0], s[1]);
        let rw = [rows, width];
        let dy = arg::<f32>(dy, "dy", &rw, "rows, width")?;
        let gain = arg::<f32>(gain, "gain", &[width], "width")?;
        let xhat = arg::<f32>(xhat, "xhat", &rw, "dy's shape")?;
        let rstd = arg::<f32>(rstd, "rstd", &[rows], "rows")?;
        let dx = arg::<f32>(dx, "dx", &rw, "dy's shape")?;
        let dres = opt_arg::<f32>(dresidual, "dresidual", &rw, "dy's shape")?;
        let dgain = arg::<f32>(dgain, "dgain", &[width], "width")?;
        let dbias = arg::<f32>(dbias, "dbias", &[width], "width")?;
        let (mut dxo, mut dgo, mut dbo) = (dx.out::<f32>(), dgain.out::<f32>(), dbias.out::<f32>());
        let mut dro = dres.as_ref().map(|r| r.out::<f32>());
        let (dyv, g, xh, rs) = (dy.read(), gain.read(), xhat.read(), rstd.read());
        let dr = dro.as_mut().map(|o| &mut o.values[..]);
        let saved = layernorm::Saved {
            xhat: &xh,
            rstd: &rs,
        };
        let grads = layernorm::NormGrads {
            gain: &mut dgo.values,
            bias: &mut dbo.values,
        };
        layernorm::backward(&dyv, &g, saved, &mut dxo.values, dr, grads);
        dxo.commit();
        dgo.commit();
        dbo.commit();
        if let Some(o) = dro {
            o.commit();
        }
        Ok(())
    })
}

/// The shapes of a linear layer from `x [rows, in]` and `w [out, in]`.
pub(super) unsafe fn linear_dims(
    x: *const ElectraTensor,
    w: *const ElectraTensor,
) -> CResult<LinearDims> {
    let (xs, ws) = (dims_of(x, "x", 2)?, dims_of(w, "w", 2)?);
    Ok(LinearDims {
        rows: xs[0],
        inp: xs[1],
        out: ws[0],
    })
}

/// Linear layer with fused bias and GELU, forward: `y = x·wᵀ + b` for `x [rows, in]`,
/// `w [out, in]` (PyTorch's layout), `b [out]` (NULL for none); with `pre` (NULL for none)
/// `pre = x·wᵀ + b` and `y = gelu(pre)` (erf form).
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_linear_forward(
    x: *const ElectraTensor,
    w: *const ElectraTensor,
    b: *const ElectraTensor,
    y: *const ElectraTensor,
    pre: *const ElectraTensor,
) -> ElectraStatus {
    guard(|| {
        let d = linear_dims(x, w)?;
        let x = arg::<f32>(x, "x", &[d.rows, d.inp], "rows, in")?;
        let w = arg::<f32>(w, "w", &[d.out, d.inp], "out, in")?;
        let b = opt_arg::<f32>(b, "b", &[d.out], "out")?;
        let y = arg::<f32>(y, "y", &[d.rows, d.out], "rows, out")?;
        let pre = opt_arg::<f32>(pre, "pre", &[d.rows, d.out], "rows, out")?;
        let mut yo = y.out::<f32>();
        let mut po = pre.as_ref().map(|p| p.out::<f32>());
        let bias = b.as_ref().map(|b| b.read::<f32>());
        let pv = po.as_mut().map(|o| &mut o.values[..]);
        let (xv, wv, yv) = (x.read(), w.read(), &mut yo.values);
        linear::forward(&xv, &wv, bias.as_deref(), yv, pv, d, d.out);
        yo.commit();
        if let Some(o) = po {
            o.commit();
        }
        Ok(())
    })
}

/// Linear layer backward: from `x`, `w` and `dy [rows, out]` (the gradient at `y`), and `pre`
/// when the forward pass applied GELU (NULL otherwise), accumulates `dx [rows, in]`,
/// `dw [out, in]` and `db [out]` (NULL to skip).
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_linear_backward(
    x: *const ElectraTensor,
    w: *const ElectraTensor,
    dy: *const ElectraTensor,
    pre: *const ElectraTensor,
    dx: *const ElectraTensor,
    dw: *const ElectraTensor,
    db: *const ElectraTensor,
) -> ElectraStatus {
    guard(|| {
        let d = linear_dims(x, w)?;
        let x = arg::<f32>(x, "x", &[d.rows, d.inp], "rows, in")?;
        let w = arg::<f32>(w, "w", &[d.out, d.inp], "out, in")?;
        let dy = arg::<f32>(dy, "dy", &[d.rows, d.out], "rows, out")?;
        let pre = opt_arg::<f32>(pre, "pre", &[d.rows, d.out], "rows, out")?;
        let dx = arg::<f32>(dx, "dx", &[d.rows, d.inp], "rows, in")?;
        let dw = arg::<f32>(dw, "dw", &[d.out, d.inp], "out, in")?;
        let db = opt_arg::<f32>(db, "db", &[d.out], "out")?;
        let dy = dy.read::<f32>();
        // Through GELU first: the gradient at the pre-activation.
        let dy = match &pre {
            Some(p) => {
                let mut dpre = vec![0.0; dy.len()];
                linear::gelu_backward(&p.read(), &dy, &mut dpre);
                Cow::Owned(dpre)
            }
            None => dy,
        };
        let (mut dxo, mut dwo) = (dx.out::<f32>(), dw.out::<f32>());
        let mut dbo = db.as_ref().map(|b| b.out::<f32>());
        let dbv = dbo.as_mut().map(|o| &mut o.values[..]);
        linear::backward(
            &x.read(),
            &w.read(),
            (&dy, d.out),
            &mut dxo.values,
            &mut dwo.values,
            dbv,
            d,
        );
        dxo.commit();
        dwo.commit();
        if let Some(o) = dbo {
            o.commit();
        }
        Ok(())
    })
}

/// The generator's loss with the argmax replacement, in one pass over each row of
/// `logits [rows, vocab]`: the softmax cross-entropy against `targets [rows]` (u32) into
/// `row_loss [rows]`, its gradient times `grad_scale` into `dlogits [rows, vocab]` (overwritten),
/// and the most likely token of each row into `picks [rows]` (u32; NULL to skip).
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_generator_loss(
    logits: *const ElectraTensor,
    targets: *const ElectraTensor,
    grad_scale: f32,
    row_loss: *const ElectraTensor,
    dlogits: *const ElectraTensor,
    picks: *const ElectraTensor,
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(logits, "logits", 2)?;
        let (rows, vocab) = (s[0], s[1]);
        let logits = arg::<f32>(logits, "logits", &[rows, vocab], "rows, vocab")?;
        let targets = arg::<u32>(targets, "targets", &[rows], "rows")?;
        let row_loss = arg::<f32>(row_loss, "row_loss", &[rows], "rows")?;
        let dlogits = arg::<f32>(dlogits, "dlogits", &[rows, vocab], "rows, vocab")?;
        let picks = opt_arg::<u32>(picks, "picks", &[rows], "rows")?;
        let tv = targets.read::<u32>();
        if let Some(bad) = tv.iter().find(|&&t| t as usize >= vocab) {
            return Err(fail(
                ElectraStatus::InvalidArgument,
                format!(
                    "{} holds {bad}, expected classes below vocab = {vocab}",
                    targets.name
                ),
            ));
        }
        let (mut lo, mut do_) = (row_loss.out::<f32>(), dlogits.out::<f32>());
        let mut po = picks.as_ref().map(|p| p.out::<u32>());
        let pick = po.as_mut().map(|o| losses::Picks {
            mode: Pick::Argmax,
            sample_seed: 0,
            first_pick: 0,
            out: &mut o.values[..],
        });
        let (lv, dv) = (&mut lo.values, &mut do_.values);
        let shape = (vocab, vocab);
        losses::softmax_xent(&logits.read(), &tv, lv, dv, grad_scale, pick, shape);
        lo.commit();
        do_.commit();
        if let Some(o) = po {
            o.commit();
        }
        Ok(())
    })
}

/// The discriminator's per-token head fused with its loss, forward and backward: for
/// `h [tokens, hidden]`, `w [hidden]`, `b [1]`, `labels [tokens]` (f32, 1 for replaced) and
/// `mask [tokens]` (u32, 1 for real): `logits = h·w + b` into `logits [tokens]`, the sigmoid
/// BCE of the real tokens into `row_loss [tokens]` (0 on padding), and with
/// `d = grad_scale · (σ(logit) − label)`, accumulates `dh [tokens, hidden]`, `dw [hidden]` and
/// `db [1]`.
///
/// # Safety
/// As for [`electra_attention_forward`].
#[no_mangle]
pub unsafe extern "C" fn electra_bce_head(
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
) -> ElectraStatus {
    guard(|| {
        let s = dims_of(h, "h", 2)?;
        let (tokens, hidden) = (s[0], s[1]);
        let h = arg::<f32>(h, "h", &[tokens, hidden], "tokens, hidden")?;
        let w = arg::<f32>(w, "w", &[hidden], "hidden")?;
        let b = arg::<f32>(b, "b", &[1], "one bias")?;
        let labels = arg::<f32>(labels, "labels", &[tokens], "tokens")?;
        let mask = arg::<u32>(mask, "mask", &[tokens], "tokens")?;
        let logits = arg::<f32>(logits, "logits", &[tokens], "tokens")?;
        let row_loss = arg::<f32>(row_loss, "row_loss", &[tokens], "tokens")?;
        let dh = arg::<f32>(dh, "dh", &[tokens, hidden], "tokens, hidden")?;
        let dw = arg::<f32>(dw, "dw", &[hidden], "hidden")?;
        let db = arg::<f32>(db, "db", &[1], "one bias")?;
        let (mut lo, mut ro) = (logits.out::<f32>(), row_loss.out::<f32>());
        let (mut dho, mut dwo, mut dbo) = (dh.out::<f32>(), dw.out::<f32>(), db.out::<f32>());
        let mut dlogits = vec![0.0; tokens];
        bce_head::forward_backward(
            &h.read(),
            &w.read(),
            &b.read(),
            &labels.read(),
            &mask.read(),
            &mut lo.values,
            &mut ro.values,
            &mut dlogits,
            &mut dho.values,
            &mut dwo.values,
            &mut dbo.values,
            grad_scale,
        );
        for o in [lo, ro, dho, dwo, dbo] {
            o.commit();
        }
        Ok(())
    })
}
