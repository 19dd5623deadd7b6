//! What the fuzz targets share: files written from the fuzzer's bytes into a scratch folder (the
//! readers take paths, as a user's files reach them), inputs that hold several files, the check
//! that an error names its file, and an allocator that turns an absurd allocation into a crash.
//!
//! A target passes on an input when the reader returns Ok or an error whose message names the
//! file; a panic, an abort, an allocation over [`ALLOCATION_LIMIT`], a run over libFuzzer's
//! `-timeout` or a resident size over its `-rss_limit_mb` is a finding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The largest single allocation a reader may make from an input of at most a few MB: anything
/// above it was sized by a field of the file rather than by its bytes.
pub const ALLOCATION_LIMIT: usize = 256 << 20;

/// The system allocator, refusing any request over [`ALLOCATION_LIMIT`]. A fallible reservation
/// (`try_reserve`) then fails cleanly, as it would on a machine without that much memory, while an
/// infallible one aborts, which libFuzzer records as a crash. libFuzzer's own `-malloc_limit_mb`
/// needs a sanitizer's allocator hooks, and the fuzzing here runs without a sanitizer (stable
/// Rust has none).
pub struct Capped;

// SAFETY: every call is forwarded to the system allocator, or answered with null, which the
// GlobalAlloc contract allows for any request.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// Separates the files of an input that holds several (a checkpoint's `state.json` and its two
/// tensor files, say). Long and unlike any real file's bytes, so that it never occurs inside one by
/// chance; the seeds carry it, and the mutations keep it or learn it from the comparisons.
pub const SEPARATOR: &[u8] = b"\n==electra-fuzz-next-file==\n";

/// The files of `data`, split at [`SEPARATOR`]: `None` for a file the input does not reach (it is
/// then not written, and the reader meets a missing file), at most `n`.
pub fn files(data: &[u8], n: usize) -> Vec<Option<&[u8]>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = Some(data);
    while out.len() < n {
        let Some(r) = rest else {
            out.push(None);
            continue;
        };
        match r.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                out.push(Some(&r[..at]));
                rest = Some(&r[at + SEPARATOR.len()..]);
            }
            None => {
                out.push(Some(r));
                rest = None;
            }
        }
    }
    out
}

/// Joins files into one input, the inverse of [`files`]: how seeds are made from real files.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(SEPARATOR)
}

/// A scratch folder for this process and target, emptied for each input: in memory
/// (`/dev/shm`) when the machine has it, so that writing the input's files costs little.
pub fn scratch(target: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("electra-fuzz-{target}-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).expect("the scratch folder can be created");
    root.clone()
}

/// Writes `bytes` (when the input has them) to `path`, creating its folder.
pub fn put(path: &Path, bytes: Option<&[u8]>) {
    if let Some(bytes) = bytes {
        std::fs::create_dir_all(path.parent().expect("a file in a folder")).unwrap();
        std::fs::write(path, bytes).expect("the scratch file can be written");
    }
}

/// Panics unless `err`'s message names one of `files`: every error about a user's file must say
/// which file it is.
pub fn names_a_file(err: &impl Display, files: &[&Path]) {
    let message = err.to_string();
    assert!(
        files
            .iter()
            .any(|f| message.contains(&*f.display().to_string())),
        "the error names none of {files:?}: {message}"
    );
}

/// The vocabulary of the seed shards (`fuzz/make-seeds.sh`), loaded once per process: the
/// tokenizer of the targets whose input is text rather than a vocabulary.
pub fn seed_tokenizer() -> &'static electra::data::WordPieceTokenizer {
    const VOCAB: &[u8] = include_bytes!("../seeds/common/vocab.txt");
    static TOK: OnceLock<electra::data::WordPieceTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("electra-fuzz-vocab-{}.txt", std::process::id()));
        std::fs::write(&path, VOCAB).unwrap();
        let tok = electra::data::WordPieceTokenizer::from_vocab_file(&path)
            .expect("the seed vocabulary loads");
        let _ = std::fs::remove_file(&path);
        tok
    })
}
