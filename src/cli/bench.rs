//! `electra bench`: the median training-step time on random token ids, its throughput and model
//! FLOP rate, the utilisation of the matrix rate measured on the same machine, and a table of time
//! per fused operation.

use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Device, Profiled};
use crate::data::Batch;
use crate::model::config::{ElectraConfig, EncoderConfig};
use crate::model::Model;
use crate::train::{max_predictions, TrainConfig, Trainer};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// cpu, or cuda where the CUDA backend is built in.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "small")]
    preset: String,
    #[arg(long, default_value_t = 8, value_parser = at_least_one())]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps, after two untimed ones.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    steps: usize,
}

/// Counts of 0 are refused by clap, as `pretrain` refuses its own.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// Matrix-product FLOPs of one encoder's forward pass over `n` tokens in sequences of `seq`.
fn encoder_flops(enc: &EncoderConfig, embedding: usize, n: usize, seq: usize) -> f64 {
    let (h, f) = (enc.hidden_size as f64, enc.intermediate_size as f64);
    let n = n as f64;
    let project = if embedding != enc.hidden_size {
        2.0 * n * embedding as f64 * h
    } else {
        0.0
    };
    let per_layer = 2.0 * n * h * 3.0 * h // query, key, value
        + 4.0 * n * seq as f64 * h // scores and the weighted sum of values
        + 2.0 * n * h * h // attention output
        + 4.0 * n * h * f; // feed-forward
    project + enc.num_layers as f64 * per_layer
}

/// Model FLOPs of one training step, counting matrix products only, with training = 3 × forward.
pub fn step_flops(cfg: &ElectraConfig, batch: usize, seq: usize, masked: usize) -> f64 {
    let n = batch * seq;
    let (e, v) = (cfg.embedding_size as f64, cfg.vocab_size as f64);
    let (hg, hd) = (
        cfg.generator.hidden_size as f64,
        cfg.discriminator.hidden_size as f64,
    );
    let m = masked as f64;
    let generator = encoder_flops(&cfg.generator, cfg.embedding_size, n, seq)
        + 2.0 * m * hg * e
        + 2.0 * m * e * v;
    let discriminator = encoder_flops(&cfg.discriminator, cfg.embedding_size, n, seq)
        + 2.0 * n as f64 * (hd * hd + hd);
    3.0 * (generator + discriminator)
}

/// The f32 matrix rate of this machine's CPU GEMM, from the median of a few 1024³ products.
fn cpu_matrix_rate() -> f64 {
    use crate::backend::cpu::matmul::{matmul, MatLayout, Threads};
    let k = 1024;
    let a = vec![1.0f32; k * k];
    let mut c = vec![0.0f32; k * k];
    let l = MatLayout::row_major(k, k);
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            matmul(&mut c, l, (&a, l), (&a, l), false, Threads::Pool);
            t.elapsed()
        })
        .collect();
    times.sort();
    2.0 * (k as f64).powi(3) / times[2].as_secs_f64()
}

pub fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.device.parse::<Device>()? {
        Device::Cpu => run_on(CpuBackend::new(), args, |_| {
            Ok((cpu_matrix_rate(), "f32 GEMM 1024³, measured now"))
        }),
        Device::Cuda(n) => run_on(CudaBackend::new(n)?, args, |be| {
            Ok((be.matrix_rate()?, "bf16 cuBLASLt GEMM 8192³, measured now"))
        }),
    }
}

/// The matrix rate that MFU is measured against, in FLOP/s, and how it was measured.
type Peak<B> = fn(&mut B) -> Result<(f64, &'static str), Box<dyn std::error::Error>>;

fn run_on<B: Backend>(
    backend: B,
    args: &BenchArgs,
    matrix_peak: Peak<B>,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = ElectraConfig::preset(&args.preset)?;
    if args.seq > config.max_position_embeddings || args.seq < 3 {
        return Err(format!(
            "--seq must be between 3 and {}",
            config.max_position_embeddings
        )
        .into());
    }
    let model = Model::new(config.clone());
    let values = model.initial_values(0)?;
    let backend = Profiled::new(backend);
    let mut trainer = Trainer::new(backend, model, TrainConfig::default(), &values)?;
    let special = config.special_tokens;
    let batch = Batch::random(args.batch, args.seq, config.vocab_size, 1, &special);
    let mut masked = 0;
    for _ in 0..2 {
        masked = trainer.train_step(&batch)?.loss.masked;
    }
    let mut times = vec![];
    for _ in 0..args.steps {
        let t = Instant::now();
        trainer.train_step(&batch)?;
        times.push(t.elapsed().as_secs_f64());
    }
    // One more, profiled, step for the table: timing each operation adds synchronisation.
    trainer.backend.set_enabled(true);
    let t = Instant::now();
    trainer.train_step(&batch)?;
    let profiled = t.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (args.batch * args.seq) as f64;
    let flops = step_flops(&config, args.batch, args.seq, masked);
    let (peak, peak_how) = matrix_peak(trainer.backend.inner_mut())?;
    let achieved = flops / median;
    println!(
        "electra bench: {} backend, preset {}, batch {} × seq {}, {} timed steps ({} threads)",
        args.device,
        args.preset,
        args.batch,
        args.seq,
        args.steps,
        rayon::current_num_threads()
    );
    println!("median step        {:.2} ms", median * 1e3);
    println!("tokens/s           {:.0}", tokens / median);
    println!(
        "model FLOPs/step   {:.3e} (matrix products only, training = 3 × forward)",
        flops
    );
    println!("achieved           {:.1} GFLOP/s", achieved / 1e9);
    println!("matrix peak        {:.1} GFLOP/s ({peak_how})", peak / 1e9);
    println!("MFU                {:.1}%", 100.0 * achieved / peak);
    println!(
        "\nper operation, one profiled step ({:.2} ms):",
        profiled * 1e3
    );
    println!(
        "{:<36} {:>6} {:>10} {:>7}",
        "operation", "calls", "ms", "share"
    );
    for (name, calls, time) in trainer.backend.report() {
        let ms = time.as_secs_f64() * 1e3;
        println!(
            "{name:<36} {calls:>6} {ms:>10.2} {:>6.1}%",
            100.0 * ms / (profiled * 1e3)
        );
    }
    let line = serde_json::json!({
        "device": args.device, "preset": args.preset, "batch": args.batch, "seq": args.seq,
        "median_step_s": median, "tokens_per_s": tokens / median, "model_flops_per_step": flops,
        "achieved_flops": achieved, "matrix_peak_flops": peak, "mfu": achieved / peak,
        "max_masked_per_seq": max_predictions(args.seq, 0.15),
    });
    println!("{line}");
    Ok(())
}
