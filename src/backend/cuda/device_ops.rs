//! The fused operations on a caller's device memory and stream, for the C ABI's device ops
//! (`electra_cuda_*` in `src/capi/cuda_ops.rs`): the same launch functions as the engine's
//! (`attention.rs`, `layernorm.rs`, `linear.rs`, `losses.rs`), given the caller's addresses
//! instead of the engine's buffers, and this handle's kernels, cuBLASLt handle and scratch.
//!
//! # Streams and scratch
//! Each call enqueues its work on the caller's stream and returns without synchronising. The
//! handle's scratch (the reductions' partial sums, attention's `delta`, the GELU
//! gradient, the dropout seed, cuBLASLt's workspace) is reused by every call, so the calls through
//! one handle must be ordered: one stream, or streams the caller orders with events. A call that
//! needs more scratch than the handle has waits for the device's queued work before replacing it
//! (the old buffer may still be in use), once per larger shape.

use std::cell::Cell;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use super::attention::{attention_bwd, attention_fwd};
use super::blas::Blas;
use super::kernels::{Kernels, Launcher};
use super::launch_args::{
    AttentionBwdArgs, AttentionFwdArgs, BceHeadArgs, LayerNormBwdArgs, LayerNormFwdArgs,
    LinearBwdArgs, LinearFwdArgs, SoftmaxXentArgs,
};
use super::layernorm::{layernorm_bwd, layernorm_bwd_scratch, layernorm_fwd};
use super::linear::{bias_grad_scratch, linear_bwd, linear_fwd};
use super::losses::{bce_head, bce_head_scratch, softmax_xent};
use super::step::{STEP_BYTES, STEP_DROPOUT_SEED};
use super::{blas_workspace_bytes, driver_err, open_device, partials_bytes, CudaError, OpenDevice};

/// A device allocation of the handle's own, zeroed when made, freed (synchronously) on drop.
struct RawBuf {
    ptr: u64,
    bytes: usize,
}

