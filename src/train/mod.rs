//! Training: masking, replacement, the two losses, clipping, AdamW and the schedule, driven by
//! [`Trainer`].

pub mod masking;
pub mod schedule;
mod setup;

use crate::backend::{
    AccumulateOp, AdamW, Backend, Buf, LossSumsOp, OptimizerStep, OutOfMemory, ParamGroup, Pick,
    ReplaceTokensOp, Sizes, SoftmaxXentOp, Space, StepScalars, LOSS_SUMS,
};
use crate::comm::{Collective, Solo};
use crate::data::Batch;
use crate::model::{self, BatchShape, DropoutPlan, Model, StepActs};
use crate::rng::{Purpose, Stream};
use crate::tape::Tape;
use crate::validate::{require, require_non_negative, require_positive};
pub use masking::{mask_batch, max_predictions, MaskKeys, Masking};
pub use setup::place_parameters;
use std::sync::Arc;

/// How the discriminator's input is corrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replacement {
    /// The generator's most likely token (sampling-free; the default).
    Argmax,
    /// Gumbel-max sampling from the generator, as in the paper.
    Sample,
}

/// The recipe of a pretraining run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Keys every random draw of training (masking, dropout, Gumbel noise); with the step, it fixes
    /// the whole trajectory.
    pub seed: u64,
    /// How the generator's predictions become the discriminator's input.
    pub replacement: Replacement,
    /// Share of each sequence's real tokens chosen for the generator (0.15); also sets the
    /// per-sequence cap, see [`max_predictions`].
    pub mask_prob: f64,
    /// Weight of the discriminator's loss (50 in the paper).
    pub disc_weight: f32,
    /// The learning rate at the end of warmup, before the linear decay.
    pub peak_lr: f32,
    /// Steps of linear warmup from 0; step 0 trains at lr 0 unless this is 0.
    pub warmup_steps: u64,
    /// The step at which the learning rate has decayed to 0; steps past it train at lr 0.
    pub total_steps: u64,
    /// Decoupled weight decay (AdamW), applied to every tensor except LayerNorm weights and biases.
    pub weight_decay: f32,
    /// Adam's decay rate of the first moment.
    pub beta1: f32,
    /// Adam's decay rate of the second moment.
    pub beta2: f32,
    /// Added to √v in Adam's denominator (1e-6, as in the original code; no bias correction).
    pub eps: f32,
    /// Gradients are scaled down so their global norm over both networks is at most this.
    pub max_grad_norm: f32,
}

impl Default for TrainConfig {
    /// ELECTRA-Small's recipe.
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            replacement: Replacement::Argmax,
            mask_prob: 0.15,
            disc_weight: 50.0,
            peak_lr: 5e-4,
            warmup_steps: 10_000,
            total_steps: 1_000_000,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            max_grad_norm: 1.0,
        }
    }
}

impl TrainConfig {
    /// Adam's settings in this recipe.
    pub fn adamw(&self) -> AdamW {
        AdamW {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Checks that every number of the recipe is one training can run with: a negative or NaN
    /// learning rate, say, would otherwise train to garbage without a word. The error names the
    /// field as `run.json` spells it.
    pub fn validate(&self) -> Result<(), String> {
        // 0 is allowed: steps that change nothing still report the losses of given weights.
        require_non_negative("peak_lr", self.peak_lr)?;
        require_non_negative("disc_weight", self.disc_weight)?;
        require(
            self.mask_prob > 0.0 && self.mask_prob < 1.0,
            "mask_prob",
            "in (0, 1)",
            self.mask_prob,
        )?;
        require_non_negative("weight_decay", self.weight_decay)?;
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            require((0.0..1.0).contains(&beta), name, "in [0, 1)", beta)?;
        }
        require_positive("eps", self.eps)?;
        require_positive("max_grad_norm", self.max_grad_norm)
    }
}

/// An optimizer group of the recipe, for pretraining and fine-tuning alike: `params` at
/// `lr_scale` times the step's learning rate, with `adamw`'s weight decay only when the tensors
/// are `decayed` (LayerNorm weights and biases are not).
pub fn param_group(params: Buf, lr_scale: f32, decayed: bool, adamw: AdamW) -> ParamGroup {
    let weight_decay = if decayed { adamw.weight_decay } else { 0.0 };
    ParamGroup {
        params,
        lr_scale,
        adamw: AdamW {
            weight_decay,
            ..adamw
        },
    }
}

/// Where the discriminator's replacements come from in [`Trainer::forward_backward`].
#[derive(Clone, Copy, Debug)]
pub enum Corruption<'a> {
    /// The generator picks them.
    Generator(Pick),
    /// The discriminator's whole input is given (`[batch·seq]`), e.g. to compare with another engine.
    Given(&'a [u32]),
}

/// The figures of one forward and backward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossReport {
    /// The generator's MLM loss: mean cross-entropy (nats) over the chosen positions.
    pub gen_loss: f32,
    /// The discriminator's loss: mean sigmoid BCE over every real (non-padding) token, unweighted.
    pub disc_loss: f32,
    /// What the gradients are of: `gen_loss + disc_weight · disc_loss`.
    pub total_loss: f32,
    /// Share of chosen positions where the generator's pick is the original token (None when the
    /// replacements were given).
    pub mlm_accuracy: Option<f32>,
    /// Share of real tokens the discriminator labels right (logit > 0 ⇔ replaced).
    pub disc_accuracy: f32,
    /// Share of real tokens that were replaced.
    pub replaced_fraction: f32,
    /// Number of chosen positions in the batch (all sequences together).
    pub masked: usize,
    /// Number of non-padding tokens in the batch.
    pub real_tokens: usize,
}

