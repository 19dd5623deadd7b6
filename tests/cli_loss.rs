//! `electra loss` as a user runs it: it reproduces the HF fixture's figures, writes the gradients
//! under the fixture's names, and rejects bad input with a clear error (never a panic).

use electra::io::tensors::{read_tensors, write_f32_tensors, Values};
use std::path::{Path, PathBuf};

mod common;
use common::{electra, fixture, s, scratch};

fn electra_loss(gen: &Path, disc: &Path, batch: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "loss",
        "--generator",
        s(gen),
        "--discriminator",
        s(disc),
        "--batch",
        s(batch),
    ];
    args.extend_from_slice(extra);
    let out = electra(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

fn expected_scalar(name: &str) -> f64 {
    let e = read_tensors(&fixture().join("expected.safetensors")).unwrap();
    match &e[name].values {
        Values::Float(v) => v[0],
        Values::Int(_) => unreachable!(),
    }
}

#[test]
fn reproduces_the_fixture_losses_norm_and_gradients() {
    let dir = scratch("grads");
    let grads = dir.join("grads.safetensors");
    let f = fixture();
    let (ok, stdout, stderr) = electra_loss(
        &f.join("generator"),
        &f.join("discriminator"),
        &f.join("batch.safetensors"),
        &["--replacement", "given", "--grads", grads.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["gen_loss", "disc_loss", "total_loss"] {
        let (got, want) = (line[key].as_f64().unwrap(), expected_scalar(key));
        assert!(((got - want) / want).abs() < 1e-5, "{key}: {got} vs {want}");
    }
    let global = expected_scalar("grad_global_norm");
    let got = line["grad_global_norm"].as_f64().unwrap();
    assert!(
        ((got - global) / global).abs() < 1e-4,
        "norm: {got} vs {global}"
    );

    let written = read_tensors(&grads).unwrap();
    let expected = read_tensors(&f.join("expected.safetensors")).unwrap();
    let names: Vec<&String> = expected.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(
        written.len(),
        names.len(),
        "one gradient per expected tensor"
    );
    for name in names {
        let (Values::Float(g), Values::Float(w)) = (&written[name].values, &expected[name].values)
        else {
            panic!("{name} is not float");
        };
        assert_eq!(written[name].shape, expected[name].shape, "{name}");
        let diff: f64 = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt();
        // Gradients that are zero up to rounding (the key biases) are compared with the global norm.
        assert!(
            diff <= 1e-4 * norm || diff <= 1e-5 * global,
            "{name}: diff {diff:e}, norm {norm:e}"
        );
    }
}

#[test]
fn argmax_replacement_reproduces_the_fixture_loss() {
    let f = fixture();
    let (ok, stdout, stderr) = electra_loss(
        &f.join("generator"),
        &f.join("discriminator"),
        &f.join("batch.safetensors"),
        &["--replacement", "argmax"],
    );
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let (got, want) = (
        line["disc_loss"].as_f64().unwrap(),
        expected_scalar("argmax_disc_loss"),
    );
    assert!(((got - want) / want).abs() < 1e-5, "{got} vs {want}");
}

/// Writes a copy of the fixture's batch with `edit` applied to its tensors.
/// The integer tensors of a batch file: name, shape, values.
type IntTensors = Vec<(String, Vec<usize>, Vec<i64>)>;
/// A change to a batch file's tensors.
type Edit = Box<dyn Fn(&mut IntTensors)>;

fn edited_batch(dir: &Path, edit: impl Fn(&mut IntTensors)) -> PathBuf {
    let batch = read_tensors(&fixture().join("batch.safetensors")).unwrap();
    let mut tensors: IntTensors = batch
        .into_iter()
        .map(|(k, t)| (k, t.shape.clone(), t.as_ints().unwrap().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, s, v)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                s.clone(),
                bytemuck::cast_slice(v),
            );
            (k.clone(), view.unwrap())
        })
        .collect();
    let path = dir.join("batch.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

#[test]
fn bad_batches_get_clear_errors() {
    let dir = scratch("bad-batch");
    let f = fixture();
    let (gen, disc) = (f.join("generator"), f.join("discriminator"));
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|t| t.retain(|(k, _, _)| k != "chosen")),
            "missing tensor `chosen`",
        ),
        (
            Box::new(|t| {
                let e = t
                    .iter_mut()
                    .find(|(k, _, _)| k == "token_type_ids")
                    .unwrap();
                e.1 = vec![6, 12];
            }),
            "`token_type_ids` has shape [6, 12], expected [3, 24]",
        ),
        (
            Box::new(|t| {
                let e = t.iter_mut().find(|(k, _, _)| k == "input_ids").unwrap();
                e.2[5] = 9999;
            }),
            "token id 9999 is outside the vocabulary of 512",
        ),
        (
            Box::new(|t| {
                let e = t.iter_mut().find(|(k, _, _)| k == "input_ids").unwrap();
                e.2[5] = -3;
            }),
            "`input_ids` holds a negative or too large value",
        ),
    ];
    for (edit, message) in cases {
        let path = edited_batch(&dir, edit);
        let (ok, _, stderr) = electra_loss(&gen, &disc, &path, &[]);
        assert!(!ok, "accepted a bad batch ({message})");
        assert!(
            stderr.contains(message),
            "expected `{message}` in: {stderr}"
        );
        assert!(
            stderr.contains("batch.safetensors"),
            "the error names the file: {stderr}"
        );
    }
}

