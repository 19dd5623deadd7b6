//! The step memory: the current step's [`StepScalars`] on the device, which the dropout, Gumbel
//! and AdamW kernels read, so that one recording of a training step (a CUDA graph, `graph.rs`)
//! serves every step; and the opening and closing of a step, which records or replays it.

use cudarc::driver::result;

use super::graph::{Plan, StepGraphs};
use super::CudaBackend;
use crate::backend::StepScalars;

/// The step memory's layout: `StepValues` in `kernels/common.cuh` (whose `static_assert`s hold
/// it to the same offsets), which the kernels that read more than one value take whole.
#[repr(C)]
#[allow(dead_code)] // only its layout is read, by `offset_of!`
struct StepValues {
    dropout_seed: u64,
    sample_seed: u64,
    lr: f32,
    unused: u32,
    first_sequence: u64,
    first_pick: u64,
}

/// Byte offsets of the [`StepScalars`] in the step memory.
pub(super) const STEP_DROPOUT_SEED: u64 = std::mem::offset_of!(StepValues, dropout_seed) as u64;
const STEP_SAMPLE_SEED: u64 = std::mem::offset_of!(StepValues, sample_seed) as u64;
pub(super) const STEP_LR: u64 = std::mem::offset_of!(StepValues, lr) as u64;
const STEP_FIRST_SEQUENCE: u64 = std::mem::offset_of!(StepValues, first_sequence) as u64;
const STEP_FIRST_PICK: u64 = std::mem::offset_of!(StepValues, first_pick) as u64;
pub(super) const STEP_BYTES: usize = std::mem::size_of::<StepValues>();
const _: () = assert!(
    STEP_LR == 16 && STEP_FIRST_SEQUENCE == 24 && STEP_FIRST_PICK == 32 && STEP_BYTES == 40,
    "the offsets kernels/common.cuh's StepValues asserts"
);

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
        host[STEP_FIRST_SEQUENCE as usize..][..8]
            .copy_from_slice(&scalars.first_sequence.to_le_bytes());
        host[STEP_FIRST_PICK as usize..][..8].copy_from_slice(&scalars.first_pick.to_le_bytes());
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