impl RawBuf {
    /// At least 256 bytes, so no allocation is empty. The handle's context must be current.
    fn zeroed(bytes: usize) -> Result<Self, CudaError> {
        let size = bytes.max(256);
        // SAFETY: a plain allocation, then a memset of exactly its bytes.
        unsafe {
            let ptr = result::malloc_sync(size).map_err(|e| driver_err("allocating memory", e))?;
            let buf = RawBuf { ptr, bytes: size };
            result::memset_d8_sync(ptr, 0, size).map_err(|e| driver_err("zeroing memory", e))?;
            Ok(buf)
        }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `zeroed` and freed once; the handle waits for queued work and makes
        // its context current before its buffers go (`DeviceOps::drop`, `DeviceOps::grow`).
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// What the handle owns on the device; dropped with its context current.
struct Owned {
    // The library handle and the modules go before the memory.
    blas: Blas,
    kernels: Kernels,
    _workspace: RawBuf,
    /// The step memory (`StepValues`): the dropout seed of the current call, zero elsewhere.
    step: RawBuf,
    partials: RawBuf,
    /// Attention backward's f32 `delta [batch, heads, seq]`.
    delta: RawBuf,
    /// Linear backward's bf16 gradient at the GELU's input, `[rows, out]`.
    dpre: RawBuf,
}

/// The handle behind `ElectraCudaOps`: a device's kernels, a cuBLASLt handle and scratch. See the
/// [module documentation](self).
pub(crate) struct DeviceOps {
    owned: Option<Owned>,
    sms: usize,
    sync_each_launch: bool,
    last_kernel: Cell<&'static str>,
    /// Dropped by hand, last, inside `drop`, where the caller's current context is put back
    /// after it (cudarc's `CudaContext` binds itself to the thread when made and when dropped).
    ctx: ManuallyDrop<Arc<CudaContext>>,
}

/// The calling thread's current context, made current again when this drops, so that making
/// and destroying a handle leave the caller's choice of context as they found it.
struct Restore(sys::CUcontext);

impl Restore {
    /// Saves the current context; call only once the driver library is known to be present.
    fn save() -> Self {
        let mut current = std::ptr::null_mut();
        // SAFETY: writes one handle; before cuInit it fails and leaves NULL (no context).
        let _ = unsafe { sys::cuCtxGetCurrent(&mut current) };
        Restore(current)
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: the context was current on this thread when saved (or NULL: none).
        let _ = unsafe { sys::cuCtxSetCurrent(self.0) };
    }
}

/// The handle's context made current on this thread for the guard's life; the caller's own
/// current context comes back after.
struct Current;

impl Drop for Current {
    fn drop(&mut self) {
        let mut popped = std::ptr::null_mut();
        // SAFETY: pops what `DeviceOps::enter` pushed on this thread.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// A CUDA stream as the C ABI takes it (`cudaStream_t`, the same handle as a `CUstream`); NULL
/// is the legacy default stream.
pub(crate) type RawStream = *mut c_void;

/// Which scratch buffer a call grows.
#[derive(Clone, Copy)]
enum Slot {
    Partials,
    Delta,
    Dpre,
}

impl DeviceOps {
    /// Opens device `ordinal` (its primary context, which the CUDA runtime shares), loads the
    /// kernels, creates a cuBLASLt handle and allocates the scratch. [`CudaError::NoDevice`] when
    /// there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only probes whether the library can be opened (its entry points panic if not).
        let _restore = unsafe { sys::is_culib_present() }.then(Restore::save);
        let OpenDevice { ctx, major, sms } = open_device(ordinal)?;
        let mut ops = DeviceOps {
            owned: None,
            sms,
            sync_each_launch: std::env::var_os("ELECTRA_CUDA_SYNC").is_some_and(|v| v != "0"),
            last_kernel: Cell::new("(none)"),
            ctx: ManuallyDrop::new(ctx),
        };
        let _current = ops.enter()?;
        let ws_bytes = blas_workspace_bytes(major);
        let workspace = RawBuf::zeroed(ws_bytes)?;
        ops.owned = Some(Owned {
            // The caller's stream may be capturing, and the caller expects the same choice
            // in every process: no tuning.
            blas: Blas::new(workspace.ptr, ws_bytes, (false, false))?,
            kernels: Kernels::load()?,
            _workspace: workspace,
            step: RawBuf::zeroed(STEP_BYTES)?,
            partials: RawBuf::zeroed(partials_bytes(sms))?,
            delta: RawBuf::zeroed(0)?,
            dpre: RawBuf::zeroed(0)?,
        });
        drop(_current);
        Ok(ops)
    }

    /// Makes the handle's context current until the guard drops.
    fn enter(&self) -> Result<Current, CudaError> {
        // SAFETY: the context lives as long as `self`; popped by the guard.
        unsafe { sys::cuCtxPushCurrent_v2(self.ctx.cu_ctx()) }
            .result()
            .map_err(|e| driver_err("making the device's context current", e))?;
        Ok(Current)
    }

    fn owned(&mut self) -> &mut Owned {
        self.owned
            .as_mut()
            .expect("made by `new`, taken only by drop")
    }

    /// The address of scratch `slot`, grown to `bytes` if it is smaller.
    fn grow(&mut self, slot: Slot, bytes: usize) -> Result<u64, CudaError> {
        let o = self.owned();
        let buf = match slot {
            Slot::Partials => &mut o.partials,
            Slot::Delta => &mut o.delta,
            Slot::Dpre => &mut o.dpre,
        };
        if buf.bytes < bytes {
            // Work queued on any stream may still read the old buffer.
            result::ctx::synchronize()
                .map_err(|e| driver_err("waiting for queued work before growing scratch", e))?;
            *buf = RawBuf::zeroed(bytes)?;
        }
        Ok(buf.ptr)
    }

    /// Writes the dropout seed into the step memory on `stream`, ordered before the kernels that
    /// read it (no host memory involved, so nothing waits).
    fn set_seed(&mut self, seed: u64, stream: sys::CUstream) -> Result<u64, CudaError> {
        let step = self.owned().step.ptr;
        let at = step + STEP_DROPOUT_SEED;
        // The u64 seed, little-endian, as two 32-bit words.
        for (offset, word) in [(0, seed as u32), (4, (seed >> 32) as u32)] {
            // SAFETY: the step memory holds STEP_BYTES, the seed 8 of them at STEP_DROPOUT_SEED.
            unsafe { sys::cuMemsetD32Async(at + offset, word, 1, stream) }
                .result()
                .map_err(|e| driver_err("writing the dropout seed", e))?;
        }
        Ok(step)
    }

    /// Runs `launch` with the handle's context current and a launcher on `stream`.
    fn with<T>(
        &mut self,
        stream: RawStream,
        launch: impl FnOnce(&Launcher, &mut Blas) -> Result<T, CudaError>,
    ) -> Result<T, CudaError> {
        let (sms, sync_each_launch) = (self.sms, self.sync_each_launch);
        let owned = self.owned.as_mut().expect("made by `new`");
        let l = Launcher {
            kernels: &owned.kernels,
            stream: stream as sys::CUstream,
            sms,
            sync_each_launch,
            last_kernel: &self.last_kernel,
            clock: None,
        };
        launch(&l, &mut owned.blas)
    }

    /// Attention forward on the caller's addresses (see [`AttentionFwdArgs`]); `a.step` is the
    /// handle's, holding `seed` for the dropout.
    ///
    /// # Safety
    /// The addresses hold the tensors `a` describes, on this handle's device, until `stream`
    /// reaches the work.
    pub unsafe fn attention_fwd(
        &mut self,
        mut a: AttentionFwdArgs,
        seed: u64,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        a.step = self.set_seed(seed, stream as sys::CUstream)?;
        self.with(stream, |l, _| attention_fwd(l, &a))
    }

    /// Attention backward on the caller's addresses (see [`AttentionBwdArgs`]); `a.delta` and
    /// `a.step` are the handle's.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn attention_bwd(
        &mut self,
        mut a: AttentionBwdArgs,
        seed: u64,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        let d = a.dims;
        a.delta = self.grow(Slot::Delta, 4 * d.batch * d.heads * d.seq)?;
        a.step = self.set_seed(seed, stream as sys::CUstream)?;
        self.with(stream, |l, _| attention_bwd(l, &a))
    }

    /// Residual + LayerNorm forward on the caller's addresses.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn layernorm_fwd(
        &mut self,
        a: LayerNormFwdArgs,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        self.with(stream, |l, _| layernorm_fwd(l, &a))
    }

    /// Residual + LayerNorm backward on the caller's addresses; the partials are the handle's.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn layernorm_bwd(
        &mut self,
        mut a: LayerNormBwdArgs,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        let bytes = layernorm_bwd_scratch(self.sms, a.rows, a.width);
        a.partials = self.grow(Slot::Partials, bytes)?;
        self.with(stream, |l, _| layernorm_bwd(l, &a))
    }

