//! Crash consistency: `electra pretrain` is killed (SIGKILL, nothing flushed, no handler) just
//! before each `rename` and `fsync` it makes, the points where it commits a file, first in a new
//! run and then in a resumed one; the run is then continued as a user would (`--resume` when a
//! checkpoint exists, else the same command again), and its final checkpoint must be byte for
//! byte that of a run never killed. The kills come from `tests/c/kill_at.c`, a shim loaded with
//! LD_PRELOAD, so the engine carries no fault-injection code.
//!
//! `electra prepare` is killed the same way at each of its commit points (each shard's `fsync` and
//! `rename`): training must refuse the folder it left, and `prepare` again into the same `--out`
//! must clear it and write exactly what a prepare never killed writes.
//!
//! Needs a C compiler, and for pretrain data/sotu (`scripts/fetch-data.sh`); without them it
//! prints why and skips.

use electra::data::prepare::UNFINISHED;
use electra::data::Batcher;
use electra::io::checkpoint::{self, MODEL_FILE, OPTIMIZER_FILE};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{copy_dir, s, scratch, tiny_run};

const STEPS: &str = "6";

/// Builds the shim into `dir`; None when there is no C compiler.
fn shim(dir: &Path) -> Option<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/kill_at.c");
    let lib = dir.join("libkill_at.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .status();
    match built {
        Ok(status) if status.success() => Some(lib),
        Ok(_) => panic!("compiling {} failed", source.display()),
        Err(_) => {
            eprintln!("skipped: no C compiler (cc) on PATH");
            None
        }
    }
}

