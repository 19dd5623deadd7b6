//! Data-parallel pretraining under `mpirun` (the `mpi` feature; `.ci/run` installs OpenMPI):
//! two ranks against one process accumulating two micro-batches, a stop on two ranks resumed on
//! one, a rank killed mid-run, ranks started on different data or settings, and (with the `cuda`
//! feature) two ranks on two CUDA devices summing over NCCL.
#![cfg(feature = "mpi")]

mod common;

use common::{corpus_or_skip, ok, s, scratch};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `mpirun -np N electra ARGS` (one CPU thread per rank, so two ranks share two cores).
fn mpirun(np: usize, args: &[&str]) -> Output {
    mpirun_command(&[(np, &[], args)])
}

/// Environment variables, each with its value.
type Env<'a> = &'a [(&'a str, &'a str)];

/// The ranks of one program of an MPMD `mpirun`: how many, their environment and electra's
/// arguments.
type Program<'a> = (usize, Env<'a>, &'a [&'a str]);

/// `mpirun` with one `-np N -x VAR=VALUE… electra ARGS` per program (MPMD: ranks with their own
/// flags and environment).
fn mpirun_command(programs: &[Program]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.arg("--oversubscribe");
    for (i, (np, env, args)) in programs.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", &np.to_string()]);
        for (var, value) in *env {
            cmd.args(["-x", &format!("{var}={value}")]);
        }
        cmd.arg(env!("CARGO_BIN_EXE_electra"));
        cmd.args(*args);
    }
    let out = cmd
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("mpirun runs (install OpenMPI: openmpi-bin)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "a rank panicked: {stderr}");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A `tiny` run of 6 steps, metrics every step, checkpoints at 3 and 6.
fn run_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        s(data),
        "--out",
        s(out),
        "--steps",
        "6",
        "--warmup",
        "2",
        "--seed",
        "3",
        "--log-every",
        "1",
        "--checkpoint-every",
        "3",
    ];
    a.extend_from_slice(extra);
    a
}

/// The model and optimizer tensors of a checkpoint, byte for byte.
fn tensors(run: &Path, step: u64) -> Vec<Vec<u8>> {
    let dir = run.join("checkpoints").join(format!("step-{step}"));
    ["model.safetensors", "optimizer.safetensors"]
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .to_vec()
}

/// The losses of each metrics line (the timing fields differ between runs).
fn losses(run: &Path) -> Vec<(u64, f64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let f = |k: &str| v[k].as_f64().unwrap();
            (v["step"].as_u64().unwrap(), f("gen_loss"), f("disc_loss"))
        })
        .collect()
}

#[test]
fn two_ranks_train_as_one_process_accumulating_two_micro_batches() {
    let Some(data) = corpus_or_skip() else { return };
    let dir = scratch("mpi-two-ranks");
    let (ranks, accumulated, whole) = (dir.join("ranks"), dir.join("acc"), dir.join("whole"));
    let out = mpirun(2, &run_args(data, &ranks, &["--batch", "2"]));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // Rank 0 alone prints, one plain line per metrics window (stderr is not a terminal).
    assert_eq!(log.matches("finished at step 6").count(), 1, "{log}");
    assert!(log.contains("step 6/6 gen "), "{log}");
    ok(&run_args(
        data,
        &accumulated,
        &["--batch", "2", "--accumulate", "2"],
    ));
    for step in [3, 6] {
        assert!(
            tensors(&ranks, step) == tensors(&accumulated, step),
            "step {step}: two ranks and --accumulate 2 wrote different checkpoints"
        );
    }
    assert_eq!(losses(&ranks), losses(&accumulated));
    // One process with the whole global batch: the same losses up to the order of the sums.
    ok(&run_args(data, &whole, &["--batch", "4"]));
    for (a, b) in losses(&ranks).iter().zip(losses(&whole)) {
        assert_eq!(a.0, b.0);
        assert!(
            (a.1 - b.1).abs() < 1e-4 && (a.2 - b.2).abs() < 1e-4,
            "{a:?} {b:?}"
        );
    }
    let config = std::fs::read_to_string(ranks.join("run.json")).unwrap();
    assert!(config.contains("\"world_size\": 2"), "{config}");
}

