//! `electra bench`: the median training-step time on random token ids, its throughput and model
//! FLOP rate, the utilisation of the matrix rate measured on the same machine, a table of time
//! per fused operation and, on a GPU, of device time per kernel; over a grid of batch sizes and
//! sequence lengths (a sweep), with one machine-readable record per configuration for `--json`.

use crate::backend::cuda::{CudaBackend, GemmTuning};
use crate::backend::{cpu::CpuBackend, Backend, Device, LinearDims, Profiled};
use crate::comm::Solo;
use crate::data::Batch;
use crate::model::config::{ElectraConfig, EncoderConfig};
use crate::model::Model;
use crate::tape::Op;
use crate::train::{max_predictions, TrainConfig, Trainer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// cpu, or cuda where the CUDA backend is built in.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "small")]
    preset: String,
    /// Sequences per step; a comma-separated list sweeps them (with every --seq).
    #[arg(long, default_value = "8", value_delimiter = ',', value_parser = at_least_one())]
    batch: Vec<usize>,
    /// Tokens per sequence; a comma-separated list sweeps them (with every --batch).
    #[arg(long, default_value = "128", value_delimiter = ',')]
    seq: Vec<usize>,
    /// Timed steps, after two untimed ones.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    steps: usize,
    /// Writes one JSON record per configuration to FILE (JSON Lines): the machine, the commit
    /// (`ELECTRA_COMMIT`, which the scripts set), the step-time percentiles, throughput, model
    /// FLOPs, MFU, memory, the per-operation table and (on a GPU) the per-kernel one.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
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

/// What a bench runs on: the card, its driver, and the matrix rate MFU is measured against.
struct Machine {
    card: String,
    driver: String,
    /// FLOP/s, and how it was measured.
    matrix_rate: (f64, String),
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// What a bench asks of a backend besides training.
trait Benched: Backend {
    /// The machine the backend runs on.
    fn machine(&mut self) -> BenchResult<Machine>;

    /// Starts timing each kernel on the device, where the backend can.
    fn start_kernel_clock(&mut self) {}

    /// For each kernel launched since `start_kernel_clock`: its launches and their device time in
    /// seconds, slowest first. Empty where the backend has no kernels to time (the CPU's
    /// operations are all in the per-operation table).
    fn kernel_times(&mut self) -> BenchResult<Vec<(String, u64, f64)>> {
        Ok(Vec::new())
    }

    /// The device memory in use, where the backend runs on a device with memory of its own.
    fn device_memory_used(&mut self) -> BenchResult<Option<u64>> {
        Ok(None)
    }

    /// What timing the candidate algorithms of each matrix-product shape found, where the
    /// backend chooses its algorithms by timing (the CUDA backend with `ELECTRA_GEMM_TUNE=1`).
    fn gemm_tunings(&mut self) -> Vec<GemmTuning> {
        Vec::new()
    }

    /// How many weight-gradient products fold their bias gradient in (the CUDA backend with
    /// `ELECTRA_FOLD_BIAS_GRADS=1`, where cuBLASLt offers an algorithm).
    fn folded_bias_grads(&mut self) -> usize {
        0
    }

    /// How many algorithms the backend's matrix library offers for a `dims` layer's weight
    /// gradient (its output gradient's rows `dy_stride` apart) with the bias gradient folded in,
    /// or why it could not say; None where there is no such library.
    fn bias_grad_epilogue(
        &mut self,
        _dims: LinearDims,
        _dy_stride: usize,
    ) -> Option<Result<usize, String>> {
        None
    }
}

impl Benched for CpuBackend {
    fn machine(&mut self) -> BenchResult<Machine> {
        Ok(Machine {
            card: cpu_model(),
            driver: "none".into(),
            matrix_rate: (cpu_matrix_rate(), "f32 GEMM 1024³, measured now".into()),
        })
    }
}

impl Benched for CudaBackend {
    fn machine(&mut self) -> BenchResult<Machine> {
        let (rate, n) = self.matrix_rate()?;
        Ok(Machine {
            card: self.device_name(),
            driver: self.driver_version(),
            matrix_rate: (rate, format!("bf16 cuBLASLt GEMM {n}³, measured now")),
        })
    }

    fn start_kernel_clock(&mut self) {
        CudaBackend::start_kernel_clock(self)
    }

    fn kernel_times(&mut self) -> BenchResult<Vec<(String, u64, f64)>> {
        Ok(CudaBackend::kernel_times(self)?)
    }

    fn device_memory_used(&mut self) -> BenchResult<Option<u64>> {
        Ok(Some(CudaBackend::device_memory_used(self)?))
    }

    fn gemm_tunings(&mut self) -> Vec<GemmTuning> {
        CudaBackend::gemm_tunings(self)
    }

    fn folded_bias_grads(&mut self) -> usize {
        CudaBackend::folded_bias_grads(self)
    }

    fn bias_grad_epilogue(
        &mut self,
        dims: LinearDims,
        dy_stride: usize,
    ) -> Option<Result<usize, String>> {
        let found = self.bias_grad_epilogue_algorithms(dims, dy_stride);
        Some(found.map_err(|e| e.to_string()))
    }
}

pub fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    for &seq in &args.seq {
        let max = ElectraConfig::preset(&args.preset)?.max_position_embeddings;
        if !(3..=max).contains(&seq) {
            return Err(format!("--seq {seq}: must be between 3 and {max}").into());
        }
    }
    match args.device.parse::<Device>()? {
        Device::Cpu => run_on(CpuBackend::new(), args),
        Device::Cuda(n) => run_on(CudaBackend::new(n)?, args),
    }
}

/// The CPU's model name, from /proc/cpuinfo where there is one.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The most memory this process has held (VmHWM), in bytes, where Linux says.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Measures the machine, then each configuration of the grid, printing each; writes their
/// records to `--json`.
fn run_on<B: Benched>(backend: B, args: &BenchArgs) -> BenchResult<()> {
    let config = ElectraConfig::preset(&args.preset)?;
    let model = Model::new(config.clone());
    let values = model.initial_values(0)?;
    let mut trainer = Trainer::new(
        Profiled::new(backend),
        model,
        TrainConfig::default(),
        &values,
    )?;
    let machine = trainer.backend.inner_mut().machine()?;
    let mut records = vec![];
    for &batch in &args.batch {
        for &seq in &args.seq {
            let record = bench_one(&mut trainer, args, &machine, (batch, seq))?;
            println!("{record}");
            records.push(record);
        }
    }
    if let Some(path) = &args.json {
        let mut text = String::new();
        for r in &records {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        crate::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// Times one batch shape: two untimed steps, `args.steps` timed ones, one profiled for the
/// per-operation and per-kernel tables. Prints the tables and returns the shape's record.
fn bench_one<B: Benched>(
    trainer: &mut Trainer<Profiled<B>>,
    args: &BenchArgs,
    machine: &Machine,
    (batch_size, seq): (usize, usize),
) -> BenchResult<Value> {
    let config = trainer.model.config.clone();
    let special = config.special_tokens;
    let batch = Batch::random(batch_size, seq, config.vocab_size, 1, &special);
    trainer.backend.set_enabled(false);
    trainer.backend.reset();
    let tuned_before = trainer.backend.inner_mut().gemm_tunings().len();
    let mut masked = 0;
    for _ in 0..2 {
        masked = trainer.train_step(&batch)?.loss.masked;
    }
    // The timed steps run as pretraining runs them: each step's host work (the checks and the
    // masking of its batch) is done while the device works on the step before.
    let mut times = vec![];
    let mut next = Some(trainer.prepare_step(vec![batch.clone()], &Solo)?);
    for i in 0..args.steps {
        let t = Instant::now();
        let prepared = next.take().expect("each timed step is prepared");
        let issued = trainer.issue_step(prepared, &Solo)?;
        if i + 1 < args.steps {
            next = Some(trainer.prepare_step(vec![batch.clone()], &Solo)?);
        }
        trainer.finish_step(issued, &Solo)?;
        times.push(t.elapsed().as_secs_f64());
    }
    // One more, profiled, step for the tables: timing each operation adds synchronisation, and
    // the step is issued, so the kernel clock times its launches.
    trainer.backend.set_enabled(true);
    trainer.backend.inner_mut().start_kernel_clock();
    let t = Instant::now();
    trainer.train_step(&batch)?;
    let profiled = t.elapsed().as_secs_f64();
    let kernel_times = trainer.backend.inner_mut().kernel_times()?;
    trainer.backend.set_enabled(false);
    let device_memory = trainer.backend.inner_mut().device_memory_used()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (batch_size * seq) as f64;
    let flops = step_flops(&config, batch_size, seq, masked);
    let (peak, peak_how) = (machine.matrix_rate.0, &machine.matrix_rate.1);
    let achieved = flops / median;
    println!(
        "electra bench: {} backend ({}), preset {}, batch {batch_size} × seq {seq}, {} timed \
         steps ({} threads)",
        args.device,
        machine.card,
        args.preset,
        args.steps,
        rayon::current_num_threads()
    );
    println!("median step        {:.2} ms", median * 1e3);
    println!("tokens/s           {:.0}", tokens / median);
    println!("model FLOPs/step   {flops:.3e} ({FLOPS_CONVENTION})");
    println!("achieved           {:.1} GFLOP/s", achieved / 1e9);
    println!("matrix peak        {:.1} GFLOP/s ({peak_how})", peak / 1e9);
    println!("MFU                {:.1}%", 100.0 * achieved / peak);
    if let Some(bytes) = device_memory {
        println!(
            "device memory      {:.2} GiB in use (every process's, after the timed steps)",
            bytes as f64 / (1u64 << 30) as f64
        );
    }
    println!(
        "\nper operation, one profiled step ({:.2} ms):",
        profiled * 1e3
    );
    println!(
        "{:<36} {:>6} {:>10} {:>7}",
        "operation", "calls", "ms", "share"
    );
    let mut ops = vec![];
    for (name, calls, time) in trainer.backend.report() {
        let ms = time.as_secs_f64() * 1e3;
        println!(
            "{name:<36} {calls:>6} {ms:>10.2} {:>6.1}%",
            100.0 * ms / (profiled * 1e3)
        );
        ops.push(json!({"op": name, "calls": calls, "ms": ms}));
    }
    let mut kernels = vec![];
    if !kernel_times.is_empty() {
        let device_ms: f64 = kernel_times.iter().map(|k| k.2).sum::<f64>() * 1e3;
        println!("\nper kernel, device time of the same step ({device_ms:.2} ms in kernels):");
        println!(
            "{:<56} {:>6} {:>9} {:>9}",
            "kernel", "launch", "ms", "µs each"
        );
    }
    for (name, launches, seconds) in kernel_times {
        let ms = seconds * 1e3;
        println!(
            "{name:<56} {launches:>6} {ms:>9.3} {:>9.1}",
            1e3 * ms / launches as f64
        );
        kernels.push(json!({"kernel": name, "launches": launches, "ms": ms}));
    }
    let mut tunings = vec![];
    let new_tunings = trainer
        .backend
        .inner_mut()
        .gemm_tunings()
        .split_off(tuned_before);
    if !new_tunings.is_empty() {
        println!("\nmatrix products, cuBLASLt's candidates timed on each shape's first run:");
        println!(
            "{:<56} {:>5} {:>6} {:>9} {:>9}",
            "product", "cands", "chosen", "first µs", "chosen µs"
        );
    }
    for t in new_tunings {
        let (first_us, chosen_us) = (t.first_s * 1e6, t.chosen_s * 1e6);
        println!(
            "{:<56} {:>5} {:>6} {first_us:>9.1} {chosen_us:>9.1}",
            t.label, t.candidates, t.chosen
        );
        tunings.push(json!({
            "product": t.label, "candidates": t.candidates, "chosen": t.chosen,
            "first_us": first_us, "chosen_us": chosen_us,
        }));
    }
    // A probe for a later change, so an error is reported with the answers, not raised.
    let mut epilogue = vec![];
    for (dims, dy_stride) in biased_layers(trainer.recorded_ops()) {
        let Some(found) = trainer
            .backend
            .inner_mut()
            .bias_grad_epilogue(dims, dy_stride)
        else {
            break;
        };
        if epilogue.is_empty() {
            println!(
                "\nweight gradients with the bias gradient folded in (cuBLASLt BGRADB), \
                 algorithms offered (of the first 8):"
            );
        }
        let layer = format!("{dims} (dy rows {dy_stride} apart)");
        match found {
            Ok(algorithms) => {
                println!("{layer:<56} {algorithms:>5}");
                epilogue.push(json!({"layer": layer, "algorithms": algorithms}));
            }
            Err(error) => {
                println!("{layer:<56} error: {error}");
                epilogue.push(json!({"layer": layer, "error": error}));
            }
        }
    }
    let folded = trainer.backend.inner_mut().folded_bias_grads();
    if folded > 0 {
        println!("\n{folded} weight-gradient products fold in their bias gradient (BGRADB)");
    }
    let sizes = trainer.backend.sizes();
    // Seven f32 spaces (parameters, gradients, two moments, their sum; activations and their
    // gradients) and the integers, as the backend reserved them.
    let reserved = 4 * (4 * sizes.params + sizes.grad_sum + 2 * sizes.acts + sizes.ints);
    Ok(json!({
        "device": args.device, "card": machine.card, "driver": machine.driver,
        "threads": rayon::current_num_threads(),
        "commit": std::env::var("ELECTRA_COMMIT").unwrap_or_else(|_| "unknown".into()),
        "version": env!("CARGO_PKG_VERSION"),
        "preset": args.preset, "batch": batch_size, "seq": seq, "steps": args.steps,
        "median_step_s": median, "p10_step_s": quantile(&times, 0.1),
        "p90_step_s": quantile(&times, 0.9),
        "tokens_per_s": tokens / median, "model_flops_per_step": flops,
        "flops_convention": FLOPS_CONVENTION,
        "achieved_flops": achieved, "matrix_peak_flops": peak, "matrix_peak_how": peak_how,
        "mfu": achieved / peak, "max_masked_per_seq": max_predictions(seq, 0.15),
        "masked_per_step": masked,
        "reserved_bytes": reserved, "peak_resident_bytes": peak_resident_bytes(),
        "device_memory_used_bytes": device_memory,
        "profiled_step_s": profiled, "ops": ops, "kernels": kernels,
        "gemm_tuning": tunings, "bias_grad_epilogue": epilogue,
        "folded_bias_grads": folded,
    }))
}

/// The distinct shapes of the step's linear layers that have a bias, with the row stride of the
/// gradient their weight-gradient product reads (`y`'s: a GELU layer's rows are never padded),
/// in the order they ran.
fn biased_layers(ops: &[Op]) -> Vec<(LinearDims, usize)> {
    let mut shapes = vec![];
    for op in ops {
        if let Op::Linear(l) = op {
            if l.b.is_some() && !shapes.contains(&(l.dims, l.y_stride)) {
                shapes.push((l.dims, l.y_stride));
            }
        }
    }
    shapes
}

/// How [`step_flops`] counts.
const FLOPS_CONVENTION: &str = "matrix products only, training = 3 × forward";
