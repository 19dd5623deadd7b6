//! `electra prepare` → `electra pretrain` → `electra plot` on real text, as a user runs them:
//! learning, exact resume, a kill in the middle of a checkpoint write, and bad input.
//!
//! The text is a few hundred KB of the State of the Union corpus that `scripts/fetch-data.sh`
//! puts in data/sotu; without it these tests print why and skip.

use electra::io::checkpoint;
use electra::io::run_dir::{read_config, read_metrics, Metrics};
use electra::model::Model;
use std::path::Path;
use std::process::Command;

mod common;
use common::{electra, fails, ok, s, scratch};

/// `electra pretrain --preset tiny --data DATA` followed by `extra`.
fn tiny_args<'a>(data: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["pretrain", "--preset", "tiny", "--data", s(data)];
    args.extend_from_slice(extra);
    args
}

fn pretrain(data: &Path, out: &Path, extra: &[&str]) -> String {
    ok(&tiny_args(data, &[&["--out", s(out)], extra].concat()))
}

#[test]
fn tiny_learns_on_real_text() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let run = scratch("learn").join("run");
    // The paper's peak rate with a warmup: Adam without bias correction takes steps of about
    // 3·lr at first, and higher rates collapse the discriminator to always answering "original".
    let flags = [
        "--steps",
        "50",
        "--batch",
        "32",
        "--lr",
        "5e-4",
        "--warmup",
        "20",
        "--log-every",
        "10",
    ];
    pretrain(data, &run, &flags);
    let metrics = read_metrics(&run).unwrap();
    let steps: Vec<u64> = metrics.iter().map(|m| m.step).collect();
    assert_eq!(steps, [10, 20, 30, 40, 50]);
    let vocab = read_config(&run).unwrap().model.vocab_size as f64;
    let (first, last) = (&metrics[0], &metrics[metrics.len() - 1]);
    let (loss, uniform) = (last.gen_loss, vocab.ln());
    assert!(
        loss < uniform - 0.75,
        "MLM loss {loss} vs ln(vocab) {uniform}"
    );
    assert!(
        loss < first.gen_loss - 0.5,
        "MLM loss {loss} from {}",
        first.gen_loss
    );
    let originals = 1.0 - last.replaced_fraction;
    let accuracy = last.disc_accuracy;
    assert!(
        accuracy > originals + 0.03,
        "disc accuracy {accuracy} vs share of originals {originals}"
    );
    // disc_gain is a mean of per-step gains; the gain of the window's means differs by Jensen's gap only.
    let p = last.replaced_fraction;
    let label_entropy = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
    let recorded = last.disc_gain.expect("new runs record disc_gain");
    let gain = label_entropy - last.disc_loss;
    assert!(
        (recorded - gain).abs() < 0.02 && recorded > 0.1,
        "disc gain {recorded} vs label entropy {label_entropy} - BCE {}",
        last.disc_loss
    );

    ok(&["plot", s(&run)]);
    let err = fails(&["plot", s(&run.join("nowhere"))]);
    assert!(err.contains("nowhere: no such run directory"), "{err}");
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert_eq!(
        svg.matches("<polyline").count(),
        5,
        "two loss and three accuracy curves"
    );
}

#[test]
fn a_disc_weight_of_zero_trains_the_generator_alone() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let run = scratch("disc-weight").join("run");
    pretrain(
        data,
        &run,
        &["--steps", "3", "--batch", "2", "--disc-weight", "0"],
    );
    let rc = read_config(&run).unwrap();
    assert_eq!(rc.train.disc_weight, 0.0);
    let layout = Model::new(rc.model).layout;
    let ckpt = checkpoint::load(&run, &layout, 3).unwrap();
    let moments = |prefix: &str| -> f32 {
        layout
            .params
            .iter()
            .filter(|p| p.name.starts_with(prefix))
            .flat_map(|p| &ckpt.adam_v[p.buf.offset..p.buf.offset + p.buf.len])
            .sum()
    };
    // No gradient reaches the discriminator's own tensors, so Adam has seen nothing there.
    assert_eq!(moments("discriminator."), 0.0);
    assert!(moments("generator.") > 0.0);
    assert!(moments("shared.") > 0.0);

    let err = fails(&tiny_args(data, &["--disc-weight", "-1"]));
    assert!(
        err.contains("--disc-weight must be a finite number >= 0, got -1"),
        "{err}"
    );
}

