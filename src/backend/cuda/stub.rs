//! Stands in for the CUDA backend in builds without the `cuda` feature (the way candle swaps in a
//! dummy CUDA module): the same names, so that code choosing a device needs no `cfg`, and a
//! constructor that says the build has no CUDA. No value of [`CudaBackend`] can exist here, so its
//! operations are never reached.

use super::{
    AdamW, AttentionDims, Backend, Buf, Dropout, EmbeddingParams, IBuf, LayerNormParams,
    LayerNormSaved, LinearDims, OutOfMemory, Pick, Sizes,
};

#[path = "error.rs"]
mod error;
pub use error::CudaError;

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
    pub fn matrix_rate(&mut self) -> Result<f64, CudaError> {
        match self.never {}
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        match self.never {}
    }
    fn reserve(&mut self, _: Sizes) -> Result<(), OutOfMemory> {
        match self.never {}
    }
    fn sizes(&self) -> Sizes {
        match self.never {}
    }
    fn write(&mut self, _: Buf, _: &[f32]) {
        match self.never {}
    }
    fn read(&self, _: Buf, _: &mut [f32]) {
        match self.never {}
    }
    fn write_ints(&mut self, _: IBuf, _: &[u32]) {
        match self.never {}
    }
    fn read_ints(&self, _: IBuf, _: &mut [u32]) {
        match self.never {}
    }
    fn fill(&mut self, _: Buf, _: f32) {
        match self.never {}
    }
    fn embedding_fwd(
        &mut self,
        _: IBuf,
        _: IBuf,
        _: usize,
        _: &EmbeddingParams,
        _: Buf,
        _: LayerNormSaved,
    ) {
        match self.never {}
    }
    fn embedding_bwd(
        &mut self,
        _: IBuf,
        _: IBuf,
        _: usize,
        _: &EmbeddingParams,
        _: Buf,
        _: LayerNormSaved,
    ) {
        match self.never {}
    }
    fn linear_fwd(
        &mut self,
        _: Buf,
        _: Buf,
        _: Option<Buf>,
        _: Buf,
        _: Option<Buf>,
        _: LinearDims,
    ) {
        match self.never {}
    }
    fn linear_bwd(
        &mut self,
        _: Buf,
        _: Buf,
        _: Buf,
        _: Option<Buf>,
        _: Buf,
        _: Option<Buf>,
        _: Option<Buf>,
        _: LinearDims,
    ) {
        match self.never {}
    }
    fn layernorm_fwd(
        &mut self,
        _: Buf,
        _: Option<Buf>,
        _: &LayerNormParams,
        _: Buf,
        _: LayerNormSaved,
        _: usize,
        _: usize,
    ) {
        match self.never {}
    }
    fn layernorm_bwd(
        &mut self,
        _: Buf,
        _: &LayerNormParams,
        _: LayerNormSaved,
        _: Buf,
        _: Option<Buf>,
        _: usize,
        _: usize,
    ) {
        match self.never {}
    }
    fn attention_fwd(
        &mut self,
        _: Buf,
        _: IBuf,
        _: Buf,
        _: Buf,
        _: AttentionDims,
        _: Option<Dropout>,
    ) {
        match self.never {}
    }
    fn attention_bwd(
        &mut self,
        _: Buf,
        _: IBuf,
        _: Buf,
        _: Buf,
        _: Buf,
        _: Buf,
        _: AttentionDims,
        _: Option<Dropout>,
    ) {
        match self.never {}
    }
    fn dropout_fwd(&mut self, _: Buf, _: Buf, _: Dropout) {
        match self.never {}
    }
    fn dropout_bwd(&mut self, _: Buf, _: Buf, _: Dropout) {
        match self.never {}
    }
    fn gather_rows(&mut self, _: Buf, _: IBuf, _: Buf, _: usize) {
        match self.never {}
    }
    fn gather_rows_bwd(&mut self, _: Buf, _: IBuf, _: Buf, _: usize) {
        match self.never {}
    }
    fn softmax_xent(
        &mut self,
        _: Buf,
        _: IBuf,
        _: Buf,
        _: f32,
        _: Option<(Pick, IBuf)>,
        _: usize,
        _: usize,
    ) {
        match self.never {}
    }
    fn replace_tokens(&mut self, _: IBuf, _: IBuf, _: IBuf, _: IBuf, _: Buf) {
        match self.never {}
    }
    fn bce_head(&mut self, _: Buf, _: Buf, _: Buf, _: Buf, _: IBuf, _: Buf, _: Buf, _: f32) {
        match self.never {}
    }
    fn grad_norm(&mut self) -> f32 {
        match self.never {}
    }
    fn adamw(&mut self, _: Buf, _: f32, _: &AdamW) {
        match self.never {}
    }
    fn optimizer_step(&mut self, _: &[(Buf, AdamW)], _: f32) {
        match self.never {}
    }
    fn last_grad_norm(&self) -> f32 {
        match self.never {}
    }
}
