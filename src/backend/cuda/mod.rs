//! The CUDA backend: the hand-written kernels of `kernels/*.cu` (compiled and embedded by
//! build.rs) and cuBLASLt for the matrix products, behind the same [`Backend`] interface as the
//! CPU reference, which is the specification every kernel is tested against
//! (`tests/cuda_parity.rs`).
//!
//! # Memory
//! One device allocation per space, sized by [`Backend::reserve`] (see `memory.rs` for the layout):
//! f32 parameters, gradients and Adam moments plus a bf16 copy of the parameters for the products;
//! activations and their gradients in 4-byte slots holding bf16 (most activations) or f32
//! (statistics, losses, labels, the one-column logits), the type recorded per buffer by the
//! operation that wrote it; u32 integers. Everything a kernel needs besides (reduction partials,
//! `grad_norm`'s counter, the embedding sort's keys, cuBLASLt's workspace) is allocated by
//! `reserve` too, so steps after the first allocate nothing ([`CudaBackend::allocations`]
//! counts).
//!
//! # Operations
//! Each family of kernels has its launchers beside it, one file each, as the CPU reference has one
//! file per operation: `embedding.rs`, `linear.rs`, `layernorm.rs`, `attention.rs`,
//! `dropout.rs`, `gather_rows.rs`, `losses.rs`, `optim.rs`, `partial_sums.rs` for the column
//! sums that finish the bias and LayerNorm parameter gradients, `nccl.rs` for the gradient sums
//! of data-parallel runs, and `step.rs` for the step memory and the recorded steps. This file
//! keeps the backend's struct, its construction and its memory.
//!
//! A launcher is a function on device addresses (`attention_fwd(l, &AttentionFwdArgs)`, …) that
//! checks its shape and passes the kernel's arguments; the backend's methods resolve their
//! buffers to addresses and call it, and the C ABI's device ops call the same functions on the
//! caller's memory. A host test (`kernels/tests.rs`) runs every launcher against the parameter
//! sizes the kernels' PTX declares, so an argument list that drifts from its kernel in number or
//! size fails in CI (an order swapped between two arguments of one size does not).
//!
//! | trait operation      | device work |
//! |----------------------|-------------|
//! | `embedding_fwd`      | `embedding_fwd_w{256,1024}` |
//! | `embedding_bwd`      | `embedding_bwd_layernorm_w*` (f32 `dsum` in `saved.xhat.grad()`) + `sum_partial_rows`, radix sort of the ids (`embedding_sort_hist/scan/scatter`, 1 or 2 passes), `embedding_bwd_word_pieces` + `_combine`, `embedding_bwd_pos_type` + `embedding_bwd_type_reduce` |
//! | `linear_fwd`         | cuBLASLt `y = x·wᵀ` with the bias epilogue (bf16 bias from the parameter copy); with GELU, cuBLASLt into `pre`, then `bias_gelu_fwd` (f32 bias, exact erf GELU: cuBLASLt's GELU epilogues use the tanh form) |
//! | `linear_bwd`         | `bias_gelu_bwd` (dpre and dbias's partial sums) or `bias_bwd` (the partial sums) + `sum_partial_rows`, cuBLASLt `dx += dy·w` (bf16, β = 1, or β = 0 as `dx`'s first writer) and `dw += dyᵀ·x` (f32, β = 1); with `ELECTRA_FOLD_BIAS_GRADS=1`, where offered, the last product gives the bias gradient (BGRADB, into scratch), `accumulate_f32` adds it to `dbias`, and `bias_gelu_bwd` writes only `dpre` |
//! | `layernorm_fwd/bwd`  | `layernorm_residual_fwd/bwd_w{256,1024}` (with the branch's dropout), the backward + `sum_partial_rows` |
//! | `attention_fwd`      | `attention_fwd_d{16,32,64}` (saves the log-sum-exp in `probs`, and the dropout mask as bits after it) |
//! | `attention_bwd`      | `attention_bwd_dq_d*` (also writes `delta` to `probs.grad()`), then `attention_bwd_dkdv_d*` |
//! | `dropout_fwd/bwd`    | `dropout_fwd/bwd` |
//! | `gather_rows(_bwd)`  | `gather_rows_fwd/bwd` (the rows must be distinct in the backward) |
//! | `softmax_xent`       | `softmax_xent_fwd_bwd` |
//! | `replace_tokens`     | `replace_tokens` |
//! | `bce_head`           | `sigmoid_bce_head_fwd_bwd_w{256,1024}` (the H → 1 projection, the loss and its backward in one pass) + `sum_partial_rows` |
//! | `loss_sums`          | `loss_sums` (one block, f64), read back as 40 bytes |
//! | `grad_norm`          | `grad_norm` (deterministic, f64), one 4-byte read back |
//! | `adamw`              | `adamw` (also refreshes the bf16 copy) |
//!
//! A linear layer with a single output column (a regression head's score) writes f32; its
//! backward rounds the f32 `dy` to bf16 (`params_to_bf16` into scratch) for the products.
//!
//! Kernels accumulate (`+=`) into gradients, as the trait specifies, except where the tape marks
//! an operation as the first writer of its input's gradient (the `overwrite_*` flags), which it
//! then sets; reductions over rows use fixed grids, so results are bitwise reproducible run to
//! run, as are cuBLASLt's products with its heuristic's algorithm (`blas.rs`;
//! `ELECTRA_GEMM_TUNE=1` trades that for algorithms chosen by timing).
//!
//! # Errors
//! [`CudaBackend::new`] returns [`CudaError`]. The trait's operations return `()`: a launch or
//! library error panics at once with the kernel's (or call's) name, and an asynchronous fault
//! surfaces at the next synchronisation (`read`, `grad_norm`, [`Backend::synchronize`]) as a panic
//! naming the last kernel launched, or as an `Err` from [`CudaBackend::check`]. Set
//! `ELECTRA_CUDA_SYNC=1` to synchronise after every launch, which names the faulting kernel.
//!
//! # Recorded steps
//! The trainer opens each training step with [`Backend::begin_step`]: the backend writes the
//! step's learning rate and seeds to device memory, which the dropout, Gumbel and AdamW kernels
//! always read (the operations take no per-step values), and records the step as a CUDA graph the second time it sees its
//! fingerprint, replaying it after that (`graph.rs`). `ELECTRA_CUDA_GRAPH=0` turns recording
//! off; `ELECTRA_CUDA_SYNC=1` does too.

