//! The hand-written kernels: the fatbins build.rs embeds, loaded as one module per `kernels/*.cu`
//! file, their entry points resolved once by name, and a launch that allocates nothing.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_void, CString};

use cudarc::driver::{result, sys, DriverError};

use super::clock::KernelClock;
use super::launch_args::MAX_GRID_YZ;
use super::CudaError;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// One kernel argument, passed by value as the kernel declares it (`u64` for pointers and
/// `unsigned long long`, 4 bytes for `int`, `unsigned` and `float`).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer (0 for a null pointer).
    Ptr(u64),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
}

/// The most arguments any kernel takes.
const MAX_ARGS: usize = 20;

/// A resolved entry point.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Null only in the host tests' table ([`Kernels::declared`]), whose launches stop after
    /// their checks.
    pub f: sys::CUfunction,
    pub name: &'static str,
    /// The byte size of each parameter as the driver reports it (None where the driver cannot
    /// say), or as the PTX declares it in the host tests' table: every launch checks its
    /// arguments against it, since a wrong count or size would otherwise be read as garbage
    /// without any error.
    params: Option<([u8; MAX_ARGS], usize)>,
}

impl Arg {
    fn size(self) -> usize {
        match self {
            Arg::Ptr(_) | Arg::U64(_) => 8,
            Arg::I32(_) | Arg::U32(_) | Arg::F32(_) => 4,
        }
    }
}

/// The sizes of `f`'s parameters, from cuFuncGetParamInfo (CUDA 12.4 and newer drivers).
fn param_sizes(f: sys::CUfunction) -> Option<([u8; MAX_ARGS], usize)> {
    let mut sizes = [0u8; MAX_ARGS];
    for (i, size) in sizes.iter_mut().enumerate() {
        let (mut offset, mut bytes) = (0usize, 0usize);
        // SAFETY: `f` is a resolved function; the two outputs are valid for writes.
        let r = unsafe { sys::cuFuncGetParamInfo(f, i, &mut offset, &mut bytes) };
        match r {
            sys::CUresult::CUDA_SUCCESS => *size = u8::try_from(bytes).ok()?,
            // Past the last parameter.
            sys::CUresult::CUDA_ERROR_INVALID_VALUE => return Some((sizes, i)),
            _ => return None,
        }
    }
    None
}

/// The loaded modules, unloaded on drop.
struct Modules(Vec<sys::CUmodule>);

impl Drop for Modules {
    fn drop(&mut self) {
        for &m in &self.0 {
            // SAFETY: loaded by `Kernels::load` and unloaded only here; nothing launches after the
            // backend (which owns this) is dropped.
            let _ = unsafe { result::module::unload(m) };
        }
    }
}

