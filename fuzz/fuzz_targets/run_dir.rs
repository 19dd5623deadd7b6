//! A run folder: `run_dir::read_config` (`run.json`, read by `--resume`, `export` and the C ABI),
//! then the model layout a resume builds from it, `read_metrics` (`electra plot`) and
//! `truncate_metrics` (a resume dropping the lines after its checkpoint).
//! Input: run.json, metrics.jsonl, joined by the separator.
#![no_main]

use electra::io::run_dir::{
    config_path, metrics_path, read_config, read_metrics, truncate_metrics,
};
use electra::model::Model;
use electra_fuzz::{files, names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let run = scratch("run_dir");
    let parts = files(data, 2);
    let (config, metrics) = (config_path(&run), metrics_path(&run));
    put(&config, parts[0]);
    put(&metrics, parts[1]);
    match read_config(&run) {
        // What a resume does next, before it reads the checkpoint.
        Ok(cfg) => {
            let model = Model::new(cfg.model);
            assert!(!model.layout.is_empty());
        }
        Err(e) => names_a_file(&e, &[&config, &run]),
    }
    match read_metrics(&run) {
        Ok(lines) => assert!(lines.len() <= data.len()),
        Err(e) => names_a_file(&e, &[&metrics]),
    }
    match truncate_metrics(&run, 2) {
        Ok(_) => {
            // What is kept must read back.
            read_metrics(&run).expect("truncated metrics read back");
        }
        Err(e) => names_a_file(&e, &[&metrics]),
    }
});
