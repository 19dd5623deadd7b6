//! The errors of the CUDA backend, shared with the stub that stands in for it in builds without
//! the `cuda` feature.

/// Why the CUDA backend could not be created, or what failed on the device.
///
/// Construction ([`CudaBackend::new`](super::CudaBackend::new)) returns it. The [`Backend`]
/// operations return `()`, so a failed launch panics at once with the kernel's name (a launch
/// error is a bug or a broken device, never a condition to recover from); errors that surface
/// later, asynchronously, are returned by [`CudaBackend::check`](super::CudaBackend::check).
///
/// [`Backend`]: crate::backend::Backend
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// The crate was built without the `cuda` feature.
    #[error(
        "built without CUDA: this build has only the CPU backend; rebuild with `--features cuda` \
         (nvcc from `bash scripts/install-cuda-compiler.sh`)"
    )]
    NotBuilt,
    /// No driver, no device, or not the requested one.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {what}: {message}")]
    Driver {
        /// The call or kernel.
        what: String,
        /// The driver's error.
        message: String,
    },
    /// A cuBLASLt call failed.
    #[error("cuBLASLt error in {what}: {message}")]
    Blas {
        /// The call.
        what: String,
        /// The library's status.
        message: String,
    },
    /// The device or a requested shape is outside what the kernels support.
    #[error("unsupported by the CUDA backend: {0}")]
    Unsupported(String),
    /// A launch argument the kernels cannot take: a misaligned address, a size past their 32-bit
    /// indexing or the grid's limits (the message names the argument). Checked before anything
    /// is launched.
    #[error("{0}")]
    Argument(String),
}

impl CudaError {
    /// Whether this only says that there is no CUDA device to use (none present, no driver, or a
    /// build without CUDA), as opposed to a failure on a device that is there.
    pub fn is_no_device(&self) -> bool {
        matches!(self, CudaError::NotBuilt | CudaError::NoDevice(_))
    }
}