/// `grow(self.scratch.$field, bytes)`, borrowing only the fields it needs.
macro_rules! try_ensure {
    ($be:expr, $($field:tt)+) => {
        |bytes: usize| {
            $crate::backend::cuda::grow(
                &$be.stream,
                &mut $be.allocations,
                &mut $be.scratch.$($field)+,
                bytes,
            )
        }
    };
}

/// `try_ensure!` inside an operation, which returns nothing: `reserve` has sized the scratch for
/// the spaces already, so a growth here is rare, and a failure as fatal as a failed launch.
macro_rules! ensure {
    ($be:expr, $($field:tt)+) => {
        |bytes: usize| try_ensure!($be, $($field)+)(bytes).unwrap_or_else(|e| panic!("CUDA: {e}"))
    };
}

mod attention;
mod blas;
mod clock;
mod device_ops;
mod dropout;
mod embedding;
mod error;
mod gather_rows;
mod graph;
mod kernels;
pub(crate) mod launch_args;
mod layernorm;
mod linear;
mod losses;
mod memory;
mod nccl;
mod optim;
mod partial_sums;
mod step;
mod tuning;

pub(crate) use device_ops::DeviceOps;
pub use error::CudaError;
pub use tuning::GemmTuning;

use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use half::bf16;

use super::{
    all_reduce_on_host, AccumulateOp, AttentionOp, Backend, BceHeadOp, Buf, DropoutOp, EmbeddingOp,
    GatherRowsOp, IBuf, LayerNormOp, LinearOp, LossSumsOp, OptimizerStep, OutOfMemory, ParamGroup,
    ReplaceTokensOp, Sizes, SoftmaxXentOp, Space, StepScalars, LOSS_SUMS,
};
use crate::comm::Collective;
use blas::Blas;
use clock::KernelClock;
use embedding::{EMB_CHUNK, SORT_RADIX, SORT_TILE};
use graph::StepGraphs;
use kernels::{Kernel, Kernels, Launcher};
use launch_args::{check_width, MAX_GRID_YZ, MAX_WIDTH};
use memory::{DeviceBuf, Dtype, Tags};
use step::STEP_BYTES;

