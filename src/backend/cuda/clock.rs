//! The device time of each launch, for `electra bench`'s kernel table. While the clock runs,
//! every kernel launch and cuBLASLt product is bracketed by two events on its stream, so the
//! table holds what the device spent in each launch without the host waiting between launches
//! (the per-operation table synchronises around every operation, which hides nothing of a
//! kernel's own time but adds the host's to it). Off, a launch pays one branch. Run it over an
//! issued step: events recorded into a CUDA-graph capture would time the capture, not the step.

use std::cell::RefCell;

use cudarc::driver::{result, sys};

use super::{driver_err, CudaError};

/// The events of the launches timed so far, in launch order.
pub struct KernelClock {
    marks: RefCell<Vec<(String, sys::CUevent, sys::CUevent)>>,
}

impl KernelClock {
    pub fn new() -> Self {
        KernelClock {
            marks: RefCell::new(Vec::new()),
        }
    }

    /// Runs `launch`, which enqueues work on `stream`, between two events recorded there, and
    /// notes it as `what`.
    pub fn time<R>(
        &self,
        stream: sys::CUstream,
        what: impl FnOnce() -> String,
        launch: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let event = || {
            let e = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| driver_err("creating a timing event", e))?;
            // SAFETY: a live event, recorded on the stream the launch uses.
            unsafe { result::event::record(e, stream) }
                .map_err(|e| driver_err("recording a timing event", e))?;
            Ok::<_, CudaError>(e)
        };
        let start = event()?;
        let launched = launch();
        let end = event();
        if let Ok(end) = end {
            self.marks.borrow_mut().push((what(), start, end));
        } else {
            // SAFETY: made above and recorded nowhere else.
            let _ = unsafe { result::event::destroy(start) };
        }
        let r = launched?;
        end?;
        Ok(r)
    }

    /// Waits for the last timed launch and returns, for each name, its launches and their device
    /// time in seconds, slowest first.
    pub fn read(self) -> Result<Vec<(String, u64, f64)>, CudaError> {
        let marks = self.marks.take();
        let mut table: Vec<(String, u64, f64)> = Vec::new();
        let mut failed = None;
        if let Some(&(_, _, last)) = marks.last() {
            // SAFETY: a live event of this clock.
            failed = unsafe { result::event::synchronize(last) }.err();
        }
        for (what, start, end) in marks {
            if failed.is_none() {
                // SAFETY: two live events recorded on one stream, the later one complete.
                match unsafe { result::event::elapsed(start, end) } {
                    Ok(ms) => match table.iter_mut().find(|(w, ..)| *w == what) {
                        Some(row) => {
                            row.1 += 1;
                            row.2 += f64::from(ms) * 1e-3;
                        }
                        None => table.push((what, 1, f64::from(ms) * 1e-3)),
                    },
                    Err(e) => failed = Some(e),
                }
            }
            // SAFETY: made by `time`, destroyed once.
            unsafe {
                let _ = result::event::destroy(start);
                let _ = result::event::destroy(end);
            }
        }
        if let Some(e) = failed {
            return Err(driver_err("reading the kernel timings", e));
        }
        table.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(table)
    }
}

impl Drop for KernelClock {
    fn drop(&mut self) {
        for (_, start, end) in self.marks.take() {
            // SAFETY: made by `time`, destroyed once (`read` empties the marks it destroys).
            unsafe {
                let _ = result::event::destroy(start);
                let _ = result::event::destroy(end);
            }
        }
    }
}
