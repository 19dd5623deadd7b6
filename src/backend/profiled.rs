//! Wall time per fused operation, for `electra bench`'s per-operation table: a backend that wraps
//! another and times every operation it passes on. Code that does not profile does not wrap its
//! backend and pays nothing; a wrapped backend pays one branch per operation while timing is off.

use super::{
    AccumulateOp, AttentionOp, Backend, BceHeadOp, Buf, DropoutOp, EmbeddingOp, GatherRowsOp, IBuf,
    LayerNormOp, LinearOp, LossSumsOp, OptimizerStep, OutOfMemory, ParamGroup, ReplaceTokensOp,
    Sizes, SoftmaxXentOp, StepScalars, LOSS_SUMS,
};
use crate::comm::Collective;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `B` with its operations timed while [`Profiled::set_enabled`] is on.
pub struct Profiled<B> {
    inner: B,
    enabled: bool,
    times: BTreeMap<String, (u64, Duration)>,
}

impl<B: Backend> Profiled<B> {
    /// Wraps `inner`, with timing off.
    pub fn new(inner: B) -> Self {
        Profiled {
            inner,
            enabled: false,
            times: BTreeMap::new(),
        }
    }

    /// Turns timing on or off; what was measured so far is kept (see [`Profiled::reset`]).
    /// Timing synchronises the backend around every operation, which slows asynchronous ones,
    /// and a timed step is issued operation by operation, never replayed from a recording.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, to call what only it has (e.g. the CUDA matrix rate).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
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

    /// Runs `f` on the wrapped backend, charging its time to `label` when timing. The backend is
    /// synchronised before the clock is read, so asynchronous backends charge the work itself;
    /// the label is made only when timing.
    fn time<R>(&mut self, label: impl FnOnce() -> String, f: impl FnOnce(&mut B) -> R) -> R {
        if !self.enabled {
            return f(&mut self.inner);
        }
        self.inner.synchronize();
        let start = Instant::now();
        let r = f(&mut self.inner);
        self.inner.synchronize();
        let entry = self.times.entry(label()).or_default();
        entry.0 += 1;
        entry.1 += start.elapsed();
        r
    }
}

/// A fixed label.
fn named(name: &'static str) -> impl FnOnce() -> String {
    move || name.to_string()
}

impl<B: Backend> Backend for Profiled<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn reserve(&mut self, sizes: Sizes) -> Result<(), OutOfMemory> {
        self.inner.reserve(sizes)
    }

    fn sizes(&self) -> Sizes {
        self.inner.sizes()
    }

    fn synchronize(&self) {
        self.inner.synchronize()
    }

    fn write(&mut self, dst: Buf, src: &[f32]) {
        self.inner.write(dst, src)
    }

    fn read(&self, src: Buf, dst: &mut [f32]) {
        self.inner.read(src, dst)
    }

    fn write_ints(&mut self, dst: IBuf, src: &[u32]) {
        self.inner.write_ints(dst, src)
    }

    fn read_ints(&self, src: IBuf, dst: &mut [u32]) {
        self.inner.read_ints(src, dst)
    }

    fn fill(&mut self, dst: Buf, value: f32) {
        self.time(named("fill"), |be| be.fill(dst, value))
    }

    fn embedding_fwd(&mut self, op: &EmbeddingOp) {
        self.time(named("embedding_fwd"), |be| be.embedding_fwd(op))
    }

    fn embedding_bwd(&mut self, op: &EmbeddingOp) {
        self.time(named("embedding_bwd"), |be| be.embedding_bwd(op))
    }

    fn linear_fwd(&mut self, op: &LinearOp) {
        self.time(|| op.label("fwd"), |be| be.linear_fwd(op))
    }

    fn linear_bwd(&mut self, op: &LinearOp) {
        self.time(|| op.label("bwd"), |be| be.linear_bwd(op))
    }

    fn layernorm_fwd(&mut self, op: &LayerNormOp) {
        self.time(named("layernorm_fwd"), |be| be.layernorm_fwd(op))
    }

    fn layernorm_bwd(&mut self, op: &LayerNormOp) {
        self.time(named("layernorm_bwd"), |be| be.layernorm_bwd(op))
    }

    fn attention_fwd(&mut self, op: &AttentionOp) {
        self.time(named("attention_fwd"), |be| be.attention_fwd(op))
    }

    fn attention_bwd(&mut self, op: &AttentionOp) {
        self.time(named("attention_bwd"), |be| be.attention_bwd(op))
    }

    fn dropout_fwd(&mut self, op: &DropoutOp) {
        self.time(named("dropout_fwd"), |be| be.dropout_fwd(op))
    }

    fn dropout_bwd(&mut self, op: &DropoutOp) {
        self.time(named("dropout_bwd"), |be| be.dropout_bwd(op))
    }

    fn gather_rows(&mut self, op: &GatherRowsOp) {
        self.time(named("gather_rows"), |be| be.gather_rows(op))
    }

    fn gather_rows_bwd(&mut self, op: &GatherRowsOp) {
        self.time(named("gather_rows_bwd"), |be| be.gather_rows_bwd(op))
    }

    fn softmax_xent(&mut self, op: &SoftmaxXentOp) {
        self.time(named("softmax_xent"), |be| be.softmax_xent(op))
    }

    fn replace_tokens(&mut self, op: &ReplaceTokensOp) {
        self.time(named("replace_tokens"), |be| be.replace_tokens(op))
    }

    fn bce_head(&mut self, op: &BceHeadOp) {
        self.time(named("bce_head"), |be| be.bce_head(op))
    }

    fn accumulate(&mut self, op: &AccumulateOp) {
        self.time(named("accumulate"), |be| be.accumulate(op))
    }

    fn loss_sums(&mut self, op: &LossSumsOp) {
        self.time(named("loss_sums"), |be| be.loss_sums(op))
    }

    fn read_loss_sums(&self) -> [f64; LOSS_SUMS] {
        self.inner.read_loss_sums()
    }

    fn all_reduce(&mut self, buf: Buf, comm: &dyn Collective) {
        self.time(named("all_reduce"), |be| be.all_reduce(buf, comm))
    }

    fn grad_norm(&mut self) -> f32 {
        self.time(named("grad_norm"), |be| be.grad_norm())
    }

    fn adamw(&mut self, group: &ParamGroup, grad_scale: f32) {
        self.time(named("adamw"), |be| be.adamw(group, grad_scale))
    }

    fn optimizer_step(&mut self, op: &OptimizerStep) {
        self.time(named("optimizer"), |be| be.optimizer_step(op))
    }

    fn last_grad_norm(&self) -> f32 {
        self.inner.last_grad_norm()
    }

    fn begin_step(&mut self, scalars: StepScalars, recording: Option<u64>) -> bool {
        // A timed step must be issued operation by operation: a replay would time nothing.
        let recording = recording.filter(|_| !self.enabled);
        self.inner.begin_step(scalars, recording)
    }

    fn end_step(&mut self) {
        self.inner.end_step()
    }
}
