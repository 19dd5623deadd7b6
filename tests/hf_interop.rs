//! HF interop: import the HF fixture, export it, and get the same tensors, configs and logits
//! back; export runs and checkpoints made by `electra pretrain`; `--init-from`; and bad input.

use electra::data::WordPieceTokenizer;
use electra::io::export::{export_model, export_run};
use electra::io::hf::{load_discriminator, load_pretraining_dir, load_pretraining_pair};
use electra::io::tensors::{read_tensors, write_f32_tensors};
use electra::model::config::ElectraConfig;
use electra::model::Model;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;
use common::{electra, fails, fixture, ok, s, scratch};

/// A BERT-style vocabulary of the fixture's 512 tokens, with its special ids ([PAD] 0, [UNK]
/// 100, [CLS] 101, [SEP] 102, [MASK] 103).
fn fixture_vocab(dir: &Path) -> WordPieceTokenizer {
    let mut tokens = vec!["[PAD]".to_string()];
    tokens.extend((1..100).map(|i| format!("[unused{i}]")));
    tokens.extend(["[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from));
    let words = ["the", "of", "and", "to", "in", "is", "it"];
    tokens.extend(words.iter().map(|w| w.to_string()));
    let letters = "abcdefghijklmnopqrstuvwxyz";
    tokens.extend(letters.chars().map(|c| c.to_string()));
    tokens.extend(letters.chars().map(|c| format!("##{c}")));
    let mut i = 0;
    while tokens.len() < 512 {
        tokens.push(format!("word{i}"));
        i += 1;
    }
    let path = dir.join("vocab.txt");
    std::fs::write(&path, tokens.join("\n") + "\n").unwrap();
    WordPieceTokenizer::from_vocab_file(&path).unwrap()
}

/// The fixture imported and exported once, into a folder shared by the tests.
fn exported_fixture() -> &'static PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let dir = scratch("fixture-export");
        let f = fixture();
        let loaded = load_pretraining_pair(&f.join("generator"), &f.join("discriminator")).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let tokenizer = fixture_vocab(&dir);
        let out = dir.join("export");
        let summary = export_model(&loaded.model, &loaded.values, &tokenizer, &out, false).unwrap();
        // 5 shared, 2 projection, 2 × 16 per layer, and the heads (4, or 4 + the LM bias).
        assert_eq!(summary.discriminator_tensors, 43);
        assert_eq!(summary.generator_tensors, 44);
        out
    })
}

/// The raw tensors of a safetensors file: dtype, shape and bytes, by name.
fn raw_tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect()
}

#[test]
fn round_trip_of_the_fixture_keeps_every_tensor_bit_for_bit() {
    let out = exported_fixture();
    for net in ["discriminator", "generator"] {
        let theirs = raw_tensors(&fixture().join(net).join("model.safetensors"));
        let ours = raw_tensors(&out.join(net).join("model.safetensors"));
        let names = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&theirs), "{net}: tensor names");
        for (name, (dtype, shape, bytes)) in &theirs {
            let (d, sh, b) = &ours[name];
            assert_eq!((d, sh), (dtype, shape), "{net}: {name}");
            assert!(b == bytes, "{net}: {name} differs");
        }
        // transformers rejects safetensors files without the `format` metadata.
        let bytes = std::fs::read(out.join(net).join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap_or_default();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    }
    // The generator's LM head weight is tied to the word embeddings and not stored.
    let gen = raw_tensors(&out.join("generator/model.safetensors"));
    assert!(!gen.contains_key("generator_lm_head.weight"));
    assert!(gen.contains_key("generator_lm_head.bias"));
}

#[test]
fn round_trip_of_the_fixture_keeps_the_configs() {
    let out = exported_fixture();
    let f = fixture();
    // The engine reads the same model from both.
    let theirs = ElectraConfig::from_hf(
        &f.join("generator/config.json"),
        &f.join("discriminator/config.json"),
    )
    .unwrap();
    let ours = ElectraConfig::from_hf(
        &out.join("generator/config.json"),
        &out.join("discriminator/config.json"),
    )
    .unwrap();
    assert_eq!(ours, theirs);
    // And every field that transformers wrote is there with the same value, except the
    // initializer range, which the engine does not keep (it matters only for new weights) and
    // the version stamp.
    for net in ["discriminator", "generator"] {
        let read = |p: PathBuf| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let theirs = read(f.join(net).join("config.json"));
        let ours = read(out.join(net).join("config.json"));
        for (key, value) in theirs.as_object().unwrap() {
            if key == "transformers_version" || key == "initializer_range" {
                continue;
            }
            assert_eq!(ours.get(key), Some(value), "{net}: config field {key}");
        }
        assert_eq!(ours["initializer_range"], 0.02);
        assert_eq!(ours["position_embedding_type"], "absolute");
        assert_eq!(ours["layer_norm_eps"], 1e-12);
    }
}

