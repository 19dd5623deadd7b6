//! `electra pretrain` under what clusters and careless users do to it: SIGTERM, SIGHUP and Ctrl-C,
//! two runs racing for one folder, settings that cannot work, debris of killed processes, a torn
//! metrics line, and the throughput it reports.
//!
//! The data is the State of the Union corpus that `scripts/fetch-data.sh` puts in data/sotu;
//! without it these tests print why and skip.

use electra::data::{ShardWriter, WordPieceTokenizer};
use electra::io::checkpoint;
use electra::io::run_dir::{read_config, read_metrics};
use electra::model::config::ElectraConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{copy_dir, electra, fails, ok, s, scratch, tiny_run as args};

/// The exit status of a run stopped by a signal after its checkpoint (README, "Exit status").
const INTERRUPTED: i32 = 75;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_electra"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `signal` (a name `kill` knows: TERM, HUP, INT) to the child.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits for the child; its status and standard error.
fn finish(child: Child) -> (ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (out.status, err)
}

/// Waits until `cond` holds, for at most a minute.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_sighup_and_ctrl_c_stop_a_run_with_a_checkpoint_and_a_resumable_status() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("signals");
    for sig in ["TERM", "HUP", "INT"] {
        let run = root.join(sig);
        let flags = ["--steps", "100000", "--log-every", "1"];
        let child = spawn(&args(data, &run, &flags));
        wait_for("the first metrics line", || {
            read_metrics(&run).is_ok_and(|m| !m.is_empty())
        });
        signal(&child, sig);
        let (status, err) = finish(child);
        assert_eq!(
            status.code(),
            Some(INTERRUPTED),
            "SIG{sig}: {status:?} {err}"
        );
        assert!(
            err.contains("interrupted: wrote a checkpoint at step"),
            "{err}"
        );
        let steps = checkpoint::list(&run).unwrap();
        let last = *steps.last().expect("a checkpoint was written");
        assert_eq!(read_metrics(&run).unwrap().last().unwrap().step, last);
        let until = (last + 2).to_string();
        let err = ok(&["pretrain", "--resume", s(&run), "--stop-at", &until]);
        assert!(
            err.contains(&format!("resuming {} at step {last}", s(&run))),
            "{err}"
        );
        assert_eq!(checkpoint::list(&run).unwrap().last(), Some(&(last + 2)));
    }
}

#[test]
fn two_new_runs_racing_for_one_folder_leave_the_winners_run_intact() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("race");
    for round in 0..3 {
        let run = root.join(format!("run-{round}"));
        let flags = |seed: &'static str| -> Vec<&'static str> {
            vec!["--steps", "6", "--checkpoint-every", "3", "--seed", seed]
        };
        let (a, b) = (flags("1"), flags("2"));
        let first = spawn(&args(data, &run, &a));
        let second = spawn(&args(data, &run, &b));
        let results = [(finish(first), 1), (finish(second), 2)];
        let winners: Vec<u64> = results
            .iter()
            .filter(|((status, _), _)| status.success())
            .map(|(_, seed)| *seed)
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for ((status, err), _) in &results {
            if !status.success() {
                assert!(
                    (err.contains("train.lock") && err.contains("another process"))
                        || err.contains("already holds a run"),
                    "{err}"
                );
            }
        }
        let config = read_config(&run).unwrap();
        assert_eq!(config.train.seed, winners[0], "run.json is the loser's");
        assert_eq!(checkpoint::list(&run).unwrap(), [3, 6]);
        let steps: Vec<u64> = read_metrics(&run).unwrap().iter().map(|m| m.step).collect();
        assert_eq!(steps, [3, 6], "metrics of one run");
    }
}

/// A copy of the shard folder, to break.
fn data_copy(data: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("data");
    copy_dir(data, &copy);
    copy
}

