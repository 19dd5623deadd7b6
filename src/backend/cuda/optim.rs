//! Launchers of the optimizer: `kernels/accumulate.cu` (the sum of a step's micro-batch
//! gradients), `kernels/grad_norm.cu` (the global gradient norm, deterministic in f64, and the
//! clipping factor, both left on the device) and `kernels/adamw.cu` (the update, which reads the
//! clipping factor and the step's learning rate from the device, so that a recorded step needs
//! no host round trip).

use cudarc::driver::result;

use super::kernels::Arg;
use super::memory::Dtype;
use super::step::STEP_LR;
use super::CudaBackend;
use crate::backend::{AccumulateOp, Buf, OptimizerStep, ParamGroup, Space};

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
        let args = [
            Arg::Ptr(self.input(src, Dtype::F32)),
            Arg::Ptr(self.output(dst, Dtype::F32, !overwrite)),
            Arg::U64(src.len as u64),
            Arg::I32(i32::from(overwrite)),
        ];
        let blocks = src.len.div_ceil(4 * 256).min(4 * self.sms);
        self.run(self.kernels.accumulate_f32, (blocks, 1, 1), 256, &args);
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
        // SAFETY: `norm_out` holds grad_norm's two f32 results; complete once `sync` returns.
        unsafe {
            result::memcpy_dtoh_async(&mut norm[..], self.norm_out(), self.stream.cu_stream())
        }
        .unwrap_or_else(|e| panic!("CUDA: reading the gradient norm: {e}"));
        self.sync();
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
        let out = self.norm_out();
        let grads = Buf {
            space: Space::Grad,
            offset: 0,
            len: self.sizes.params,
        };
        let args = [
            Arg::Ptr(self.addr(grads)),
            Arg::U64(grads.len as u64),
            Arg::Ptr(self.scratch.norm.ptr),
            Arg::Ptr(self.scratch.counter.ptr),
            Arg::F32(max_norm),
            Arg::Ptr(out),
        ];
        self.run(
            self.kernels.grad_norm,
            (2 * self.sms, 1, 1),
            NORM_THREADS,
            &args,
        );
        out
    }

    /// Launches `adamw` on a group; `dev_clip` (0 for none) is a device factor on the gradient.
    /// The kernel's learning rate is the group's scale times the step's, which it reads from the
    /// step memory.
    pub(super) fn launch_adamw(&mut self, group: &ParamGroup, grad_scale: f32, dev_clip: u64) {
        let (params, h) = (group.params, &group.adamw);
        assert_eq!(params.space, Space::Param, "adamw updates parameters");
        let n = params.len;
        if n == 0 {
            return;
        }
        let args = [
            Arg::Ptr(self.addr(params)),
            Arg::Ptr(self.addr(params.in_space(Space::Grad))),
            Arg::Ptr(self.addr(params.in_space(Space::AdamM))),
            Arg::Ptr(self.addr(params.in_space(Space::AdamV))),
            Arg::Ptr(self.bf16_param(params)),
            Arg::U64(n as u64),
            Arg::F32(group.lr_scale),
            Arg::F32(h.beta1),
            Arg::F32(h.beta2),
            Arg::F32(h.eps),
            Arg::F32(h.weight_decay),
            Arg::F32(grad_scale),
            Arg::Ptr(self.step_scalar(STEP_LR)),
            Arg::Ptr(dev_clip),
        ];
        let blocks = n.div_ceil(4).div_ceil(256).clamp(1, 4 * self.sms);
        self.run(self.kernels.adamw, (blocks, 1, 1), 256, &args);
    }
}
