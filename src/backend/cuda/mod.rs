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
//! operation that wrote it; u32 integers. Everything a kernel needs besides (reduction partials
//! and counters, the embedding sort's keys, cuBLASLt's workspace) is allocated by `reserve` too,
//! so steps after the first allocate nothing ([`CudaBackend::allocations`] counts).
//!
//! # Operations
//! | trait operation      | device work |
//! |----------------------|-------------|
//! | `embedding_fwd`      | `embedding_fwd_w{256,1024}` |
//! | `embedding_bwd`      | `embedding_bwd_layernorm_w*` (f32 `dsum` in `saved.xhat.grad()`), radix sort of the ids (`embedding_sort_hist/scan/scatter`, 1 or 2 passes), `embedding_bwd_word_pieces` + `_combine`, `embedding_bwd_pos_type` + `embedding_bwd_type_reduce` |
//! | `linear_fwd`         | cuBLASLt `y = x·wᵀ` with the bias epilogue (bf16 bias from the parameter copy); with GELU, cuBLASLt into `pre`, then `bias_gelu_fwd` (f32 bias, exact erf GELU: cuBLASLt's GELU epilogues use the tanh form) |
//! | `linear_bwd`         | `bias_gelu_bwd` (dpre and dbias) or `bias_bwd` (dbias), cuBLASLt `dx += dy·w` (bf16, β = 1) and `dw += dyᵀ·x` (f32, β = 1) |
//! | `layernorm_fwd/bwd`  | `layernorm_residual_fwd/bwd_w{256,1024}` |
//! | `attention_fwd`      | `attention_fwd_d{16,32,64}` (saves the log-sum-exp in `probs`) |
//! | `attention_bwd`      | `attention_bwd_dq_d*` (also writes `delta` to `probs.grad()`), then `attention_bwd_dkdv_d*` |
//! | `dropout_fwd/bwd`    | `dropout_fwd/bwd` |
//! | `gather_rows(_bwd)`  | `gather_rows_fwd/bwd` (the rows must be distinct in the backward) |
//! | `softmax_xent`       | `softmax_xent_fwd_bwd` |
//! | `replace_tokens`     | `replace_tokens` |
//! | `bce_head`           | `sigmoid_bce_head_fwd_bwd_w{256,1024}` (the H → 1 projection, the loss and its backward in one pass) |
//! | `grad_norm`          | `grad_norm` (deterministic, f64), one 4-byte read back |
//! | `adamw`              | `adamw` (also refreshes the bf16 copy) |
//!
//! A linear layer with a single output column (a regression head's score) writes f32; its
//! backward rounds the f32 `dy` to bf16 (`params_to_bf16` into scratch) for the products.
//!
//! Every kernel accumulates (`+=`) into gradients, as the trait specifies; reductions over rows
//! use fixed grids, so results are bitwise reproducible run to run.
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
//! read inside a step, and records the step as a CUDA graph the second time it sees its
//! fingerprint, replaying it after that (`graph.rs`). `ELECTRA_CUDA_GRAPH=0` turns recording
//! off; `ELECTRA_CUDA_SYNC=1` does too.
//!
//! # Not yet
//! None of this has run on a GPU yet.

mod blas;
mod error;
mod graph;
mod kernels;
mod memory;

pub use error::CudaError;

use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use half::bf16;

use super::{
    AdamW, AttentionDims, Backend, Buf, Dropout, EmbeddingParams, IBuf, LayerNormParams,
    LayerNormSaved, LinearDims, OutOfMemory, Pick, Sizes, Space, StepScalars,
};
use blas::{Blas, Gemm};
use graph::{Plan, StepGraphs};
use kernels::{launch, Arg, Kernel, Kernels};
use memory::{DeviceBuf, Dtype, Tags};

/// Launch shapes the kernels are written for (see each `kernels/*.cu`).
const LN_WARPS: usize = 8;
const LN_THREADS: u32 = 256;
const BG_THREADS: u32 = 128;
const BG_COLS: usize = 1024;
const SORT_TILE: usize = 1024;
const SORT_THREADS: u32 = 256;
const SORT_RADIX: usize = 256;
const EMB_CHUNK: usize = 16;
const MAX_TYPES: usize = 4;
const ATT_TILE: usize = 64;
const ATT_THREADS: u32 = 128;
const SX_THREADS: u32 = 512;
const BCE_WARPS: usize = 8;
const BCE_THREADS: u32 = 256;
const NORM_THREADS: u32 = 512;
/// The widest row the LayerNorm, embedding and head kernels hold in registers.
const MAX_WIDTH: usize = 1024;
/// The largest grid dimension y or z.
const MAX_GRID_YZ: usize = 65_535;

