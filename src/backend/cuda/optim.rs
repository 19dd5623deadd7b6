//! Launchers of the optimizer: `kernels/accumulate.cu` (the sum of a step's micro-batch
//! gradients), `kernels/grad_norm.cu` (the global gradient norm, deterministic in f64, and the
//! clipping factor, both left on the device) and `kernels/adamw.cu` (the update, which reads the
//! clipping factor and the step's learning rate from the device, so that a recorded step needs
//! no host round trip).

use super::kernels::{Arg, Launcher};
use super::memory::Dtype;
use super::step::STEP_LR;
use super::{CudaBackend, CudaError};
use crate::backend::{AccumulateOp, AdamW, Buf, OptimizerStep, ParamGroup, Space};

/// Threads per block of `grad_norm`.
const NORM_THREADS: u32 = 512;

impl CudaBackend {
    pub(super) fn launch_accumulate(&mut self, op: &AccumulateOp) {
        let AccumulateOp {
            src,
            dst,
            overwrite,
        } = *op;
        assert_eq!(src.len, dst.len, "accumulate: {src:?} and {dst:?}");
        if src.len == 0 {
            return;
        }
        let args = AccumulateArgs {
            src: self.input(src, Dtype::F32),
            dst: self.output(dst, Dtype::F32, !overwrite),
            n: src.len,
            overwrite,
        };
        // SAFETY: both buffers hold `n` floats (checked above).
        Self::launched(unsafe { accumulate(&self.launcher(), &args) });
    }

    /// The norm of the whole gradient space, read back.
    pub(super) fn measure_grad_norm(&mut self) -> f32 {
        if self.sizes.params == 0 {
            return 0.0;
        }
        self.launch_grad_norm(f32::INFINITY);
        self.read_grad_norm()
    }

    /// The norm the last `grad_norm` launch measured (waiting for it).
    pub(super) fn read_grad_norm(&self) -> f32 {
        if self.sizes.params == 0 {
            return 0.0;
        }
        let mut norm = [0.0f32];
        // SAFETY: `norm_out` holds grad_norm's two f32 results.
        unsafe {
            self.read_back(
                self.norm_out(),
                &mut norm,
                format_args!("the gradient norm"),
            )
        };
        norm[0]
    }

    pub(super) fn launch_optimizer_step(&mut self, op: &OptimizerStep) {
        if self.sizes.params == 0 {
            return;
        }
        // The clipping factor stays on the device (NaN for a non-finite norm: no update).
        let clip = self.launch_grad_norm(op.max_norm) + 4;
        for group in op.groups {
            self.launch_adamw(group, 1.0, clip);
        }
    }

    /// Where `grad_norm` leaves the norm and then the clipping factor (two f32).
    fn norm_out(&self) -> u64 {
        let blocks = 2 * self.sms;
        self.scratch.norm.ptr + (8 * blocks as u64).next_multiple_of(16)
    }

    /// Launches `grad_norm` over the whole gradient space; returns where its results go.
    fn launch_grad_norm(&mut self, max_norm: f32) -> u64 {
        let grads = Buf {
            space: Space::Grad,
            offset: 0,
            len: self.sizes.params,
        };
        let args = GradNormArgs {
            grads: self.addr(grads),
            n: grads.len,
            partials: self.scratch.norm.ptr,
            counter: self.scratch.counter.ptr,
            max_norm,
            out: self.norm_out(),
        };
        // SAFETY: the gradient space holds `n` floats; `norm` holds 2·sms partials and the two
        // results after them, `counter` one u32 that the kernel leaves at 0.
        Self::launched(unsafe { grad_norm(&self.launcher(), &args) });
        args.out
    }

    /// Launches `adamw` on a group; `dev_clip` (0 for none) is a device factor on the gradient.
    pub(super) fn launch_adamw(&mut self, group: &ParamGroup, grad_scale: f32, dev_clip: u64) {
        let params = group.params;
        assert_eq!(params.space, Space::Param, "adamw updates parameters");
        if params.len == 0 {
            return;
        }
        let args = AdamwArgs {
            params: self.addr(params),
            grads: self.addr(params.in_space(Space::Grad)),
            m: self.addr(params.in_space(Space::AdamM)),
            v: self.addr(params.in_space(Space::AdamV)),
            params_bf16: self.bf16_param(params),
            n: params.len,
            lr_scale: group.lr_scale,
            hyper: group.adamw,
            grad_scale,
            step: self.step_scalar(STEP_LR),
            clip: dev_clip,
        };
        // SAFETY: the four spaces and the bf16 copy hold the group's `n` values.
        Self::launched(unsafe { adamw(&self.launcher(), &args) });
    }
}

