//! `electra pretrain --device cuda` as a user runs it, on a CUDA device (a GPU, or the host
//! device of `kernels/emulate/host_device/`): it follows the CPU's run, and its gradient sum
//! over NCCL at world size one (`ELECTRA_NCCL=1`) changes no bit. Without a device, or a build
//! without CUDA, the test says it skipped.

use electra::io::run_dir::read_metrics;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{s, scratch};

fn run(data: &Path, out: &Path, device: &str, batch: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_electra"))
        .args([
            "pretrain",
            "--preset",
            "tiny",
            "--data",
            s(data),
            "--out",
            s(out),
        ])
        .args([
            "--device",
            device,
            "--steps",
            "3",
            "--seed",
            "0",
            "--log-every",
            "1",
        ])
        .args(["--checkpoint-every", "3"])
        .args(batch)
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
    // Two micro-batches of 2 on the device, one batch of 4 on the CPU: the masking, dropout and
    // loss means are keyed by the global batch, so both take the same steps.
    let split: &[&str] = &["--batch", "2", "--accumulate", "2"];
    let cuda = run(data, &dir.join("cuda"), "cuda", split, &[]);
    let stderr = String::from_utf8_lossy(&cuda.stderr);
    if stderr.contains("no CUDA device") {
        eprintln!("skipped: no CUDA device");
        return;
    }
    assert!(cuda.status.success(), "{stderr}");
    let cpu = run(data, &dir.join("cpu"), "cpu", &["--batch", "4"], &[]);
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

    let nccl = run(
        data,
        &dir.join("nccl"),
        "cuda",
        split,
        &[("ELECTRA_NCCL", "1")],
    );
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
