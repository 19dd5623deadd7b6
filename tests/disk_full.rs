//! A disk that fills up during a run: on a small tmpfs that holds one checkpoint but not two, the
//! second checkpoint fails with an error naming the file, the first stays intact, and once there
//! is room again `--resume` clears the half-written folder and finishes the run byte for byte as
//! a run on a roomy disk does.
//!
//! Mounting needs root (CI runs as root); elsewhere, or without data/sotu, it prints why and
//! skips.

use electra::io::checkpoint::{self, MODEL_FILE, OPTIMIZER_FILE};
use electra::io::run_dir::read_config;
use electra::model::Model;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{electra, s, scratch, tiny_run};

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, megabytes: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let size = format!("size={megabytes}m");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status();
        status
            .is_ok_and(|s| s.success())
            .then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, megabytes: u32) {
        let options = format!("remount,size={megabytes}m");
        let status = Command::new("mount")
            .args(["-o", &options])
            .arg(&self.0)
            .status();
        assert!(status.unwrap().success(), "remounting {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A 6-step run with checkpoints every 2 steps.
fn args<'a>(data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let every_two = ["--log-every", "2", "--checkpoint-every", "2"];
    tiny_run(
        data,
        out,
        &[&["--steps", "6", "--seed", "3"][..], &every_two].concat(),
    )
}

fn final_checkpoint(run: &Path) -> Vec<Vec<u8>> {
    let dir = checkpoint::step_dir(run, 6);
    [MODEL_FILE, OPTIMIZER_FILE]
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .to_vec()
}

#[test]
fn a_full_disk_fails_one_checkpoint_keeps_the_last_and_the_resume_finishes_the_run() {
    let Some(data) = common::corpus_or_skip() else {
        return;
    };
    let root = scratch("disk-full");
    let reference = root.join("reference");
    let out = electra(&args(data, &reference));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let step = checkpoint::step_dir(&reference, 6);
    let checkpoint_bytes: u64 = [MODEL_FILE, OPTIMIZER_FILE, "state.json"]
        .iter()
        .map(|f| std::fs::metadata(step.join(f)).unwrap().len())
        .sum();

    // Room for one checkpoint and a half: the second one runs out of space.
    let megabytes = (checkpoint_bytes * 3 / 2).div_ceil(1 << 20) as u32;
    let Some(fs) = Tmpfs::mount(&root.join("fs"), megabytes) else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let run = fs.0.join("run");
    let out = electra(&args(data, &run));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("checkpoints/.step-4.tmp-") && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(checkpoint::list(&run).unwrap(), [2]);
    let layout = Model::new(read_config(&run).unwrap().model).layout;
    checkpoint::load(&run, &layout, 2).unwrap();

    fs.resize(4 * megabytes);
    let out = electra(&["pretrain", "--resume", s(&run)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftovers: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "debris left: {leftovers:?}");
    assert!(final_checkpoint(&run) == final_checkpoint(&reference));
    drop(fs);
    std::fs::remove_dir_all(&root).unwrap();
}