#[test]
fn models_that_do_not_fit_get_clear_errors() {
    let dir = scratch("bad-model");
    let f = fixture();
    // A discriminator config whose sizes disagree with its weights.
    let bad = dir.join("discriminator");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(
        f.join("discriminator/model.safetensors"),
        bad.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(f.join("discriminator/config.json")).unwrap();
    let config = config.replace("\"intermediate_size\": 256", "\"intermediate_size\": 128");
    std::fs::write(bad.join("config.json"), config).unwrap();
    let batch = f.join("batch.safetensors");
    let (ok, _, stderr) = electra_loss(&f.join("generator"), &bad, &batch, &[]);
    assert!(!ok);
    assert!(stderr.contains("wrong shape tensors"), "{stderr}");
    assert!(
        stderr.contains(
            "intermediate.dense.weight is F32 [256, 64], expected a float tensor of [128, 64]"
        ),
        "{stderr}"
    );

    // A discriminator with a tensor removed.
    let st = read_tensors(&f.join("discriminator/model.safetensors")).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .filter(|(k, _)| !k.contains("layer.1.output.LayerNorm.bias"))
        .map(|(k, t)| (k.clone(), t.shape.clone(), t.to_f32().unwrap()))
        .collect();
    write_f32_tensors(&bad.join("model.safetensors"), &kept, None).unwrap();
    std::fs::copy(f.join("discriminator/config.json"), bad.join("config.json")).unwrap();
    let (ok, _, stderr) = electra_loss(&f.join("generator"), &bad, &batch, &[]);
    assert!(!ok);
    assert!(stderr.contains("missing tensors"), "{stderr}");
    assert!(
        stderr.contains("electra.encoder.layer.1.output.LayerNorm.bias"),
        "{stderr}"
    );

    // A generator with a tensor removed: the error names the generator's file, and the
    // discriminator's folder nowhere.
    let gen = dir.join("generator");
    std::fs::create_dir_all(&gen).unwrap();
    std::fs::copy(f.join("generator/config.json"), gen.join("config.json")).unwrap();
    let st = read_tensors(&f.join("generator/model.safetensors")).unwrap();
    let gen_kept: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .filter(|(k, _)| !k.contains("generator_lm_head.bias"))
        .map(|(k, t)| (k.clone(), t.shape.clone(), t.to_f32().unwrap()))
        .collect();
    write_f32_tensors(&gen.join("model.safetensors"), &gen_kept, None).unwrap();
    let disc = f.join("discriminator");
    let (ok, _, stderr) = electra_loss(&gen, &disc, &batch, &[]);
    assert!(!ok);
    let named = format!(
        "{}: generator_lm_head.bias",
        gen.join("model.safetensors").display()
    );
    assert!(stderr.contains(&named), "{stderr}");
    assert!(!stderr.contains(s(&disc)), "{stderr}");

    // A weight stored as integers: named with its dtype.
    let name = "electra.encoder.layer.1.output.LayerNorm.bias";
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = kept
        .iter()
        .map(|(k, shape, v)| {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), safetensors::Dtype::F32, shape.clone(), bytes)
        })
        .collect();
    let ints: Vec<u8> = (0..64i32).flat_map(|x| x.to_le_bytes()).collect();
    tensors.push((name.into(), safetensors::Dtype::I32, vec![64], ints));
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes);
            (k.clone(), view.unwrap())
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(bad.join("model.safetensors"), file).unwrap();
    let (ok, _, stderr) = electra_loss(&f.join("generator"), &bad, &batch, &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{name} is I32 [64], expected a float tensor of [64]"
        )),
        "{stderr}"
    );

    // Generator and discriminator whose shared embedding sizes disagree.
    let config = std::fs::read_to_string(f.join("discriminator/config.json")).unwrap();
    std::fs::write(
        bad.join("config.json"),
        config.replace("\"embedding_size\": 32", "\"embedding_size\": 48"),
    )
    .unwrap();
    let (ok, _, stderr) = electra_loss(&f.join("generator"), &bad, &batch, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("disagree on `embedding_size` (32 vs 48)"),
        "{stderr}"
    );

    // A directory with no config at all.
    let (ok, _, stderr) = electra_loss(&f.join("generator"), &dir.join("nowhere"), &batch, &[]);
    assert!(!ok);
    assert!(stderr.contains("nowhere/config.json"), "{stderr}");
}

