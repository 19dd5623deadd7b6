//! Stands in for the CUDA backend in builds without the `cuda` feature (the way candle swaps in a
//! dummy CUDA module): the same names, so that code choosing a device needs no `cfg`, and a
//! constructor that says the build has no CUDA. No value of [`CudaBackend`] can exist here, so its
//! operations are never reached.

use super::{
    AccumulateOp, AttentionOp, Backend, BceHeadOp, Buf, DropoutOp, EmbeddingOp, GatherRowsOp, IBuf,
    LayerNormOp, LinearOp, LossSumsOp, OptimizerStep, OutOfMemory, ParamGroup, ReplaceTokensOp,
    Sizes, SoftmaxXentOp, StepScalars, LOSS_SUMS,
};

#[path = "error.rs"]
mod error;
pub use error::CudaError;
#[path = "launch_args.rs"]
pub(crate) mod launch_args;
#[path = "tuning.rs"]
mod tuning;
pub use tuning::GemmTuning;

use launch_args::{
    AttentionBwdArgs, AttentionFwdArgs, BceHeadArgs, LayerNormBwdArgs, LayerNormFwdArgs,
    LinearBwdArgs, LinearFwdArgs, SoftmaxXentArgs,
};

/// Uninhabited: a build without CUDA has no CUDA backend value.
#[derive(Debug)]
enum Never {}

/// The CUDA backend's place in a build without the `cuda` feature: [`CudaBackend::new`] always
/// fails with [`CudaError::NotBuilt`].
#[derive(Debug)]
pub struct CudaBackend {
    never: Never,
}

impl CudaBackend {
    /// Always [`CudaError::NotBuilt`].
    pub fn device_count() -> Result<usize, CudaError> {
        Err(CudaError::NotBuilt)
    }

    /// Always [`CudaError::NotBuilt`].
    pub fn new(_ordinal: usize) -> Result<Self, CudaError> {
        Err(CudaError::NotBuilt)
    }

    /// Never reached (no value exists).
    pub fn check(&self) -> Result<(), CudaError> {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn device_name(&self) -> String {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn driver_version(&self) -> String {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn allocations(&self) -> u64 {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn set_step_recording(&mut self, _on: bool) {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn recorded_steps(&self) -> usize {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn start_kernel_clock(&mut self) {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn kernel_times(&mut self) -> Result<Vec<(String, u64, f64)>, CudaError> {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn device_memory_used(&self) -> Result<u64, CudaError> {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn gemm_tunings(&self) -> Vec<GemmTuning> {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn folded_bias_grads(&self) -> usize {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn bias_grad_epilogue_algorithms(
        &self,
        _dims: crate::backend::LinearDims,
        _dy_stride: usize,
    ) -> Result<usize, CudaError> {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn matrix_rate(&mut self) -> Result<(f64, usize), CudaError> {
        match self.never {}
    }

    /// Never reached (no value exists).
    pub fn join_nccl(&mut self, _comm: &dyn crate::comm::Collective) -> Result<(), CudaError> {
        match self.never {}
    }
}

/// Trait methods whose body can never run: no value of the stand-in exists.
macro_rules! unreachable_methods {
    ($(fn $name:ident($self:ty $(, $arg:ty)*) $(-> $ret:ty)?;)*) => {$(
        fn $name(self: $self $(, _: $arg)*) $(-> $ret)? {
            match self.never {}
        }
    )*};
}

impl Backend for CudaBackend {
    unreachable_methods! {
        fn name(&Self) -> &'static str;
        fn reserve(&mut Self, Sizes) -> Result<(), OutOfMemory>;
        fn sizes(&Self) -> Sizes;
        fn write(&mut Self, Buf, &[f32]);
        fn read(&Self, Buf, &mut [f32]);
        fn write_ints(&mut Self, IBuf, &[u32]);
        fn read_ints(&Self, IBuf, &mut [u32]);
        fn fill(&mut Self, Buf, f32);
        fn embedding_fwd(&mut Self, &EmbeddingOp);
        fn embedding_bwd(&mut Self, &EmbeddingOp);
        fn linear_fwd(&mut Self, &LinearOp);
        fn linear_bwd(&mut Self, &LinearOp);
        fn layernorm_fwd(&mut Self, &LayerNormOp);
        fn layernorm_bwd(&mut Self, &LayerNormOp);
        fn attention_fwd(&mut Self, &AttentionOp);
        fn attention_bwd(&mut Self, &AttentionOp);
        fn dropout_fwd(&mut Self, &DropoutOp);
        fn dropout_bwd(&mut Self, &DropoutOp);
        fn gather_rows(&mut Self, &GatherRowsOp);
        fn gather_rows_bwd(&mut Self, &GatherRowsOp);
        fn softmax_xent(&mut Self, &SoftmaxXentOp);
        fn replace_tokens(&mut Self, &ReplaceTokensOp);
        fn bce_head(&mut Self, &BceHeadOp);
        fn accumulate(&mut Self, &AccumulateOp);
        fn loss_sums(&mut Self, &LossSumsOp);
        fn read_loss_sums(&Self) -> [f64; LOSS_SUMS];
        fn grad_norm(&mut Self) -> f32;
        fn adamw(&mut Self, &ParamGroup, f32);
        fn optimizer_step(&mut Self, &OptimizerStep);
        fn last_grad_norm(&Self) -> f32;
        fn begin_step(&mut Self, StepScalars, Option<u64>) -> bool;
    }
}

/// The C ABI's device ops in a build without CUDA: [`DeviceOps::new`] always fails with
/// [`CudaError::NotBuilt`], so no operation is ever reached.
#[derive(Debug)]
pub(crate) struct DeviceOps {
    never: Never,
}

/// A CUDA stream as the C ABI takes it.
type RawStream = *mut std::ffi::c_void;

/// Operations whose body can never run: no value of the stand-in exists.
macro_rules! unreachable_ops {
    ($(fn $name:ident($($arg:ty),*);)*) => {$(
        /// Never reached (no value exists).
        ///
        /// # Safety
        /// None needed: it cannot be called.
        pub unsafe fn $name(&mut self, $(_: $arg),*) -> Result<(), CudaError> {
            match self.never {}
        }
    )*};
}

impl DeviceOps {
    /// Always [`CudaError::NotBuilt`].
    pub fn new(_ordinal: usize) -> Result<Self, CudaError> {
        Err(CudaError::NotBuilt)
    }

    unreachable_ops! {
        fn attention_fwd(AttentionFwdArgs, u64, RawStream);
        fn attention_bwd(AttentionBwdArgs, u64, RawStream);
        fn layernorm_fwd(LayerNormFwdArgs, RawStream);
        fn layernorm_bwd(LayerNormBwdArgs, RawStream);
        fn linear_fwd(LinearFwdArgs, RawStream);
        fn linear_bwd(LinearBwdArgs, RawStream);
        fn softmax_xent(SoftmaxXentArgs, RawStream);
        fn bce_head(BceHeadArgs, RawStream);
    }
}
