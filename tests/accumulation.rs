//! Gradient accumulation and data-parallel steps in the library, with two ranks played by two
//! threads (an in-process [`Collective`]), so that the split step is checked without MPI:
//! `tests/mpi_ranks.rs` runs the same under `mpirun`. And what a step adds to: nothing zeroes the
//! activation gradients before a step (the tape zeroes each range before the first operation
//! that adds to it or reads it, `src/tape.rs`), so none may leak from the step before.

use electra::backend::cpu::CpuBackend;
use electra::backend::{Backend, Buf, Space};
use electra::comm::{Collective, Solo};
use electra::data::Batch;
use electra::finetune::data::Target;
use electra::finetune::{Classifier, FtOptions};
use electra::model::{config::ElectraConfig, Model};
use electra::train::{StepReport, TrainConfig, Trainer};
use std::sync::{Arc, Barrier, Mutex};

const VOCAB: usize = 300;
const SEQ: usize = 32;

fn trainer() -> Trainer<CpuBackend> {
    let mut config = ElectraConfig::preset("tiny").unwrap();
    config.vocab_size = VOCAB;
    config.max_position_embeddings = SEQ;
    let model = Model::new(config);
    let values = model.initial_values(5).unwrap();
    let recipe = TrainConfig {
        seed: 9,
        warmup_steps: 2,
        total_steps: 10,
        peak_lr: 2e-3,
        ..TrainConfig::default()
    };
    Trainer::new(CpuBackend::new(), model, recipe, &values).unwrap()
}

/// The global batch of `step`: 8 sequences with some padding.
fn global_batch(step: u64) -> Batch {
    let special = trainer().model.config.special_tokens;
    let mut b = Batch::random(8, SEQ, VOCAB, step, &special);
    // Padding in two sequences, so that the slices differ in real tokens.
    for (row, len) in [(1, 20), (6, 11)] {
        for t in len..SEQ {
            let i = row * SEQ + t;
            b.attention_mask[i] = 0;
            b.input_ids[i] = 0;
            b.token_types[i] = 0;
        }
    }
    b
}

/// Sequences `rows` of `b`.
fn rows(b: &Batch, rows: std::ops::Range<usize>) -> Batch {
    let cells = rows.start * b.seq..rows.end * b.seq;
    Batch {
        batch: rows.len(),
        seq: b.seq,
        input_ids: b.input_ids[cells.clone()].to_vec(),
        token_types: b.token_types[cells.clone()].to_vec(),
        attention_mask: b.attention_mask[cells].to_vec(),
    }
}

/// The parameters and both Adam moments.
fn state(t: &Trainer<CpuBackend>) -> Vec<Vec<f32>> {
    [Space::Param, Space::AdamM, Space::AdamV]
        .map(|s| t.flat(s))
        .to_vec()
}

/// Ranks played by threads: each collective leaves its values in a slot, waits for all, and
/// sums the slots in rank order, as MPI sums two ranks' values.
struct Threads {
    rank: usize,
    world: usize,
    barrier: Arc<Barrier>,
    slots: Arc<Mutex<Vec<Vec<f64>>>>,
}

impl Threads {
    fn world(world: usize) -> Vec<Threads> {
        let barrier = Arc::new(Barrier::new(world));
        let slots = Arc::new(Mutex::new(vec![vec![]; world]));
        (0..world)
            .map(|rank| Threads {
                rank,
                world,
                barrier: barrier.clone(),
                slots: slots.clone(),
            })
            .collect()
    }