/// ‖a − b‖ / ‖b‖ over two float tensors.
fn relative_diff(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>();
    (diff / norm).sqrt()
}

#[test]
fn logits_flag_writes_the_fixture_logits_and_the_discriminator_input() {
    let dir = scratch("logits");
    let f = fixture();
    let expected = read_tensors(&f.join("expected.safetensors")).unwrap();
    let batch = read_tensors(&f.join("batch.safetensors")).unwrap();
    let floats = |t: &electra::io::tensors::Tensor| match &t.values {
        Values::Float(v) => v.clone(),
        Values::Int(_) => panic!("expected floats"),
    };
    for (mode, ids_name) in [
        ("given", "replaced_input_ids"),
        ("argmax", "argmax_replaced_input_ids"),
    ] {
        let path = dir.join(format!("{mode}.safetensors"));
        let (ok, _, stderr) = electra_loss(
            &f.join("generator"),
            &f.join("discriminator"),
            &f.join("batch.safetensors"),
            &["--replacement", mode, "--logits", path.to_str().unwrap()],
        );
        assert!(ok, "{stderr}");
        let got = read_tensors(&path).unwrap();
        assert_eq!(
            got.len(),
            3,
            "{mode}: disc and gen logits and the input ids"
        );
        // The generator's logits do not depend on the replacement.
        let want = &expected["gen_logits_at_chosen"];
        assert_eq!(got["gen_logits_at_chosen"].shape, want.shape);
        let d = relative_diff(&floats(&got["gen_logits_at_chosen"]), &floats(want));
        assert!(d < 1e-4, "{mode}: gen logits differ by {d:e}");
        // The discriminator's input is the file's replacements or the argmax's.
        let want_ids = batch
            .get(ids_name)
            .or_else(|| expected.get(ids_name))
            .unwrap();
        assert_eq!(got["replaced_input_ids"].shape, vec![3, 24]);
        assert_eq!(
            got["replaced_input_ids"].as_ints().unwrap(),
            want_ids.as_ints().unwrap(),
            "{mode}"
        );
        if mode == "given" {
            let want = &expected["disc_logits"];
            assert_eq!(got["disc_logits"].shape, want.shape);
            let d = relative_diff(&floats(&got["disc_logits"]), &floats(want));
            assert!(d < 1e-4, "disc logits differ by {d:e}");
        }
    }
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor_and_outputs_never_overwrite_inputs() {
    let dir = scratch("nan-weights");
    let f = fixture();
    let disc = dir.join("discriminator");
    common::copy_dir(&f.join("discriminator"), &disc);
    let st = read_tensors(&disc.join("model.safetensors")).unwrap();
    let name = "electra.encoder.layer.0.attention.self.query.weight";
    let planted: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .map(|(k, t)| {
            let mut v = t.to_f32().unwrap();
            if k == name {
                v[5] = f32::NAN;
            }
            (k.clone(), t.shape.clone(), v)
        })
        .collect();
    write_f32_tensors(&disc.join("model.safetensors"), &planted, None).unwrap();
    let batch = f.join("batch.safetensors");
    let (ok, stdout, stderr) = electra_loss(&f.join("generator"), &disc, &batch, &[]);
    assert!(!ok, "exit 0 with {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("is NaN, not a finite number"), "{stderr}");
    assert!(
        stderr.contains(&format!("discriminator.{name}` holds NaN at index 5")),
        "{stderr}"
    );
    assert!(
        stderr.contains("discriminator/model.safetensors"),
        "{stderr}"
    );

    // --grads or --logits onto an input is refused before anything is read or written.
    let model = disc.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    for flag in ["--grads", "--logits"] {
        let (ok, _, stderr) = electra_loss(&f.join("generator"), &disc, &batch, &[flag, s(&model)]);
        assert!(!ok);
        assert!(
            stderr.contains("the output lies inside the discriminator"),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read(&model).unwrap(), bytes);
}