impl LossReport {
    /// How far the discriminator's loss is under the entropy of this batch's labels (nats per real
    /// token): what it knows beyond the share of replaced tokens. It stays at 0 when the
    /// discriminator's output no longer depends on its input, which too high a learning rate causes
    /// (BENCHMARKS.md, "Pretraining helps downstream").
    pub fn disc_gain(&self) -> f32 {
        let p = self.replaced_fraction as f64;
        let entropy = -[p, 1.0 - p]
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|&q| q * q.ln())
            .sum::<f64>();
        (entropy - self.disc_loss as f64) as f32
    }
}

/// One optimizer step's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Optimizer steps taken, this one included (1 after the first step).
    pub step: u64,
    /// The losses of the pass that produced this step's gradients.
    pub loss: LossReport,
    /// The learning rate this step's update used.
    pub lr: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
}

/// Errors of a training step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The batch, masking or given replacements do not fit the model (shape, id outside the
    /// vocabulary, no chosen position, …). No optimizer step was taken.
    #[error("bad batch: {0}")]
    Batch(String),
    /// A loss came out NaN or infinite. [`Trainer::step`] was not advanced, and the update was
    /// skipped (a non-finite loss makes the gradient norm non-finite, and the optimizer skips
    /// such a step), so the parameters are those before this step; usually a sign the learning
    /// rate is too high.
    #[error(
        "the loss is not finite at step {step} (generator {gen_loss}, discriminator {disc_loss})"
    )]
    NonFinite {
        /// Steps completed before the failing one (the value of [`Trainer::step`]).
        step: u64,
        /// The generator's loss at that step.
        gen_loss: f32,
        /// The discriminator's loss at that step (unweighted).
        disc_loss: f32,
    },
    /// The backend has no room for the model or for the activations of this batch shape.
    #[error(transparent)]
    Memory(#[from] OutOfMemory),
}

/// Owns a backend, a model on it, and the step's memory plan; runs training steps.
pub struct Trainer<B: Backend> {
    /// The configuration and parameter layout; the values themselves live in the backend.
    pub model: Model,
    /// Holds the parameters, gradients, Adam moments and activations, each a flat buffer
    /// (see [`Space`]).
    pub backend: B,
    /// The recipe; read at every step, so a change (e.g. `total_steps` on resume) applies from
    /// the next one.
    pub config: TrainConfig,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Whether passes apply the configured dropout (training) or none (evaluation, comparisons).
    pub dropout: bool,
    tape: Tape,
    acts: Option<Arc<StepActs>>,
    /// Whether [`Space::GradSum`] is sized: gradients are accumulated over micro-batches.
    sums_gradients: bool,
    /// Whether a step was issued and not yet finished ([`Trainer::issue_step`]).
    in_flight: bool,
    host: Vec<f32>,
    host_ints: Vec<u32>,
}

impl<B: Backend> Trainer<B> {
    /// Puts `model` on `backend` with the given parameter values and zero Adam moments; fails
    /// only when the backend has no room for them.
    pub fn new(
        mut backend: B,
        model: Model,
        config: TrainConfig,
        values: &[f32],
    ) -> Result<Self, TrainError> {
        assert_eq!(values.len(), model.layout.len(), "parameter count");
        place_parameters(&mut backend, values)?;
        Ok(Trainer {
            model,
            backend,
            config,
            step: 0,
            dropout: true,
            tape: Tape::new(true),
            acts: None,
            sums_gradients: false,
            in_flight: false,
            host: vec![],
            host_ints: vec![],
        })
    }

    fn all(&self, space: Space) -> Buf {
        Buf {
            space,
            offset: 0,
            len: self.model.layout.len(),
        }
    }

    /// The operations the last step's forward passes recorded, in order: what a backend was asked
    /// to run, for checks of a step's shapes and buffers that need no device.
    pub fn recorded_ops(&self) -> &[crate::tape::Op] {
        self.tape.ops()
    }

    /// The whole flat buffer of one parameter-shaped space (values, gradients or moments).
    pub fn flat(&self, space: Space) -> Vec<f32> {
        let mut out = vec![0.0; self.model.layout.len()];
        self.backend.read(self.all(space), &mut out);
        out
    }

    /// Overwrites a parameter-shaped space (used to restore checkpoints).
    pub fn set_flat(&mut self, space: Space, values: &[f32]) {
        self.backend.write(self.all(space), values);
    }

    /// One named tensor of a parameter-shaped space, or None if there is no such tensor.
    pub fn tensor(&self, space: Space, name: &str) -> Option<Vec<f32>> {
        let info = self.model.layout.get(name)?;
        let mut out = vec![0.0; info.buf.len];
        self.backend.read(info.buf.in_space(space), &mut out);
        Some(out)
    }

    /// Reads an activation buffer of the last pass.
    pub fn read_acts(&self, buf: Buf) -> Vec<f32> {
        let mut out = vec![0.0; buf.len];
        self.backend.read(buf, &mut out);
        out
    }