/// `accumulate_f32`: `dst = src`, or `dst += src`, over `n` floats.
#[derive(Clone, Copy, Debug)]
pub(super) struct AccumulateArgs {
    pub src: u64,
    pub dst: u64,
    pub n: usize,
    pub overwrite: bool,
}

/// Launches `accumulate_f32` on `l`'s stream.
///
/// # Safety
/// The addresses hold the floats [`AccumulateArgs`] describes.
pub(super) unsafe fn accumulate(l: &Launcher, a: &AccumulateArgs) -> Result<(), CudaError> {
    if a.n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(a.src),
        Arg::Ptr(a.dst),
        Arg::U64(a.n as u64),
        Arg::I32(i32::from(a.overwrite)),
    ];
    let blocks = a.n.div_ceil(4 * 256).min(4 * l.sms);
    l.run(l.kernels.accumulate_f32, (blocks, 1, 1), 256, &args)
}

/// `grad_norm` over `n` f32 gradients: its `2·sms` blocks' f64 partial sums go to `partials`,
/// the last block (counted in `counter`) writes the norm and the clipping factor for `max_norm`
/// to `out` (two f32).
#[derive(Clone, Copy, Debug)]
pub(super) struct GradNormArgs {
    pub grads: u64,
    pub n: usize,
    pub partials: u64,
    pub counter: u64,
    pub max_norm: f32,
    pub out: u64,
}

/// Launches `grad_norm` on `l`'s stream.
///
/// # Safety
/// The addresses hold what [`GradNormArgs`] describes, `partials` 8 bytes a block.
pub(super) unsafe fn grad_norm(l: &Launcher, a: &GradNormArgs) -> Result<(), CudaError> {
    let args = [
        Arg::Ptr(a.grads),
        Arg::U64(a.n as u64),
        Arg::Ptr(a.partials),
        Arg::Ptr(a.counter),
        Arg::F32(a.max_norm),
        Arg::Ptr(a.out),
    ];
    l.run(l.kernels.grad_norm, (2 * l.sms, 1, 1), NORM_THREADS, &args)
}

/// `adamw` on one group of `n` parameters: f32 `params`, `grads`, moments `m` and `v`, and the
/// bf16 copy the products read. The kernel's learning rate is `lr_scale` times the step's, which
/// it reads from the step memory `step`; `clip` (0 for none) is a device factor on the gradient.
#[derive(Clone, Copy, Debug)]
pub(super) struct AdamwArgs {
    pub params: u64,
    pub grads: u64,
    pub m: u64,
    pub v: u64,
    pub params_bf16: u64,
    pub n: usize,
    pub lr_scale: f32,
    pub hyper: AdamW,
    pub grad_scale: f32,
    pub step: u64,
    pub clip: u64,
}

/// Launches `adamw` on `l`'s stream.
///
/// # Safety
/// The addresses hold the `n` values [`AdamwArgs`] describes.
pub(super) unsafe fn adamw(l: &Launcher, a: &AdamwArgs) -> Result<(), CudaError> {
    if a.n == 0 {
        return Ok(());
    }
    let h = &a.hyper;
    let args = [
        Arg::Ptr(a.params),
        Arg::Ptr(a.grads),
        Arg::Ptr(a.m),
        Arg::Ptr(a.v),
        Arg::Ptr(a.params_bf16),
        Arg::U64(a.n as u64),
        Arg::F32(a.lr_scale),
        Arg::F32(h.beta1),
        Arg::F32(h.beta2),
        Arg::F32(h.eps),
        Arg::F32(h.weight_decay),
        Arg::F32(a.grad_scale),
        Arg::Ptr(a.step),
        Arg::Ptr(a.clip),
    ];
    let blocks = a.n.div_ceil(4).div_ceil(256).clamp(1, 4 * l.sms);
    l.run(l.kernels.adamw, (blocks, 1, 1), 256, &args)
}

/// Launches `params_to_bf16`: `dst = bf16(src)` over `n` f32 values (the parameters' copy the
/// products read, or a one-column output's gradient).
///
/// # Safety
/// `src` holds `n` floats, `dst` room for `n` bf16 values.
pub(super) unsafe fn params_to_bf16(
    l: &Launcher,
    src: u64,
    dst: u64,
    n: usize,
) -> Result<(), CudaError> {
    if n == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(src), Arg::Ptr(dst), Arg::U64(n as u64)];
    let blocks = n.div_ceil(256).min(4 * l.sms);
    l.run(l.kernels.params_to_bf16, (blocks, 1, 1), 256, &args)
}