#[test]
fn a_run_that_cannot_start_writes_nothing_and_a_retry_starts() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("refused");
    let tokenizer = WordPieceTokenizer::from_vocab_file(&data.join("vocab.txt")).unwrap();
    let shard = |d: &Path| d.join("shard-00000.bin");

    let no_shards = data_copy(data, &root.join("no-shards"));
    std::fs::remove_file(shard(&no_shards)).unwrap();
    let truncated = data_copy(data, &root.join("truncated"));
    let bytes = std::fs::read(shard(&truncated)).unwrap();
    std::fs::write(shard(&truncated), &bytes[..bytes.len() - 7]).unwrap();
    let other_vocab = data_copy(data, &root.join("other-vocab"));
    let vocab = std::fs::read_to_string(other_vocab.join("vocab.txt")).unwrap();
    let last = vocab.lines().last().unwrap();
    std::fs::write(
        other_vocab.join("vocab.txt"),
        vocab.replace(&format!("\n{last}\n"), "\nzzqqx\n"),
    )
    .unwrap();
    let empty = root.join("empty").join("data");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(data.join("vocab.txt"), empty.join("vocab.txt")).unwrap();
    let vocab_size = tokenizer.vocab_size() as u32;
    ShardWriter::create(&shard(&empty), vocab_size, tokenizer.vocab_hash(), 64)
        .unwrap()
        .finish()
        .unwrap();
    let mut short = ElectraConfig::preset("tiny").unwrap();
    short.max_position_embeddings = 32;
    let config = root.join("short-positions.json");
    std::fs::write(&config, serde_json::to_string(&short).unwrap()).unwrap();

    let out = root.join("run");
    let cases: [(&Path, &[&str], &str); 6] = [
        (&no_shards, &[], "no shard-*.bin files"),
        (&truncated, &[], "shard-00000.bin"),
        (&other_vocab, &[], "shard-00000.bin"),
        (&empty, &[], "0 examples"),
        (data, &["--batch", "0"], "invalid value '0' for '--batch"),
        (
            data,
            &["--config", s(&config)],
            "examples of 64 tokens exceed the model's 32 positions",
        ),
    ];
    for (folder, extra, expected) in cases {
        let mut a = vec![
            "pretrain",
            "--data",
            s(folder),
            "--out",
            s(&out),
            "--steps",
            "2",
        ];
        a.extend_from_slice(extra);
        if !extra.contains(&"--config") {
            a.extend(["--preset", "tiny"]);
        }
        let err = fails(&a);
        assert!(err.contains(expected), "{folder:?} {extra:?}: {err}");
        assert!(
            !out.exists(),
            "{folder:?} {extra:?} left {out:?} behind: {err}"
        );
    }

    // A signal in the first moments: whatever it interrupts, the folder is either absent, or a
    // run that --resume continues.
    for delay in [0, 20, 60, 150, 400] {
        let run = root.join(format!("early-{delay}"));
        let child = spawn(&args(data, &run, &["--steps", "3"]));
        std::thread::sleep(Duration::from_millis(delay));
        signal(&child, "INT");
        let (status, err) = finish(child);
        if run.join("run.json").exists() {
            assert!(
                !checkpoint::list(&run).unwrap().is_empty(),
                "{status:?} {err}"
            );
            ok(&["pretrain", "--resume", s(&run)]);
        } else {
            ok(&args(data, &run, &["--steps", "1"]));
        }
    }

    // A folder a new run made and could not start in is accepted by the retry.
    ok(&args(data, &out, &["--steps", "1"]));
    assert_eq!(checkpoint::list(&out).unwrap(), [1]);
}

#[test]
fn debris_and_a_torn_metrics_line_are_cleared_and_old_lines_kept_byte_for_byte() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("debris");
    let data = data_copy(data, &root);
    let run = root.join("run");
    let flags = [
        "--steps",
        "6",
        "--log-every",
        "1",
        "--checkpoint-every",
        "3",
    ];
    ok(&args(
        &data,
        &run,
        &[&flags[..], &["--stop-at", "3"]].concat(),
    ));
    let metrics = run.join("metrics.jsonl");
    // Lines as another version of the engine might have written them: kept as they are.
    let kept = std::fs::read_to_string(&metrics)
        .unwrap()
        .replace(",\"", ", \"");
    std::fs::write(&metrics, &kept).unwrap();
    let config = std::fs::read(run.join("run.json")).unwrap();

    // A resume that fails (a shard is gone) changes nothing.
    let shard = data.join("shard-00000.bin");
    let aside = root.join("aside.bin");
    std::fs::rename(&shard, &aside).unwrap();
    let err = fails(&["pretrain", "--resume", s(&run), "--steps", "9"]);
    assert!(err.contains("no shard-*.bin files"), "{err}");
    let unchanged = std::fs::read(run.join("run.json")).unwrap() == config;
    assert!(unchanged, "a resume that failed rewrote run.json");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), kept);
    std::fs::rename(&aside, &shard).unwrap();

    // What a process killed while writing leaves behind, and a line torn by a full disk.
    let unfinished = run.join("checkpoints/.step-6.tmp-999999");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("model.safetensors"), [0u8; 100]).unwrap();
    for name in [".metrics.jsonl.tmp-999999", ".run.json.tmp-4242"] {
        std::fs::write(run.join(name), "{").unwrap();
    }
    let torn = r#"{"step":4,"gen_loss":7.1,"disc_lo"#;
    std::fs::write(&metrics, format!("{kept}{torn}")).unwrap();

    let err = ok(&["pretrain", "--resume", s(&run)]);
    assert!(err.contains("dropped the unreadable last line"), "{err}");
    assert!(err.contains(".step-6.tmp-999999"), "{err}");
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .chain(std::fs::read_dir(run.join("checkpoints")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.starts_with(&kept), "old lines rewritten:\n{text}");
    let steps: Vec<u64> = read_metrics(&run).unwrap().iter().map(|m| m.step).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert_eq!(checkpoint::list(&run).unwrap(), [3, 6]);
}

/// `tokens_per_s` divides a window's tokens by the time of its steps: with a line per step, the
/// step time it implies fits in the time between lines and fills most of it.
#[test]
fn tokens_per_second_is_the_tokens_over_the_time_of_the_steps() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let run = scratch("throughput").join("run");
    let flags = [
        "--steps",
        "12",
        "--log-every",
        "1",
        "--checkpoint-every",
        "100",
    ];
    electra(&args(data, &run, &flags));
    let m = read_metrics(&run).unwrap();
    assert_eq!(m.len(), 12);
    let tokens = 2.0 * 64.0;
    let (mut steps, mut wall) = (0.0, 0.0);
    for pair in m.windows(2) {
        steps += tokens / pair[1].tokens_per_s;
        wall += pair[1].elapsed_s - pair[0].elapsed_s;
    }
    assert!(
        steps <= wall * 1.01 && steps >= wall * 0.5,
        "the steps took {steps:.4} s by tokens_per_s, {wall:.4} s by the clock"
    );
}