macro_rules! kernel_table {
    ($($field:ident),* $(,)?) => {
        /// Every entry point the backend launches, resolved when the backend is created, so that a
        /// missing kernel fails there and not in the middle of a step.
        pub struct Kernels {
            $(pub $field: Kernel,)*
            _modules: Modules,
        }

        impl Kernels {
            /// Loads every embedded fatbin into the current context and resolves the entry points.
            pub fn load() -> Result<Self, CudaError> {
                let mut modules = Modules(Vec::new());
                let mut by_file = HashMap::new();
                for &(stem, image) in embedded::KERNELS {
                    // SAFETY: `image` is a complete fatbin that build.rs embedded with 16-byte
                    // alignment; the driver copies what it needs before returning.
                    let m = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                        .map_err(|e| driver("loading the kernels of", stem, e))?;
                    modules.0.push(m);
                    by_file.insert(stem, m);
                }
                let resolve = |name: &'static str| -> Result<Kernel, CudaError> {
                    let file = embedded::KERNEL_FUNCTIONS
                        .iter()
                        .find(|(_, names)| names.contains(&name))
                        .map(|(stem, _)| *stem);
                    let candidates: Vec<sys::CUmodule> = match file.and_then(|f| by_file.get(f)) {
                        Some(&m) => vec![m],
                        None => modules.0.clone(),
                    };
                    for m in candidates {
                        let c_name = CString::new(name).expect("kernel names have no NUL");
                        // SAFETY: `m` is a loaded module.
                        if let Ok(f) = unsafe { result::module::get_function(m, c_name) } {
                            let params = param_sizes(f);
                            return Ok(Kernel { f, name, params });
                        }
                    }
                    Err(CudaError::Unsupported(format!(
                        "kernel `{name}` is not in the embedded fatbins (rebuild with --features cuda)"
                    )))
                };
                Ok(Kernels {
                    $($field: resolve(stringify!($field))?,)*
                    _modules: modules,
                })
            }

            /// The host tests' table: no module is loaded, every launch stops after checking its
            /// arguments against `params(name)`, the parameter sizes the kernel declares.
            #[cfg(test)]
            pub fn declared(params: impl Fn(&str) -> Vec<u8>) -> Self {
                let kernel = |name: &'static str| {
                    let declared = params(name);
                    let mut sizes = [0u8; MAX_ARGS];
                    sizes[..declared.len()].copy_from_slice(&declared);
                    let params = Some((sizes, declared.len()));
                    Kernel { f: std::ptr::null_mut(), name, params }
                };
                Kernels {
                    $($field: kernel(stringify!($field)),)*
                    _modules: Modules(Vec::new()),
                }
            }

            /// Every kernel of the table, by name.
            #[cfg(test)]
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

kernel_table!(
    accumulate_f32,
    adamw,
    params_to_bf16,
    attention_fwd_d16,
    attention_fwd_d32,
    attention_fwd_d64,
    attention_bwd_dq_d16,
    attention_bwd_dq_d32,
    attention_bwd_dq_d64,
    attention_bwd_dkdv_d16,
    attention_bwd_dkdv_d32,
    attention_bwd_dkdv_d64,
    bias_gelu_fwd,
    bias_gelu_bwd,
    bias_bwd,
    dropout_fwd,
    dropout_bwd,
    embedding_fwd_w256,
    embedding_fwd_w1024,
    embedding_bwd_layernorm_w256,
    embedding_bwd_layernorm_w1024,
    embedding_sort_hist,
    embedding_sort_scan,
    embedding_sort_scatter,
    embedding_bwd_word_pieces,
    embedding_bwd_word_combine,
    embedding_bwd_pos_type,
    embedding_bwd_type_reduce,
    gather_rows_fwd,
    gather_rows_bwd,
    grad_norm,
    layernorm_residual_fwd_w256,
    layernorm_residual_fwd_w1024,
    layernorm_residual_bwd_w256,
    layernorm_residual_bwd_w1024,
    sigmoid_bce_head_fwd_bwd_w256,
    sigmoid_bce_head_fwd_bwd_w1024,
    softmax_xent_fwd_bwd,
    replace_tokens,
    loss_sums,
    sum_partial_rows,
);

/// A driver error with what was being done.
pub fn driver(doing: &str, what: &str, e: DriverError) -> CudaError {
    CudaError::Driver {
        what: format!("{doing} {what}"),
        message: e.to_string(),
    }
}

/// Launches `k` on `stream` with `block` threads per block and no dynamic shared memory. A grid
/// with a zero dimension launches nothing (there is no work). Arguments that do not match the
/// kernel's parameters in number or size are refused before the launch.
///
/// # Safety
/// Every pointer must address device memory the kernel may touch for this launch shape.
pub unsafe fn launch(
    stream: sys::CUstream,
    k: Kernel,
    grid: (u32, u32, u32),
    block: u32,
    args: &[Arg],
) -> Result<(), CudaError> {
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    if args.len() > MAX_ARGS {
        return Err(CudaError::Argument(format!(
            "{}: {} arguments, more than the {MAX_ARGS} a launch passes",
            k.name,
            args.len()
        )));
    }
    if let Some((declared, count)) = k.params {
        // Compared without allocating: a launch allocates nothing unless it fails.
        let matches = args.len() == count
            && args
                .iter()
                .zip(&declared)
                .all(|(a, &b)| a.size() == b as usize);
        if !matches {
            return Err(CudaError::Argument(format!(
                "{}: arguments of sizes {:?} passed to parameters of sizes {:?}",
                k.name,
                args.iter().map(|a| a.size()).collect::<Vec<_>>(),
                &declared[..count]
            )));
        }
    }
    let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
    for (p, a) in params.iter_mut().zip(args) {
        *p = match a {
            Arg::Ptr(v) | Arg::U64(v) => v as *const u64 as *mut c_void,
            Arg::I32(v) => v as *const i32 as *mut c_void,
            Arg::U32(v) => v as *const u32 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
        };
    }
    if k.f.is_null() {
        // Only the host tests' table has no functions: note what was checked, launch nothing.
        #[cfg(test)]
        tests::checked(k.name);
        return Ok(());
    }
    // The driver reads every argument through these pointers before returning, while `args` is
    // still borrowed.
    result::launch_kernel(
        k.f,
        grid,
        (block, 1, 1),
        0,
        stream,
        &mut params[..args.len()],
    )
    .map_err(|e| driver("launching kernel", k.name, e))
}

/// The largest grid dimension x.
const MAX_GRID_X: usize = (1 << 31) - 1;

/// What a launch needs besides its arguments: the kernels, the stream, the device's
/// multiprocessor count (which sizes the grids), where to note the kernel launched, and the
/// clock that times each launch while `electra bench` runs one. The engine's backend and the C
/// ABI's device ops each make one per call.
pub struct Launcher<'a> {
    pub kernels: &'a Kernels,
    pub stream: sys::CUstream,
    pub sms: usize,
    /// Synchronise after each launch (`ELECTRA_CUDA_SYNC=1`), which names a faulting kernel.
    pub sync_each_launch: bool,
    pub last_kernel: &'a Cell<&'static str>,
    pub clock: Option<&'a KernelClock>,
}

impl Launcher<'_> {
    /// Launches `k` on the stream (see [`launch`]); a grid past the device's limits is refused.
    ///
    /// # Safety
    /// Every pointer in `args` must address device memory the kernel may touch for this shape:
    /// the launch functions beside the kernels check the sizes they are given, their callers
    /// that the memory holds them.
    pub unsafe fn run(
        &self,
        k: Kernel,
        grid: (usize, usize, usize),
        block: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        self.last_kernel.set(k.name);
        if grid.0 > MAX_GRID_X || grid.1 > MAX_GRID_YZ || grid.2 > MAX_GRID_YZ {
            return Err(CudaError::Argument(format!(
                "{}: grid {grid:?} exceeds the device's limits ({MAX_GRID_X}, {MAX_GRID_YZ}, \
                 {MAX_GRID_YZ})",
                k.name
            )));
        }
        let grid = (grid.0 as u32, grid.1 as u32, grid.2 as u32);
        match self.clock {
            Some(clock) => clock.time(
                self.stream,
                || k.name.to_string(),
                || launch(self.stream, k, grid, block, args),
            )?,
            None => launch(self.stream, k, grid, block, args)?,
        }
        if self.sync_each_launch {
            result::stream::synchronize(self.stream)
                .map_err(|e| driver("running kernel", k.name, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