#[test]
fn round_trip_ships_tokenizer_files_that_agree_with_the_vocabulary() {
    let out = exported_fixture();
    for net in ["discriminator", "generator"] {
        let dir = out.join(net);
        let from_vocab = WordPieceTokenizer::load(&dir.join("vocab.txt")).unwrap();
        let from_json = WordPieceTokenizer::load(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(from_vocab.vocab(), from_json.vocab());
        assert_eq!(from_vocab.vocab_size(), 512);
        let text = "The CAT is in a Hat, and it is THE word7";
        assert_eq!(
            from_vocab.encode(text).unwrap(),
            from_json.encode(text).unwrap()
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
                .unwrap();
        assert_eq!(json["model"]["type"], "WordPiece");
        assert_eq!(json["normalizer"]["lowercase"], true);
        assert_eq!(json["post_processor"]["type"], "TemplateProcessing");
        let specials: Vec<&str> = json["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["content"].as_str().unwrap())
            .collect();
        assert_eq!(specials, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["do_lower_case"], true);
        assert_eq!(config["mask_token"], "[MASK]");
    }
}

#[test]
fn the_exported_fixture_reads_back_to_the_same_values_and_logits() {
    let out = exported_fixture();
    let f = fixture();
    let original = load_pretraining_pair(&f.join("generator"), &f.join("discriminator")).unwrap();
    let back = load_pretraining_dir(out).unwrap();
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    assert_eq!(back.model.config, original.model.config);
    assert!(
        back.values == original.values,
        "values differ after a round trip"
    );

    // `electra loss` on both gives the same logits, bit for bit.
    let dir = scratch("logits");
    let logits = |gen: PathBuf, disc: PathBuf, name: &str| {
        let path = dir.join(name);
        let o = electra(&[
            "loss",
            "--generator",
            s(&gen),
            "--discriminator",
            s(&disc),
            "--batch",
            s(&f.join("batch.safetensors")),
            "--replacement",
            "argmax",
            "--logits",
            s(&path),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        raw_tensors(&path)
    };
    let theirs = logits(
        f.join("generator"),
        f.join("discriminator"),
        "fixture.safetensors",
    );
    let ours = logits(
        out.join("generator"),
        out.join("discriminator"),
        "export.safetensors",
    );
    assert_eq!(theirs.len(), 3);
    assert!(theirs == ours, "logits differ after a round trip");
}

#[test]
fn the_discriminator_alone_reads_from_a_pair_or_its_own_folder() {
    let out = exported_fixture();
    let pair = load_pretraining_dir(out).unwrap();
    for dir in [out.clone(), out.join("discriminator")] {
        let d = load_discriminator(&dir).unwrap();
        assert_eq!(d.source, out.join("discriminator"));
        assert_eq!(d.encoder(), pair.model.config.discriminator);
        assert_eq!(d.config.embedding_size, 32);
        assert!(d.has_rtd_head());
        // Every shared and discriminator tensor, with the pair's values.
        let names: Vec<&String> = pair
            .model
            .layout
            .params
            .iter()
            .map(|p| &p.name)
            .filter(|n| !n.starts_with("generator."))
            .collect();
        assert_eq!(d.tensors.len(), names.len());
        for name in names {
            let p = pair.model.layout.get(name).unwrap();
            let t = d.get(name).unwrap();
            assert_eq!(t.shape, p.shape);
            assert!(
                t.values == pair.values[p.buf.offset..p.buf.offset + p.buf.len],
                "{name}"
            );
        }
        // Filling a whole pretraining model leaves exactly the generator to initialise.
        let model = Model::new(pair.model.config.clone());
        let mut values = vec![f32::NAN; model.layout.len()];
        let left = d.fill(&model.layout, &mut values).unwrap();
        assert!(left.iter().all(|n| n.starts_with("generator.")));
        assert_eq!(
            left.len(),
            model
                .layout
                .params
                .iter()
                .filter(|p| p.name.starts_with("generator."))
                .count()
        );
    }
}

#[test]
fn a_bare_electra_model_reads_as_a_discriminator_without_head() {
    // `ElectraModel.save_pretrained` stores the encoder without the `electra.` prefix and
    // without the replaced-token-detection head.
    let dir = scratch("bare");
    let f = fixture();
    let st = read_tensors(&f.join("discriminator/model.safetensors")).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .filter_map(|(k, t)| {
            let name = k.strip_prefix("electra.")?;
            Some((name.to_string(), t.shape.clone(), t.to_f32().unwrap()))
        })
        .collect();
    write_f32_tensors(&dir.join("model.safetensors"), &kept, None).unwrap();
    std::fs::copy(f.join("discriminator/config.json"), dir.join("config.json")).unwrap();
    let d = load_discriminator(&dir).unwrap();
    assert!(!d.has_rtd_head());
    assert!(d
        .get("discriminator.electra.encoder.layer.1.output.dense.weight")
        .is_some());
    assert!(d
        .get("shared.electra.embeddings.word_embeddings.weight")
        .is_some());
}

#[test]
fn importing_the_wrong_files_gives_errors_that_list_the_tensors() {
    let f = fixture();
    // A generator is not a discriminator.
    let err = load_discriminator(&f.join("generator"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown tensors"), "{err}");
    assert!(err.contains("generator_predictions.dense.weight"), "{err}");
    assert!(err.contains("generator_lm_head.bias"), "{err}");

    // Shapes that disagree with the config, and a missing tensor.
    let dir = scratch("bad-import");
    let disc = dir.join("discriminator");
    std::fs::create_dir_all(&disc).unwrap();
    let config = std::fs::read_to_string(f.join("discriminator/config.json")).unwrap();
    std::fs::write(
        disc.join("config.json"),
        config.replace("\"intermediate_size\": 256", "\"intermediate_size\": 128"),
    )
    .unwrap();
    let st = read_tensors(&f.join("discriminator/model.safetensors")).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .filter(|(k, _)| !k.contains("layer.0.attention.self.key.bias"))
        .map(|(k, t)| (k.clone(), t.shape.clone(), t.to_f32().unwrap()))
        .collect();
    write_f32_tensors(&disc.join("model.safetensors"), &kept, None).unwrap();
    let err = load_discriminator(&disc).err().unwrap().to_string();
    assert!(err.contains("missing tensors"), "{err}");
    assert!(
        err.contains("electra.encoder.layer.0.attention.self.key.bias"),
        "{err}"
    );
    assert!(err.contains("wrong shape tensors"), "{err}");
    assert!(
        err.contains("electra.encoder.layer.1.intermediate.dense.weight is F32 [256, 64], expected a float tensor of [128, 64]"),
        "{err}"
    );

    // A pair folder without its subfolders, and a folder that is not there.
    let err = load_pretraining_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("missing: generator/"), "{err}");
    let err = load_pretraining_dir(&dir.join("nowhere"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nowhere: no such directory"), "{err}");
    // A directory with only a PyTorch pickle.
    let pickle = dir.join("pickle");
    std::fs::create_dir_all(&pickle).unwrap();
    std::fs::copy(
        f.join("discriminator/config.json"),
        pickle.join("config.json"),
    )
    .unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"not read").unwrap();
    let err = load_discriminator(&pickle).err().unwrap().to_string();
    assert!(err.contains("only pytorch_model.bin"), "{err}");
}

#[test]
fn exporting_checks_the_vocabulary_and_the_destination() {
    let f = fixture();
    let loaded = load_pretraining_pair(&f.join("generator"), &f.join("discriminator")).unwrap();
    let dir = scratch("bad-export");
    let tokenizer = fixture_vocab(&dir);
    // A vocabulary of another size.
    let small = dir.join("small.txt");
    let mut tokens: Vec<String> = tokenizer.vocab()[..300].to_vec();
    tokens.push(String::new());
    std::fs::write(&small, tokens.join("\n")).unwrap();
    let small = WordPieceTokenizer::from_vocab_file(&small).unwrap();
    let out = dir.join("out");
    let err = export_model(&loaded.model, &loaded.values, &small, &out, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("the vocabulary has 300 tokens but the model's embedding table has 512 rows"),
        "{err}"
    );
    assert!(!out.exists(), "a failed export leaves nothing behind");

    // A destination that holds files is replaced only when asked.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = export_model(&loaded.model, &loaded.values, &tokenizer, &out, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already exists and is not empty"), "{err}");
    assert!(out.join("keep.txt").exists());
    export_model(&loaded.model, &loaded.values, &tokenizer, &out, true).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("discriminator/model.safetensors").exists());
    // No temporary folder is left beside it.
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A tiny run made once by `electra prepare` + `electra pretrain` on generated text: three
/// steps, a checkpoint after each.
fn tiny_run() -> &'static (PathBuf, PathBuf) {
    static RUN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("run");
        let words = [
            "the", "nation", "people", "congress", "war", "peace", "trade", "law", "state",
            "union", "great", "free", "year", "public", "service", "our", "duty", "country",
        ];
        let mut x: u64 = 12345;
        let mut text = String::new();
        for _ in 0..400 {
            let mut line = vec![];
            for _ in 0..12 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                line.push(words[(x >> 33) as usize % words.len()]);
            }
            text.push_str(&line.join(" "));
            text.push_str(".\n");
        }
        let input = dir.join("text.txt");
        std::fs::write(&input, text).unwrap();
        let data = dir.join("data");
        ok(&[
            "prepare",
            "--input",
            s(&input),
            "--train-vocab",
            "120",
            "--seq-len",
            "32",
            "--out",
            s(&data),
        ]);
        let run = dir.join("run");
        ok(&[
            "pretrain",
            "--preset",
            "tiny",
            "--data",
            s(&data),
            "--out",
            s(&run),
            "--steps",
            "3",
            "--batch",
            "4",
            "--checkpoint-every",
            "1",
            "--keep",
            "5",
        ]);
        (data, run)
    })
}

#[test]
fn export_writes_the_newest_checkpoint_of_a_run_or_the_one_named() {
    let (data, run) = tiny_run();
    let dir = scratch("export-run");
    let out = dir.join("hf");
    let stderr = ok(&["export", s(run), "--out", s(&out)]);
    assert!(stderr.contains("(step 3)"), "{stderr}");
    let rc = electra::io::run_dir::read_config(run).unwrap();
    let model = Model::new(rc.model.clone());
    let step3 =
        electra::io::export::read_checkpoint_params(&model.layout, &run.join("checkpoints/step-3"))
            .unwrap();
    let back = load_pretraining_dir(&out).unwrap();
    assert!(back.values == step3, "the export holds step 3's weights");
    assert_eq!(back.model.config.vocab_size, rc.model.vocab_size);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("discriminator/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["hidden_size"], 128);
    assert_eq!(config["architectures"][0], "ElectraForPreTraining");
    assert_eq!(
        std::fs::read_to_string(out.join("discriminator/vocab.txt")).unwrap(),
        std::fs::read_to_string(data.join("vocab.txt")).unwrap()
    );

    let out1 = dir.join("hf-step1");
    let stderr = ok(&[
        "export",
        s(&run.join("checkpoints/step-1")),
        "--out",
        s(&out1),
    ]);
    assert!(stderr.contains("(step 1)"), "{stderr}");
    let step1 = load_pretraining_dir(&out1).unwrap();
    assert!(step1.values != back.values);

    // The same export through the library, replacing what is there.
    let summary = export_run(run, &out1, None, true).unwrap();
    assert_eq!(summary.step, Some(3));
    assert!(load_pretraining_dir(&out1).unwrap().values == step3);
}

#[test]
fn pretraining_can_start_from_an_export() {
    let (data, run) = tiny_run();
    let dir = scratch("init-from");
    let hf = dir.join("hf");
    ok(&["export", s(run), "--out", s(&hf)]);
    let exported = load_pretraining_dir(&hf).unwrap();
    // A zero learning rate keeps the weights: the first checkpoint holds the imported ones.
    let run2 = dir.join("run2");
    let stderr = ok(&[
        "pretrain",
        "--init-from",
        s(&hf),
        "--data",
        s(data),
        "--out",
        s(&run2),
        "--steps",
        "1",
        "--batch",
        "4",
        "--lr",
        "0",
    ]);
    assert!(stderr.contains("initialised"), "{stderr}");
    let rc = electra::io::run_dir::read_config(&run2).unwrap();
    assert_eq!(rc.model, exported.model.config);
    let model = Model::new(rc.model);
    let step1 = electra::io::export::read_checkpoint_params(
        &model.layout,
        &run2.join("checkpoints/step-1"),
    )
    .unwrap();
    assert!(
        step1 == exported.values,
        "the run starts from the imported weights"
    );

    // --init-from takes the sizes from the directory: a preset as well is refused.
    let err = fails(&[
        "pretrain",
        "--init-from",
        s(&hf),
        "--preset",
        "small",
        "--data",
        s(data),
        "--out",
        s(&dir.join("run3")),
    ]);
    assert!(err.contains("cannot be used with"), "{err}");

    // Another vocabulary is refused.
    let other = dir.join("other-vocab");
    std::fs::create_dir_all(&other).unwrap();
    let vocab = std::fs::read_to_string(data.join("vocab.txt")).unwrap();
    let mut lines: Vec<&str> = vocab.lines().collect();
    *lines.last_mut().unwrap() = "zzzz";
    let vocab = lines.join("\n") + "\n";
    for net in ["generator", "discriminator"] {
        let src = hf.join(net);
        let dst = other.join(net);
        std::fs::create_dir_all(&dst).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(file), dst.join(file)).unwrap();
        }
        std::fs::write(dst.join("vocab.txt"), &vocab).unwrap();
    }
    let err = fails(&[
        "pretrain",
        "--init-from",
        s(&other),
        "--data",
        s(data),
        "--out",
        s(&dir.join("run4")),
    ]);
    assert!(err.contains("belong to another vocabulary"), "{err}");
    assert!(!dir.join("run4").exists(), "a refused run leaves no folder");

    // A pair folder without the networks.
    let err = fails(&[
        "pretrain",
        "--init-from",
        s(&dir),
        "--data",
        s(data),
        "--out",
        s(&dir.join("run5")),
    ]);
    assert!(
        err.contains("expected generator/ and discriminator/ subfolders"),
        "{err}"
    );
}

#[test]
fn exporting_bad_runs_and_checkpoints_gives_clear_errors() {
    let (_, run) = tiny_run();
    let dir = scratch("bad-runs");
    let out = dir.join("out");

    let err = fails(&["export", s(&dir.join("missing")), "--out", s(&out)]);
    assert!(
        err.contains("missing: no such run directory or checkpoint folder"),
        "{err}"
    );

    let err = fails(&["export", s(&dir), "--out", s(&out)]);
    assert!(err.contains("neither a run directory"), "{err}");

    // A run without checkpoints.
    let empty = dir.join("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(run.join("run.json"), empty.join("run.json")).unwrap();
    let err = fails(&["export", s(&empty), "--out", s(&out)]);
    assert!(err.contains("the run has no checkpoint yet"), "{err}");

    // A checkpoint without its model file.
    let broken = dir.join("broken-run");
    let step = broken.join("checkpoints/step-7");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::copy(run.join("run.json"), broken.join("run.json")).unwrap();
    let err = fails(&["export", s(&broken), "--out", s(&out)]);
    assert!(err.contains("the checkpoint has no model weights"), "{err}");
    assert!(err.contains("step-7/model.safetensors"), "{err}");

    // A checkpoint folder outside a run.
    let loose = dir.join("step-3");
    std::fs::create_dir_all(&loose).unwrap();
    std::fs::copy(
        run.join("checkpoints/step-3/model.safetensors"),
        loose.join("model.safetensors"),
    )
    .unwrap();
    let err = fails(&["export", s(&loose), "--out", s(&out)]);
    assert!(err.contains("is not inside a run directory"), "{err}");

    // Weights of the wrong shape.
    let st = read_tensors(&run.join("checkpoints/step-3/model.safetensors")).unwrap();
    let bent: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .map(|(k, t)| {
            let mut shape = t.shape.clone();
            if k == "discriminator.electra.encoder.layer.2.intermediate.dense.weight" {
                shape = vec![shape[1], shape[0]];
            }
            (k.clone(), shape, t.to_f32().unwrap())
        })
        .collect();
    write_f32_tensors(&step.join("model.safetensors"), &bent, None).unwrap();
    let err = fails(&["export", s(&broken), "--out", s(&out)]);
    assert!(err.contains("wrong shape tensors"), "{err}");
    assert!(
        err.contains(
            "discriminator.electra.encoder.layer.2.intermediate.dense.weight is F32 [128, 512], expected a float tensor of [512, 128]"
        ),
        "{err}"
    );

    // A run whose data folder is gone, unless --vocab names a vocabulary.
    let mut rc = electra::io::run_dir::read_config(run).unwrap();
    let vocab = rc.data.join("vocab.txt");
    rc.data = dir.join("gone");
    let moved = dir.join("moved-run");
    electra::io::run_dir::write_config(&moved, &rc).unwrap();
    let src = run.join("checkpoints/step-3");
    let dst = moved.join("checkpoints/step-3");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("model.safetensors"), dst.join("model.safetensors")).unwrap();
    let err = fails(&["export", s(&moved), "--out", s(&out)]);
    assert!(err.contains("gone/vocab.txt: absent"), "{err}");
    assert!(err.contains("--vocab"), "{err}");
    // A --vocab of another size is named, with the size the run was trained with.
    let short = dir.join("short-vocab.txt");
    let lines: Vec<String> = std::fs::read_to_string(&vocab)
        .unwrap()
        .lines()
        .take(100)
        .map(String::from)
        .collect();
    std::fs::write(&short, lines.join("\n")).unwrap();
    let err = fails(&["export", s(&moved), "--out", s(&out), "--vocab", s(&short)]);
    assert!(
        err.contains("short-vocab.txt: 100 tokens, but")
            && err.contains("was trained with a vocabulary of"),
        "{err}"
    );
    assert!(!out.exists(), "a refused export writes nothing");
    ok(&["export", s(&moved), "--out", s(&out), "--vocab", s(&vocab)]);

    // An existing export is replaced only with --force.
    let err = fails(&["export", s(run), "--out", s(&out)]);
    assert!(err.contains("already exists and is not empty"), "{err}");
    ok(&["export", s(run), "--out", s(&out), "--force"]);
}

/// Files of a folder and their bytes, to show that a refused command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn no_export_writes_over_what_it_reads_and_force_never_deletes_a_run_or_data() {
    let (data, run) = tiny_run();
    let dir = scratch("export-onto-inputs");
    // A copy of the run and its data, so that a regression destroys only the copies.
    let (data_copy, run_copy) = (dir.join("data"), dir.join("runs/run"));
    common::copy_dir(data, &data_copy);
    common::copy_dir(run, &run_copy);
    let mut rc = electra::io::run_dir::read_config(&run_copy).unwrap();
    rc.data = data_copy.clone();
    electra::io::run_dir::write_config(&run_copy, &rc).unwrap();
    let step = run_copy.join("checkpoints/step-3");
    let before = (snapshot(&run_copy), snapshot(&data_copy));

    let cases = [
        (
            &run_copy,
            run_copy.clone(),
            "the output is the run being exported",
        ),
        (
            &run_copy,
            run_copy.join("hf"),
            "the output lies inside the run being exported",
        ),
        (
            &run_copy,
            dir.join("runs"),
            "the output contains the run being exported",
        ),
        (
            &step,
            step.clone(),
            "the output is the checkpoint being exported",
        ),
        (
            &run_copy,
            step.join("hf"),
            "the output lies inside the checkpoint being exported",
        ),
        (
            &run_copy,
            data_copy.clone(),
            "the output is the run's data folder",
        ),
    ];
    for (source, out, expected) in cases {
        let err = fails(&["export", s(source), "--out", s(&out), "--force"]);
        assert!(err.contains(expected), "{out:?}: {err}");
        assert!(
            err.contains(s(source)) || err.contains(s(&data_copy)),
            "{err}"
        );
        assert_eq!(
            before,
            (snapshot(&run_copy), snapshot(&data_copy)),
            "{out:?}"
        );
    }

    // --force replaces an export, but never a folder that holds a run or prepared data.
    let holder = dir.join("holder");
    common::copy_dir(&data_copy, &holder.join("old-data"));
    let err = fails(&["export", s(&run_copy), "--out", s(&holder), "--force"]);
    assert!(err.contains("holds a data folder"), "{err}");
    assert!(holder.join("old-data/vocab.txt").is_file());
    std::fs::remove_dir_all(holder.join("old-data")).unwrap();
    std::fs::create_dir_all(holder.join("nested")).unwrap();
    std::fs::copy(run_copy.join("run.json"), holder.join("nested/run.json")).unwrap();
    let err = fails(&["export", s(&run_copy), "--out", s(&holder), "--force"]);
    assert!(
        err.contains("holds a run") && err.contains("nested/run.json"),
        "{err}"
    );
    std::fs::remove_dir_all(holder.join("nested")).unwrap();
    std::fs::write(holder.join("notes.txt"), "old export").unwrap();
    ok(&["export", s(&run_copy), "--out", s(&holder), "--force"]);
    ok(&["export", s(&run_copy), "--out", s(&holder), "--force"]);
    assert!(holder.join("discriminator/model.safetensors").is_file());
}