/// A batch whose activations do not fit in memory is an error that says what to change, not an
/// abort, and it comes before anything is written: under a 2 GB address-space limit, batch 2048
/// needs several GB and batch 8 trains.
#[test]
fn a_batch_too_large_for_memory_is_a_clear_error() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("oom");
    let limited = |batch: &str, out: &Path| {
        let command = format!(
            "ulimit -v 2000000; exec '{}' pretrain --preset tiny --data '{}' --out '{}' --steps 2 --batch {batch}",
            env!("CARGO_BIN_EXE_electra"),
            s(data),
            s(out)
        );
        Command::new("bash")
            .arg("-c")
            .arg(command)
            .output()
            .unwrap()
    };
    let out = limited("2048", &root.join("big"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the cpu backend could not allocate") && err.contains("lower the batch size"),
        "{err}"
    );
    // Refused before run.json was written, and the folder it made is gone again.
    assert!(
        !root.join("big").exists(),
        "a run that could not start left a folder"
    );
    let out = limited("8", &root.join("small"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The figures of a metrics line that do not depend on the clock.
fn deterministic(m: &Metrics) -> [u64; 7] {
    [
        m.step,
        m.gen_loss.to_bits(),
        m.disc_loss.to_bits(),
        m.mlm_accuracy.to_bits(),
        m.disc_accuracy.to_bits(),
        m.lr.to_bits(),
        m.grad_norm.to_bits(),
    ]
}

#[test]
fn resuming_gives_the_same_bits_as_running_straight() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("resume");
    let (straight, split) = (root.join("straight"), root.join("split"));
    let flags = [
        "--steps",
        "40",
        "--batch",
        "4",
        "--log-every",
        "5",
        "--checkpoint-every",
        "10",
        "--seed",
        "3",
    ];
    pretrain(data, &straight, &flags);
    let mut first_half = flags.to_vec();
    first_half.extend(["--stop-at", "20"]);
    pretrain(data, &split, &first_half);
    assert_eq!(checkpoint::list(&split).unwrap().last(), Some(&20));
    let resumed = ok(&["pretrain", "--resume", s(&split)]);
    assert!(resumed.contains("resuming"), "{resumed}");

    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(checkpoint::step_dir(&straight, 40).join(file)).unwrap();
        let b = std::fs::read(checkpoint::step_dir(&split, 40).join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between the straight and the resumed run"
        );
    }
    let (a, b) = (
        read_metrics(&straight).unwrap(),
        read_metrics(&split).unwrap(),
    );
    assert_eq!(a.len(), 8);
    assert_eq!(
        a.iter().map(deterministic).collect::<Vec<_>>(),
        b.iter().map(deterministic).collect::<Vec<_>>()
    );
}

#[test]
fn a_kill_during_checkpoint_writes_leaves_the_previous_checkpoint_loadable() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let run = scratch("kill").join("run");
    let args = tiny_args(
        data,
        &[
            "--out",
            s(&run),
            "--steps",
            "100000",
            "--batch",
            "2",
            "--checkpoint-every",
            "1",
            "--keep",
            "2",
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_electra"))
        .args(args)
        .spawn()
        .unwrap();
    // Checkpoints are written every step, so most of the run is spent writing them: kill at
    // several moments, each time after at least one checkpoint exists.
    let layout = Model::new(read_config_when_ready(&run).model).layout;
    for round in 0..4 {
        while checkpoint::list(&run).unwrap().len() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(7 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let steps = checkpoint::list(&run).unwrap();
        let newest = *steps.last().unwrap();
        checkpoint::load(&run, &layout, newest).expect("the newest complete checkpoint loads");
        child = Command::new(env!("CARGO_BIN_EXE_electra"))
            .args(["pretrain", "--resume", s(&run), "--steps", "100000"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn read_config_when_ready(run: &Path) -> electra::io::run_dir::RunConfig {
    loop {
        if let Ok(c) = read_config(run) {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn bad_runs_and_checkpoints_get_clear_errors_and_lose_nothing() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("bad");
    let err = fails(&["pretrain", "--resume", s(&root.join("nowhere"))]);
    assert!(err.contains("nowhere: no such run directory"), "{err}");

    let run = root.join("run");
    pretrain(
        data,
        &run,
        &["--steps", "4", "--batch", "2", "--checkpoint-every", "2"],
    );
    let err = fails(&tiny_args(data, &["--out", s(&run)]));
    assert!(err.contains("already holds a run"), "{err}");

    // A resume while another process trains the run is refused before anything is touched.
    let config = std::fs::read(run.join("run.json")).unwrap();
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let held = std::fs::File::open(run.join("train.lock")).unwrap();
    held.lock().unwrap();
    let err = fails(&["pretrain", "--resume", s(&run), "--steps", "6"]);
    assert!(
        err.contains("train.lock") && err.contains("another process"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("run.json")).unwrap(), config);
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(checkpoint::list(&run).unwrap(), [2, 4]);
    drop(held);

    // A torn model file in the newest checkpoint is named, and the checkpoint is left as it was.
    let model = checkpoint::step_dir(&run, 4).join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["pretrain", "--resume", s(&run), "--steps", "6"]);
    assert!(
        err.contains("step-4/model.safetensors: its checksum")
            && err.contains("is corrupt")
            && err.contains("step-2 is the newest intact checkpoint"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&model).unwrap().len(),
        bytes.len() / 2,
        "the bad file is not overwritten"
    );
    assert_eq!(checkpoint::list(&run).unwrap(), [2, 4]);

    // Settings no run can train with are refused before a run folder exists, on the command line
    // and in a run.json edited by hand.
    let refused = root.join("refused");
    for (flag, value, expected) in [
        ("--lr", "-1", "--lr must be a finite number >= 0, got -1"),
        ("--lr", "inf", "--lr must be a finite number >= 0, got inf"),
        ("--steps", "0", "invalid value '0' for '--steps"),
        ("--keep", "0", "invalid value '0' for '--keep"),
    ] {
        let err = fails(&tiny_args(data, &["--out", s(&refused), flag, value]));
        assert!(err.contains(expected), "{flag} {value}: {err}");
        assert!(!refused.exists(), "{flag} {value} left a run folder");
    }
    let config_text = String::from_utf8(config.clone()).unwrap();
    let lr_line = config_text
        .lines()
        .find(|l| l.contains("\"peak_lr\""))
        .unwrap();
    let edited = config_text.replace(lr_line, "    \"peak_lr\": -0.5,");
    std::fs::write(run.join("run.json"), edited).unwrap();
    let err = fails(&["pretrain", "--resume", s(&run), "--steps", "6"]);
    assert!(
        err.contains("run.json: train.peak_lr must be a finite number >= 0, got -0.5"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(checkpoint::list(&run).unwrap(), [2, 4]);

    // A learning rate that blows the model up stops the run with the step named.
    let nan = root.join("nan");
    let out = electra(&tiny_args(
        data,
        &[
            "--out",
            s(&nan),
            "--steps",
            "50",
            "--batch",
            "2",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--checkpoint-every",
            "1",
        ],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the loss is not finite at step"), "{err}");
    let last = checkpoint::list(&nan).unwrap();
    assert!(
        err.contains(&format!(
            "last good checkpoint is step-{}",
            last.last().unwrap()
        )),
        "{err}"
    );
}

#[test]
fn metrics_lines_from_before_disc_gain_are_read_and_survive_a_resume() {
    let run = scratch("old-metrics");
    let old_line = r#"{"step":STEP,"gen_loss":6.0,"disc_loss":0.38,"mlm_accuracy":0.1,"disc_accuracy":0.87,"replaced_fraction":0.13,"lr":0.0005,"grad_norm":2.0,"tokens_per_s":7000.0,"elapsed_s":60.0}"#;
    let text: String = ["100", "200"]
        .iter()
        .map(|step| old_line.replace("STEP", step) + "\n")
        .collect();
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    let gains = |run: &Path| -> Vec<Option<f64>> {
        read_metrics(run)
            .unwrap()
            .iter()
            .map(|m| m.disc_gain)
            .collect()
    };
    assert_eq!(gains(&run), [None, None]);
    // A resume truncates the metrics to its checkpoint, rewriting the old lines, then appends new ones.
    electra::io::run_dir::truncate_metrics(&run, 100).unwrap();
    let mut new = read_metrics(&run).unwrap()[0].clone();
    new.step = 200;
    new.disc_gain = Some(0.004);
    electra::io::run_dir::append_metrics(&run, &new).unwrap();
    assert_eq!(gains(&run), [None, Some(0.004)]);
}