/// Scratch memory of the kernels, sized by `reserve` and grown only if a call needs more.
struct Scratch {
    /// f32 partial sums of the deterministic row reductions (LayerNorm gain/bias, bias grads).
    partials: DeviceBuf,
    /// The u32 counter of `grad_norm`'s "last block" reduction: zero, and left at zero.
    counter: DeviceBuf,
    /// `grad_norm`'s f64 partials, then its two f32 results.
    norm: DeviceBuf,
    /// The step's metric sums, f64 `[LOSS_SUMS]` (`loss_sums`).
    loss_sums: DeviceBuf,
    /// The embedding sort's (key, token) pairs, ping-pong: u32 each.
    sort: [DeviceBuf; 4],
    /// The sort's per-tile digit counts, u32 `[256, tiles]`.
    tile_hist: DeviceBuf,
    /// The word-gradient pieces of runs that cross chunk edges (heads, continuations): f32.
    pieces: [DeviceBuf; 2],
    /// Per-position sums by token type: f32 `[seq, types, width]`.
    type_partials: DeviceBuf,
    /// A bf16 copy of an f32 `dy` (a one-column output's gradient).
    convert: DeviceBuf,
    /// A 256-byte aligned copy of a bias vector whose address is not 16-byte aligned.
    bias: DeviceBuf,
}

/// The CUDA backend. See the [module documentation](self).
pub struct CudaBackend {
    // Dropped in this order: the recordings, the library handles and modules, then the memory,
    // then the stream and the context (`Drop` first waits for the stream).
    graphs: StepGraphs,
    /// The communicator of a data-parallel run's gradient sums (`nccl.rs`), once joined.
    nccl: Option<nccl::Nccl>,
    blas: Blas,
    kernels: Kernels,
    spaces: Vec<DeviceBuf>,
    params_bf16: DeviceBuf,
    ints: DeviceBuf,
    scratch: Scratch,
    /// The current step's [`StepScalars`] on the device (`step.rs`), which the kernels read, so
    /// that a recording of a step serves every step.
    step_memory: DeviceBuf,
    /// Whether a step is open (between `begin_step` and `end_step`).
    in_step: bool,
    /// The fingerprint of the step being captured.
    recording: Option<u64>,
    _workspace: DeviceBuf,
    tags: [Tags; 2],
    sizes: Sizes,
    sms: usize,
    allocations: u64,
    sync_each_launch: bool,
    last_kernel: Cell<&'static str>,
    /// Times each launch while `electra bench` asks (`clock.rs`).
    clock: Option<KernelClock>,
    host16: Vec<u16>,
    device_name: String,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

// SAFETY: the raw handles (modules, functions, the cuBLASLt handle) are not tied to a thread;
// every method that touches the device first makes the backend's context current on the calling
// thread, and `&mut self` (or `&self` for the read-only, stream-synchronised reads) serialises
// the use of one backend.
unsafe impl Send for CudaBackend {}

fn driver_err(what: &str, e: DriverError) -> CudaError {
    kernels::driver("", what, e)
}

/// A device allocation that `reserve` sizes.
#[derive(Clone, Copy)]
enum Slot {
    Space(Space),
    ParamsBf16,
    Ints,
}

/// The index of an activation space in `tags`.
fn act_index(space: Space) -> Option<usize> {
    match space {
        Space::Act => Some(0),
        Space::ActGrad => Some(1),
        _ => None,
    }
}

/// Grows a scratch buffer to at least `bytes` (new memory is zero; the old is not kept).
fn grow(
    stream: &Arc<CudaStream>,
    allocations: &mut u64,
    buf: &mut DeviceBuf,
    bytes: usize,
) -> Result<(), OutOfMemory> {
    if buf.bytes < bytes {
        *allocations += 1;
        *buf = DeviceBuf::zeroed(stream, bytes).map_err(|e| OutOfMemory {
            backend: "cuda",
            bytes,
            detail: format!("scratch: {e}"),
        })?;
    }
    Ok(())
}

/// cuBLASLt's workspace on a device of compute capability `major`: NVIDIA's recommendation,
/// 32 MiB on Hopper, 4 MiB before.
fn blas_workspace_bytes(major: i32) -> usize {
    if major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

/// The f32 partial sums that cover every row reduction on `sms` multiprocessors: the LayerNorm
/// backward's grid of at most 2·SMs blocks, 2·width partials each; the bias and BCE head
/// reductions stay under 2·SMs·(1024 + 1) values by their choice of grid.
fn partials_bytes(sms: usize) -> usize {
    4 * 2 * sms * 2 * MAX_WIDTH
}

/// The "last block" counter of `grad_norm` (zero, and left at zero).
const COUNTER_BYTES: usize = 4;

/// An opened device: its (primary) context, compute capability major and multiprocessor count.
struct OpenDevice {
    ctx: Arc<CudaContext>,
    major: i32,
    sms: usize,
}

/// How many devices the driver sees; [`CudaError::NoDevice`] when there is no driver or it
/// sees none.
fn visible_devices() -> Result<usize, CudaError> {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDevice(
            "the CUDA driver library (libcuda.so) is not installed".into(),
        ));
    }
    let count = CudaContext::device_count().map_err(|e| {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            CudaError::NoDevice(format!("the CUDA driver reports {e}"))
        } else if e.0 == sys::CUresult::CUDA_ERROR_STUB_LIBRARY {
            // cudarc opens `libcuda.so` before `libcuda.so.1`, and toolkits ship a stub under
            // the first name: a library path that lists the stub's folder hides the driver.
            CudaError::NoDevice(
                "the libcuda.so found first is the CUDA toolkit's stub, not the driver: put the \
                 folder of the driver's libcuda.so.1 (see `ldconfig -p | grep libcuda`) before \
                 any toolkit folder in LD_LIBRARY_PATH, with a libcuda.so link to it"
                    .into(),
            )
        } else {
            driver_err("initialising the driver", e)
        }
    })?;
    if count <= 0 {
        return Err(CudaError::NoDevice("the driver sees no GPU".into()));
    }
    Ok(count as usize)
}