    /// Every rank's `values`, in rank order.
    fn gather(&self, values: Vec<f64>) -> Vec<Vec<f64>> {
        self.slots.lock().unwrap()[self.rank] = values;
        self.barrier.wait();
        let all = self.slots.lock().unwrap().clone();
        self.barrier.wait();
        all
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) {
        let all = self.gather(values.iter().map(|&v| v as f64).collect());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all[1..]
                .iter()
                .fold(all[0][i] as f32, |a, s| a + s[i] as f32);
        }
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        let all = self.gather(values.to_vec());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all[1..].iter().fold(all[0][i], |a, s| a + s[i]);
        }
    }
    fn broadcast(&self, _bytes: &mut Vec<u8>) {
        unreachable!("the trainer broadcasts nothing")
    }
    fn all_gather(&self, _mine: &[u8]) -> Vec<u8> {
        unreachable!("the trainer gathers nothing")
    }
    fn barrier(&self) {
        self.barrier.wait();
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted with {code}", self.rank)
    }
}

/// `steps` split steps on each rank of `world` threads, rank r taking `per_rank` slices of 8/
/// (world·per_rank) sequences; returns rank 0's reports and every rank's final state.
fn run_ranks(world: usize, per_rank: usize, steps: u64) -> (Vec<StepReport>, Vec<Vec<Vec<f32>>>) {
    let slice = 8 / (world * per_rank);
    let handles: Vec<_> = Threads::world(world)
        .into_iter()
        .map(|comm| {
            std::thread::spawn(move || {
                let mut t = trainer();
                let mut reports = vec![];
                for step in 0..steps {
                    let b = global_batch(step);
                    let first = comm.rank * per_rank;
                    let micro: Vec<Batch> = (first..first + per_rank)
                        .map(|j| rows(&b, j * slice..(j + 1) * slice))
                        .collect();
                    reports.push(t.train_step_split(&micro, &comm).unwrap());
                }
                (reports, state(&t))
            })
        })
        .collect();
    let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let states = results.iter().map(|r| r.1.clone()).collect();
    (results.swap_remove(0).0, states)
}

#[test]
fn two_ranks_train_exactly_as_one_process_accumulating_two_micro_batches() {
    let (ranked, states) = run_ranks(2, 1, 3);
    let (accumulated, alone) = run_ranks(1, 2, 3);
    assert_eq!(states[0], states[1], "both ranks hold the same weights");
    assert_eq!(
        states[0], alone[0],
        "two ranks = one process with --accumulate 2"
    );
    for (a, b) in ranked.iter().zip(&accumulated) {
        assert_eq!(a.loss, b.loss);
        assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
    }
}

#[test]
fn a_split_step_is_the_whole_batch_step_up_to_the_order_of_sums() {
    let mut whole = trainer();
    let reports: Vec<StepReport> = (0..3)
        .map(|s| whole.train_step(&global_batch(s)).unwrap())
        .collect();
    for (world, per_rank) in [(1, 2), (2, 2), (1, 4)] {
        let (split, states) = run_ranks(world, per_rank, 3);
        for (a, b) in reports.iter().zip(&split) {
            // The same positions are masked, the same tokens counted, the same dropout drawn.
            assert_eq!(
                (a.loss.masked, a.loss.real_tokens),
                (b.loss.masked, b.loss.real_tokens)
            );
            let close = |x: f32, y: f32| (x - y).abs() <= 1e-5 * x.abs().max(1.0);
            assert!(close(a.loss.gen_loss, b.loss.gen_loss), "{a:?} {b:?}");
            assert!(close(a.loss.disc_loss, b.loss.disc_loss), "{a:?} {b:?}");
            assert!(close(a.grad_norm, b.grad_norm), "{a:?} {b:?}");
        }
        let theirs = &states[0][0];
        let worst = whole
            .flat(Space::Param)
            .iter()
            .zip(theirs)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        // Rounding in the gradient sums moves a weight by an ulp or two (1.2e-7 measured, one
        // ulp of a LayerNorm gain near 1, after three steps). Only a gradient that is itself
        // rounding noise could do more, by flipping the sign of its Adam update (2·lr): these
        // batches have none, so the bound is tight.
        assert!(
            worst < 1e-6,
            "{world} ranks × {per_rank}: max |Δw| = {worst}"
        );
    }
}

