//! Wall time per fused operation, for `electra bench`'s per-kernel table. Off by default: an
//! unprofiled step only pays for one branch per operation.

use crate::backend::Backend;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Accumulated calls and time per operation name.
#[derive(Debug, Default)]
pub struct Profiler {
    enabled: bool,
    times: BTreeMap<String, (u64, Duration)>,
}

impl Profiler {
    /// Turns timing on or off; what was measured so far is kept (see [`Profiler::reset`]).
    /// Profiling synchronises the backend around every operation, which slows asynchronous ones.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Whether operations are being timed (a timed step synchronises, so it cannot be recorded).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Runs `f` on the backend, charging its time to `name` when profiling. The backend is
    /// synchronised before the clock is read, so asynchronous backends charge the work itself.
    pub fn time<B: Backend, R>(
        &mut self,
        name: &'static str,
        be: &mut B,
        f: impl FnOnce(&mut B) -> R,
    ) -> R {
        self.time_labelled(|| name.to_string(), be, f)
    }

    /// [`Profiler::time`] under a label made only when profiling (an operation's name with its
    /// shape, say: one kind of operation can cost very differently at different shapes).
    pub fn time_labelled<B: Backend, R>(
        &mut self,
        label: impl FnOnce() -> String,
        be: &mut B,
        f: impl FnOnce(&mut B) -> R,
    ) -> R {
        if !self.enabled {
            return f(be);
        }
        be.synchronize();
        let start = Instant::now();
        let r = f(be);
        be.synchronize();
        let entry = self.times.entry(label()).or_default();
        entry.0 += 1;
        entry.1 += start.elapsed();
        r
    }

    /// Forgets what was measured.
    pub fn reset(&mut self) {
        self.times.clear();
    }

    /// (label, calls, total time), slowest first.
    pub fn report(&self) -> Vec<(&str, u64, Duration)> {
        let mut rows: Vec<_> = self
            .times
            .iter()
            .map(|(n, &(c, t))| (n.as_str(), c, t))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        rows
    }
}