    /// Linear (+ bias, + GELU) forward on the caller's addresses.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn linear_fwd(
        &mut self,
        a: LinearFwdArgs,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        self.with(stream, |l, blas| linear_fwd(l, blas, &a))
    }

    /// Linear backward on the caller's addresses; `dpre` (with GELU) and the partials are the
    /// handle's.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn linear_bwd(
        &mut self,
        mut a: LinearBwdArgs,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        let d = a.dims;
        if a.pre != 0 {
            a.dpre = self.grow(Slot::Dpre, 2 * d.rows * d.out)?;
        }
        a.partials = self.grow(Slot::Partials, bias_grad_scratch(self.sms, d.rows, d.out))?;
        self.with(stream, |l, blas| linear_bwd(l, blas, &a))
    }

    /// The generator's loss with picks on the caller's addresses; `a.step` is the handle's.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn softmax_xent(
        &mut self,
        mut a: SoftmaxXentArgs,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        // Argmax reads no seed; a Gumbel pick would read the sample seed, which stays zero.
        a.step = self.owned().step.ptr;
        self.with(stream, |l, _| softmax_xent(l, &a))
    }

    /// The BCE head on the caller's addresses; the partials are the handle's.
    ///
    /// # Safety
    /// As for [`attention_fwd`](Self::attention_fwd).
    pub unsafe fn bce_head(
        &mut self,
        mut a: BceHeadArgs,
        stream: RawStream,
    ) -> Result<(), CudaError> {
        let _current = self.enter()?;
        a.partials = self.grow(
            Slot::Partials,
            bce_head_scratch(self.sms, a.tokens, a.width),
        )?;
        self.with(stream, |l, _| bce_head(l, &a))
    }
}

impl Drop for DeviceOps {
    fn drop(&mut self) {
        let _restore = Restore::save();
        // The handle's memory may still be in use by queued work on the caller's streams: wait
        // for it, then free everything with the context current.
        if let Ok(_current) = self.enter() {
            let _ = result::ctx::synchronize();
            drop(self.owned.take());
        }
        // SAFETY: dropped once, here; nothing uses the context after.
        unsafe { ManuallyDrop::drop(&mut self.ctx) };
    }
}
