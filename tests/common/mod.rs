//! What the end-to-end tests share: the fixture's folder, scratch folders, and running the
//! `electra` binary as a user would, never accepting a panic.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The HF parity fixture.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tiny")
}

/// A fresh empty folder, unique to this test process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("electra-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `electra ARGS`, failing the test if it panicked.
pub fn electra(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_electra"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "electra {args:?} panicked: {stderr}"
    );
    out
}

/// Runs `electra ARGS`, which must succeed; returns its standard error.
pub fn ok(args: &[&str]) -> String {
    let out = electra(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "electra {args:?} failed: {stderr}");
    stderr
}

/// Runs `electra ARGS`, which must fail; returns its standard error.
pub fn fails(args: &[&str]) -> String {
    let out = electra(args);
    assert!(
        !out.status.success(),
        "electra {args:?} succeeded but should not have"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}
