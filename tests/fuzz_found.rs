//! The inputs that fuzzing (fuzz/, `cargo fuzz`) found to break a reader, each replayed through
//! the same public function as its fuzz target, so that plain `cargo test` keeps them fixed.
//! Each input is committed in fuzz/regressions/TARGET/NAME (`bash fuzz/run.sh 0` replays them
//! through the targets too); an input of several files holds them joined by the separator of
//! fuzz/src/lib.rs.

use electra::data::WordPieceTokenizer;
use electra::io::hf::load_pretraining_dir;
use electra::io::run_dir::read_config;
use electra::model::config::ElectraConfig;
use std::path::{Path, PathBuf};

mod common;
use common::scratch;

/// What fuzz/src/lib.rs puts between the files of one input.
const SEPARATOR: &[u8] = b"\n==electra-fuzz-next-file==\n";

/// The files of the committed input fuzz/regressions/`target`/`name`.
fn regression(target: &str, name: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    let mut files = vec![];
    let mut rest = &bytes[..];
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        files.push(rest[..at].to_vec());
        rest = &rest[at + SEPARATOR.len()..];
    }
    files.push(rest.to_vec());
    files
}

/// Writes `files` to `paths`, in order.
fn put(paths: &[&Path], files: &[Vec<u8>]) {
    for (path, bytes) in paths.iter().zip(files) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn assert_names(err: &str, file: &Path, what: &str) {
    assert!(
        err.contains(&file.display().to_string()) && err.contains(what),
        "expected an error naming {} and saying {what:?}: {err}",
        file.display()
    );
}

/// A HF `config.json` with `num_hidden_layers: 0` was refused by a message naming neither file
/// ("discriminator: layers and intermediate size must be positive"): the two files of a model
/// were checked together, in the engine's names for their fields.
#[test]
fn a_hf_config_with_no_layers_is_named_with_its_field() {
    let dir = scratch("fuzz-found-layers");
    let files = regression("model_config", "num-hidden-layers-0");
    let (gen, disc) = (dir.join("generator.json"), dir.join("discriminator.json"));
    put(&[&gen, &disc], &files);
    let err = ElectraConfig::from_hf(&gen, &disc).unwrap_err().to_string();
    assert_names(
        &err,
        &disc,
        "`num_hidden_layers` must be between 1 and 1024, got 0",
    );
}

/// The same class through `pretrain --init-from`'s reader: a discriminator `config.json` whose
/// `hidden_size` (7) its `num_attention_heads` (2) do not divide.
#[test]
fn a_hf_directory_whose_heads_do_not_divide_the_width_is_named() {
    let dir = scratch("fuzz-found-heads");
    let files = regression("hf_dir", "heads-not-dividing-hidden");
    let (gen, disc) = (dir.join("generator"), dir.join("discriminator"));
    let paths = [
        gen.join("config.json"),
        gen.join("model.safetensors"),
        disc.join("config.json"),
        disc.join("model.safetensors"),
        disc.join("vocab.txt"),
    ];
    put(
        &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        &files,
    );
    let err = load_pretraining_dir(&dir).err().unwrap().to_string();
    assert_names(
        &err,
        &paths[2],
        "`num_attention_heads` must divide `hidden_size` (7), got 2",
    );
}

/// A `run.json` whose model has 10^11 layers made every reader of a run (`--resume`, `export`,
/// the C ABI's resume) lay out that model, which aborted in the allocator: the model's sizes in
/// run.json were not checked. Found with the input below after 2 minutes of fuzzing had not
/// reached it; the fuzz targets now carry a dictionary of such numbers (fuzz/json.dict).
#[test]
fn a_run_json_with_an_impossible_model_is_refused_before_its_layout() {
    let run = scratch("fuzz-found-run-json");
    let files = regression("run_dir", "num-layers-1e11");
    put(&[&run.join("run.json"), &run.join("metrics.jsonl")], &files);
    let err = read_config(&run).unwrap_err().to_string();
    assert_names(
        &err,
        &run.join("run.json"),
        "the `model` field: discriminator: 100000000000 layers, more than the engine's 1024",
    );
}

/// A `tokenizer.json` (`prepare --vocab`) with a JSON syntax error inside its `decoder` field
/// panicked in the `tokenizers` crate (`expect("Helper")` in its decoder's Deserialize) instead
/// of being refused.
#[test]
fn a_tokenizer_json_that_is_not_json_is_refused_by_name() {
    let dir = scratch("fuzz-found-tokenizer-json");
    let files = regression("tokenizer_json", "json-syntax-error-in-decoder");
    let path = dir.join("tokenizer.json");
    put(&[&path], &files);
    let err = WordPieceTokenizer::load(&path).unwrap_err().to_string();
    assert_names(&err, &path, "not valid JSON: key must be a string");
}