/// Scratch memory of the kernels, sized by `reserve` and grown only if a call needs more.
struct Scratch {
    /// f32 partial sums of the deterministic row reductions (LayerNorm gain/bias, bias grads).
    partials: DeviceBuf,
    /// u32 counters of the "last block" reductions: zero, and left at zero by every kernel.
    counters: DeviceBuf,
    /// `grad_norm`'s f64 partials, then its two f32 results.
    norm: DeviceBuf,
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

/// Byte offsets of the [`StepScalars`] in the backend's step memory.
const STEP_DROPOUT_SEED: u64 = 0;
const STEP_SAMPLE_SEED: u64 = 8;
const STEP_LR: u64 = 16;
const STEP_BYTES: usize = 32;

/// The CUDA backend. See the [module documentation](self).
pub struct CudaBackend {
    // Dropped in this order: the recordings, the library handles and modules, then the memory,
    // then the stream and the context (`Drop` first waits for the stream).
    graphs: StepGraphs,
    blas: Blas,
    kernels: Kernels,
    spaces: Vec<DeviceBuf>,
    params_bf16: DeviceBuf,
    ints: DeviceBuf,
    scratch: Scratch,
    /// The current step's [`StepScalars`] on the device (`STEP_*` offsets), which the kernels
    /// read inside a step so that a recording of it serves every step.
    step_memory: DeviceBuf,
    /// The current step's values while a step is open (between `begin_step` and `end_step`).
    step: Option<StepScalars>,
    /// The fingerprint of the step being captured.
    recording: Option<u64>,
    _workspace: DeviceBuf,
    tags: [Tags; 2],
    sizes: Sizes,
    sms: usize,
    allocations: u64,
    sync_each_launch: bool,
    last_kernel: Cell<&'static str>,
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

/// The index of an activation space in `tags`.
fn act_index(space: Space) -> Option<usize> {
    match space {
        Space::Act => Some(0),
        Space::ActGrad => Some(1),
        _ => None,
    }
}

/// `v` as a kernel's 32-bit int: every tensor the kernels index has fewer than 2^31 elements.
fn int(v: usize, what: &str) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| panic!("{what} = {v} exceeds the kernels' 32-bit indexing"))
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

/// `grow(self.scratch.$field, bytes)`, borrowing only the fields it needs.
macro_rules! try_ensure {
    ($be:expr, $($field:tt)+) => {
        |bytes: usize| grow(&$be.stream, &mut $be.allocations, &mut $be.scratch.$($field)+, bytes)
    };
}

/// `try_ensure!` inside an operation, which returns nothing: `reserve` has sized the scratch for
/// the spaces already, so a growth here is rare, and a failure as fatal as a failed launch.
macro_rules! ensure {
    ($be:expr, $($field:tt)+) => {
        |bytes: usize| try_ensure!($be, $($field)+)(bytes).unwrap_or_else(|e| panic!("CUDA: {e}"))
    };
}

fn grid_dim(v: usize) -> u32 {
    u32::try_from(v).expect("grid dimension fits in u32")
}

impl CudaBackend {
    /// Opens device `ordinal`, loads the kernels and creates the cuBLASLt handle. Fails with
    /// [`CudaError::NoDevice`] when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
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
        if ordinal >= count as usize {
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
        // SAFETY: the backend orders all its work on one stream and frees memory stream-ordered,
        // so cudarc's per-allocation events are not needed (and would not be capturable).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating the stream", e))?;
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
        let device_name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let kernels = Kernels::load()?;
        // NVIDIA's recommendation: 32 MiB of workspace on Hopper, 4 MiB before.
        let ws_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let mut allocations = 0;
        let mut alloc = |bytes: usize| {
            allocations += 1;
            DeviceBuf::zeroed(&stream, bytes).map_err(|e| driver_err("allocating memory", e))
        };
        let workspace = alloc(ws_bytes)?;
        let blas = Blas::new(workspace.ptr, ws_bytes)?;
        let scratch = Scratch {
            partials: alloc(0)?,
            counters: alloc(0)?,
            norm: alloc(0)?,
            sort: [alloc(0)?, alloc(0)?, alloc(0)?, alloc(0)?],
            tile_hist: alloc(0)?,
            pieces: [alloc(0)?, alloc(0)?],
            type_partials: alloc(0)?,
            convert: alloc(0)?,
            bias: alloc(0)?,
        };
        let spaces = (0..6).map(|_| alloc(0)).collect::<Result<Vec<_>, _>>()?;
        let params_bf16 = alloc(0)?;
        let ints = alloc(0)?;
        let step_memory = alloc(STEP_BYTES)?;
        let sync_each_launch = std::env::var_os("ELECTRA_CUDA_SYNC").is_some_and(|v| v != "0");
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
            step: None,
            recording: None,
            _workspace: workspace,
            tags: [Tags::default(), Tags::default()],
            sizes: Sizes::default(),
            sms,
            allocations,
            sync_each_launch,
            last_kernel: Cell::new("(none)"),
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

    /// How many device allocations the backend has made; constant across steps of one batch
    /// shape after the first.
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Turns the recording of training steps as CUDA graphs on (the default, unless
    /// `ELECTRA_CUDA_GRAPH=0` or `ELECTRA_CUDA_SYNC=1`) or off; either way forgets what was
    /// recorded.
    pub fn set_step_recording(&mut self, on: bool) {
        assert!(self.step.is_none(), "set_step_recording inside a step");
        self.graphs = StepGraphs::new(on && !self.sync_each_launch);
    }

    /// How many recorded training steps the backend keeps (to replay).
    pub fn recorded_steps(&self) -> usize {
        self.graphs.len()
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

    /// The bf16 matrix rate of this device in FLOP/s: the median of 10 timed 8192³ cuBLASLt
    /// products (bf16 in, f32 accumulate, bf16 out) on random operands, after 3 untimed ones.
    /// Allocates 384 MiB for the call.
    pub fn matrix_rate(&mut self) -> Result<f64, CudaError> {
        const N: usize = 8192;
        self.bind();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let host: Vec<u16> = (0..N * N)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bf16::from_f32((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_bits()
            })
            .collect();
        let mut bufs = Vec::new();
        for _ in 0..3 {
            bufs.push(self.alloc(N * N * 2)?);
        }
        let cu = self.stream.cu_stream();
        for b in &bufs[..2] {
            // SAFETY: `b` holds N² bf16; the host vector outlives the (staged) copy.
            unsafe { result::memcpy_htod_async(b.ptr, &host, cu) }
                .map_err(|e| driver_err("uploading the operands", e))?;
        }
        let g = Gemm {
            m: N as u64,
            n: N as u64,
            k: N as u64,
            trans_a: false,
            trans_b: false,
            lda: N as u64,
            ldb: N as u64,
            ldd: N as u64,
            out: Dtype::Bf16,
            bias: false,
        };
        let (a, b, d) = (bufs[0].ptr, bufs[1].ptr, bufs[2].ptr);
        let mut times = Vec::new();
        for i in 0..13 {
            let start = self
                .stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_err("recording an event", e))?;
            // SAFETY: three N × N bf16 matrices.
            unsafe { self.blas.matmul(cu, g, a, b, d, 0.0, None)? };
            let end = self
                .stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_err("recording an event", e))?;
            end.synchronize()
                .map_err(|e| driver_err("timing the product", e))?;
            if i >= 3 {
                let ms = start
                    .elapsed_ms(&end)
                    .map_err(|e| driver_err("timing the product", e))?;
                times.push(ms as f64 * 1e-3);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * (N as f64).powi(3) / times[times.len() / 2])
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
        // LayerNorm backward: a grid of at most 2·SMs blocks, 2·width partials each; the bias
        // reductions stay under 2·SMs·1024 values by their choice of grid.
        try_ensure!(self, partials)(4 * 2 * sms * 2 * MAX_WIDTH)?;
        try_ensure!(self, counters)(4 * 4096)?;
        try_ensure!(self, norm)(16 * 2 * sms + 16)?;
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

    /// Launches `k`; panics with its name if the launch fails (or, with `ELECTRA_CUDA_SYNC`, if
    /// it faults).
    fn run(&self, k: Kernel, grid: (usize, usize, usize), block: u32, args: &[Arg]) {
        self.last_kernel.set(k.name);
        let grid = (grid_dim(grid.0), grid_dim(grid.1), grid_dim(grid.2));
        // SAFETY: every call site passes the arguments its kernel declares, with pointers into
        // buffers whose bounds it checked for the launch shape.
        unsafe { launch(self.stream.cu_stream(), k, grid, block, args) }
            .unwrap_or_else(|e| panic!("CUDA: launching kernel {} failed: {e}", k.name));
        if self.sync_each_launch {
            self.stream
                .synchronize()
                .unwrap_or_else(|e| panic!("CUDA: kernel {} failed: {e}", k.name));
        }
    }

    fn gemm(&mut self, g: Gemm, a: u64, b: u64, d: u64, beta: f32, bias: Option<u64>) {
        self.last_kernel.set("cublasLtMatmul");
        let stream = self.stream.cu_stream();
        // SAFETY: the call sites check that the buffers hold the matrices `g` describes.
        unsafe { self.blas.matmul(stream, g, a, b, d, beta, bias) }
            .unwrap_or_else(|e| panic!("CUDA: {e}"));
        if self.sync_each_launch {
            self.stream
                .synchronize()
                .unwrap_or_else(|e| panic!("CUDA: cublasLtMatmul {g:?} failed: {e}"));
        }
    }

    fn sync(&self) {
        self.stream.synchronize().unwrap_or_else(|e| {
            panic!(
                "CUDA: the queued work failed (last kernel launched: {}): {e}",
                self.last_kernel.get()
            )
        });
    }

    // ---- addresses -------------------------------------------------------------------------

    fn space_len(&self, space: Space) -> usize {
        match space {
            Space::Act | Space::ActGrad => self.sizes.acts,
            _ => self.sizes.params,
        }
    }

    /// The address of value 0 of `b` (4-byte values or slots).
    fn addr(&self, b: Buf) -> u64 {
        assert!(
            b.end() <= self.space_len(b.space),
            "{b:?} is out of its space"
        );
        self.spaces[b.space.index()].ptr + 4 * b.offset as u64
    }

    fn iaddr(&self, b: IBuf) -> u64 {
        assert!(
            b.offset + b.len <= self.sizes.ints,
            "{b:?} is out of the int space"
        );
        self.ints.ptr + 4 * b.offset as u64
    }

    /// The bf16 copy of a parameter buffer.
    fn bf16_param(&self, b: Buf) -> u64 {
        assert_eq!(b.space, Space::Param, "{b:?} is not a parameter");
        assert!(b.end() <= self.sizes.params, "{b:?} is out of its space");
        self.params_bf16.ptr + 2 * b.offset as u64
    }

    fn tag_of(&self, b: Buf) -> Option<Dtype> {
        act_index(b.space).and_then(|i| self.tags[i].get(b.offset))
    }

    /// An input a kernel reads as `want`: an activation (converted in place, through the host,
    /// if it holds the other type), a parameter (its bf16 copy for a bf16 input), or an f32
    /// gradient or moment.
    fn input(&mut self, b: Buf, want: Dtype) -> u64 {
        match (b.space, want) {
            (Space::Act | Space::ActGrad, _) => {
                self.conform(b, want);
                self.addr(b)
            }
            (Space::Param, Dtype::Bf16) => self.bf16_param(b),
            (_, Dtype::F32) => self.addr(b),
            (space, Dtype::Bf16) => {
                panic!("{b:?}: the CUDA backend has no bf16 view of {space:?} buffers")
            }
        }
    }

    /// An output a kernel writes as `dtype`, overwriting or (`accumulate`) adding to it.
    fn output(&mut self, b: Buf, dtype: Dtype, accumulate: bool) -> u64 {
        match (act_index(b.space), dtype, b.space) {
            (Some(i), _, _) => {
                if accumulate {
                    self.conform(b, dtype);
                }
                let addr = self.addr(b);
                self.tags[i].set(b.offset, b.len, dtype);
                addr
            }
            (None, Dtype::F32, Space::Grad | Space::AdamM | Space::AdamV) => self.addr(b),
            _ => panic!(
                "{b:?}: the CUDA kernels write {dtype:?} activations or f32 gradients, not this \
                 buffer"
            ),
        }
    }

    /// Makes the activation `b` hold `want`, converting what it holds through the host.
    fn conform(&mut self, b: Buf, want: Dtype) {
        let Some(i) = act_index(b.space) else { return };
        match self.tags[i].get(b.offset) {
            Some(have) if have != want => {
                let mut v = vec![0.0f32; b.len];
                self.read_as(b, have, &mut v);
                self.write_as(b, want, &v);
                self.tags[i].set(b.offset, b.len, want);
            }
            _ => {}
        }
    }

    fn read_as(&self, b: Buf, dtype: Dtype, dst: &mut [f32]) {
        let addr = self.addr(b);
        let cu = self.stream.cu_stream();
        match dtype {
            Dtype::F32 => {
                // SAFETY: `b` is in bounds; the copy completes before `sync` returns.
                unsafe { result::memcpy_dtoh_async(dst, addr, cu) }
                    .unwrap_or_else(|e| panic!("CUDA: reading {b:?}: {e}"));
                self.sync();
            }
            Dtype::Bf16 => {
                let mut raw = vec![0u16; dst.len()];
                // SAFETY: as above, bf16 values in the first half of the buffer's slots.
                unsafe { result::memcpy_dtoh_async(&mut raw, addr, cu) }
                    .unwrap_or_else(|e| panic!("CUDA: reading {b:?}: {e}"));
                self.sync();
                for (d, r) in dst.iter_mut().zip(raw) {
                    *d = bf16::from_bits(r).to_f32();
                }
            }
        }
    }

    fn write_as(&mut self, b: Buf, dtype: Dtype, src: &[f32]) {
        let addr = self.addr(b);
        let cu = self.stream.cu_stream();
        // Copies from pageable memory return once the data is staged, so the host buffers may be
        // reused at once.
        match dtype {
            Dtype::F32 => unsafe { result::memcpy_htod_async(addr, src, cu) },
            Dtype::Bf16 => {
                self.host16.clear();
                self.host16
                    .extend(src.iter().map(|&v| bf16::from_f32(v).to_bits()));
                // SAFETY: `b` is in bounds and has room for its values in either type.
                unsafe { result::memcpy_htod_async(addr, &self.host16, cu) }
            }
        }
        .unwrap_or_else(|e| panic!("CUDA: writing {b:?}: {e}"));
    }

    /// Refreshes the bf16 copy of the parameters `b`.
    fn refresh_bf16(&mut self, b: Buf) {
        if b.len == 0 {
            return;
        }
        let blocks = b.len.div_ceil(256).min(4 * self.sms);
        let args = [
            Arg::Ptr(self.addr(b)),
            Arg::Ptr(self.bf16_param(b)),
            Arg::U64(b.len as u64),
        ];
        self.run(self.kernels.params_to_bf16, (blocks, 1, 1), 256, &args);
    }

    fn memset32(&self, addr: u64, bits: u32, count: usize) {
        if count == 0 {
            return;
        }
        // SAFETY: the callers pass in-bounds, 4-byte aligned ranges.
        unsafe { sys::cuMemsetD32Async(addr, bits, count, self.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA: cuMemsetD32Async: {e}"));
    }

    fn memset16(&self, addr: u64, bits: u16, count: usize) {
        if count == 0 {
            return;
        }
        // SAFETY: the callers pass in-bounds, 2-byte aligned ranges.
        unsafe { sys::cuMemsetD16Async(addr, bits, count, self.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA: cuMemsetD16Async: {e}"));
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

    /// The LayerNorm kernels' grid for `rows` rows: one row per warp per step, at most two
    /// blocks per multiprocessor, and fixed for a shape (their reductions depend on it).
    fn ln_grid(&self, rows: usize) -> usize {
        rows.div_ceil(LN_WARPS).clamp(1, 2 * self.sms)
    }

    /// `bias_gelu_bwd` (with `pre`) or `bias_bwd`: `dpre = dy·gelu'(pre)` and `dbias += Σ dpre`.
    #[allow(clippy::too_many_arguments)]
    fn bias_grad(&mut self, dy: u64, pre: u64, dpre: u64, dbias: u64, rows: usize, width: usize) {
        let col_blocks = width.div_ceil(BG_COLS);
        let groups = (2 * self.sms / col_blocks).clamp(1, rows.min(MAX_GRID_YZ));
        if dbias != 0 {
            ensure!(self, partials)(4 * groups * width);
            ensure!(self, counters)(4 * col_blocks);
        }
        let (partials, counters) = (self.scratch.partials.ptr, self.scratch.counters.ptr);
        let (rows, width) = (int(rows, "rows"), int(width, "width"));
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

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Let queued work finish before the modules, the handle and the memory go.
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.stream.synchronize();
        }
    }
}

fn width_kernel(narrow: Kernel, wide: Kernel, width: usize, what: &str) -> Kernel {
    assert!(
        width > 0 && width <= MAX_WIDTH,
        "{what}: width {width} is outside the CUDA kernels' 1..={MAX_WIDTH}"
    );
    if width <= 256 {
        narrow
    } else {
        wide
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn reserve(&mut self, sizes: Sizes) -> Result<(), OutOfMemory> {
        self.bind();
        let old = self.sizes;
        let cu = self.stream.cu_stream();
        let resize = |be: &mut Self, which: usize, bytes: usize, old_bytes: usize| {
            let new = be.alloc(bytes).map_err(|e| OutOfMemory {
                backend: "cuda",
                bytes,
                detail: e.to_string(),
            })?;
            let keep = bytes.min(old_bytes);
            let old_buf = match which {
                6 => &be.params_bf16,
                7 => &be.ints,
                i => &be.spaces[i],
            };
            if keep > 0 {
                // SAFETY: both allocations hold at least `keep` bytes.
                unsafe { result::memcpy_dtod_async(new.ptr, old_buf.ptr, keep, cu) }
                    .unwrap_or_else(|e| panic!("CUDA: keeping values across reserve: {e}"));
            }
            match which {
                6 => be.params_bf16 = new,
                7 => be.ints = new,
                i => be.spaces[i] = new,
            }
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
                resize(self, space.index(), 4 * sizes.params, 4 * old.params)?;
            }
            resize(self, 6, 2 * sizes.params, 2 * old.params)?;
        }
        if sizes.acts != old.acts {
            for space in [Space::Act, Space::ActGrad] {
                resize(self, space.index(), 4 * sizes.acts, 4 * old.acts)?;
            }
            self.tags.iter_mut().for_each(|t| t.truncate(sizes.acts));
        }
        if sizes.ints != old.ints {
            resize(self, 7, 4 * sizes.ints, 4 * old.ints)?;
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
        // SAFETY: in bounds; complete once `sync` returns.
        unsafe { result::memcpy_dtoh_async(dst, addr, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA: reading {src:?}: {e}"));
        self.sync();
    }

    fn fill(&mut self, dst: Buf, value: f32) {
        self.bind();
        let addr = self.addr(dst);
        match act_index(dst.space) {
            Some(i) => {
                if value.to_bits() == 0 {
                    // Zero in either type; the buffers keep their types.
                    self.memset32(addr, 0, dst.len);
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

    fn embedding_fwd(
        &mut self,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        p: &EmbeddingParams,
        out: Buf,
        saved: LayerNormSaved,
    ) {
        self.bind();
        let (rows, width) = (ids.len, p.norm.gain.len);
        let k = width_kernel(
            self.kernels.embedding_fwd_w256,
            self.kernels.embedding_fwd_w1024,
            width,
            "embedding_fwd",
        );
        if rows == 0 {
            return;
        }
        assert!(seq > 0 && token_types.len >= rows);
        assert!(out.len >= rows * width && saved.xhat.len >= rows * width);
        assert!(saved.rstd.len >= rows && p.norm.bias.len >= width);
        assert!(p.word.len.is_multiple_of(width) && p.token_type.len >= width);
        assert!(p.position.len >= seq.min(rows) * width, "too few positions");
        int(rows * width, "rows·width");
        let args = [
            Arg::Ptr(self.iaddr(ids)),
            Arg::Ptr(self.iaddr(token_types)),
            Arg::I32(int(seq, "seq")),
            Arg::Ptr(self.input(p.word, Dtype::F32)),
            Arg::Ptr(self.input(p.position, Dtype::F32)),
            Arg::Ptr(self.input(p.token_type, Dtype::F32)),
            Arg::Ptr(self.input(p.norm.gain, Dtype::F32)),
            Arg::Ptr(self.input(p.norm.bias, Dtype::F32)),
            Arg::Ptr(self.output(out, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.xhat, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.rstd, Dtype::F32, false)),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(width, "width")),
            Arg::F32(p.norm.eps),
        ];
        self.run(k, (self.ln_grid(rows), 1, 1), LN_THREADS, &args);
    }

    fn embedding_bwd(
        &mut self,
        ids: IBuf,
        token_types: IBuf,
        seq: usize,
        p: &EmbeddingParams,
        dout: Buf,
        saved: LayerNormSaved,
    ) {
        self.bind();
        let (rows, width) = (ids.len, p.norm.gain.len);
        let ln = width_kernel(
            self.kernels.embedding_bwd_layernorm_w256,
            self.kernels.embedding_bwd_layernorm_w1024,
            width,
            "embedding_bwd",
        );
        if rows == 0 {
            return;
        }
        assert!(p.word.len.is_multiple_of(width), "word table width");
        let vocab = p.word.len / width;
        assert!(
            vocab <= 1 << 16,
            "embedding_bwd: the CUDA sort handles vocabularies up to 65536 ids, not {vocab}"
        );
        let types = p.token_type.len / width;
        assert!(
            (1..=MAX_TYPES).contains(&types) && p.token_type.len == types * width,
            "embedding_bwd: 1 to {MAX_TYPES} token types"
        );
        assert!(
            seq > 0 && p.position.len >= seq * width,
            "too few positions"
        );
        assert!(token_types.len >= rows && dout.len >= rows * width);
        assert!(saved.xhat.len >= rows * width && saved.rstd.len >= rows);
        let (n, w) = (int(rows, "rows"), int(width, "width"));

        // 1. The LayerNorm backward into the f32 sum's gradient, dsum.
        let grid = self.ln_grid(rows);
        ensure!(self, partials)(4 * grid * 2 * width);
        let dsum = self.output(saved.xhat.grad().prefix(rows * width), Dtype::F32, false);
        let args = [
            Arg::Ptr(self.input(dout, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.xhat, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.rstd, Dtype::F32)),
            Arg::Ptr(self.input(p.norm.gain, Dtype::F32)),
            Arg::Ptr(dsum),
            Arg::Ptr(self.output(p.norm.gain.grad(), Dtype::F32, true)),
            Arg::Ptr(self.output(p.norm.bias.grad(), Dtype::F32, true)),
            Arg::Ptr(self.scratch.partials.ptr),
            Arg::Ptr(self.scratch.counters.ptr),
            Arg::I32(n),
            Arg::I32(w),
        ];
        self.run(ln, (grid, 1, 1), LN_THREADS, &args);

        // 2. A stable radix sort of (id, token), one 8-bit digit a pass.
        let tiles = rows.div_ceil(SORT_TILE);
        for i in 0..4 {
            ensure!(self, sort[i])(4 * rows);
        }
        ensure!(self, tile_hist)(4 * SORT_RADIX * tiles);
        let hist = self.scratch.tile_hist.ptr;
        let passes = if vocab <= SORT_RADIX { 1 } else { 2 };
        let (mut keys, mut vals) = (self.iaddr(ids), 0u64);
        for pass in 0..passes {
            let (ko, vo) = (
                self.scratch.sort[2 * pass].ptr,
                self.scratch.sort[2 * pass + 1].ptr,
            );
            let shift = Arg::I32(8 * pass as i32);
            let args = [Arg::Ptr(keys), Arg::I32(n), shift, Arg::Ptr(hist)];
            self.run(
                self.kernels.embedding_sort_hist,
                (tiles, 1, 1),
                SORT_THREADS,
                &args,
            );
            let len = int(SORT_RADIX * tiles, "sort histogram");
            let args = [Arg::Ptr(hist), Arg::I32(len)];
            self.run(self.kernels.embedding_sort_scan, (1, 1, 1), 1024, &args);
            let args = [
                Arg::Ptr(keys),
                Arg::Ptr(vals),
                Arg::Ptr(ko),
                Arg::Ptr(vo),
                Arg::I32(n),
                shift,
                Arg::Ptr(hist),
            ];
            self.run(
                self.kernels.embedding_sort_scatter,
                (tiles, 1, 1),
                SORT_THREADS,
                &args,
            );
            (keys, vals) = (ko, vo);
        }

        // 3. The word table: runs of equal ids summed in token order.
        let chunks = rows.div_ceil(EMB_CHUNK);
        ensure!(self, pieces[0])(4 * chunks * width);
        ensure!(self, pieces[1])(4 * chunks * width);
        let (heads, conts) = (self.scratch.pieces[0].ptr, self.scratch.pieces[1].ptr);
        let dword = self.output(p.word.grad(), Dtype::F32, true);
        let blocks = chunks.div_ceil(4);
        let args = [
            Arg::Ptr(keys),
            Arg::Ptr(vals),
            Arg::Ptr(dsum),
            Arg::Ptr(dword),
            Arg::Ptr(heads),
            Arg::Ptr(conts),
            Arg::I32(n),
            Arg::I32(w),
        ];
        self.run(
            self.kernels.embedding_bwd_word_pieces,
            (blocks, 1, 1),
            128,
            &args,
        );
        let args = [
            Arg::Ptr(keys),
            Arg::Ptr(dword),
            Arg::Ptr(heads),
            Arg::Ptr(conts),
            Arg::I32(n),
            Arg::I32(w),
        ];
        self.run(
            self.kernels.embedding_bwd_word_combine,
            (blocks, 1, 1),
            128,
            &args,
        );

        // 4. Positions, and token types through per-position partial sums.
        assert!(seq <= MAX_GRID_YZ, "seq {seq} exceeds a grid dimension");
        ensure!(self, type_partials)(4 * seq * types * width);
        let partials = self.scratch.type_partials.ptr;
        let args = [
            Arg::Ptr(dsum),
            Arg::Ptr(self.iaddr(token_types)),
            Arg::Ptr(self.output(p.position.grad(), Dtype::F32, true)),
            Arg::Ptr(partials),
            Arg::I32(n),
            Arg::I32(int(seq, "seq")),
            Arg::I32(w),
            Arg::I32(types as i32),
        ];
        let grid = (width.div_ceil(128), seq, 1);
        self.run(self.kernels.embedding_bwd_pos_type, grid, 128, &args);
        let args = [
            Arg::Ptr(partials),
            Arg::Ptr(self.output(p.token_type.grad(), Dtype::F32, true)),
            Arg::I32(int(seq, "seq")),
            Arg::I32(w),
            Arg::I32(types as i32),
        ];
        let grid = ((types * width).div_ceil(128), 1, 1);
        self.run(self.kernels.embedding_bwd_type_reduce, grid, 128, &args);
    }

    fn linear_fwd(
        &mut self,
        x: Buf,
        w: Buf,
        b: Option<Buf>,
        y: Buf,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    ) {
        self.bind();
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(inp > 0, "linear_fwd: no inputs");
        assert!(x.len >= rows * inp && w.len >= out * inp && y.len >= rows * out);
        assert!(
            b.is_none_or(|b| b.len >= out),
            "bias shorter than the output"
        );
        let wa = self.input(w, Dtype::Bf16);
        let xb = self.input(x, Dtype::Bf16);
        let mut g = Gemm {
            m: out as u64,
            n: rows as u64,
            k: inp as u64,
            trans_a: true,
            trans_b: false,
            lda: inp as u64,
            ldb: inp as u64,
            ldd: out as u64,
            out: Dtype::Bf16,
            bias: false,
        };
        match gelu_pre {
            None => {
                // A one-column output (a score per row) stays f32, as a loss reads it.
                g.out = if out == 1 { Dtype::F32 } else { Dtype::Bf16 };
                let bias = b.map(|b| self.bias_operand(b.prefix(out), g.out));
                g.bias = bias.is_some();
                let d = self.output(y, g.out, false);
                self.gemm(g, wa, xb, d, 0.0, bias);
            }
            Some(pre) => {
                assert!(pre.len >= rows * out);
                let d = self.output(pre, Dtype::Bf16, false);
                self.gemm(g, wa, xb, d, 0.0, None);
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

    fn linear_bwd(
        &mut self,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        dw: Buf,
        db: Option<Buf>,
        gelu_pre: Option<Buf>,
        dims: LinearDims,
    ) {
        self.bind();
        let LinearDims { rows, inp, out } = dims;
        if rows == 0 || out == 0 {
            return;
        }
        assert!(inp > 0, "linear_bwd: no inputs");
        assert!(x.len >= rows * inp && w.len >= out * inp && dy.len >= rows * out);
        assert!(dw.len >= out * inp && db.is_none_or(|b| b.len >= out));
        assert!(dx.is_none_or(|d| d.len >= rows * inp));
        let dbias = db.map_or(0, |d| self.output(d, Dtype::F32, true));
        let dy_b = match gelu_pre {
            Some(pre) => {
                assert!(pre.len >= rows * out);
                let dyp = self.input(dy, Dtype::Bf16);
                let prep = self.input(pre, Dtype::Bf16);
                let dpre = self.output(pre.grad(), Dtype::Bf16, false);
                self.bias_grad(dyp, prep, dpre, dbias, rows, out);
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
                self.bias_grad(dyp, 0, 0, dbias, rows, out);
                dyp
            }
        };
        if let Some(dx) = dx {
            let wa = self.input(w, Dtype::Bf16);
            let d = self.output(dx, Dtype::Bf16, true);
            let g = Gemm {
                m: inp as u64,
                n: rows as u64,
                k: out as u64,
                trans_a: false,
                trans_b: false,
                lda: inp as u64,
                ldb: out as u64,
                ldd: inp as u64,
                out: Dtype::Bf16,
                bias: false,
            };
            self.gemm(g, wa, dy_b, d, 1.0, None);
        }
        let xa = self.input(x, Dtype::Bf16);
        let d = self.output(dw, Dtype::F32, true);
        let g = Gemm {
            m: inp as u64,
            n: out as u64,
            k: rows as u64,
            trans_a: false,
            trans_b: true,
            lda: inp as u64,
            ldb: out as u64,
            ldd: inp as u64,
            out: Dtype::F32,
            bias: false,
        };
        self.gemm(g, xa, dy_b, d, 1.0, None);
    }

    fn layernorm_fwd(
        &mut self,
        x: Buf,
        residual: Option<Buf>,
        p: &LayerNormParams,
        y: Buf,
        saved: LayerNormSaved,
        rows: usize,
        width: usize,
    ) {
        self.bind();
        let k = width_kernel(
            self.kernels.layernorm_residual_fwd_w256,
            self.kernels.layernorm_residual_fwd_w1024,
            width,
            "layernorm_fwd",
        );
        if rows == 0 {
            return;
        }
        let n = rows * width;
        assert!(x.len >= n && y.len >= n && saved.xhat.len >= n && saved.rstd.len >= rows);
        assert!(residual.is_none_or(|r| r.len >= n));
        assert!(p.gain.len >= width && p.bias.len >= width);
        let args = [
            Arg::Ptr(self.input(x, Dtype::Bf16)),
            Arg::Ptr(residual.map_or(0, |r| self.input(r, Dtype::Bf16))),
            Arg::Ptr(self.input(p.gain, Dtype::F32)),
            Arg::Ptr(self.input(p.bias, Dtype::F32)),
            Arg::Ptr(self.output(y, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.xhat, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.rstd, Dtype::F32, false)),
            Arg::Ptr(0),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(width, "width")),
            Arg::F32(p.eps),
            Arg::Ptr(0),
        ];
        self.run(k, (self.ln_grid(rows), 1, 1), LN_THREADS, &args);
    }

    fn layernorm_bwd(
        &mut self,
        dy: Buf,
        p: &LayerNormParams,
        saved: LayerNormSaved,
        dx: Buf,
        dresidual: Option<Buf>,
        rows: usize,
        width: usize,
    ) {
        self.bind();
        let k = width_kernel(
            self.kernels.layernorm_residual_bwd_w256,
            self.kernels.layernorm_residual_bwd_w1024,
            width,
            "layernorm_bwd",
        );
        if rows == 0 {
            return;
        }
        let n = rows * width;
        assert!(dy.len >= n && dx.len >= n && saved.xhat.len >= n && saved.rstd.len >= rows);
        assert!(dresidual.is_none_or(|r| r.len >= n));
        assert!(p.gain.len >= width && p.bias.len >= width);
        let grid = self.ln_grid(rows);
        ensure!(self, partials)(4 * grid * 2 * width);
        let args = [
            Arg::Ptr(self.input(dy, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.xhat, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.rstd, Dtype::F32)),
            Arg::Ptr(self.input(p.gain, Dtype::F32)),
            Arg::Ptr(self.output(dx, Dtype::Bf16, true)),
            Arg::Ptr(dresidual.map_or(0, |r| self.output(r, Dtype::Bf16, true))),
            Arg::Ptr(self.output(p.gain.grad(), Dtype::F32, true)),
            Arg::Ptr(self.output(p.bias.grad(), Dtype::F32, true)),
            Arg::Ptr(self.scratch.partials.ptr),
            Arg::Ptr(self.scratch.counters.ptr),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(width, "width")),
            Arg::I32(1),
            Arg::Ptr(0),
        ];
        self.run(k, (grid, 1, 1), LN_THREADS, &args);
    }

    fn attention_fwd(
        &mut self,
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    ) {
        self.bind();
        let k = self.attention_kernels(dims).0;
        let AttentionDims {
            batch, seq, heads, ..
        } = dims;
        let (tokens, h) = (batch * seq, dims.hidden());
        if tokens == 0 {
            return;
        }
        self.check_attention(qkv, key_mask, ctx, probs, dims);
        let qkv_p = self.input(qkv, Dtype::Bf16);
        let ctx_p = self.output(ctx.prefix(tokens * h), Dtype::Bf16, false);
        let lse = self.output(probs.prefix(batch * heads * seq), Dtype::F32, false);
        assert!(
            qkv_p.is_multiple_of(16) && ctx_p.is_multiple_of(16),
            "attention needs 16-byte aligned buffers"
        );
        let [p, s, site, dev_seed] = self.drop_args(dropout);
        let args = [
            Arg::Ptr(qkv_p),
            Arg::Ptr(self.iaddr(key_mask)),
            Arg::Ptr(ctx_p),
            Arg::Ptr(lse),
            Arg::I32(int(seq, "seq")),
            Arg::I32(int(heads, "heads")),
            p,
            s,
            site,
            dev_seed,
        ];
        self.run(
            k,
            (seq.div_ceil(ATT_TILE), heads, batch),
            ATT_THREADS,
            &args,
        );
    }

    fn attention_bwd(
        &mut self,
        qkv: Buf,
        key_mask: IBuf,
        ctx: Buf,
        probs: Buf,
        dctx: Buf,
        dqkv: Buf,
        dims: AttentionDims,
        dropout: Option<Dropout>,
    ) {
        self.bind();
        let (_, dq, dkdv) = self.attention_kernels(dims);
        let AttentionDims {
            batch, seq, heads, ..
        } = dims;
        let (tokens, h) = (batch * seq, dims.hidden());
        if tokens == 0 {
            return;
        }
        self.check_attention(qkv, key_mask, ctx, probs, dims);
        assert!(dctx.len >= tokens * h && dqkv.len >= tokens * 3 * h);
        let stats = batch * heads * seq;
        let qkv_p = self.input(qkv, Dtype::Bf16);
        let ctx_p = self.input(ctx, Dtype::Bf16);
        let dctx_p = self.input(dctx, Dtype::Bf16);
        let lse = self.input(probs.prefix(stats), Dtype::F32);
        let delta = self.output(probs.grad().prefix(stats), Dtype::F32, false);
        let dqkv_p = self.output(dqkv.prefix(tokens * 3 * h), Dtype::Bf16, true);
        assert!(
            [qkv_p, ctx_p, dctx_p, dqkv_p]
                .iter()
                .all(|a| a.is_multiple_of(16)),
            "attention needs 16-byte aligned buffers"
        );
        let mask = self.iaddr(key_mask);
        let (seq_i, heads_i) = (int(seq, "seq"), int(heads, "heads"));
        let [p, s, site, dev_seed] = self.drop_args(dropout);
        let grid = (seq.div_ceil(ATT_TILE), heads, batch);
        let args = [
            Arg::Ptr(qkv_p),
            Arg::Ptr(mask),
            Arg::Ptr(ctx_p),
            Arg::Ptr(dctx_p),
            Arg::Ptr(lse),
            Arg::Ptr(delta),
            Arg::Ptr(dqkv_p),
            Arg::I32(seq_i),
            Arg::I32(heads_i),
            Arg::I32(1),
            p,
            s,
            site,
            dev_seed,
        ];
        self.run(dq, grid, ATT_THREADS, &args);
        let args = [
            Arg::Ptr(qkv_p),
            Arg::Ptr(mask),
            Arg::Ptr(dctx_p),
            Arg::Ptr(lse),
            Arg::Ptr(delta),
            Arg::Ptr(dqkv_p),
            Arg::I32(seq_i),
            Arg::I32(heads_i),
            Arg::I32(1),
            p,
            s,
            site,
            dev_seed,
        ];
        self.run(dkdv, grid, ATT_THREADS, &args);
    }

    fn dropout_fwd(&mut self, x: Buf, y: Buf, dropout: Dropout) {
        self.bind();
        let n = y.len;
        assert!(x.len >= n, "dropout_fwd: {x:?} is shorter than {y:?}");
        if n == 0 {
            return;
        }
        let [p, s, site, dev_seed] = self.drop_args(Some(dropout));
        let args = [
            Arg::Ptr(self.input(x, Dtype::Bf16)),
            Arg::Ptr(self.output(y, Dtype::Bf16, false)),
            Arg::U64(n as u64),
            p,
            s,
            site,
            dev_seed,
        ];
        let blocks = n.div_ceil(4).div_ceil(256).min(8 * self.sms);
        self.run(self.kernels.dropout_fwd, (blocks, 1, 1), 256, &args);
    }

    fn dropout_bwd(&mut self, dy: Buf, dx: Buf, dropout: Dropout) {
        self.bind();
        let n = dx.len;
        assert!(dy.len >= n, "dropout_bwd: {dy:?} is shorter than {dx:?}");
        if n == 0 {
            return;
        }
        let [p, s, site, dev_seed] = self.drop_args(Some(dropout));
        let args = [
            Arg::Ptr(self.input(dy, Dtype::Bf16)),
            Arg::Ptr(self.output(dx, Dtype::Bf16, true)),
            Arg::U64(n as u64),
            p,
            s,
            site,
            Arg::I32(1),
            dev_seed,
        ];
        let blocks = n.div_ceil(4).div_ceil(256).min(8 * self.sms);
        self.run(self.kernels.dropout_bwd, (blocks, 1, 1), 256, &args);
    }

    fn gather_rows(&mut self, x: Buf, rows: IBuf, out: Buf, width: usize) {
        self.bind();
        let n = rows.len;
        if n == 0 || width == 0 {
            return;
        }
        assert!(out.len >= n * width, "gather_rows: {out:?} is too short");
        let args = [
            Arg::Ptr(self.input(x, Dtype::Bf16)),
            Arg::Ptr(self.iaddr(rows)),
            Arg::Ptr(self.output(out, Dtype::Bf16, false)),
            Arg::I32(int(n, "rows")),
            Arg::I32(int(width, "width")),
            Arg::Ptr(0),
        ];
        let grid = (width.div_ceil(1024), n.min(MAX_GRID_YZ), 1);
        self.run(self.kernels.gather_rows_fwd, grid, 128, &args);
    }

    fn gather_rows_bwd(&mut self, dout: Buf, rows: IBuf, dx: Buf, width: usize) {
        self.bind();
        let n = rows.len;
        if n == 0 || width == 0 {
            return;
        }
        assert!(
            dout.len >= n * width,
            "gather_rows_bwd: {dout:?} is too short"
        );
        let args = [
            Arg::Ptr(self.input(dout, Dtype::Bf16)),
            Arg::Ptr(self.iaddr(rows)),
            Arg::Ptr(self.output(dx, Dtype::Bf16, true)),
            Arg::I32(int(n, "rows")),
            Arg::I32(int(width, "width")),
            Arg::I32(1),
            Arg::Ptr(0),
        ];
        let grid = (width.div_ceil(1024), n.min(MAX_GRID_YZ), 1);
        self.run(self.kernels.gather_rows_bwd, grid, 128, &args);
    }

    fn softmax_xent(
        &mut self,
        logits: Buf,
        targets: IBuf,
        row_loss: Buf,
        grad_scale: f32,
        pick: Option<(Pick, IBuf)>,
        rows: usize,
        vocab: usize,
    ) {
        self.bind();
        if rows == 0 {
            return;
        }
        assert!(
            vocab > 0 && logits.len >= rows * vocab,
            "softmax_xent: logits too short"
        );
        assert!(targets.len >= rows && row_loss.len >= rows);
        let (mode, seed, picks) = match pick {
            None => (0, 0, 0),
            Some((mode, picks)) => {
                assert!(picks.len >= rows, "softmax_xent: picks too short");
                let addr = self.iaddr(picks);
                match mode {
                    Pick::Argmax => (1, 0, addr),
                    Pick::Gumbel { seed } => (2, seed, addr),
                }
            }
        };
        let dev_seed = match self.step {
            Some(step) if mode == 2 => {
                assert_eq!(
                    seed, step.sample_seed,
                    "softmax_xent: not the step's Gumbel seed"
                );
                self.step_memory.ptr + STEP_SAMPLE_SEED
            }
            _ => 0,
        };
        let v = int(vocab, "vocab");
        let args = [
            Arg::Ptr(self.input(logits, Dtype::Bf16)),
            Arg::Ptr(self.output(logits.grad(), Dtype::Bf16, false)),
            Arg::I32(v),
            Arg::Ptr(self.iaddr(targets)),
            Arg::Ptr(self.output(row_loss.prefix(rows), Dtype::F32, false)),
            Arg::F32(grad_scale),
            Arg::I32(mode),
            Arg::U64(seed),
            Arg::Ptr(picks),
            Arg::I32(int(rows, "rows")),
            Arg::I32(v),
            Arg::Ptr(0),
            Arg::Ptr(0),
            Arg::Ptr(dev_seed),
        ];
        self.run(
            self.kernels.softmax_xent_fwd_bwd,
            (rows, 1, 1),
            SX_THREADS,
            &args,
        );
    }

    fn replace_tokens(
        &mut self,
        original: IBuf,
        positions: IBuf,
        picks: IBuf,
        corrupted: IBuf,
        is_replaced: Buf,
    ) {
        self.bind();
        let (tokens, n) = (original.len, positions.len);
        assert_eq!(corrupted.len, tokens, "replace_tokens: corrupted ids");
        assert_eq!(is_replaced.len, tokens, "replace_tokens: labels");
        assert!(picks.len >= n, "replace_tokens: picks too short");
        let args = [
            Arg::Ptr(self.iaddr(original)),
            Arg::Ptr(self.iaddr(positions)),
            Arg::Ptr(self.iaddr(picks)),
            Arg::Ptr(self.iaddr(corrupted)),
            Arg::Ptr(self.output(is_replaced, Dtype::F32, false)),
            Arg::I32(int(tokens, "tokens")),
            Arg::I32(int(n, "positions")),
            Arg::Ptr(0),
        ];
        self.run(self.kernels.replace_tokens, (1, 1, 1), 1024, &args);
    }

    fn bce_head(
        &mut self,
        h: Buf,
        w: Buf,
        b: Buf,
        labels: Buf,
        mask: IBuf,
        logits: Buf,
        row_loss: Buf,
        grad_scale: f32,
    ) {
        self.bind();
        let (tokens, width) = (row_loss.len, w.len);
        let k = width_kernel(
            self.kernels.sigmoid_bce_head_fwd_bwd_w256,
            self.kernels.sigmoid_bce_head_fwd_bwd_w1024,
            width,
            "bce_head",
        );
        if tokens == 0 {
            return;
        }
        assert_eq!(b.len, 1, "bce_head: one bias");
        assert!(h.len >= tokens * width && logits.len >= tokens);
        assert!(labels.len >= tokens && mask.len >= tokens);
        int(tokens * width, "tokens·hidden");
        let grid = tokens.div_ceil(BCE_WARPS).min(2 * self.sms);
        ensure!(self, partials)(4 * grid * (width + 1));
        let h = h.prefix(tokens * width);
        let args = [
            Arg::Ptr(self.input(h, Dtype::Bf16)),
            Arg::Ptr(self.input(w, Dtype::F32)),
            Arg::Ptr(self.input(b, Dtype::F32)),
            Arg::Ptr(self.input(labels, Dtype::F32)),
            Arg::Ptr(self.iaddr(mask)),
            Arg::Ptr(self.output(logits.prefix(tokens), Dtype::F32, false)),
            Arg::Ptr(self.output(row_loss, Dtype::F32, false)),
            Arg::Ptr(self.output(h.grad(), Dtype::Bf16, true)),
            Arg::Ptr(self.output(w.grad(), Dtype::F32, true)),
            Arg::Ptr(self.output(b.grad(), Dtype::F32, true)),
            Arg::Ptr(self.scratch.partials.ptr),
            Arg::Ptr(self.scratch.counters.ptr),
            Arg::F32(grad_scale),
            Arg::I32(int(tokens, "tokens")),
            Arg::I32(int(width, "hidden")),
            Arg::I32(1),
            Arg::Ptr(0),
        ];
        self.run(k, (grid, 1, 1), BCE_THREADS, &args);
    }

    fn grad_norm(&mut self) -> f32 {
        self.bind();
        if self.sizes.params == 0 {
            return 0.0;
        }
        self.launch_grad_norm(f32::INFINITY);
        self.last_grad_norm()
    }

    fn adamw(&mut self, params: Buf, grad_scale: f32, h: &AdamW) {
        self.bind();
        self.launch_adamw(params, grad_scale, h, 0);
    }

    fn optimizer_step(&mut self, groups: &[(Buf, AdamW)], max_norm: f32) {
        self.bind();
        if self.sizes.params == 0 {
            return;
        }
        // The clipping factor stays on the device (NaN for a non-finite norm: no update).
        let clip = self.launch_grad_norm(max_norm) + 4;
        for (params, h) in groups {
            self.launch_adamw(*params, 1.0, h, clip);
        }
    }

    fn last_grad_norm(&self) -> f32 {
        self.bind();
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

    fn begin_step(&mut self, scalars: StepScalars, recording: Option<u64>) -> bool {
        self.bind();
        assert!(self.step.is_none(), "begin_step: a step is already open");
        let mut host = [0u8; STEP_BYTES];
        host[STEP_DROPOUT_SEED as usize..][..8]
            .copy_from_slice(&scalars.dropout_seed.to_le_bytes());
        host[STEP_SAMPLE_SEED as usize..][..8].copy_from_slice(&scalars.sample_seed.to_le_bytes());
        host[STEP_LR as usize..][..4].copy_from_slice(&scalars.lr.to_le_bytes());
        // SAFETY: the step memory holds STEP_BYTES; pageable copies are staged before returning.
        unsafe {
            result::memcpy_htod_async(self.step_memory.ptr, &host[..], self.stream.cu_stream())
        }
        .unwrap_or_else(|e| panic!("CUDA: writing the step's values: {e}"));
        let plan = self.graphs.plan(recording);
        match plan.unwrap_or_else(|e| panic!("CUDA: {e}")) {
            Plan::Replay => return true,
            Plan::Record(fp) => {
                StepGraphs::begin_capture(&self.stream).unwrap_or_else(|e| panic!("CUDA: {e}"));
                self.last_kernel.set("(recording the training step)");
                self.recording = Some(fp);
            }
            Plan::Run => {}
        }
        self.step = Some(scalars);
        false
    }

    fn end_step(&mut self) {
        self.bind();
        self.step = None;
        if let Some(fp) = self.recording.take() {
            self.graphs
                .finish_capture(&self.stream, fp)
                .unwrap_or_else(|e| panic!("CUDA: {e}"));
            self.last_kernel.set("(the recorded training step)");
        }
    }
}

impl CudaBackend {
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
            Arg::Ptr(self.scratch.counters.ptr),
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

    /// Launches `adamw` on `params`; `dev_clip` (0 for none) is a device factor on the gradient.
    /// Inside a step the learning rate is read from the step memory.
    fn launch_adamw(&mut self, params: Buf, grad_scale: f32, h: &AdamW, dev_clip: u64) {
        assert_eq!(params.space, Space::Param, "adamw updates parameters");
        let n = params.len;
        if n == 0 {
            return;
        }
        let (lr, dev_lr) = match self.step {
            Some(step) => {
                assert_eq!(h.lr, step.lr, "adamw: not the step's learning rate");
                (1.0, self.step_memory.ptr + STEP_LR)
            }
            None => (h.lr, 0),
        };
        let args = [
            Arg::Ptr(self.addr(params)),
            Arg::Ptr(self.addr(params.in_space(Space::Grad))),
            Arg::Ptr(self.addr(params.in_space(Space::AdamM))),
            Arg::Ptr(self.addr(params.in_space(Space::AdamV))),
            Arg::Ptr(self.bf16_param(params)),
            Arg::U64(n as u64),
            Arg::F32(lr),
            Arg::F32(h.beta1),
            Arg::F32(h.beta2),
            Arg::F32(h.eps),
            Arg::F32(h.weight_decay),
            Arg::F32(grad_scale),
            Arg::Ptr(dev_lr),
            Arg::Ptr(dev_clip),
        ];
        let blocks = n.div_ceil(4).div_ceil(256).clamp(1, 4 * self.sms);
        self.run(self.kernels.adamw, (blocks, 1, 1), 256, &args);
    }

    /// A dropout's kernel arguments: p, seed, site and the device seed that replaces the seed
    /// inside a step (null outside one).
    fn drop_args(&self, d: Option<Dropout>) -> [Arg; 4] {
        let d = d.unwrap_or(Dropout {
            p: 0.0,
            seed: 0,
            site: 0,
        });
        let dev_seed = match self.step {
            Some(step) if d.p > 0.0 => {
                assert_eq!(d.seed, step.dropout_seed, "dropout: not the step's seed");
                self.step_memory.ptr + STEP_DROPOUT_SEED
            }
            _ => 0,
        };
        [
            Arg::F32(d.p),
            Arg::U64(d.seed),
            Arg::U32(d.site),
            Arg::Ptr(dev_seed),
        ]
    }

    /// The forward, dq and dk/dv kernels for a head size.
    fn attention_kernels(&self, d: AttentionDims) -> (Kernel, Kernel, Kernel) {
        let k = &self.kernels;
        match d.head_dim {
            16 => (
                k.attention_fwd_d16,
                k.attention_bwd_dq_d16,
                k.attention_bwd_dkdv_d16,
            ),
            32 => (
                k.attention_fwd_d32,
                k.attention_bwd_dq_d32,
                k.attention_bwd_dkdv_d32,
            ),
            64 => (
                k.attention_fwd_d64,
                k.attention_bwd_dq_d64,
                k.attention_bwd_dkdv_d64,
            ),
            other => panic!(
                "attention: head size {other} is not supported by the CUDA kernels (16, 32 or 64)"
            ),
        }
    }

    fn check_attention(&self, qkv: Buf, key_mask: IBuf, ctx: Buf, probs: Buf, d: AttentionDims) {
        let (tokens, h) = (d.batch * d.seq, d.hidden());
        assert!(
            h.is_multiple_of(8),
            "attention: hidden size {h} is not a multiple of 8"
        );
        assert!(
            d.heads <= MAX_GRID_YZ && d.batch <= MAX_GRID_YZ,
            "attention: grid too large"
        );
        int(tokens * 3 * h, "batch·seq·3·hidden");
        assert!(
            qkv.len >= tokens * 3 * h && ctx.len >= tokens * h,
            "attention: buffers too short"
        );
        assert!(
            probs.len >= d.batch * d.heads * d.seq,
            "attention: no room for the row statistics"
        );
        assert!(key_mask.len >= tokens, "attention: key mask too short");
    }
}