/// `electra pretrain` of a tiny run of `STEPS` steps in `out` (or `--resume out`), with the shim
/// killing it at `kill_at` when given; returns its status and standard error.
fn pretrain(
    shim: &Path,
    data: &Path,
    out: &Path,
    resume: bool,
    kill_at: Option<u64>,
    extra: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_electra"));
    if resume {
        cmd.args(["pretrain", "--resume", s(out)]);
    } else {
        let every_two = ["--log-every", "2", "--checkpoint-every", "2"];
        let flags = [&["--steps", STEPS, "--seed", "3"][..], &every_two].concat();
        cmd.args(tiny_run(data, out, &flags));
    }
    cmd.args(extra);
    cmd.env("LD_PRELOAD", shim).env("ELECTRA_KILL_COUNT", "1");
    if let Some(k) = kill_at {
        cmd.env("ELECTRA_KILL_AT", k.to_string());
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (out.status, err)
}

/// How many kill points a run that finished passed, from the shim's report.
fn points(err: &str) -> u64 {
    let line = err.lines().find_map(|l| l.strip_prefix("kill points: "));
    line.expect("the shim reports its count").parse().unwrap()
}

/// Continues a killed run as a user would, until it finishes.
fn recover(shim: &Path, data: &Path, out: &Path) {
    let resume = !checkpoint::list(out).unwrap_or_default().is_empty();
    let (status, err) = pretrain(shim, data, out, resume, None, &[]);
    assert!(
        status.success(),
        "recovering {} ({}) failed: {err}",
        out.display(),
        if resume {
            "--resume"
        } else {
            "the same command"
        }
    );
}

fn final_checkpoint(run: &Path) -> Vec<Vec<u8>> {
    let dir = checkpoint::step_dir(run, STEPS.parse().unwrap());
    [MODEL_FILE, OPTIMIZER_FILE]
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .to_vec()
}

#[test]
fn a_kill_at_any_commit_point_of_a_run_or_a_resume_loses_nothing() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("kill-points");
    let Some(shim) = shim(&root) else { return };

    let reference = root.join("reference");
    let (status, err) = pretrain(&shim, data, &reference, false, None, &[]);
    assert!(status.success(), "{err}");
    let expected = final_checkpoint(&reference);
    let new_run_points = points(&err);

    // A run stopped at step 2, then resumed: the points of resuming and of the checkpoints after.
    let stopped = root.join("stopped");
    let (status, err) = pretrain(&shim, data, &stopped, false, None, &["--stop-at", "2"]);
    assert!(status.success(), "{err}");
    let (status, err) = pretrain(
        &shim,
        data,
        &copy(&stopped, &root, "probe"),
        true,
        None,
        &[],
    );
    assert!(status.success(), "{err}");
    let resume_points = points(&err);
    assert!(
        new_run_points >= 10 && resume_points >= 6,
        "{new_run_points} and {resume_points} kill points: the shim sees too few"
    );
    eprintln!("kill points: {new_run_points} in a new run, {resume_points} in a resume");

    for k in 1..=new_run_points {
        let out = root.join(format!("new-{k}"));
        let (status, err) = pretrain(&shim, data, &out, false, Some(k), &[]);
        assert_eq!(status.signal(), Some(9), "kill point {k}: {err}");
        recover(&shim, data, &out);
        assert!(
            final_checkpoint(&out) == expected,
            "killed at point {k} of a new run"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    for k in 1..=resume_points {
        let out = copy(&stopped, &root, &format!("resumed-{k}"));
        let (status, err) = pretrain(&shim, data, &out, true, Some(k), &[]);
        assert_eq!(
            status.signal(),
            Some(9),
            "kill point {k} of a resume: {err}"
        );
        recover(&shim, data, &out);
        assert!(
            final_checkpoint(&out) == expected,
            "killed at point {k} of a resume"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A copy of the run `from` named `name` under `root`.
fn copy(from: &Path, root: &Path, name: &str) -> PathBuf {
    let to = root.join(name);
    copy_dir(from, &to);
    to
}

/// `electra prepare` of `text` into `out` (20 examples of 16 tokens per shard, so several shards),
/// with the shim killing it at `kill_at` (just after the call when `after`); returns its status
/// and standard error.
fn prepare(
    shim: &Path,
    text: &Path,
    out: &Path,
    kill_at: Option<(u64, bool)>,
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_electra"));
    cmd.args(["prepare", "--input", s(text), "--out", s(out)]);
    cmd.args(["--train-vocab", "120", "--seq-len", "16"]);
    cmd.args(["--examples-per-shard", "20"]);
    cmd.env("LD_PRELOAD", shim).env("ELECTRA_KILL_COUNT", "1");
    if let Some((k, after)) = kill_at {
        cmd.env("ELECTRA_KILL_AT", k.to_string());
        if after {
            cmd.env("ELECTRA_KILL_AFTER", "1");
        }
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (out.status, err)
}

/// Every file of a folder (hidden ones too), by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn a_kill_at_any_commit_point_of_prepare_leaves_nothing_training_reads() {
    let root = scratch("kill-prepare");
    let Some(shim) = shim(&root) else { return };
    // Text of our own: no download needed. About 150 examples, so 8 shards.
    let text = root.join("text.txt");
    let lines: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "line {i} of the text holds words such as union and state {}",
                i % 7
            )
        })
        .collect();
    std::fs::write(&text, lines.join("\n") + "\n").unwrap();

    let reference = root.join("reference");
    let (status, err) = prepare(&shim, &text, &reference, None);
    assert!(status.success(), "{err}");
    let expected = files(&reference);
    let shards = expected.keys().filter(|n| n.starts_with("shard-")).count();
    assert!(shards >= 4, "{shards} shards: too few to kill between them");
    let points = points(&err);
    assert!(
        points >= 2 * shards as u64,
        "{points} kill points for {shards} shards: the shim sees too few"
    );
    eprintln!("kill points of prepare: {points} ({shards} shards)");
    Batcher::open(&reference, 2, 0).expect("the finished folder is data");

    for k in 1..=points {
        for after in [false, true] {
            let out = root.join(format!("killed-{k}-{after}"));
            let (status, err) = prepare(&shim, &text, &out, Some((k, after)));
            assert_eq!(status.signal(), Some(9), "kill point {k}: {err}");
            // Nothing that training takes for data, whatever was renamed into place already.
            let refused = Batcher::open(&out, 2, 0).expect_err("a killed prepare's folder");
            let refused = refused.to_string();
            assert!(
                refused.contains(UNFINISHED) && refused.contains("did not finish"),
                "kill point {k}: {refused}"
            );
            let (status, err) = prepare(&shim, &text, &out, None);
            assert!(
                status.success(),
                "prepare again after kill point {k}: {err}"
            );
            assert!(err.contains("note: removed"), "kill point {k}: {err}");
            assert!(
                files(&out) == expected,
                "kill point {k} (after: {after}): the folder prepared again differs"
            );
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}