/// Opens device `ordinal` for the kernels: a driver, the device, compute capability 8.0 or newer,
/// and cuBLASLt. [`CudaError::NoDevice`] when there is no driver or no such device.
fn open_device(ordinal: usize) -> Result<OpenDevice, CudaError> {
    let count = visible_devices()?;
    if ordinal >= count {
        return Err(CudaError::NoDevice(format!(
            "device {ordinal} was asked for; there are {count} (0 to {})",
            count - 1
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating the context", e))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| driver_err("reading the compute capability", e))?;
    if major < 8 {
        return Err(CudaError::Unsupported(format!(
            "device {ordinal} has compute capability {major}.{minor}; the kernels need 8.0 or \
             newer (bf16 tensor cores)"
        )));
    }
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(CudaError::Unsupported(
            "cuBLASLt (libcublasLt.so.13) is not installed beside the driver".into(),
        ));
    }
    let sms = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| driver_err("reading the multiprocessor count", e))?
        .max(1) as usize;
    Ok(OpenDevice { ctx, major, sms })
}

impl CudaBackend {
    /// How many devices the driver sees (those `CUDA_VISIBLE_DEVICES` leaves). Fails with
    /// [`CudaError::NoDevice`] when there is no driver or no device.
    pub fn device_count() -> Result<usize, CudaError> {
        visible_devices()
    }

    /// Opens device `ordinal`, loads the kernels and creates the cuBLASLt handle. Fails with
    /// [`CudaError::NoDevice`] when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let OpenDevice { ctx, major, sms } = open_device(ordinal)?;
        // SAFETY: the backend orders all its work on one stream and frees memory stream-ordered,
        // so cudarc's per-allocation events are not needed (and would not be capturable).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating the stream", e))?;
        let device_name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let kernels = Kernels::load()?;
        let ws_bytes = blas_workspace_bytes(major);
        let mut allocations = 0;
        let mut alloc = |bytes: usize| {
            allocations += 1;
            DeviceBuf::zeroed(&stream, bytes).map_err(|e| driver_err("allocating memory", e))
        };
        let workspace = alloc(ws_bytes)?;
        let flag = |name| std::env::var_os(name).is_some_and(|v| v != "0");
        let choices = (flag("ELECTRA_GEMM_TUNE"), flag("ELECTRA_FOLD_BIAS_GRADS"));
        let blas = Blas::new(workspace.ptr, ws_bytes, choices)?;
        let scratch = Scratch {
            partials: alloc(0)?,
            counter: alloc(0)?,
            norm: alloc(0)?,
            loss_sums: alloc(0)?,
            sort: [alloc(0)?, alloc(0)?, alloc(0)?, alloc(0)?],
            tile_hist: alloc(0)?,
            pieces: [alloc(0)?, alloc(0)?],
            type_partials: alloc(0)?,
            convert: alloc(0)?,
            bias: alloc(0)?,
        };
        let spaces = Space::ALL
            .iter()
            .map(|_| alloc(0))
            .collect::<Result<Vec<_>, _>>()?;
        let params_bf16 = alloc(0)?;
        let ints = alloc(0)?;
        let step_memory = alloc(STEP_BYTES)?;
        let sync_each_launch = flag("ELECTRA_CUDA_SYNC");
        let record = std::env::var_os("ELECTRA_CUDA_GRAPH").is_none_or(|v| v != "0");
        let mut be = CudaBackend {
            graphs: StepGraphs::new(record && !sync_each_launch),
            blas,
            kernels,
            spaces,
            params_bf16,
            ints,
            scratch,
            step_memory,
            in_step: false,
            recording: None,
            nccl: None,
            _workspace: workspace,
            tags: [Tags::default(), Tags::default()],
            sizes: Sizes::default(),
            sms,
            allocations,
            sync_each_launch,
            last_kernel: Cell::new("(none)"),
            clock: None,
            host16: Vec::new(),
            device_name,
            stream,
            ctx,
        };
        be.size_scratch().map_err(|e| CudaError::Driver {
            what: "allocating scratch memory".into(),
            message: e.to_string(),
        })?;
        be.stream
            .synchronize()
            .map_err(|e| driver_err("initialising the device memory", e))?;
        Ok(be)
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> String {
        self.device_name.clone()
    }

    /// The CUDA version the driver supports, e.g. "13.0".
    pub fn driver_version(&self) -> String {
        let mut v = 0;
        // SAFETY: writes one int; the driver is loaded (the context exists).
        match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) } {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS => {
                format!("{}.{}", v / 1000, v % 1000 / 10)
            }
            e => format!("unknown ({e:?})"),
        }
    }

    /// The device's memory in use, in bytes (`cuMemGetInfo`: total less free, so every process
    /// on the device counts). The backend allocates nothing after a shape's first steps, so read
    /// after them it is the run's peak.
    pub fn device_memory_used(&self) -> Result<u64, CudaError> {
        self.bind();
        let (free, total) = result::mem_get_info()
            .map_err(|e| driver_err("asking for the device's free memory", e))?;
        Ok((total - free) as u64)
    }

    /// How many device allocations the backend has made; constant across steps of one batch
    /// shape after the first.
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Turns the recording of training steps as CUDA graphs on (the default, unless
    /// `ELECTRA_CUDA_GRAPH=0` or `ELECTRA_CUDA_SYNC=1`) or off; either way forgets what was
    /// recorded.
    pub fn set_step_recording(&mut self, on: bool) {
        assert!(!self.in_step, "set_step_recording inside a step");
        self.graphs = StepGraphs::new(on && !self.sync_each_launch);
    }

    /// How many recorded training steps the backend keeps (to replay).
    pub fn recorded_steps(&self) -> usize {
        self.graphs.len()
    }

    /// Starts timing every launch on the device (`clock.rs`), forgetting earlier timings. Time
    /// steps that are issued, not replayed.
    pub fn start_kernel_clock(&mut self) {
        self.clock = Some(KernelClock::new());
    }

    /// Stops timing launches and returns, for each kernel (and each cuBLASLt product shape), its
    /// launches and their device time in seconds, slowest first; empty if the clock was not
    /// started. Waits for the device.
    pub fn kernel_times(&mut self) -> Result<Vec<(String, u64, f64)>, CudaError> {
        self.bind();
        self.clock.take().map_or(Ok(Vec::new()), KernelClock::read)
    }

    /// What timing each product shape's candidate algorithms found, in the order the shapes
    /// were first run; empty unless `ELECTRA_GEMM_TUNE=1` (`blas.rs`).
    pub fn gemm_tunings(&self) -> Vec<GemmTuning> {
        self.blas.tunings().to_vec()
    }

    /// How many weight-gradient products fold their bias gradient in: 0 unless
    /// `ELECTRA_FOLD_BIAS_GRADS=1` (`blas.rs`).
    pub fn folded_bias_grads(&self) -> usize {
        self.blas.folded_bias_grads()
    }

    /// Waits for the queued work and returns the first error it raised, naming the last kernel
    /// launched.
    pub fn check(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        self.stream.synchronize().map_err(|e| CudaError::Driver {
            what: format!("the work queued up to kernel {}", self.last_kernel.get()),
            message: e.to_string(),
        })?;
        self.ctx
            .check_err()
            .map_err(|e| driver_err("a deferred call (a drop)", e))
    }

    fn bind(&self) {
        self.ctx
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("CUDA: cannot make the context current: {e}"));
    }

    fn alloc(&mut self, bytes: usize) -> Result<DeviceBuf, CudaError> {
        self.allocations += 1;
        DeviceBuf::zeroed(&self.stream, bytes).map_err(|e| driver_err("allocating memory", e))
    }

    /// Sizes the scratch for the current spaces (see [`Scratch`]).
    fn size_scratch(&mut self) -> Result<(), OutOfMemory> {
        let Sizes { acts, ints, .. } = self.sizes;
        let sms = self.sms;
        try_ensure!(self, partials)(partials_bytes(sms))?;
        try_ensure!(self, counter)(COUNTER_BYTES)?;
        try_ensure!(self, norm)(16 * 2 * sms + 16)?;
        try_ensure!(self, loss_sums)(8 * LOSS_SUMS)?;
        for i in 0..4 {
            try_ensure!(self, sort[i])(4 * ints)?;
        }
        try_ensure!(self, tile_hist)(4 * SORT_RADIX * ints.div_ceil(SORT_TILE))?;
        // ceil(tokens / 16) rows of the embedding width: tokens ≤ ints, width ≤ 1024, and
        // tokens · width ≤ acts (the saved xhat).
        let pieces = (ints.div_ceil(EMB_CHUNK) * MAX_WIDTH).min(acts / EMB_CHUNK + MAX_WIDTH);
        try_ensure!(self, pieces[0])(4 * pieces)?;
        try_ensure!(self, pieces[1])(4 * pieces)?;
        // 512 positions, 2 token types and a width of 1024 at most in the presets.
        try_ensure!(self, type_partials)(4 * (512 * 2 * MAX_WIDTH).min(acts.max(1)))?;
        try_ensure!(self, convert)(2 * ints)?;
        try_ensure!(self, bias)(4 * 32_768)?;
        Ok(())
    }

    /// What the launch functions beside the kernels need, on the backend's stream.
    fn launcher(&self) -> Launcher<'_> {
        Launcher {
            kernels: &self.kernels,
            stream: self.stream.cu_stream(),
            sms: self.sms,
            sync_each_launch: self.sync_each_launch,
            last_kernel: &self.last_kernel,
            clock: self.clock.as_ref(),
        }
    }

    /// [`launcher`](Self::launcher) beside the cuBLASLt handle, for the products.
    fn launcher_with_blas(&mut self) -> (Launcher<'_>, &mut Blas) {
        let l = Launcher {
            kernels: &self.kernels,
            stream: self.stream.cu_stream(),
            sms: self.sms,
            sync_each_launch: self.sync_each_launch,
            last_kernel: &self.last_kernel,
            clock: self.clock.as_ref(),
        };
        (l, &mut self.blas)
    }

    /// Panics with the error of a launch function beside the kernels: the trait's operations
    /// return nothing, and the engine's own buffers failing those checks is a bug.
    fn launched(result: Result<(), CudaError>) {
        result.unwrap_or_else(|e| panic!("CUDA: {e}"));
    }

    /// Copies `dst.len()` values at `addr` to `dst` once the queued work before it is done.
    ///
    /// # Safety
    /// `addr` holds `dst.len()` values of `T` on the backend's device.
    unsafe fn read_back<T>(&self, addr: u64, dst: &mut [T], what: std::fmt::Arguments) {
        result::memcpy_dtoh_async(dst, addr, self.stream.cu_stream())
            .unwrap_or_else(|e| panic!("CUDA: reading {what}: {e}"));
        self.sync();
    }

    fn sync(&self) {
        self.stream.synchronize().unwrap_or_else(|e| {
            panic!(
                "CUDA: the queued work failed (last kernel launched: {}): {e}",
                self.last_kernel.get()
            )
        });
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Let queued work finish before the modules, the handle and the memory go.
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.stream.synchronize();
        }
    }
}

