//! `electra pretrain --device cuda` as a user runs it, on a CUDA device (a GPU, or the host
//! device of `kernels/emulate/host_device/`): it follows the CPU's run, and its gradient sum
//! over NCCL at world size one (`ELECTRA_NCCL=1`) changes no bit. Without a device, or a build
//! without CUDA, the test says it skipped.

use electra::io::run_dir::read_metrics;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{scratch, tiny_run};

/// Three steps of two micro-batches of 2 (`tiny_run`'s batch) on `device`, metrics every step.
fn run(data: &Path, out: &Path, device: &str, env: &[(&str, &str)]) -> Output {
    let extra = [
        "--device",
        device,
        "--accumulate",
        "2",
        "--steps",
        "3",
        "--seed",
        "0",
        "--log-every",
        "1",
        "--checkpoint-every",
        "3",
    ];
    Command::new(env!("CARGO_BIN_EXE_electra"))
        .args(tiny_run(data, out, &extra))
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn same_files(a: &Path, b: &Path) -> bool {
    ["model.safetensors", "optimizer.safetensors"]
        .iter()
        .all(|f| std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap())
}

#[test]
fn a_cuda_run_follows_the_cpu_and_its_nccl_sum_changes_no_bit() {
    if !cfg!(feature = "cuda") {
        eprintln!("skipped: built without CUDA");
        return;
    }
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let dir = scratch("pretrain-cuda");
    let cuda = run(data, &dir.join("cuda"), "cuda", &[]);
    let stderr = String::from_utf8_lossy(&cuda.stderr);
    if stderr.contains("no CUDA device") {
        eprintln!("skipped: no CUDA device");
        return;
    }
    assert!(cuda.status.success(), "{stderr}");
    let cpu = run(data, &dir.join("cpu"), "cpu", &[]);
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    let (g, c) = (
        read_metrics(&dir.join("cuda")).unwrap(),
        read_metrics(&dir.join("cpu")).unwrap(),
    );
    assert_eq!(g.len(), 3);
    assert_eq!(c.len(), 3);
    for (g, c) in g.iter().zip(&c) {
        // bf16 activations against the CPU's f32: within 2% over three steps.
        for (what, a, b) in [
            ("gen loss", g.gen_loss, c.gen_loss),
            ("disc loss", g.disc_loss, c.disc_loss),
        ] {
            assert!(
                (a - b).abs() <= 0.02 * b.abs(),
                "step {}: {what} {a} against the CPU's {b}",
                c.step
            );
        }
    }

    let nccl = run(data, &dir.join("nccl"), "cuda", &[("ELECTRA_NCCL", "1")]);
    let stderr = String::from_utf8_lossy(&nccl.stderr);
    if stderr.contains("libnccl.so cannot be opened") {
        eprintln!("NCCL part skipped: no libnccl.so");
        return;
    }
    assert!(nccl.status.success(), "{stderr}");
    let step = |run: &str| dir.join(run).join("checkpoints/step-3");
    assert!(
        same_files(&step("cuda"), &step("nccl")),
        "the NCCL sum changed the run"
    );
}
