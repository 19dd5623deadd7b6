//! Recorded training steps (CUDA graphs).
//!
//! A training step issues several hundred launches; replaying them as one graph removes the
//! host's launch cost from the step. A recording bakes in every launch argument, so it is valid
//! only while (a) the buffers stay where they are — `reserve` forgets every recording when a
//! size changes — and (b) every host-side value is the same: the trainer fingerprints those
//! (shapes, loss scales, hyper-parameters), and the values that change every step (learning
//! rate, dropout and Gumbel seeds) are read by the kernels from device memory that the backend
//! fills before each step.
//!
//! A fingerprint is first run eagerly (which grows scratch memory and builds the cuBLASLt plans,
//! neither of which may happen during a capture), recorded the second time, and replayed from
//! then on.

use cudarc::driver::{sys, CudaGraph, CudaStream};
use std::sync::Arc;

/// Recordings kept at once: a run has one step shape, plus the odd short last batch.
const KEPT: usize = 4;

/// What `begin_step` does with a step.
pub(super) enum Plan {
    /// Issue the operations as usual.
    Run,
    /// Issue them into a capture, then launch the recording.
    Record(u64),
    /// Launch the recording; issue nothing.
    Replay,
}

/// The backend's recordings, most recently used last.
pub(super) struct StepGraphs {
    enabled: bool,
    graphs: Vec<(u64, CudaGraph)>,
    seen: Vec<u64>,
}

impl StepGraphs {
    /// `enabled` false runs every step eagerly (`ELECTRA_CUDA_GRAPH=0`, or a synchronising
    /// debug mode, which a capture forbids).
    pub fn new(enabled: bool) -> Self {
        StepGraphs {
            enabled,
            graphs: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// How many recordings are kept.
    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    /// Drops every recording: the memory they point into has moved.
    pub fn forget(&mut self) {
        self.graphs.clear();
        self.seen.clear();
    }

    /// Decides how to run a step with this fingerprint; a replay is launched here, on the stream
    /// the recording was captured from.
    pub fn plan(&mut self, fingerprint: Option<u64>) -> Result<Plan, String> {
        let Some(fp) = fingerprint.filter(|_| self.enabled) else {
            return Ok(Plan::Run);
        };
        if let Some(i) = self.graphs.iter().position(|(k, _)| *k == fp) {
            let entry = self.graphs.remove(i);
            let launched = entry.1.launch();
            self.graphs.push(entry);
            launched.map_err(|e| format!("replaying the recorded training step: {e}"))?;
            return Ok(Plan::Replay);
        }
        if self.seen.contains(&fp) {
            return Ok(Plan::Record(fp));
        }
        if self.seen.len() == KEPT {
            self.seen.remove(0);
        }
        self.seen.push(fp);
        Ok(Plan::Run)
    }

    /// Starts capturing `stream`'s work.
    pub fn begin_capture(stream: &CudaStream) -> Result<(), String> {
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| format!("starting to record the training step: {e}"))
    }

    /// Ends the capture begun for `fp`, keeps the recording and launches it once (a capture
    /// runs nothing, so this runs the step being recorded).
    pub fn finish_capture(&mut self, stream: &Arc<CudaStream>, fp: u64) -> Result<(), String> {
        let flags = sys::CUgraphInstantiate_flags(0);
        let graph = stream
            .end_capture(flags)
            .map_err(|e| {
                format!(
                    "recording the training step failed ({e}); an operation that allocates or \
                     synchronises is not recordable. ELECTRA_CUDA_GRAPH=0 runs without recording"
                )
            })?
            .ok_or("recording the training step captured nothing")?;
        graph
            .launch()
            .map_err(|e| format!("launching the recorded training step: {e}"))?;
        if self.graphs.len() == KEPT {
            self.graphs.remove(0);
        }
        self.graphs.push((fp, graph));
        Ok(())
    }
}
