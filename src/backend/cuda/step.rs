//! The step memory: the current step's [`StepScalars`] on the device, which the dropout, Gumbel
//! and AdamW kernels read, so that one recording of a training step (a CUDA graph, `graph.rs`)
//! serves every step; and the opening and closing of a step, which records or replays it.

use cudarc::driver::result;

use super::graph::{Plan, StepGraphs};
use super::CudaBackend;
use crate::backend::StepScalars;

/// Byte offsets of the [`StepScalars`] in the step memory.
pub(super) const STEP_DROPOUT_SEED: u64 = 0;
pub(super) const STEP_SAMPLE_SEED: u64 = 8;
pub(super) const STEP_LR: u64 = 16;
pub(super) const STEP_BYTES: usize = 32;

impl CudaBackend {
    /// The device address of one of the step's values (a `STEP_*` offset).
    pub(super) fn step_scalar(&self, offset: u64) -> u64 {
        self.step_memory.ptr + offset
    }

    /// Writes `scalars` to the step memory, then records, replays or just runs the step (see
    /// [`Backend::begin_step`](crate::backend::Backend::begin_step)).
    pub(super) fn open_step(&mut self, scalars: StepScalars, recording: Option<u64>) -> bool {
        assert!(!self.in_step, "begin_step: a step is already open");
        let mut host = [0u8; STEP_BYTES];
        host[STEP_DROPOUT_SEED as usize..][..8]
            .copy_from_slice(&scalars.dropout_seed.to_le_bytes());
        host[STEP_SAMPLE_SEED as usize..][..8].copy_from_slice(&scalars.sample_seed.to_le_bytes());
        host[STEP_LR as usize..][..4].copy_from_slice(&scalars.lr.to_le_bytes());
        // SAFETY: the step memory holds STEP_BYTES; pageable copies are staged before returning.
        unsafe {
            result::memcpy_htod_async(self.step_scalar(0), &host[..], self.stream.cu_stream())
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
        self.in_step = true;
        false
    }

    /// Ends the step; a step being recorded is instantiated for replay.
    pub(super) fn close_step(&mut self) {
        self.in_step = false;
        if let Some(fp) = self.recording.take() {
            self.graphs
                .finish_capture(&self.stream, fp)
                .unwrap_or_else(|e| panic!("CUDA: {e}"));
            self.last_kernel.set("(the recorded training step)");
        }
    }
}
