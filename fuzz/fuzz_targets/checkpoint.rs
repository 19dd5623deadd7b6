//! Checkpoints: `checkpoint::load` (what `--resume` reads: `state.json`, `model.safetensors` and
//! `optimizer.safetensors`, checksums, tensor names, shapes, finite values) for the model of the
//! seed run, and `export::read_checkpoint_params` (what `electra export` reads).
//! Input: state.json, model.safetensors, optimizer.safetensors, joined by the separator.
#![no_main]

use electra::io::checkpoint::{self, MODEL_FILE, OPTIMIZER_FILE};
use electra::io::export::read_checkpoint_params;
use electra::model::config::ElectraConfig;
use electra::model::params::ParamLayout;
use electra_fuzz::{files, names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The model of the seed checkpoint (`fuzz/make-seeds.sh`).
const MODEL: &str = include_str!("../seeds/common/model.json");

fn layout() -> &'static ParamLayout {
    static LAYOUT: OnceLock<ParamLayout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("electra-fuzz-model-{}.json", std::process::id()));
        std::fs::write(&path, MODEL).unwrap();
        let cfg = ElectraConfig::from_file(&path).expect("the seed model is valid");
        let _ = std::fs::remove_file(&path);
        ParamLayout::new(&cfg)
    })
}

fuzz_target!(|data: &[u8]| {
    let run = scratch("checkpoint");
    let dir = checkpoint::step_dir(&run, 1);
    let parts = files(data, 3);
    let paths = [
        dir.join("state.json"),
        dir.join(MODEL_FILE),
        dir.join(OPTIMIZER_FILE),
    ];
    for (path, bytes) in paths.iter().zip(&parts) {
        put(path, *bytes);
    }
    let names = [&paths[0], &paths[1], &paths[2], &dir];
    match checkpoint::load(&run, layout(), 1) {
        Ok(c) => {
            assert_eq!(c.state.step, 1);
            for v in [&c.params, &c.adam_m, &c.adam_v] {
                assert_eq!(v.len(), layout().len());
                assert!(v.iter().all(|x| x.is_finite()));
            }
        }
        Err(e) => names_a_file(&e, &names.map(|p| p.as_path())),
    }
    match read_checkpoint_params(layout(), &dir) {
        Ok(values) => assert_eq!(values.len(), layout().len()),
        Err(e) => names_a_file(&e, &names.map(|p| p.as_path())),
    }
});