    /// The memory plan of the last pass.
    pub fn acts(&self) -> Option<&StepActs> {
        self.acts.as_deref()
    }

    /// Sizes the backend for steps on `batch` sequences of `seq` tokens, `accumulate`
    /// micro-batches a step, now rather than at the first step, so that a batch too large for
    /// memory is refused before a run writes anything.
    pub fn reserve_for(
        &mut self,
        batch: usize,
        seq: usize,
        accumulate: usize,
    ) -> Result<(), TrainError> {
        self.sums_gradients |= accumulate > 1;
        self.plan_for(batch, seq, 0).map(drop)
    }

    /// The memory plan for this batch shape (`masked` positions chosen), made (and the backend
    /// sized) only when the shape changes; sharing it costs a reference count, not an allocation.
    fn plan_for(
        &mut self,
        batch: usize,
        seq: usize,
        masked: usize,
    ) -> Result<Arc<StepActs>, TrainError> {
        let max_pred = max_predictions(seq, self.config.mask_prob).max(1);
        if let Some(a) = &self.acts {
            let s = a.shape;
            let summing = self.backend.sizes().grad_sum > 0;
            let fits = s.batch == batch && s.seq == seq && s.max_masked >= masked;
            if fits && summing == self.sums_gradients {
                return Ok(Arc::clone(a));
            }
        }
        let shape = BatchShape {
            batch,
            seq,
            max_masked: masked.max(batch * max_pred),
        };
        let acts = Arc::new(StepActs::new(&self.model.config, shape));
        let params = self.model.layout.len();
        self.backend.reserve(Sizes {
            params,
            acts: acts.sizes.0,
            ints: acts.sizes.1,
            grad_sum: if self.sums_gradients { params } else { 0 },
        })?;
        self.acts = Some(Arc::clone(&acts));
        Ok(acts)
    }

