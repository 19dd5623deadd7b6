//! Model configs: `ElectraConfig::from_file` (`pretrain --config`, the engine's JSON) and
//! `ElectraConfig::from_hf` (a generator's and a discriminator's HF `config.json`), then the
//! layout a model of that config gets, which every command builds before allocating values.
//! Input: the first file (the engine's config, and the generator's HF config), the second (the
//! discriminator's HF config), joined by the separator.
#![no_main]

use electra::model::config::ElectraConfig;
use electra::model::params::ParamLayout;
use electra_fuzz::{files, names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

fn check(cfg: &ElectraConfig) {
    let layout = ParamLayout::new(cfg);
    assert_eq!(layout.len() as u128, cfg.parameter_count());
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch("model_config");
    let parts = files(data, 2);
    let (first, second) = (dir.join("config.json"), dir.join("discriminator.json"));
    put(&first, parts[0]);
    put(&second, parts[1]);
    match ElectraConfig::from_file(&first) {
        Ok(cfg) => check(&cfg),
        Err(e) => names_a_file(&e, &[&first]),
    }
    match ElectraConfig::from_hf(&first, &second) {
        Ok(cfg) => check(&cfg),
        Err(e) => names_a_file(&e, &[&first, &second]),
    }
});
