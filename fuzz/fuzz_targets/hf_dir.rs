//! HF directories: `hf::load_pretraining_dir` (what `pretrain --init-from` reads: a generator and
//! a discriminator, each `config.json` + `model.safetensors`, and the discriminator's optional
//! `vocab.txt`) and `hf::load_discriminator` (what `finetune --model` reads).
//! Input: generator/config.json, generator/model.safetensors, discriminator/config.json,
//! discriminator/model.safetensors, discriminator/vocab.txt, joined by the separator.
#![no_main]

use electra::io::hf::{load_discriminator, load_pretraining_dir};
use electra_fuzz::{files, names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = scratch("hf_dir");
    let (gen, disc) = (root.join("generator"), root.join("discriminator"));
    let paths = [
        gen.join("config.json"),
        gen.join("model.safetensors"),
        disc.join("config.json"),
        disc.join("model.safetensors"),
        disc.join("vocab.txt"),
    ];
    for (path, bytes) in paths.iter().zip(files(data, 5)) {
        put(path, bytes);
    }
    let mut named: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    named.extend([gen.as_path(), disc.as_path(), root.as_path()]);
    match load_pretraining_dir(&root) {
        Ok(loaded) => {
            assert_eq!(loaded.values.len(), loaded.model.layout.len());
            loaded
                .model
                .config
                .validate()
                .expect("a loaded model is valid");
        }
        Err(e) => names_a_file(&e, &named),
    }
    match load_discriminator(&disc) {
        Ok(d) => {
            for t in d.tensors.values() {
                assert_eq!(t.values.len(), t.shape.iter().product::<usize>());
            }
        }
        Err(e) => names_a_file(&e, &named),
    }
});
