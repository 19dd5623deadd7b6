//! Model sizes come from users' files (`pretrain --config`, a HF `config.json` read by `loss`,
//! `--init-from`, `finetune` and `predict`). Sizes that make no model, or a model no machine can
//! hold, get an error naming the field or the memory it needed: never a panic, never an abort
//! in the allocator.

mod common;
use common::{fails, fixture, s, scratch};
use electra::model::config::{ElectraConfig, MAX_LAYERS, MAX_SIZE};
use electra::model::Model;
use serde_json::{json, Value};
use std::path::Path;

/// A data folder holding only a vocabulary: `pretrain` checks the model's sizes before it opens
/// any shard.
fn vocab_only(dir: &Path) {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "of",
    ];
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), words.join("\n") + "\n").unwrap();
}

/// The `tiny` preset as a `--config` file, with the discriminator's `field` set to `value`.
fn tiny_with(field: &str, value: Value) -> Value {
    let mut config = serde_json::to_value(ElectraConfig::preset("tiny").unwrap()).unwrap();
    config["discriminator"][field] = value;
    config
}

#[test]
fn impossible_sizes_in_a_config_are_named() {
    let dir = scratch("model-sizes-config");
    let data = dir.join("data");
    vocab_only(&data);
    let cases = [
        (
            "hidden_size",
            json!(1_000_000_000u64),
            "hidden_size must be between 1 and",
        ),
        ("hidden_size", json!(0), "hidden_size must be between 1 and"),
        (
            "intermediate_size",
            json!(1_000_000_000_000u64),
            "intermediate_size must be between 1 and",
        ),
        (
            "num_layers",
            json!(1_000_000),
            "layers, more than the engine's",
        ),
    ];
    for (i, (field, value, expected)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("config-{i}.json"));
        std::fs::write(&path, tiny_with(field, value.clone()).to_string()).unwrap();
        let out = dir.join(format!("run-{i}"));
        let err = fails(&[
            "pretrain",
            "--config",
            s(&path),
            "--data",
            s(&data),
            "--out",
            s(&out),
        ]);
        assert!(
            err.contains(expected) && err.contains(s(&path)),
            "{field} = {value}: {err}"
        );
    }
}

#[test]
fn a_model_too_large_for_memory_says_how_large() {
    let dir = scratch("model-sizes-memory");
    // Valid sizes whose values alone need about 200 TB, more than a 64-bit address space maps.
    let mut config = serde_json::to_value(ElectraConfig::preset("tiny").unwrap()).unwrap();
    config["discriminator"] = json!({
        "hidden_size": 65536, "num_layers": MAX_LAYERS, "num_heads": 1024,
        "intermediate_size": 262144,
    });
    let cfg: ElectraConfig = serde_json::from_value(config).unwrap();
    cfg.validate_sizes().unwrap();
    let model = Model::new(cfg);
    let err = model.initial_values(0).unwrap_err().to_string();
    assert!(
        err.contains(&format!("a model of {} parameters", model.layout.len()))
            && err.contains("could not allocate"),
        "{err}"
    );

    // Through the command line, a HF config.json read by `electra loss` that claims such a model
    // is refused before anything of its size is allocated: its weights file does not hold it.
    let hf = dir.join("hf");
    for network in ["generator", "discriminator"] {
        let from = fixture().join(network);
        let to = hf.join(network);
        std::fs::create_dir_all(&to).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
    let disc_config = hf.join("discriminator/config.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&disc_config).unwrap()).unwrap();
    let loss = |edits: Value| {
        let mut c = original.clone();
        for (k, v) in edits.as_object().unwrap() {
            c[k] = v.clone();
        }
        std::fs::write(&disc_config, c.to_string()).unwrap();
        fails(&[
            "loss",
            "--generator",
            s(&hf.join("generator")),
            "--discriminator",
            s(&hf.join("discriminator")),
            "--batch",
            s(&fixture().join("batch.safetensors")),
        ])
    };
    let err = loss(json!({"hidden_size": 65536, "num_attention_heads": 1024,
        "num_hidden_layers": MAX_LAYERS, "intermediate_size": 262144}));
    let weights = hf.join("discriminator/model.safetensors");
    assert!(
        err.contains("the weights do not fit the model") && err.contains(s(&weights)),
        "{err}"
    );
    let err = loss(json!({"num_hidden_layers": 1_000_000}));
    assert!(
        err.contains("`num_hidden_layers` must be between 1 and 1024, got 1000000")
            && err.contains(s(&disc_config)),
        "{err}"
    );
    let err = loss(json!({"hidden_size": MAX_SIZE + 1}));
    assert!(
        err.contains("`hidden_size` must be between 1 and") && err.contains(s(&disc_config)),
        "{err}"
    );
}

#[test]
fn the_parameter_count_is_the_layouts() {
    for preset in ["tiny", "small", "base", "large"] {
        let mut cfg = ElectraConfig::preset(preset).unwrap();
        cfg.vocab_size = 30522;
        let count = cfg.parameter_count();
        assert_eq!(count, Model::new(cfg).layout.len() as u128, "{preset}");
    }
}
