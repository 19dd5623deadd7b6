//! Checkpoints that were damaged after they were written (a flipped byte, a planted NaN) are
//! refused on resume and on export, naming the file and the newest earlier checkpoint that is
//! intact; checkpoints written before checksums were recorded still load.

mod common;
use common::scratch;
use electra::io::checkpoint::{self, CheckpointData, TrainingState, MODEL_FILE, OPTIMIZER_FILE};
use electra::io::export::read_checkpoint_params;
use electra::model::config::ElectraConfig;
use electra::model::Model;
use std::path::Path;

fn model() -> Model {
    let mut config = ElectraConfig::preset("tiny").unwrap();
    config.vocab_size = 200;
    Model::new(config)
}

fn save(run: &Path, model: &Model, step: u64, poison: Option<usize>) {
    let mut params = model.initial_values(step).unwrap();
    if let Some(i) = poison {
        params[i] = f32::NAN;
    }
    let n = params.len();
    let data = CheckpointData {
        params,
        adam_m: vec![0.5; n],
        adam_v: vec![0.25; n],
        state: TrainingState {
            step,
            data_cursor: serde_json::json!({}),
            elapsed_s: 1.0,
        },
    };
    checkpoint::save(run, &model.layout, &data, 10).unwrap();
}

/// Flips the bits of the last byte of `file` (tensor data, not the header).
fn flip_last_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn damaged_checkpoints_are_refused_and_the_intact_one_is_named() {
    let run = scratch("checkpoints-damaged");
    let model = model();
    let layout = &model.layout;
    for step in [10, 20] {
        save(&run, &model, step, None);
    }
    // A NaN written into a checkpoint (its checksum is the file's own).
    save(&run, &model, 30, Some(1234));
    let err = checkpoint::load(&run, layout, 30).unwrap_err().to_string();
    assert!(
        err.contains("holds NaN at element")
            && err.contains("step-20 is the newest intact checkpoint"),
        "{err}"
    );
    checkpoint::load(&run, layout, 20).unwrap();

    // A flipped byte in the optimizer's file, then in the model's.
    let step20 = checkpoint::step_dir(&run, 20);
    for file in [OPTIMIZER_FILE, MODEL_FILE] {
        let path = step20.join(file);
        let before = std::fs::read(&path).unwrap();
        flip_last_byte(&path);
        let err = checkpoint::load(&run, layout, 20).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}: its checksum", path.display()))
                && err.contains("is corrupt")
                && err.contains("step-10 is the newest intact checkpoint"),
            "{file}: {err}"
        );
        if file == MODEL_FILE {
            // Export reads the same file and refuses it too.
            let err = read_checkpoint_params(layout, &step20)
                .unwrap_err()
                .to_string();
            assert!(err.contains("its checksum"), "{err}");
        }
        std::fs::write(&path, before).unwrap();
    }
    checkpoint::load(&run, layout, 20).unwrap();

    // The oldest one damaged: nothing earlier to fall back on.
    flip_last_byte(&checkpoint::step_dir(&run, 10).join(MODEL_FILE));
    let err = checkpoint::load(&run, layout, 10).unwrap_err().to_string();
    assert!(
        err.contains("no earlier checkpoint of this run is intact"),
        "{err}"
    );
}

#[test]
fn checkpoints_without_recorded_checksums_still_load() {
    let run = scratch("checkpoints-old");
    let model = model();
    save(&run, &model, 5, None);
    let state = checkpoint::step_dir(&run, 5).join("state.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(json["checksums"][MODEL_FILE].is_u64(), "{json}");
    json.as_object_mut().unwrap().remove("checksums");
    std::fs::write(&state, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let loaded = checkpoint::load(&run, &model.layout, 5).unwrap();
    assert_eq!(loaded.params, model.initial_values(5).unwrap());
    assert_eq!(loaded.state.step, 5);
}
