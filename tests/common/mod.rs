//! What the tests share: the fixture's folder, scratch folders, running the `electra` binary as a
//! user would (never accepting a panic), a seeded generator, and ELECTRA's optimizer settings.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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

/// Copies the folder `from` to `to`, recursively (files only, no links).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), dst).unwrap();
        }
    }
}

/// A shard folder made once per test binary by `electra prepare` from about 300 KB of the State of
/// the Union corpus (a 2000-token vocabulary, 64-token examples), or None when
/// `scripts/fetch-data.sh` has not put the corpus in data/sotu.
pub fn sotu_shards() -> Option<&'static PathBuf> {
    static SHARDS: OnceLock<Option<PathBuf>> = OnceLock::new();
    SHARDS
        .get_or_init(|| {
            let sotu = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sotu");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&sotu)
                .ok()?
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let text = scratch("text");
            let mut total = 0;
            for f in files.iter().rev() {
                if total > 300_000 {
                    break;
                }
                total += std::fs::metadata(f).unwrap().len();
                std::fs::copy(f, text.join(f.file_name().unwrap())).unwrap();
            }
            let out = scratch("shards").join("sotu");
            ok(&[
                "prepare",
                "--input",
                s(&text),
                "--train-vocab",
                "2000",
                "--out",
                s(&out),
                "--seq-len",
                "64",
            ]);
            Some(out)
        })
        .as_ref()
}

/// [`sotu_shards`], or None after saying that the test is skipped.
pub fn corpus_or_skip() -> Option<&'static PathBuf> {
    let shards = sotu_shards();
    if shards.is_none() {
        eprintln!("skipped: data/sotu is absent (run scripts/fetch-data.sh)");
    }
    shards
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `electra pretrain --preset tiny --data DATA --out OUT --batch 2` and `extra`.
pub fn tiny_run<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        s(data),
        "--out",
        s(out),
        "--batch",
        "2",
    ];
    a.extend_from_slice(extra);
    a
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

/// splitmix64: a tiny deterministic generator, so the numeric tests need no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `len` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A parameter group with ELECTRA's AdamW (β1 0.9, β2 0.999, ε 1e-6) at a share of the step's
/// learning rate and a weight decay.
pub fn electra_group(
    params: electra::backend::Buf,
    lr_scale: f32,
    weight_decay: f32,
) -> electra::backend::ParamGroup {
    electra::backend::ParamGroup {
        params,
        lr_scale,
        adamw: electra_adamw(weight_decay),
    }
}

/// ELECTRA's AdamW (β1 0.9, β2 0.999, ε 1e-6) at a weight decay.
pub fn electra_adamw(weight_decay: f32) -> electra::backend::AdamW {
    electra::backend::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay,
    }
}
