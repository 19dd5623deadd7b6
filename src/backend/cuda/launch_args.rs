//! What each fused operation's CUDA launch takes once its buffers are resolved: device addresses,
//! sizes and the step memory's address. The engine's launchers fill these from its buffers, and
//! the C ABI's device ops (`DeviceOps`) from a caller's device pointers; both then call the same
//! launch function beside the kernels (`attention.rs`, `layernorm.rs`, `linear.rs`,
//! `losses.rs`), which checks them and launches on the stream it is given. Shared with the stub
//! of builds without the `cuda` feature, so that the C ABI names the same types in every build.

use crate::backend::{AttentionDims, Dropout, LinearDims};

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
/// backward reads). `step` is the step memory (`StepValues`), which holds the dropout seed.
#[derive(Clone, Copy, Debug)]
pub struct AttentionFwdArgs {
    pub qkv: u64,
    pub key_mask: u64,
    pub ctx: u64,
    pub lse: u64,
    pub dims: AttentionDims,
    pub dropout: Option<Dropout>,
    pub step: u64,
}

/// `attention_bwd_dq_d*` then `attention_bwd_dkdv_d*`: the forward's `qkv`, `key_mask`, `ctx`
/// and `lse`, the gradient `dctx` (bf16), `delta` (f32 `[batch, heads, seq]`, written) and
/// `dqkv` (bf16, accumulated).
#[derive(Clone, Copy, Debug)]
pub struct AttentionBwdArgs {
    pub qkv: u64,
    pub key_mask: u64,
    pub ctx: u64,
    pub dctx: u64,
    pub lse: u64,
    pub delta: u64,
    pub dqkv: u64,
    pub dims: AttentionDims,
    pub dropout: Option<Dropout>,
    pub step: u64,
}

/// `layernorm_residual_fwd_w*`: bf16 `x`, `residual` (0 for none), `y`, `xhat` `[rows, width]`;
/// f32 `gain`, `bias` `[width]` and `rstd` `[rows]`.
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
}

/// `layernorm_residual_bwd_w*`: bf16 `dy`, `xhat`, and `dx`, `dresidual` (0 for none),
/// accumulated; f32 `rstd`, `gain`, and `dgain`, `dbias`, accumulated. `partials` and `counters`
/// are the reduction's scratch ([`layernorm_bwd_scratch`](super::layernorm) bytes, counters
/// zero).
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
    pub counters: u64,
    pub rows: usize,
    pub width: usize,
}

/// A linear layer's forward: bf16 `x [rows, in]`, `w [out, in]`; `y [rows, out]` of `y_dtype`.
/// Without GELU (`pre` 0), the bias (0 for none) is added by cuBLASLt's epilogue and has
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
}

/// A linear layer's backward: bf16 `x`, `w`, `dy [rows, out]` and `pre` (0 without GELU, else
/// `dpre`, bf16 `[rows, out]`, receives the gradient at the pre-activation); accumulates `dx`
/// (bf16), `dw` (f32) and `dbias` (f32, 0 to skip). `partials`, `counters`: the bias
/// reduction's scratch.
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
    pub counters: u64,
    pub dims: LinearDims,
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
/// accumulates `dh` (bf16), `dw`, `db` (f32). `partials`, `counters`: the reduction's scratch.
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
    pub counters: u64,
    pub grad_scale: f32,
    pub tokens: usize,
    pub width: usize,
}