#[test]
fn a_run_stopped_on_two_ranks_continues_exactly_on_one_process() {
    let Some(data) = corpus_or_skip() else { return };
    let dir = scratch("mpi-resume");
    let (straight, stopped) = (dir.join("straight"), dir.join("stopped"));
    ok(&run_args(
        data,
        &straight,
        &["--batch", "2", "--accumulate", "2"],
    ));
    let out = mpirun(
        2,
        &run_args(data, &stopped, &["--batch", "2", "--stop-at", "3"]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The global batch is 4: one process needs two micro-batches of 2, and says so.
    let e = common::fails(&["pretrain", "--resume", s(&stopped), "--accumulate", "3"]);
    assert!(
        e.contains("global batch is 4") && e.contains("--accumulate 2"),
        "{e}"
    );
    // Without --accumulate, the split that keeps the global batch is taken.
    ok(&["pretrain", "--resume", s(&stopped)]);
    assert!(tensors(&straight, 6) == tensors(&stopped, 6));
    assert_eq!(losses(&straight), losses(&stopped));
}

#[test]
fn a_killed_rank_ends_the_job_and_leaves_loadable_checkpoints() {
    let Some(data) = corpus_or_skip() else { return };
    let dir = scratch("mpi-kill");
    let run = dir.join("run");
    let electra = env!("CARGO_BIN_EXE_electra");
    // Rank 1 is killed (SIGKILL) once the run has a checkpoint: `exec` makes the rank the
    // shell's own process, which the background shell kills.
    let checkpoint = run.join("checkpoints/step-4");
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then \
           (while [ ! -d {c} ]; do sleep 0.1; done; sleep 0.5; kill -9 $$) & \
         fi; exec {electra} pretrain --preset tiny --data {d} --out {r} --batch 2 --steps 100000 \
           --checkpoint-every 4 --log-every 2",
        c = s(&checkpoint),
        d = s(data),
        r = s(&run)
    );
    let started = Instant::now();
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2", "bash", "-c", &script])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    let killed_at = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    let after_kill = killed_at.elapsed().unwrap();
    assert!(
        after_kill < Duration::from_secs(60),
        "mpirun took {after_kill:?} after the kill ({:?} in all)",
        started.elapsed()
    );
    assert!(log.contains("signal 9") || log.contains("killed"), "{log}");
    // Every checkpoint left behind loads: the export reads and checks the newest.
    let export = dir.join("hf");
    ok(&["export", s(&run), "--out", s(&export)]);
}

#[test]
fn ranks_started_on_different_data_or_settings_are_refused_before_training() {
    let Some(data) = corpus_or_skip() else { return };
    let dir = scratch("mpi-mismatch");
    let copy = dir.join("data-copy");
    common::copy_dir(data, &copy);
    let run = dir.join("run");
    let rank0 = run_args(data, &run, &["--batch", "2"]);
    let rank1 = run_args(&copy, &run, &["--batch", "2"]);
    let out = mpirun_command(&[(1, &[], &rank0), (1, &[], &rank1)]);
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    let expected = format!(
        "rank 1: data is \"{}\" here but \"{}\" on rank 0",
        copy.display(),
        data.display()
    );
    assert!(log.contains(&expected), "{log}");
    assert!(!run.join("checkpoints").exists(), "nothing trained");
    let rank1 = run_args(data, &run, &["--batch", "2", "--lr", "1e-3"]);
    let out = mpirun_command(&[(1, &[], &rank0), (1, &[], &rank1)]);
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("rank 1: train.peak_lr is 0.001"), "{log}");
}

/// The host device (`kernels/emulate/host_device/`) reports this many devices; a driver ignores it.
const TWO_DEVICES: (&str, &str) = ("ELECTRA_HOST_DEVICE_COUNT", "2");

#[test]
fn two_ranks_on_two_cuda_devices_train_as_one_device_accumulating_two_micro_batches() {
    if !cfg!(feature = "cuda") {
        eprintln!("skipped: built without CUDA");
        return;
    }
    let Some(data) = corpus_or_skip() else { return };
    let dir = scratch("mpi-cuda");
    // One process on the second device, adding two micro-batches: the reference, and the probe
    // for a second device.
    let accumulated = dir.join("acc");
    let one = Command::new(env!("CARGO_BIN_EXE_electra"))
        .args(run_args(
            data,
            &accumulated,
            &["--device", "cuda:1", "--batch", "2", "--accumulate", "2"],
        ))
        .env(TWO_DEVICES.0, TWO_DEVICES.1)
        .output()
        .unwrap();
    if stderr(&one).contains("no CUDA device") {
        eprintln!("skipped: two CUDA devices are needed: {}", stderr(&one));
        return;
    }
    assert!(one.status.success(), "{}", stderr(&one));
    let sees = |devices| [TWO_DEVICES, ("CUDA_VISIBLE_DEVICES", devices)];
    let (first, second) = (sees("1"), sees("0"));
    // Each run: its ranks, as (how many, their environment).
    let runs: [(&str, &[(usize, Env)]); 3] = [
        // Local rank r takes device r; the ranks sum over NCCL.
        ("nccl", &[(2, &[TWO_DEVICES])]),
        // The same through host memory and MPI.
        ("host", &[(2, &[TWO_DEVICES, ("ELECTRA_NCCL", "0")])]),
        // Each rank sees one device (as Slurm's --gpus-per-task=1 arranges), its device 0.
        ("one each", &[(1, &first), (1, &second)]),
    ];
    for (name, ranks) in runs {
        let run = dir.join(name);
        let args = run_args(data, &run, &["--device", "cuda", "--batch", "2"]);
        let programs: Vec<Program> = ranks.iter().map(|&(n, env)| (n, env, &args[..])).collect();
        let out = mpirun_command(&programs);
        let log = stderr(&out);
        if log.contains("libnccl.so cannot be opened") {
            eprintln!("{name} skipped: no libnccl.so");
            continue;
        }
        assert!(out.status.success(), "{name}: {log}");
        for step in [3, 6] {
            assert!(
                tensors(&run, step) == tensors(&accumulated, step),
                "step {step}: two ranks ({name}) and --accumulate 2 wrote different checkpoints"
            );
        }
        assert_eq!(losses(&run), losses(&accumulated), "{name}");
    }
    // Two ranks shown the same device: NCCL cannot sum between them, so the job stops before
    // training, naming them.
    let shared = dir.join("shared");
    let args = run_args(data, &shared, &["--device", "cuda", "--batch", "2"]);
    let out = mpirun_command(&[(2, &first, &args)]);
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("ranks 0 and 1 share a GPU (rank 0's device 0, rank 1's device 0)"),
        "{log}"
    );
    assert!(!shared.exists(), "nothing written");
}