#[test]
fn one_micro_batch_on_one_rank_is_the_plain_step() {
    let mut plain = trainer();
    let mut split = trainer();
    for s in 0..2 {
        let b = global_batch(s);
        let a = plain.train_step(&b).unwrap();
        let c = split
            .train_step_split(std::slice::from_ref(&b), &Solo)
            .unwrap();
        assert_eq!(a.loss, c.loss);
    }
    assert_eq!(state(&plain), state(&split));
}

#[test]
fn micro_batches_of_different_sizes_are_refused() {
    let mut t = trainer();
    let b = global_batch(0);
    let micro = [rows(&b, 0..4), rows(&b, 4..7)];
    let e = t.train_step_split(&micro, &Solo).unwrap_err().to_string();
    assert!(e.contains("as many sequences: 4 and 3"), "{e}");
}

/// Every activation gradient the backend holds, set to NaN, which any value a step reads before
/// writing it carries into the weights.
fn poison<B: Backend>(be: &mut B) {
    let all = Buf {
        space: Space::ActGrad,
        offset: 0,
        len: be.sizes().acts,
    };
    be.fill(all, f32::NAN);
}

fn bits(state: Vec<Vec<f32>>) -> Vec<Vec<u32>> {
    state
        .into_iter()
        .map(|v| v.into_iter().map(f32::to_bits).collect())
        .collect()
}

/// Whole steps and steps of two micro-batches, with dropout and the generator's sampled
/// replacement, after the activation gradients were poisoned: the reports, weights and moments
/// are bit for bit those of the same steps without the poison.
#[test]
fn a_step_reads_no_activation_gradient_it_did_not_write() {
    let (mut clean, mut poisoned) = (trainer(), trainer());
    for step in 0..4u64 {
        let whole = global_batch(step);
        let micro = [rows(&whole, 0..4), rows(&whole, 4..8)];
        if step > 0 {
            poison(&mut poisoned.backend);
        }
        let (a, b) = if step % 2 == 0 {
            (clean.train_step(&whole), poisoned.train_step(&whole))
        } else {
            (
                clean.train_step_split(&micro, &Solo),
                poisoned.train_step_split(&micro, &Solo),
            )
        };
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.loss.total_loss.is_finite() && a.grad_norm.is_finite());
        assert_eq!(a, b, "step {step}: the reports differ");
        assert!(
            bits(state(&clean)) == bits(state(&poisoned)),
            "step {step}: the weights or moments differ"
        );
    }
}

/// The same for fine-tuning, classification and regression.
#[test]
fn a_fine_tuning_step_reads_no_activation_gradient_it_did_not_write() {
    let config = trainer().model.config.clone();
    for (outputs, regression) in [(2, false), (1, true)] {
        let values = Classifier::<CpuBackend>::initial_values(&config, outputs, 3, None).unwrap();
        let options = FtOptions {
            lr: 2e-3,
            total_steps: 10,
            ..FtOptions::default()
        };
        let new = || {
            let be = CpuBackend::new();
            Classifier::new(be, &config, outputs, regression, options.clone(), &values).unwrap()
        };
        let (mut clean, mut poisoned) = (new(), new());
        let targets: Vec<Target> = (0..8)
            .map(|i| match regression {
                true => Target::Value(i as f32 / 4.0),
                false => Target::Class(i % 2),
            })
            .collect();
        for step in 0..3u64 {
            let batch = global_batch(30 + step);
            if step > 0 {
                poison(&mut poisoned.backend);
            }
            let a = clean.train_step(&batch, &targets).unwrap();
            let p = poisoned.train_step(&batch, &targets).unwrap();
            assert!(a.is_finite());
            assert_eq!(a.to_bits(), p.to_bits(), "outputs {outputs}, step {step}");
        }
        let weights = |c: &Classifier<CpuBackend>| {
            let all = Buf {
                space: Space::Param,
                offset: 0,
                len: values.len(),
            };
            let mut v = vec![0.0; all.len];
            c.backend.read(all, &mut v);
            bits(vec![v])
        };
        assert!(
            weights(&clean) == weights(&poisoned),
            "outputs {outputs}: the weights differ"
        );
    }
}
