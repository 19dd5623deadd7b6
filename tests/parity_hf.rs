//! Parity with HuggingFace transformers on the `hf-tiny` fixture (tests/fixtures/README.md):
//! losses, logits, argmax replacements, every gradient, the global norm and one AdamW step.

use electra::backend::{cpu::CpuBackend, Pick, Space};
use electra::io::batch_file::read_batch_file;
use electra::io::hf::load_pretraining_pair;
use electra::io::tensors::{read_tensors, Tensor};
use electra::train::{Corruption, TrainConfig, Trainer};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tiny")
}

fn expected() -> BTreeMap<String, Tensor> {
    read_tensors(&fixture().join("expected.safetensors")).unwrap()
}

fn floats(e: &BTreeMap<String, Tensor>, name: &str) -> Vec<f64> {
    match &e[name].values {
        electra::io::tensors::Values::Float(v) => v.clone(),
        _ => panic!("{name} is not float"),
    }
}

fn scalar(e: &BTreeMap<String, Tensor>, name: &str) -> f64 {
    floats(e, name)[0]
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    (diff / norm.max(1e-300)).sqrt()
}

fn abs_norm_diff(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn trainer() -> (Trainer<CpuBackend>, electra::io::batch_file::BatchFile) {
    let loaded = load_pretraining_pair(
        &fixture().join("generator"),
        &fixture().join("discriminator"),
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = TrainConfig {
        weight_decay: 0.01,
        ..TrainConfig::default()
    };
    let t = Trainer::new(CpuBackend::new(), loaded.model, config, &loaded.values).unwrap();
    let batch = read_batch_file(&fixture().join("batch.safetensors")).unwrap();
    (t, batch)
}

#[test]
fn losses_logits_gradients_and_one_step_match_huggingface() {
    let e = expected();
    let (mut t, b) = trainer();
    let given = b.replaced.clone().unwrap();
    let r = t
        .forward_backward(&b.batch, &b.masking, Corruption::Given(&given))
        .unwrap();

    for (name, got) in [
        ("gen_loss", r.gen_loss),
        ("disc_loss", r.disc_loss),
        ("total_loss", r.total_loss),
    ] {
        let want = scalar(&e, name);
        let rel = ((got as f64 - want) / want).abs();
        assert!(rel < 1e-5, "{name}: {got} vs {want} (rel {rel:e})");
    }

    let acts = t.acts().unwrap().clone();
    let disc_logits = t.read_acts(acts.disc_logits);
    let err = rel_err(&disc_logits, &floats(&e, "disc_logits"));
    assert!(err < 1e-4, "disc_logits rel err {err:e}");
    let masked = b.masking.positions.len();
    let gen_logits = acts.unpad_logits(&t.read_acts(acts.generator_logits(masked)), 512);
    let err = rel_err(&gen_logits, &floats(&e, "gen_logits_at_chosen"));
    assert!(err < 1e-4, "gen_logits rel err {err:e}");

    let global = scalar(&e, "grad_global_norm");
    let norm = t.grad_norm() as f64;
    assert!(
        ((norm - global) / global).abs() < 1e-4,
        "global norm {norm} vs {global}"
    );
    let mut checked = 0;
    for (key, _) in e.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = &key["grad.".len()..];
        let got = t
            .tensor(Space::Grad, name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        let want = floats(&e, key);
        if name.contains("attention.self.key.bias") {
            let abs = abs_norm_diff(&got, &want);
            assert!(
                abs < 1e-5 * global,
                "{name}: |diff| {abs:e} vs global norm {global:e}"
            );
        } else {
            let err = rel_err(&got, &want);
            assert!(err < 1e-4, "{name}: gradient rel err {err:e}");
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        t.model.layout.params.len(),
        "every tensor has an expected gradient"
    );

    t.apply_gradients(1e-3);
    for (key, _) in e.iter().filter(|(k, _)| k.starts_with("step1.")) {
        let name = &key["step1.".len()..];
        let got = t.tensor(Space::Param, name).unwrap();
        let err = rel_err(&got, &floats(&e, key));
        assert!(err < 1e-4, "{name}: after one step rel err {err:e}");
    }
}

#[test]
fn argmax_replacement_matches_huggingface() {
    let e = expected();
    let (mut t, b) = trainer();
    let r = t
        .forward_backward(&b.batch, &b.masking, Corruption::Generator(Pick::Argmax))
        .unwrap();
    let want_loss = scalar(&e, "argmax_disc_loss");
    let rel = ((r.disc_loss as f64 - want_loss) / want_loss).abs();
    assert!(
        rel < 1e-5,
        "argmax disc loss {} vs {want_loss}",
        r.disc_loss
    );

    let acts = t.acts().unwrap().clone();
    let mut ids = vec![0u32; b.batch.input_ids.len()];
    use electra::backend::Backend;
    t.backend.read_ints(acts.corrupted_ids, &mut ids);
    let want_ids: Vec<u32> = e["argmax_replaced_input_ids"]
        .as_ints()
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect();
    assert_eq!(ids, want_ids);
    let labels: Vec<i64> = t
        .read_acts(acts.is_replaced)
        .iter()
        .map(|&v| v as i64)
        .collect();
    assert_eq!(labels, e["argmax_disc_labels"].as_ints().unwrap());
}

#[test]
fn a_given_replacement_equal_to_the_original_is_labelled_original() {
    let (mut t, b) = trainer();
    let given = b.replaced.clone().unwrap();
    t.forward_backward(&b.batch, &b.masking, Corruption::Given(&given))
        .unwrap();
    let labels = t.read_acts(t.acts().unwrap().is_replaced);
    let same = b
        .masking
        .positions
        .iter()
        .map(|&p| p as usize)
        .filter(|&p| given[p] == b.batch.input_ids[p]);
    let same: Vec<usize> = same.collect();
    assert!(
        !same.is_empty(),
        "the fixture has chosen positions whose replacement is the original"
    );
    assert!(same.iter().all(|&p| labels[p] == 0.0));
    let read = electra::io::tensors::read_tensors(&fixture().join("batch.safetensors")).unwrap();
    let want: Vec<f32> = read["disc_labels"]
        .as_ints()
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(labels, want);
}
