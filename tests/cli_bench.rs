//! `electra bench` as a harness: a sweep writes one complete record per configuration.

mod common;

use common::{fails, s, scratch};
use std::process::Command;

#[test]
fn a_sweep_writes_one_complete_record_per_configuration() {
    let dir = scratch("bench-sweep");
    let json = dir.join("bench.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_electra"))
        .args([
            "bench", "--preset", "tiny", "--batch", "1,2", "--seq", "16,32",
        ])
        .args(["--steps", "3", "--json", s(&json)])
        .env("ELECTRA_COMMIT", "abc1234")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let grid: Vec<(u64, u64)> = records
        .iter()
        .map(|r| (r["batch"].as_u64().unwrap(), r["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(grid, [(1, 16), (1, 32), (2, 16), (2, 32)]);
    for r in &records {
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        assert_eq!(r["commit"], "abc1234");
        assert_eq!(
            (r["device"].as_str(), r["preset"].as_str()),
            (Some("cpu"), Some("tiny"))
        );
        assert!(!r["card"].as_str().unwrap().is_empty());
        assert_eq!(r["steps"], 3);
        let (p10, median, p90) = (f("p10_step_s"), f("median_step_s"), f("p90_step_s"));
        assert!(0.0 < p10 && p10 <= median && median <= p90, "{r}");
        let tokens = f("batch") * f("seq");
        assert!((f("tokens_per_s") - tokens / median).abs() <= 1e-6 * f("tokens_per_s"));
        assert!((f("achieved_flops") - f("model_flops_per_step") / median).abs() <= 1.0);
        assert!(f("mfu") > 0.0 && f("mfu") <= 1.0, "{r}");
        assert!(f("matrix_peak_flops") > 1e8, "{r}");
        assert!(f("reserved_bytes") > 0.0 && f("peak_resident_bytes") >= f("reserved_bytes"));
        // The CPU's memory is the process's (above); no device memory to report.
        let device = r.get("device_memory_used_bytes");
        assert_eq!(device, Some(&serde_json::Value::Null), "{r}");
        let ops = r["ops"].as_array().unwrap();
        assert!(ops
            .iter()
            .any(|o| o["op"].as_str().unwrap().starts_with("linear")));
        let total: f64 = ops.iter().map(|o| o["ms"].as_f64().unwrap()).sum();
        assert!(total <= f("profiled_step_s") * 1e3 * 1.01, "{r}");
        // The CPU has no kernels to time: its operations are all in the table above.
        assert_eq!(r["kernels"].as_array().map(Vec::len), Some(0), "{r}");
        // Nor algorithms chosen by timing: the CPU's products have one way to run.
        assert_eq!(r["gemm_tuning"].as_array().map(Vec::len), Some(0), "{r}");
        // Nor a matrix library whose epilogues could take the bias gradients.
        assert_eq!(
            r["bias_grad_epilogue"].as_array().map(Vec::len),
            Some(0),
            "{r}"
        );
        assert_eq!(r["folded_bias_grads"].as_u64(), Some(0), "{r}");
    }
    // Twice the sequences, twice the model FLOPs (the masked count scales with them too).
    let flops = |i: usize| records[i]["model_flops_per_step"].as_f64().unwrap();
    assert!((flops(2) / flops(0) - 2.0).abs() < 1e-9);
    let e = fails(&[
        "bench", "--preset", "tiny", "--seq", "16,4000", "--steps", "1",
    ]);
    assert!(e.contains("--seq 4000: must be between 3 and"), "{e}");
}

/// On a CUDA device (a GPU, or the host device of `kernels/emulate/host_device/`), the record
/// also has the per-kernel table, the tuned products' choices and the folded bias gradients.
#[test]
fn a_cuda_record_times_every_kernel_and_reports_tuning_and_folding() {
    if !cfg!(feature = "cuda") {
        eprintln!("skipped: built without CUDA");
        return;
    }
    let json = scratch("bench-cuda").join("bench.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_electra"))
        .args(["bench", "--device", "cuda", "--preset", "tiny"])
        .args([
            "--batch",
            "4",
            "--seq",
            "32",
            "--steps",
            "2",
            "--json",
            s(&json),
        ])
        .env("ELECTRA_GEMM_TUNE", "1")
        .env("ELECTRA_FOLD_BIAS_GRADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("no CUDA device") {
        eprintln!("skipped: no CUDA device");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&json).unwrap().trim()).unwrap();
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(r["device"], "cuda");
    assert!(f(&r, "device_memory_used_bytes") > 0.0, "{r}");
    assert!(
        r["matrix_peak_how"].as_str().unwrap().contains("cuBLASLt"),
        "{r}"
    );
    // Every launch of the profiled step is timed: its kernels' time is within the step's.
    let kernels = r["kernels"].as_array().unwrap();
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["kernel"].as_str().unwrap())
        .collect();
    for k in [
        "attention_fwd_d32",
        "layernorm_residual_bwd_w256",
        "adamw",
        "loss_sums",
    ] {
        assert!(names.contains(&k), "{k} not timed: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("cublasLt ")),
        "{names:?}"
    );
    let kernel_ms: f64 = kernels.iter().map(|k| f(k, "ms")).sum();
    assert!(
        0.0 < kernel_ms && kernel_ms <= f(&r, "profiled_step_s") * 1e3,
        "{r}"
    );
    // Each product shape's candidates were timed, and the fastest kept.
    let tunings = r["gemm_tuning"].as_array().unwrap();
    assert!(!tunings.is_empty(), "{r}");
    for t in tunings {
        assert!(f(t, "chosen") < f(t, "candidates"), "{t}");
        assert!(f(t, "chosen_us") <= f(t, "first_us"), "{t}");
    }
    // Every biased layer was asked about the folded bias gradient; where an algorithm was
    // offered, weight-gradient products fold it (counted by product shape and alignment).
    let offered = r["bias_grad_epilogue"].as_array().unwrap();
    assert!(!offered.is_empty(), "{r}");
    let any_offered = offered.iter().any(|o| f(o, "algorithms") > 0.0);
    let folded = r["folded_bias_grads"].as_u64().unwrap();
    assert_eq!(folded > 0, any_offered, "{r}");
}
