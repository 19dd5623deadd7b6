//! A `tiny` CPU training step through the C ABI (`electra_trainer_step`, called as a C program
//! calls it) against the same step through the Rust API (`Trainer::train_step`): what the
//! boundary costs (issue 17 asks under 1%). The two paths alternate, one step each per round and
//! the first of the pair swapped every round, so that the drift of a shared machine falls on both
//! alike. Printed: the medians of each path, and the median and quartiles of the rounds' own
//! C/Rust ratios (each from two steps a few hundred milliseconds apart, so slow drift cancels).

use electra::backend::cpu::CpuBackend;
use electra::capi::trainer::{
    electra_trainer_create, electra_trainer_destroy, electra_trainer_options_default,
    electra_trainer_step, ElectraStepMetrics, ElectraTrainer, ElectraTrainerOptions,
};
use electra::capi::ElectraStatus;
use electra::data::Batch;
use electra::model::{config::ElectraConfig, Model};
use electra::train::{TrainConfig, Trainer};
use std::time::Instant;

const VOCAB: u32 = 1000;
const ROUNDS: usize = 60;
const WARMUP: usize = 3;

/// The value at `q` (0 to 1) of the sorted `values`.
fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs one round without warm-up,
    // a smoke test (and a short run to count instructions under callgrind).
    let (warmup, rounds) = if std::env::args().any(|a| a == "--bench") {
        (WARMUP, ROUNDS)
    } else {
        (0, 1)
    };
    let (batch, seq) = (8, 128);
    let mut config = ElectraConfig::preset("tiny").unwrap();
    config.vocab_size = VOCAB as usize;
    let data = Batch::random(batch, seq, VOCAB as usize, 7, &config.special_tokens);
    let model = Model::new(config);
    let values = model.initial_values(0).unwrap();
    let recipe = TrainConfig {
        warmup_steps: 100,
        total_steps: 1000,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(CpuBackend::new(), model, recipe, &values).unwrap();
    let mut rust_step = || {
        let t = Instant::now();
        trainer.train_step(&data).unwrap();
        t.elapsed().as_secs_f64()
    };

    // SAFETY: the options and the handle are used as the header documents; the batch's arrays
    // hold batch · seq values each and outlive the calls.
    let handle = unsafe {
        let mut options = std::mem::MaybeUninit::<ElectraTrainerOptions>::uninit();
        let status = electra_trainer_options_default(options.as_mut_ptr());
        assert_eq!(status, ElectraStatus::Ok);
        let mut options = options.assume_init();
        options.vocab_size = VOCAB;
        let mut handle: *mut ElectraTrainer = std::ptr::null_mut();
        let status = electra_trainer_create(&options, &mut handle);
        assert_eq!(status, ElectraStatus::Ok);
        handle
    };
    let mut metrics = ElectraStepMetrics {
        struct_size: std::mem::size_of::<ElectraStepMetrics>(),
        ..Default::default()
    };
    let mut c_step = || {
        let t = Instant::now();
        // SAFETY: as above.
        let status = unsafe {
            electra_trainer_step(
                handle,
                data.input_ids.as_ptr(),
                data.attention_mask.as_ptr(),
                data.token_types.as_ptr(),
                batch,
                seq,
                &mut metrics,
            )
        };
        assert_eq!(status, ElectraStatus::Ok);
        t.elapsed().as_secs_f64()
    };

    let (mut rust, mut c) = (vec![], vec![]);
    for round in 0..warmup + rounds {
        let (r, cc) = if round % 2 == 0 {
            (rust_step(), c_step())
        } else {
            let cc = c_step();
            (rust_step(), cc)
        };
        if round >= warmup {
            rust.push(r);
            c.push(cc);
        }
    }
    // SAFETY: the handle is live and not used after this.
    unsafe { electra_trainer_destroy(handle) };
    let ratios: Vec<f64> = c.iter().zip(&rust).map(|(c, r)| c / r).collect();
    let (r, cc) = (quantile(rust, 0.5), quantile(c, 0.5));
    println!(
        "tiny CPU step, batch {batch} x {seq}, {rounds} alternating rounds ({} threads): \
         medians Rust API {:.2} ms, C API {:.2} ms (C/Rust {:.4}); per-round C/Rust median \
         {:.4}, quartiles {:.4} to {:.4}",
        rayon::current_num_threads(),
        r * 1e3,
        cc * 1e3,
        cc / r,
        quantile(ratios.clone(), 0.5),
        quantile(ratios.clone(), 0.25),
        quantile(ratios, 0.75),
    );
}