    fn check_batch(&self, batch: &Batch, masking: &Masking) -> Result<(), TrainError> {
        let cfg = &self.model.config;
        batch.validate().map_err(TrainError::Batch)?;
        if batch.seq > cfg.max_position_embeddings {
            return Err(TrainError::Batch(format!(
                "sequence length {} exceeds max_position_embeddings {}",
                batch.seq, cfg.max_position_embeddings
            )));
        }
        let ids = batch.input_ids.iter().chain(&masking.masked_ids);
        if let Some(bad) = ids.copied().find(|&i| i as usize >= cfg.vocab_size) {
            return Err(TrainError::Batch(format!(
                "token id {bad} is outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
        if let Some(bad) = batch
            .token_types
            .iter()
            .find(|&&t| t as usize >= cfg.type_vocab_size)
        {
            return Err(TrainError::Batch(format!(
                "token type {bad} is outside the {} token types",
                cfg.type_vocab_size
            )));
        }
        let n = batch.input_ids.len();
        if masking.masked_ids.len() != n {
            return Err(TrainError::Batch(format!(
                "masked ids have {} values, expected {n}",
                masking.masked_ids.len()
            )));
        }
        if masking.positions.is_empty() {
            return Err(TrainError::Batch(
                "no position is chosen for masking".into(),
            ));
        }
        if !masking.positions.windows(2).all(|w| w[0] < w[1])
            || masking.positions.last().is_some_and(|&p| p as usize >= n)
        {
            return Err(TrainError::Batch(
                "chosen positions must be distinct, increasing and inside the batch".into(),
            ));
        }
        Ok(())
    }

    /// The forward and backward passes of both networks on one batch with a given masking.
    /// Leaves the gradients in the backend; takes no optimizer step. Dropout and Gumbel noise
    /// are those of the current step.
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        masking: &Masking,
        corruption: Corruption,
    ) -> Result<LossReport, TrainError> {
        self.check_batch(batch, masking)?;
        let (masked, acts) = self.load_inputs(batch, masking)?;
        if let Corruption::Given(ids) = corruption {
            self.check_given(batch, ids)?;
        }
        self.backend
            .begin_step(self.step_scalars(self.current_lr()), None);
        let means = Means::of(batch, masked);
        self.issue_passes(batch, &acts, masked, corruption, means, true);
        self.backend.end_step();
        let picked = matches!(corruption, Corruption::Generator(_));
        let sums = LossSums(self.backend.read_loss_sums());
        Ok(sums.report(means, picked, self.config.disc_weight))
    }

    fn check_given(&self, batch: &Batch, ids: &[u32]) -> Result<(), TrainError> {
        let vocab = self.model.config.vocab_size;
        if ids.len() != batch.input_ids.len() {
            return Err(TrainError::Batch(format!(
                "given replacements have {} values, expected {}",
                ids.len(),
                batch.input_ids.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(TrainError::Batch(format!(
                "replacement id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    /// What the current step's operations read from the backend: `lr` and the step's seeds.
    fn step_scalars(&self, lr: f32) -> StepScalars {
        let seed = self.config.seed;
        StepScalars {
            lr,
            dropout_seed: Stream::new(seed, Purpose::DropoutSeed, self.step).seed(),
            sample_seed: Stream::new(seed, Purpose::SampleSeed, self.step).seed(),
            first_sequence: 0,
            first_pick: 0,
        }
    }

    /// Writes a checked batch, its masking and the MLM targets into the integer buffers of the
    /// memory plan for their shape. Returns the number of chosen positions and the plan.
    fn load_inputs(
        &mut self,
        batch: &Batch,
        masking: &Masking,
    ) -> Result<(usize, Arc<StepActs>), TrainError> {
        let masked = masking.positions.len();
        let acts = self.plan_for(batch.batch, batch.seq, masked)?;
        let be = &mut self.backend;
        be.write_ints(acts.input_ids, &batch.input_ids);
        be.write_ints(acts.token_types, &batch.token_types);
        be.write_ints(acts.attention_mask, &batch.attention_mask);
        be.write_ints(acts.masked_ids, &masking.masked_ids);
        be.write_ints(acts.positions.prefix(masked), &masking.positions);
        self.host_ints.clear();
        let targets = masking
            .positions
            .iter()
            .map(|&p| batch.input_ids[p as usize]);
        self.host_ints.extend(targets);
        be.write_ints(acts.targets.prefix(masked), &self.host_ints);
        Ok((masked, acts))
    }

    /// Issues the device work of both passes on the loaded inputs: zeroing the gradients, the
    /// generator, its loss and the replacement, the discriminator, its loss, and the backward
    /// pass, each loss a mean over the counts of `means`, and the sums of the metrics (the
    /// step's `first` ones, or added to the held ones). With [`Corruption::Generator`] it
    /// writes nothing from the host, so it can be recorded; the given replacements must have
    /// passed `check_given`.
    fn issue_passes(
        &mut self,
        batch: &Batch,
        acts: &StepActs,
        masked: usize,
        corruption: Corruption,
        means: Means,
        first: bool,
    ) {
        let grads = self.all(Space::Grad);
        let be = &mut self.backend;
        be.fill(grads, 0.0);

        self.tape.clear();
        let cfg = &self.model.config;
        let mut drop = if self.dropout {
            DropoutPlan::new(cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob)
        } else {
            DropoutPlan::off()
        };
        model::generator_forward(be, &mut self.tape, &self.model, acts, masked, &mut drop);
        let vocab = self.model.config.vocab_size;
        let picks = acts.picks.prefix(masked);
        let pick = match corruption {
            Corruption::Generator(p) => Some((p, picks)),
            Corruption::Given(_) => None,
        };
        be.softmax_xent(&SoftmaxXentOp {
            logits: acts.generator_logits(masked),
            row_stride: acts.logits_stride,
            targets: acts.targets.prefix(masked),
            row_loss: acts.gen_row_loss.prefix(masked),
            grad_scale: 1.0 / means.masked as f32,
            pick,
            rows: masked,
            vocab,
        });
        match corruption {
            Corruption::Generator(_) => be.replace_tokens(&ReplaceTokensOp {
                original: acts.input_ids,
                positions: acts.positions.prefix(masked),
                picks,
                corrupted: acts.corrupted_ids,
                is_replaced: acts.is_replaced,
            }),
            Corruption::Given(ids) => {
                be.write_ints(acts.corrupted_ids, ids);
                self.host.clear();
                let labels = ids.iter().zip(&batch.input_ids);
                self.host
                    .extend(labels.map(|(a, b)| f32::from(u8::from(a != b))));
                be.write(acts.is_replaced, &self.host);
            }
        }
        let disc_scale = self.config.disc_weight / means.real_tokens as f32;
        let (tape, model) = (&mut self.tape, &self.model);
        model::discriminator_with_loss(be, tape, model, acts, &mut drop, disc_scale);
        self.tape.backward(be, &acts.loss_grads(masked));
        self.backend.loss_sums(&LossSumsOp {
            gen_row_loss: acts.gen_row_loss.prefix(masked),
            disc_row_loss: acts.disc_row_loss,
            disc_logits: acts.disc_logits,
            is_replaced: acts.is_replaced,
            mask: acts.attention_mask,
            picks: pick.map(|(_, picks)| picks),
            targets: acts.targets.prefix(masked),
            first,
        });
    }

    /// What a recorded step depends on besides the memory plan's buffers and the
    /// [`StepScalars`]: every other value the step's operations take from the host. `part`
    /// tells the recordings of a split step apart ([`Part`]).
    fn step_fingerprint(&self, acts: &StepActs, masked: usize, means: Means, part: Part) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        let c = &self.config;
        let s = acts.shape;
        (s.batch, s.seq, s.max_masked, masked).hash(&mut h);
        let argmax = matches!(self.pick(), Pick::Argmax);
        (means.real_tokens, self.dropout, argmax).hash(&mut h);
        if part != Part::Whole {
            (part, means.masked).hash(&mut h);
        }
        let floats = [
            c.disc_weight,
            c.beta1,
            c.beta2,
            c.eps,
            c.weight_decay,
            c.max_grad_norm,
        ];
        floats.map(f32::to_bits).hash(&mut h);
        h.finish()
    }

    /// The global norm of the current gradients (every unique tensor counted once).
    pub fn grad_norm(&mut self) -> f32 {
        self.backend.grad_norm()
    }

    /// Clips the gradients to the configured global norm and applies one AdamW update at `lr`
    /// (none if the norm is not finite). Returns the norm before clipping.
    pub fn apply_gradients(&mut self, lr: f32) -> f32 {
        self.backend.begin_step(self.step_scalars(lr), None);
        self.issue_update();
        self.backend.end_step();
        self.backend.last_grad_norm()
    }

    /// The optimizer step at the learning rate of the step the backend is in.
    fn issue_update(&mut self) {
        let c = &self.config;
        let (adamw, layout) = (c.adamw(), &self.model.layout);
        let groups = [
            param_group(layout.decayed, 1.0, true, adamw),
            param_group(layout.not_decayed, 1.0, false, adamw),
        ];
        self.backend.optimizer_step(&OptimizerStep {
            groups: &groups,
            max_norm: c.max_grad_norm,
        });
    }

    /// The learning rate of the next step.
    pub fn current_lr(&self) -> f32 {
        let c = &self.config;
        schedule::learning_rate(c.peak_lr, self.step, c.warmup_steps, c.total_steps)
    }

    /// One whole training step: mask, corrupt, both losses, backward, clip, AdamW. On a backend
    /// that records steps (CUDA graphs), the device work of a step whose shape was seen before is
    /// replayed rather than issued again.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepReport, TrainError> {
        self.train_step_split(std::slice::from_ref(batch), &Solo)
    }

    /// One optimizer step on a global batch split over the ranks of `comm` and over
    /// micro-batches: this process holds `micro`, slices `rank·K .. rank·K + K` of the
    /// `world·K` equal slices of the global batch, `K = micro.len()`. Every rank calls it at
    /// the same step with micro-batches of the same size.
    ///
    /// The step is the one [`Trainer::train_step`] takes on the whole global batch: masking,
    /// dropout and Gumbel noise are keyed by each sequence's place in the global batch, and
    /// both losses are means over the global batch's masked positions and real tokens. The
    /// gradients of each micro-batch are computed alone and then added, micro-batches in
    /// order, and summed over the ranks, so only the order of those sums differs from the
    /// unsplit step. With one micro-batch and one rank it is [`Trainer::train_step`].
    ///
    /// It is [`Trainer::prepare_step`], [`Trainer::issue_step`] and [`Trainer::finish_step`]
    /// one after the other; a loop that has its next batch early prepares it between the last
    /// two, while the device works.
    pub fn train_step_split(
        &mut self,
        micro: &[Batch],
        comm: &dyn Collective,
    ) -> Result<StepReport, TrainError> {
        let prepared = self.prepare_step(micro.to_vec(), comm)?;
        let issued = self.issue_step(prepared, comm)?;
        self.finish_step(issued, comm)
    }

    /// The host's part of the next step to issue (the one after a step issued and not yet
    /// finished, else step [`Trainer::step`]): checks `micro` (as [`Trainer::train_step_split`]
    /// takes it) and chooses its masked positions. It changes nothing on the backend, so it can
    /// run while the device works on the step before.
    pub fn prepare_step(
        &self,
        micro: Vec<Batch>,
        comm: &dyn Collective,
    ) -> Result<PreparedStep, TrainError> {
        let (accumulate, world, rank) = (micro.len(), comm.world(), comm.rank());
        let Some(rows) = micro.first().map(|b| b.batch) else {
            return Err(TrainError::Batch("a step needs a micro-batch".into()));
        };
        if let Some(b) = micro.iter().find(|b| b.batch != rows) {
            return Err(TrainError::Batch(format!(
                "micro-batches of one step must hold as many sequences: {rows} and {}",
                b.batch
            )));
        }
        let step = self.step + u64::from(self.in_flight);
        let slices = world * accumulate;
        let first_slice = rank * accumulate;
        let mut maskings = vec![Masking::default(); accumulate];
        // Masked positions and real tokens of every slice, summed over the ranks: the means
        // of the losses and the Gumbel rows of each slice need the whole global batch's. The
        // last count is of the ranks with a bad batch: all ranks fail the step together,
        // rather than some going on to a collective that the others never join.
        let mut counts = vec![0.0f64; 2 * slices + 1];
        let mut bad = None;
        for (k, (batch, masking)) in micro.iter().zip(&mut maskings).enumerate() {
            let slice = first_slice + k;
            self.mask(batch, step, (slice * rows) as u64, masking);
            if bad.is_none() {
                bad = self.check_batch(batch, masking).err();
            }
            counts[slice] = masking.positions.len() as f64;
            counts[slices + slice] = batch.real_tokens() as f64;
        }
        counts[2 * slices] = f64::from(u8::from(bad.is_some()));
        comm.all_reduce_sum_f64(&mut counts);
        if let Some(e) = bad {
            return Err(e);
        }
        if counts[2 * slices] > 0.0 {
            return Err(TrainError::Batch(format!(
                "{} other rank(s) have a bad batch at step {step}",
                counts[2 * slices]
            )));
        }
        counts.pop();
        let means = Means {
            masked: counts[..slices].iter().sum::<f64>() as usize,
            real_tokens: counts[slices..].iter().sum::<f64>() as usize,
        };
        // The Gumbel row of each micro-batch's first masked position in the global batch.
        let first_picks = (first_slice..first_slice + accumulate)
            .map(|slice| counts[..slice].iter().sum::<f64>() as u64)
            .collect();
        Ok(PreparedStep {
            step,
            micro,
            maskings,
            first_picks,
            first_slice,
            whole: accumulate == 1 && world == 1,
            means,
        })
    }

    /// Issues the device work of a prepared step (its passes, the gradients' sums over
    /// micro-batches and ranks, and the update) and returns without waiting for it, unless a
    /// collective on the host must.
    ///
    /// # Panics
    /// If a step is in flight (finish it first), or `prepared` was prepared for another step
    /// than [`Trainer::step`].
    pub fn issue_step(
        &mut self,
        prepared: PreparedStep,
        comm: &dyn Collective,
    ) -> Result<IssuedStep, TrainError> {
        assert!(
            !self.in_flight,
            "issue_step: step {} is in flight; finish_step it first",
            self.step
        );
        assert_eq!(
            prepared.step, self.step,
            "issue_step: a step prepared for step {} cannot be step {}",
            prepared.step, self.step
        );
        let lr = self.current_lr();
        let PreparedStep {
            micro,
            maskings,
            means,
            ..
        } = &prepared;
        if prepared.whole {
            let (batch, masking) = (&micro[0], &maskings[0]);
            let pick = self.pick();
            let scalars = self.step_scalars(lr);
            let (masked, acts) = self.load_inputs(batch, masking)?;
            let recording = Some(self.step_fingerprint(&acts, masked, *means, Part::Whole));
            if !self.backend.begin_step(scalars, recording) {
                let corruption = Corruption::Generator(pick);
                self.issue_passes(batch, &acts, masked, corruption, *means, true);
                self.issue_update();
                self.backend.end_step();
            }
        } else {
            let (accumulate, rows) = (micro.len(), micro[0].batch);
            self.sums_gradients |= accumulate > 1;
            for (k, (batch, masking)) in micro.iter().zip(maskings).enumerate() {
                let scalars = StepScalars {
                    first_sequence: ((prepared.first_slice + k) * rows) as u64,
                    first_pick: prepared.first_picks[k],
                    ..self.step_scalars(lr)
                };
                let part = Part::micro(k, accumulate);
                self.micro_step(batch, masking, scalars, *means, part)?;
            }
            let grads = self.all(Space::Grad);
            self.backend.all_reduce(grads, comm);
            let recording = Some(self.update_fingerprint());
            if !self.backend.begin_step(self.step_scalars(lr), recording) {
                self.issue_update();
                self.backend.end_step();
            }
        }
        self.in_flight = true;
        Ok(IssuedStep { means: *means, lr })
    }

    /// Waits for an issued step, reads its losses and gradient norm (summed over the ranks of
    /// `comm`), checks them and counts the step.
    pub fn finish_step(
        &mut self,
        issued: IssuedStep,
        comm: &dyn Collective,
    ) -> Result<StepReport, TrainError> {
        self.in_flight = false;
        let mut sums = LossSums(self.backend.read_loss_sums());
        comm.all_reduce_sum_f64(&mut sums.0);
        let loss = sums.report(issued.means, true, self.config.disc_weight);
        self.finish(loss, issued.lr)
    }

    /// The passes of one micro-batch of a split step, and the sums of its gradients and its
    /// metrics with those of the micro-batches before it.
    fn micro_step(
        &mut self,
        batch: &Batch,
        masking: &Masking,
        scalars: StepScalars,
        means: Means,
        part: Part,
    ) -> Result<(), TrainError> {
        let (masked, acts) = self.load_inputs(batch, masking)?;
        let recording = Some(self.step_fingerprint(&acts, masked, means, part));
        if !self.backend.begin_step(scalars, recording) {
            let corruption = Corruption::Generator(self.pick());
            let first = matches!(part, Part::Only | Part::First);
            self.issue_passes(batch, &acts, masked, corruption, means, first);
            let (grads, sum) = (self.all(Space::Grad), self.all(Space::GradSum));
            let add = match part {
                Part::Whole | Part::Only | Part::Update => None,
                Part::First => Some((grads, sum, true)),
                Part::Middle => Some((grads, sum, false)),
                Part::Last => Some((sum, grads, false)),
            };
            if let Some((src, dst, overwrite)) = add {
                let op = AccumulateOp {
                    src,
                    dst,
                    overwrite,
                };
                self.backend.accumulate(&op);
            }
            self.backend.end_step();
        }
        Ok(())
    }

    /// What a recorded optimizer update depends on besides the step's scalars.
    fn update_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        let c = &self.config;
        let floats = [c.beta1, c.beta2, c.eps, c.weight_decay, c.max_grad_norm];
        (Part::Update, floats.map(f32::to_bits)).hash(&mut h);
        h.finish()
    }

    /// Chooses and masks the positions of `batch` at optimizer step `step`, whose first
    /// sequence is sequence `first_sequence` of the step's global batch.
    fn mask(&self, batch: &Batch, step: u64, first_sequence: u64, out: &mut Masking) {
        let c = &self.config;
        let special = &self.model.config.special_tokens;
        let keys = MaskKeys {
            seed: c.seed,
            step,
            first_sequence,
        };
        mask_batch(batch, special, c.mask_prob, keys, out);
    }

    fn pick(&self) -> Pick {
        match self.config.replacement {
            Replacement::Argmax => Pick::Argmax,
            Replacement::Sample => Pick::Gumbel,
        }
    }

    /// Checks the step's losses and counts it.
    fn finish(&mut self, loss: LossReport, lr: f32) -> Result<StepReport, TrainError> {
        if !loss.gen_loss.is_finite() || !loss.disc_loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                gen_loss: loss.gen_loss,
                disc_loss: loss.disc_loss,
            });
        }
        let grad_norm = self.backend.last_grad_norm();
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss,
            lr,
            grad_norm,
        })
    }
}

/// A step's host-side work ([`Trainer::prepare_step`]): its checked micro-batches, their
/// masking and the counts of its global batch; [`Trainer::issue_step`] takes it.
#[derive(Debug)]
pub struct PreparedStep {
    /// The optimizer step it was prepared for (its masking is keyed by it).
    step: u64,
    micro: Vec<Batch>,
    maskings: Vec<Masking>,
    /// The Gumbel row of each micro-batch's first masked position in the global batch.
    first_picks: Vec<u64>,
    /// This process's first slice of the global batch.
    first_slice: usize,
    /// One micro-batch and one rank: the step is recorded whole, update included.
    whole: bool,
    means: Means,
}

/// A step whose device work was issued ([`Trainer::issue_step`]); [`Trainer::finish_step`]
/// waits for it and reports it.
#[derive(Debug)]
#[must_use = "a step issued is counted and reported only by finish_step"]
pub struct IssuedStep {
    means: Means,
    lr: f32,
}

/// The counts the two losses of a step are means over: the masked positions and the real
/// tokens of the whole (global) batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Means {
    masked: usize,
    real_tokens: usize,
}

impl Means {
    /// The counts of one unsplit batch with `masked` chosen positions.
    fn of(batch: &Batch, masked: usize) -> Self {
        Means {
            masked,
            real_tokens: batch.real_tokens(),
        }
    }
}

/// Which part of a step a recording holds: the micro-batches of a split step differ in how
/// their gradients join the sum ([`AccumulateOp`]), and its optimizer update is recorded alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Part {
    /// The passes and the update of an unsplit step.
    Whole,
    /// The passes of a rank's only micro-batch (nothing to sum).
    Only,
    /// The first of several micro-batches: its gradients start the sum.
    First,
    /// Added to the sum.
    Middle,
    /// The last: the sum is added to its gradients, where the update reads them.
    Last,
    /// The optimizer update after the micro-batches and the all-reduce.
    Update,
}

impl Part {
    fn micro(k: usize, count: usize) -> Self {
        match (k, count) {
            (_, 1) => Part::Only,
            (0, _) => Part::First,
            (k, n) if k + 1 == n => Part::Last,
            _ => Part::Middle,
        }
    }
}

/// Sums over tokens that a [`LossReport`] is made of ([`LossSumsOp`]), added over
/// micro-batches and ranks: generator loss, discriminator loss, tokens the discriminator
/// labelled right, replaced tokens, and masked positions where the generator's pick was the
/// original.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LossSums([f64; LOSS_SUMS]);

impl LossSums {
    fn report(&self, means: Means, picked: bool, disc_weight: f32) -> LossReport {
        let [gen, disc, right, replaced, hits] = self.0;
        let (masked, real) = (means.masked, means.real_tokens);
        let gen_loss = (gen / masked as f64) as f32;
        let disc_loss = (disc / real as f64) as f32;
        LossReport {
            gen_loss,
            disc_loss,
            total_loss: gen_loss + disc_weight * disc_loss,
            mlm_accuracy: picked.then(|| hits as f32 / masked as f32),
            disc_accuracy: right as f32 / real as f32,
            replaced_fraction: replaced as f32 / real as f32,
            masked,
            real_tokens: real,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TrainConfig, Trainer};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Space;
    use crate::comm::{Collective, Solo};
    use crate::data::Batch;
    use crate::model::{config::ElectraConfig, Model};
    use crate::tape::Op;

    /// Every operation of a pretraining step that is the first writer of an activation gradient
    /// sets it through its overwrite mode, so that the backward pass zeroes only the input of
    /// the gather of masked rows, which adds to some rows only: nothing else costs a fill.
    #[test]
    fn a_pretraining_step_zeroes_only_what_no_kernel_can_set() {
        let mut t = tiny_trainer();
        let special = t.model.config.special_tokens;
        t.train_step(&Batch::random(4, 32, 300, 1, &special))
            .unwrap();
        let zeroed = t.tape.zeroed();
        let ops = t.tape.ops();
        assert_eq!(zeroed.len(), 1, "{zeroed:?}");
        let (at, range) = zeroed[0];
        let Op::GatherRows(gather) = ops[at] else {
            panic!("operation {at} ({:?}) had {range:?} zeroed", ops[at]);
        };
        assert_eq!(range, gather.x.grad());
    }

    fn tiny_trainer() -> Trainer<CpuBackend> {
        let mut config = ElectraConfig::preset("tiny").unwrap();
        config.vocab_size = 300;
        let model = Model::new(config);
        let values = model.initial_values(3).unwrap();
        let recipe = TrainConfig::default();
        Trainer::new(CpuBackend::new(), model, recipe, &values).unwrap()
    }

    /// Steps whose host work is prepared while the step before is in flight (as pretraining and
    /// `bench` run them) are bit for bit the steps taken one after another: the prepared step's
    /// masking is keyed by its own step, not by the one still in flight.
    #[test]
    fn steps_prepared_ahead_are_the_steps_taken_one_by_one() {
        let special = tiny_trainer().model.config.special_tokens;
        let batches: Vec<Batch> = (0..3)
            .map(|i| Batch::random(4, 32, 300, 10 + i, &special))
            .collect();
        let mut one_by_one = tiny_trainer();
        let reports: Vec<_> = batches
            .iter()
            .map(|b| one_by_one.train_step(b).unwrap())
            .collect();
        let mut ahead = tiny_trainer();
        let mut next = Some(ahead.prepare_step(vec![batches[0].clone()], &Solo).unwrap());
        for (i, want) in reports.iter().enumerate() {
            let issued = ahead.issue_step(next.take().unwrap(), &Solo).unwrap();
            if let Some(b) = batches.get(i + 1) {
                next = Some(ahead.prepare_step(vec![b.clone()], &Solo).unwrap());
            }
            let got = ahead.finish_step(issued, &Solo).unwrap();
            assert_eq!(
                (got.step, got.loss, got.grad_norm.to_bits()),
                (want.step, want.loss, want.grad_norm.to_bits())
            );
        }
        assert_eq!(ahead.flat(Space::Param), one_by_one.flat(Space::Param));
        assert_eq!(ahead.flat(Space::AdamV), one_by_one.flat(Space::AdamV));
    }

    /// A step is issued only once the step before it is finished.
    #[test]
    #[should_panic(expected = "issue_step: step 0 is in flight; finish_step it first")]
    fn a_step_is_issued_only_in_its_turn() {
        let mut t = tiny_trainer();
        let special = t.model.config.special_tokens;
        let batch = Batch::random(4, 32, 300, 1, &special);
        let first = t.prepare_step(vec![batch.clone()], &Solo).unwrap();
        let issued = t.issue_step(first, &Solo).unwrap();
        let second = t.prepare_step(vec![batch], &Solo).unwrap();
        let _ = t.issue_step(second, &Solo);
        drop(issued);
    }

    /// A prepared step is masked for its step: it cannot be issued as another.
    #[test]
    #[should_panic(expected = "issue_step: a step prepared for step 0 cannot be step 1")]
    fn a_step_prepared_for_one_step_is_not_issued_as_another() {
        let mut t = tiny_trainer();
        let special = t.model.config.special_tokens;
        let batch = Batch::random(4, 32, 300, 1, &special);
        let (first, again) = (
            t.prepare_step(vec![batch.clone()], &Solo).unwrap(),
            t.prepare_step(vec![batch], &Solo).unwrap(),
        );
        let issued = t.issue_step(first, &Solo).unwrap();
        t.finish_step(issued, &Solo).unwrap();
        let _ = t.issue_step(again, &Solo);
    }

    /// Another rank's bad batch fails this rank's step too, before any device work, so that no
    /// rank goes on to a collective the others never join.
    #[test]
    fn a_bad_batch_on_another_rank_fails_the_step_on_every_rank() {
        /// Two ranks, of which this is rank 0 and the other reports a bad batch.
        struct BadPeer;
        impl Collective for BadPeer {
            fn rank(&self) -> usize {
                0
            }
            fn world(&self) -> usize {
                2
            }
            fn local_rank(&self) -> usize {
                0
            }
            fn all_reduce_sum_f32(&self, _: &mut [f32]) {}
            fn all_reduce_sum_f64(&self, values: &mut [f64]) {
                *values.last_mut().unwrap() += 1.0;
            }
            fn broadcast(&self, _: &mut Vec<u8>) {}
            fn all_gather(&self, _: &[u8]) -> Vec<u8> {
                unreachable!("the trainer gathers nothing")
            }
            fn barrier(&self) {}
            fn abort(&self, code: i32) -> ! {
                panic!("abort({code})")
            }
        }
        let t = tiny_trainer();
        let special = t.model.config.special_tokens;
        let batch = Batch::random(4, 32, 300, 1, &special);
        let err = t.prepare_step(vec![batch], &BadPeer).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad batch: 1 other rank(s) have a bad batch at step 0"
        );
    }

    #[test]
    fn the_recipe_validates_and_each_bad_number_is_named() {
        assert_eq!(TrainConfig::default().validate(), Ok(()));
        type Spoil = fn(&mut TrainConfig);
        let bad: [(&str, Spoil); 7] = [
            ("peak_lr must be a finite number >= 0, got -0.0001", |c| {
                c.peak_lr = -1e-4
            }),
            ("disc_weight must be a finite number >= 0, got NaN", |c| {
                c.disc_weight = f32::NAN
            }),
            ("mask_prob must be in (0, 1), got 1", |c| c.mask_prob = 1.0),
            (
                "weight_decay must be a finite number >= 0, got -0.01",
                |c| c.weight_decay = -0.01,
            ),
            ("beta2 must be in [0, 1), got 1", |c| c.beta2 = 1.0),
            ("eps must be a finite number > 0, got 0", |c| c.eps = 0.0),
            ("max_grad_norm must be a finite number > 0, got inf", |c| {
                c.max_grad_norm = f32::INFINITY
            }),
        ];
        for (expected, spoil) in bad {
            let mut config = TrainConfig::default();
            spoil(&mut config);
            assert_eq!(config.validate(), Err(expected.to_string()));
        }
    }
}
