//! The metrics window: the step figures summed since the last `metrics.jsonl` line.

use crate::io::run_dir::Metrics;
use crate::train::StepReport;

/// Means of the step figures since the last metrics line.
#[derive(Default)]
pub(super) struct Window {
    steps: u64,
    tokens: u64,
    /// Wall time of the steps added, each from the fetch of its batch to its report: a window of
    /// n steps divides n steps' tokens by n steps' time (checkpoint writes are not steps).
    secs: f64,
    sums: [f64; 7],
}

impl Window {
    /// Adds one step of `tokens` tokens that took `secs` seconds.
    pub(super) fn add(&mut self, r: &StepReport, tokens: usize, secs: f64) {
        self.steps += 1;
        self.tokens += tokens as u64;
        self.secs += secs;
        let l = &r.loss;
        let figures = [
            l.gen_loss as f64,
            l.disc_loss as f64,
            l.mlm_accuracy.unwrap_or(f32::NAN) as f64,
            l.disc_accuracy as f64,
            l.replaced_fraction as f64,
            r.grad_norm as f64,
            l.disc_gain() as f64,
        ];
        self.sums.iter_mut().zip(figures).for_each(|(s, f)| *s += f);
    }

    /// The means of the steps added since the last call, as the metrics line of `step` (whose
    /// learning rate was `lr`) at `elapsed_s` seconds into the run, and starts afresh; None when
    /// no step was added.
    pub(super) fn take(&mut self, step: u64, lr: f32, elapsed_s: f64) -> Option<Metrics> {
        if self.steps == 0 {
            return None;
        }
        let n = self.steps as f64;
        let m = Metrics {
            step,
            gen_loss: self.sums[0] / n,
            disc_loss: self.sums[1] / n,
            mlm_accuracy: self.sums[2] / n,
            disc_accuracy: self.sums[3] / n,
            replaced_fraction: self.sums[4] / n,
            disc_gain: Some(self.sums[6] / n),
            lr: lr as f64,
            grad_norm: self.sums[5] / n,
            tokens_per_s: self.tokens as f64 / self.secs.max(1e-9),
            elapsed_s,
        };
        *self = Window::default();
        Some(m)
    }
}