/// The kernel of a row-per-warp family for rows of `width`: `narrow` up to 256, `wide` up to
/// [`MAX_WIDTH`], which is all the registers hold.
fn try_width_kernel(
    narrow: Kernel,
    wide: Kernel,
    width: usize,
    what: &str,
) -> Result<Kernel, CudaError> {
    check_width(width, what)?;
    Ok(if width <= 256 { narrow } else { wide })
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn reserve(&mut self, sizes: Sizes) -> Result<(), OutOfMemory> {
        self.bind();
        let old = self.sizes;
        let cu = self.stream.cu_stream();
        let resize = |be: &mut Self, which: Slot, bytes: usize, old_bytes: usize| {
            let new = be.alloc(bytes).map_err(|e| OutOfMemory {
                backend: "cuda",
                bytes,
                detail: e.to_string(),
            })?;
            let keep = bytes.min(old_bytes);
            let slot = match which {
                Slot::ParamsBf16 => &mut be.params_bf16,
                Slot::Ints => &mut be.ints,
                Slot::Space(space) => &mut be.spaces[space.index()],
            };
            if keep > 0 {
                // SAFETY: both allocations hold at least `keep` bytes.
                unsafe { result::memcpy_dtod_async(new.ptr, slot.ptr, keep, cu) }
                    .unwrap_or_else(|e| panic!("CUDA: keeping values across reserve: {e}"));
            }
            *slot = new;
            Ok(())
        };
        // Recorded steps hold the addresses of the buffers about to be replaced, so they go first,
        // even if a later allocation fails. Such a failure leaves the spaces resized so far at their
        // new size and `self.sizes` at the old one, which every space still holds: a caller can go
        // on with its previous plan.
        if sizes != old {
            self.graphs.forget();
        }
        if sizes.params != old.params {
            for space in [Space::Param, Space::Grad, Space::AdamM, Space::AdamV] {
                resize(self, Slot::Space(space), 4 * sizes.params, 4 * old.params)?;
            }
            resize(self, Slot::ParamsBf16, 2 * sizes.params, 2 * old.params)?;
        }
        if sizes.grad_sum != old.grad_sum {
            let (new, old) = (4 * sizes.grad_sum, 4 * old.grad_sum);
            resize(self, Slot::Space(Space::GradSum), new, old)?;
        }
        if sizes.acts != old.acts {
            for space in [Space::Act, Space::ActGrad] {
                resize(self, Slot::Space(space), 4 * sizes.acts, 4 * old.acts)?;
            }
            self.tags.iter_mut().for_each(|t| t.truncate(sizes.acts));
        }
        if sizes.ints != old.ints {
            resize(self, Slot::Ints, 4 * sizes.ints, 4 * old.ints)?;
        }
        self.sizes = sizes;
        self.size_scratch()
    }

    fn sizes(&self) -> Sizes {
        self.sizes
    }

    fn synchronize(&self) {
        self.bind();
        self.sync();
    }

    fn write(&mut self, dst: Buf, src: &[f32]) {
        assert_eq!(
            src.len(),
            dst.len,
            "write of {} values into {dst:?}",
            src.len()
        );
        self.bind();
        match act_index(dst.space) {
            Some(i) => {
                let dtype = self.tags[i].get(dst.offset).unwrap_or(Dtype::F32);
                self.write_as(dst, dtype, src);
                self.tags[i].set(dst.offset, dst.len, dtype);
            }
            None => {
                self.write_as(dst, Dtype::F32, src);
                if dst.space == Space::Param {
                    self.refresh_bf16(dst);
                }
            }
        }
    }

    fn read(&self, src: Buf, dst: &mut [f32]) {
        assert_eq!(
            dst.len(),
            src.len,
            "read of {src:?} into {} values",
            dst.len()
        );
        self.bind();
        let dtype = self.tag_of(src).unwrap_or(Dtype::F32);
        self.read_as(src, dtype, dst);
    }

    fn write_ints(&mut self, dst: IBuf, src: &[u32]) {
        assert_eq!(
            src.len(),
            dst.len,
            "write of {} ints into {dst:?}",
            src.len()
        );
        self.bind();
        let addr = self.iaddr(dst);
        // SAFETY: in bounds; pageable copies are staged before returning.
        unsafe { result::memcpy_htod_async(addr, src, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA: writing {dst:?}: {e}"));
    }

    fn read_ints(&self, src: IBuf, dst: &mut [u32]) {
        assert_eq!(
            dst.len(),
            src.len,
            "read of {src:?} into {} ints",
            dst.len()
        );
        self.bind();
        let addr = self.iaddr(src);
        // SAFETY: in bounds (checked above).
        unsafe { self.read_back(addr, dst, format_args!("{src:?}")) };
    }

    fn fill(&mut self, dst: Buf, value: f32) {
        self.bind();
        let addr = self.addr(dst);
        match act_index(dst.space) {
            Some(i) => {
                if value.to_bits() == 0 {
                    // Zero in either type; the buffers keep their types. A buffer known to hold
                    // bf16 needs only the first half of its slots: the backward pass zeroes each
                    // activation gradient before its first writer, one buffer at a time.
                    // (Two bf16 zeros a word; an odd length zeroes one value more, still in the
                    // buffer's own slots.)
                    match self.tags[i].covering(dst.offset, dst.len) {
                        Some(Dtype::Bf16) => self.memset32(addr, 0, dst.len.div_ceil(2)),
                        _ => self.memset32(addr, 0, dst.len),
                    }
                } else if value.is_nan() {
                    // 0x7FC0 is a bf16 NaN, 0x7FC07FC0 an f32 NaN: poisoned in either type.
                    self.memset32(addr, 0x7FC0_7FC0, dst.len);
                } else {
                    let dtype = self.tags[i].get(dst.offset).unwrap_or(Dtype::F32);
                    match dtype {
                        Dtype::F32 => self.memset32(addr, value.to_bits(), dst.len),
                        Dtype::Bf16 => {
                            self.memset16(addr, bf16::from_f32(value).to_bits(), dst.len)
                        }
                    }
                    self.tags[i].set(dst.offset, dst.len, dtype);
                }
            }
            None => {
                self.memset32(addr, value.to_bits(), dst.len);
                if dst.space == Space::Param {
                    let copy = self.bf16_param(dst);
                    self.memset16(copy, bf16::from_f32(value).to_bits(), dst.len);
                }
            }
        }
    }

    fn embedding_fwd(&mut self, op: &EmbeddingOp) {
        self.bind();
        self.launch_embedding_fwd(op);
    }

    fn embedding_bwd(&mut self, op: &EmbeddingOp) {
        self.bind();
        self.launch_embedding_bwd(op);
    }

    fn linear_fwd(&mut self, op: &LinearOp) {
        self.bind();
        self.launch_linear_fwd(op);
    }

    fn linear_bwd(&mut self, op: &LinearOp) {
        self.bind();
        self.launch_linear_bwd(op);
    }

    fn layernorm_fwd(&mut self, op: &LayerNormOp) {
        self.bind();
        self.launch_layernorm_fwd(op);
    }

    fn layernorm_bwd(&mut self, op: &LayerNormOp) {
        self.bind();
        self.launch_layernorm_bwd(op);
    }

    fn attention_fwd(&mut self, op: &AttentionOp) {
        self.bind();
        self.launch_attention_fwd(op);
    }

    fn attention_bwd(&mut self, op: &AttentionOp) {
        self.bind();
        self.launch_attention_bwd(op);
    }

    fn dropout_fwd(&mut self, op: &DropoutOp) {
        self.bind();
        self.launch_dropout_fwd(op);
    }

    fn dropout_bwd(&mut self, op: &DropoutOp) {
        self.bind();
        self.launch_dropout_bwd(op);
    }

    fn gather_rows(&mut self, op: &GatherRowsOp) {
        self.bind();
        self.launch_gather_rows(op);
    }

    fn gather_rows_bwd(&mut self, op: &GatherRowsOp) {
        self.bind();
        self.launch_gather_rows_bwd(op);
    }

    fn softmax_xent(&mut self, op: &SoftmaxXentOp) {
        self.bind();
        self.launch_softmax_xent(op);
    }

    fn replace_tokens(&mut self, op: &ReplaceTokensOp) {
        self.bind();
        self.launch_replace_tokens(op);
    }

    fn bce_head(&mut self, op: &BceHeadOp) {
        self.bind();
        self.launch_bce_head(op);
    }

    fn accumulate(&mut self, op: &AccumulateOp) {
        self.bind();
        self.launch_accumulate(op);
    }

    fn loss_sums(&mut self, op: &LossSumsOp) {
        self.bind();
        self.launch_loss_sums(op);
    }

    fn read_loss_sums(&self) -> [f64; LOSS_SUMS] {
        self.bind();
        self.fetch_loss_sums()
    }

    fn all_reduce(&mut self, buf: Buf, comm: &dyn Collective) {
        self.bind();
        if !self.nccl_all_reduce(buf) {
            all_reduce_on_host(self, buf, comm);
        }
    }

    fn grad_norm(&mut self) -> f32 {
        self.bind();
        self.measure_grad_norm()
    }

    fn adamw(&mut self, group: &ParamGroup, grad_scale: f32) {
        self.bind();
        self.launch_adamw(group, grad_scale, 0);
    }

    fn optimizer_step(&mut self, op: &OptimizerStep) {
        self.bind();
        self.launch_optimizer_step(op);
    }

    fn last_grad_norm(&self) -> f32 {
        self.bind();
        self.read_grad_norm()
    }

    fn begin_step(&mut self, scalars: StepScalars, recording: Option<u64>) -> bool {
        self.bind();
        self.open_step(scalars, recording)
    }

    fn end_step(&mut self) {
        self.bind();
        self.close_step();
    }
}
