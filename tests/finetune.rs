//! Fine-tuning: the GLUE metrics against hand-computed values, training on small GLUE-format files
//! lowering the loss (a single-sentence, a pair and a regression task), clear errors for bad rows,
//! and `electra finetune` / `electra predict` end to end. Everything is made here, at tiny sizes.

mod common;

use common::{fails, ok, s, scratch};
use electra::backend::cpu::CpuBackend;
use electra::data::WordPieceTokenizer;
use electra::finetune::data::{encode, pad_batch, read_rows, targets, Encoded, TaskSpec};
use electra::finetune::metrics::{accuracy, average_ranks, f1, matthews, pearson, spearman};
use electra::finetune::{Classifier, FtOptions};
use electra::io::export::export_model;
use electra::io::hf::load_discriminator;
use electra::model::config::{ElectraConfig, EncoderConfig, SpecialTokens};
use electra::model::Model;
use std::path::{Path, PathBuf};

const WORDS: &str = "good great fun fine bad awful boring dull the a movie film plot was is \
                     very cat dog sat on mat ran it . ,";

/// A tiny discriminator (E=16, H=32, 2 layers) with its vocab, exported as `electra export` does;
/// returns the pair folder.
fn tiny_model(dir: &Path) -> PathBuf {
    let vocab = dir.join("vocab.txt");
    let mut lines = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    lines.extend(WORDS.split_whitespace());
    // HF configs carry no [CLS]/[SEP] ids, so `ElectraConfig::from_hf` checks BERT's (101, 102)
    // against the vocabulary before vocab.txt sets the real ones: keep the vocabulary above 103.
    let filler: Vec<String> = (0..80).map(|i| format!("zz{i}")).collect();
    lines.extend(filler.iter().map(String::as_str));
    std::fs::write(&vocab, lines.join("\n") + "\n").unwrap();
    let tok = WordPieceTokenizer::from_vocab_file(&vocab).unwrap();
    let enc = |h, layers, heads| EncoderConfig {
        hidden_size: h,
        num_layers: layers,
        num_heads: heads,
        intermediate_size: 2 * h,
    };
    let cfg = ElectraConfig {
        vocab_size: tok.vocab_size(),
        embedding_size: 16,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        discriminator: enc(32, 2, 2),
        generator: enc(16, 2, 1),
        special_tokens: SpecialTokens {
            pad: 0,
            unk: 1,
            cls: 2,
            sep: 3,
            mask: 4,
        },
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
    };
    let model = Model::new(cfg);
    let values = model.initial_values(7).unwrap();
    let out = dir.join("hf");
    export_model(&model, &values, &tok, &out, false).unwrap();
    out
}

const POS: [&str; 4] = ["good", "great", "fun", "fine"];
const NEG: [&str; 4] = ["bad", "awful", "boring", "dull"];

/// SST-2 layout: header, `sentence\tlabel`.
fn sst2(n: usize, offset: usize) -> String {
    let mut t = String::from("sentence\tlabel\n");
    for i in 0..n {
        let j = i + offset;
        let (w, l) = if j.is_multiple_of(2) {
            (POS[j % 4], 1)
        } else {
            (NEG[j % 4], 0)
        };
        t.push_str(&format!("the movie was very {w} .\t{l}\n"));
    }
    t
}

/// MRPC layout: header, label in column 0, sentences in columns 3 and 4.
fn mrpc(n: usize) -> String {
    let mut t = String::from("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n");
    for i in 0..n {
        let a = if i % 3 == 0 {
            "the cat sat on the mat"
        } else {
            "a dog ran"
        };
        let (b, l) = if i % 2 == 0 {
            (a, 1)
        } else {
            ("the plot was dull", 0)
        };
        t.push_str(&format!("{l}\t{i}\t{}\t{a}\t{b}\n", i + 100));
    }
    t
}

/// STS-B layout: header, sentences in columns 7 and 8, score in column 9.
fn stsb(n: usize) -> String {
    let mut t = String::from(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
    );
    for i in 0..n {
        let (b, score) = if i % 2 == 0 {
            ("the cat sat on the mat", 4.5)
        } else {
            ("the film was boring", 0.5)
        };
        t.push_str(&format!(
            "{i}\tmain\tf\t2012\t{i}\tnone\tnone\tthe cat sat on the mat\t{b}\t{score}\n"
        ));
    }
    t
}

#[test]
fn metrics_match_hand_computed_values() {
    let (pred, gold) = ([1, 0, 1, 1], [1, 0, 0, 1]);
    assert_eq!(accuracy(&pred, &gold), 0.75);
    // TP 2, FP 1, FN 0: 2·2 / (2·2 + 1 + 0).
    assert!((f1(&pred, &gold, 1) - 0.8).abs() < 1e-12);
    // TP 2, TN 1, FP 1, FN 0: (2·1 − 1·0) / √(3·2·2·1).
    assert!((matthews(&pred, &gold) - 2.0 / 12f64.sqrt()).abs() < 1e-12);
    assert_eq!(matthews(&[1, 1], &[1, 0]), 0.0, "undefined → 0");
    assert_eq!(f1(&[0, 0], &[0, 0], 1), 0.0);
    // x̄ = 2.5, ȳ = 5: Σdxdy = 11, Σdx² = 5, Σdy² = 26.
    let r = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 5.0, 9.0]);
    assert!((r - 11.0 / 130f64.sqrt()).abs() < 1e-12);
    assert_eq!(
        average_ranks(&[10.0, 20.0, 20.0, 5.0, 20.0]),
        [2.0, 4.0, 4.0, 1.0, 4.0]
    );
    // Ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]: Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5.
    let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]);
    assert!((rho - 4.5 / 22.5f64.sqrt()).abs() < 1e-12);
    assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 100.0, 1000.0]) - 1.0).abs() < 1e-12);
}

/// Trains on one small batch of `file` (laid out as `spec`) and returns the loss of the first
/// and of the last few steps.
fn train_losses(model: &Path, spec: &TaskSpec, file: &Path, steps: usize) -> (f32, f32) {
    let disc = load_discriminator(model).unwrap();
    let tok = WordPieceTokenizer::from_vocab_file(&disc.source.join("vocab.txt")).unwrap();
    let mut spec = spec.clone();
    let rows = read_rows(
        file,
        &spec.text_columns,
        Some(spec.label_column),
        spec.header,
    )
    .unwrap();
    spec.learn_labels(&rows);
    let t = targets(&spec, &rows, file).unwrap();
    let enc: Vec<Encoded> = rows
        .iter()
        .map(|r| encode(&tok, &r.texts, 32).unwrap())
        .collect();
    let batch = pad_batch(&enc.iter().collect::<Vec<_>>(), tok.pad_id());
    let outputs = spec.num_outputs();
    let values =
        Classifier::<CpuBackend>::initial_values(&disc.config, outputs, 1, Some(&disc)).unwrap();
    let options = FtOptions {
        lr: 2e-3,
        total_steps: 10 * steps as u64,
        ..FtOptions::default()
    };
    let mut clf = Classifier::new(
        CpuBackend::new(),
        &disc.config,
        outputs,
        spec.regression,
        options,
        &values,
    )
    .unwrap();
    let losses: Vec<f32> = (0..steps)
        .map(|_| clf.train_step(&batch, &t).unwrap())
        .collect();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    (mean(&losses[..3]), mean(&losses[steps - 3..]))
}

#[test]
fn training_lowers_the_loss_single_pair_and_regression() {
    let dir = scratch("ft-loss");
    let model = tiny_model(&dir);
    let cases = [("sst2", sst2(8, 0)), ("mrpc", mrpc(8)), ("stsb", stsb(8))];
    for (task, text) in cases {
        let file = dir.join(format!("{task}.tsv"));
        std::fs::write(&file, text).unwrap();
        let spec = TaskSpec::glue(task).unwrap();
        let (first, last) = train_losses(&model, &spec, &file, 30);
        assert!(
            last < 0.6 * first,
            "{task}: the loss went from {first} to {last}"
        );
    }
}

#[test]
fn sequences_are_truncated_longest_first() {
    let dir = scratch("ft-trunc");
    let model = tiny_model(&dir);
    let tok = WordPieceTokenizer::from_vocab_file(&model.join("discriminator/vocab.txt")).unwrap();
    let texts = ["the cat sat on the mat".to_string(), "a dog".to_string()];
    let e = encode(&tok, &texts, 8).unwrap();
    // [CLS] the cat sat [SEP] a dog [SEP]: A lost three tokens, B none.
    assert_eq!(e.ids.len(), 8);
    assert_eq!(e.types, [0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(tok.decode(&e.ids[1..4]).unwrap(), "the cat sat");
    let single = encode(&tok, &texts[..1], 4).unwrap();
    assert_eq!(single.ids.len(), 4);
    assert_eq!(single.ids[0], tok.cls_id());
    assert_eq!(single.ids[3], tok.sep_id());
}

#[test]
fn bad_rows_give_clear_errors() {
    let dir = scratch("ft-bad");
    let spec = TaskSpec::glue("mrpc").unwrap();
    let short = dir.join("short.tsv");
    std::fs::write(
        &short,
        "h\th\th\th\th\n1\t1\t2\tone\ttwo\n0\t3\tonly three\n",
    )
    .unwrap();
    let err = read_rows(&short, &spec.text_columns, Some(spec.label_column), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("short.tsv:3:"), "{err}");
    assert!(
        err.contains("expected at least 5 tab-separated columns"),
        "{err}"
    );
    assert!(err.contains("found 3"), "{err}");

    let bad_label = dir.join("label.tsv");
    std::fs::write(&bad_label, "sentence\tlabel\nfine\t1\nbad\tpositive\n").unwrap();
    let sst = TaskSpec::glue("sst2").unwrap();
    let rows = read_rows(&bad_label, &sst.text_columns, Some(sst.label_column), true).unwrap();
    let err = targets(&sst, &rows, &bad_label).unwrap_err().to_string();
    assert!(err.contains("label.tsv:3:"), "{err}");
    assert!(
        err.contains("expected a label in [\"0\", \"1\"], found `positive`"),
        "{err}"
    );

    let bad_score = dir.join("score.tsv");
    let mut text = stsb(2);
    text.push_str("2\tmain\tf\t2012\t2\tnone\tnone\ta\tb\thigh\n");
    std::fs::write(&bad_score, text).unwrap();
    let sts = TaskSpec::glue("stsb").unwrap();
    let rows = read_rows(&bad_score, &sts.text_columns, Some(sts.label_column), true).unwrap();
    let err = targets(&sts, &rows, &bad_score).unwrap_err().to_string();
    assert!(
        err.contains("score.tsv:4:") && err.contains("expected a number"),
        "{err}"
    );

    // Bytes that are not UTF-8, and a binary file: the line is named.
    let latin1 = dir.join("latin1.tsv");
    std::fs::write(&latin1, b"sentence\tlabel\nfine\t1\ncaf\xe9\t0\n").unwrap();
    let err = read_rows(&latin1, &sst.text_columns, Some(sst.label_column), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.tsv:3: not UTF-8 text (byte 4 of the line)"),
        "{err}"
    );
    let binary = dir.join("binary.tsv");
    std::fs::write(&binary, b"sentence\tlabel\n\x00\x01\t1\n").unwrap();
    let err = read_rows(&binary, &sst.text_columns, Some(sst.label_column), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("binary.tsv:2: a NUL byte"), "{err}");

    assert!(TaskSpec::glue("squad")
        .unwrap_err()
        .to_string()
        .contains("unknown task"));
}

#[test]
fn finetune_and_predict_end_to_end() {
    let dir = scratch("ft-cli");
    let model = tiny_model(&dir);
    let data = dir.join("sst2");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.tsv"), sst2(24, 0)).unwrap();
    std::fs::write(data.join("dev.tsv"), sst2(8, 1)).unwrap();
    let test =
        "index\tsentence\n0\tthe film was fun .\n1\tthe plot was dull .\n2\tit was a movie\n";
    std::fs::write(data.join("test.tsv"), test).unwrap();
    let out = dir.join("out");
    let common = [
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--epochs",
        "2",
        "--batch",
        "8",
    ];
    let mut args = vec![
        "finetune",
        "--task",
        "sst2",
        "--out",
        s(&out),
        "--max-seq",
        "16",
    ];
    args.extend(common);
    ok(&args);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["dev"]["accuracy"].is_number() && lines[0]["dev"]["f1"].is_number());
    let best = out.join("best");
    for f in ["config.json", "model.safetensors", "vocab.txt"] {
        assert!(best.join(f).is_file(), "best/{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_labels"], 2);
    assert_eq!(cfg["electra_finetune"]["task"]["name"], "sst2");

    // Numbers no run can train with are refused before anything is written.
    for (flag, value, expected) in [
        ("--lr", "-1", "--lr must be a finite number >= 0, got -1"),
        ("--lr", "nan", "--lr must be a finite number >= 0, got NaN"),
        (
            "--layer-decay",
            "0",
            "--layer-decay must be in (0, 1], got 0",
        ),
        (
            "--warmup-fraction",
            "1",
            "--warmup-fraction must be in [0, 1), got 1",
        ),
        ("--epochs", "0", "--epochs must be positive, got 0"),
    ] {
        let refused = dir.join("refused");
        let err = fails(&[
            "finetune",
            "--task",
            "sst2",
            "--data",
            s(&data),
            "--model",
            s(&model),
            "--out",
            s(&refused),
            flag,
            value,
        ]);
        assert!(err.contains(expected), "{flag} {value}: {err}");
        assert!(!refused.exists(), "{flag} {value} left an output folder");
    }

    let pred = dir.join("pred.tsv");
    ok(&[
        "predict",
        "--model",
        s(&best),
        "--input",
        s(&data.join("test.tsv")),
        "--out",
        s(&pred),
    ]);
    let text = std::fs::read_to_string(&pred).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 3, "{text}");
    assert_eq!(lines[0], "index\tprediction");
    for (i, l) in lines[1..].iter().enumerate() {
        let (idx, label) = l.split_once('\t').unwrap();
        assert_eq!(idx, i.to_string());
        assert!(label == "0" || label == "1", "{l}");
    }

    // Random init, the generic CSV form, and a regression task through the CLI.
    let csv = dir.join("csv");
    std::fs::create_dir_all(&csv).unwrap();
    let to_csv = |t: String| {
        t.replace('\t', ",").replace(
            "the movie was very good .",
            "\"the movie, was very good .\"",
        )
    };
    std::fs::write(csv.join("train.csv"), to_csv(sst2(16, 0))).unwrap();
    std::fs::write(csv.join("dev.csv"), to_csv(sst2(4, 1))).unwrap();
    let out_csv = dir.join("out-csv");
    let mut args = vec![
        "finetune",
        "--text-columns",
        "0",
        "--label-column",
        "1",
        "--header",
        "--init-from-scratch",
        "--out",
        s(&out_csv),
    ];
    args.extend([
        "--data",
        s(&csv),
        "--model",
        s(&model),
        "--epochs",
        "1",
        "--batch",
        "8",
    ]);
    ok(&args);
    let sts = dir.join("stsb");
    std::fs::create_dir_all(&sts).unwrap();
    std::fs::write(sts.join("train.tsv"), stsb(12)).unwrap();
    std::fs::write(sts.join("dev.tsv"), stsb(4)).unwrap();
    let out_sts = dir.join("out-stsb");
    let mut args = vec!["finetune", "--task", "stsb", "--out", s(&out_sts)];
    args.extend([
        "--data",
        s(&sts),
        "--model",
        s(&model),
        "--epochs",
        "1",
        "--batch",
        "4",
    ]);
    ok(&args);
    let m = std::fs::read_to_string(out_sts.join("metrics.jsonl")).unwrap();
    assert!(
        m.contains("\"spearman\"") && m.contains("\"pearson\""),
        "{m}"
    );
    let pred = dir.join("pred-sts.tsv");
    let dev = sts.join("dev.tsv");
    ok(&[
        "predict",
        "--model",
        s(&out_sts.join("best")),
        "--input",
        s(&dev),
        "--out",
        s(&pred),
        "--labelled",
    ]);
    let text = std::fs::read_to_string(&pred).unwrap();
    assert_eq!(text.lines().count(), 1 + 4);
    assert!(text
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap()
        .parse::<f32>()
        .is_ok());

    // A bad row in the training file stops the run with the file and line.
    std::fs::write(
        data.join("train.tsv"),
        "sentence\tlabel\ngood\t1\nno label here\n",
    )
    .unwrap();
    let out_bad = dir.join("out-bad");
    let mut args = vec!["finetune", "--task", "sst2", "--out", s(&out_bad)];
    args.extend(common);
    let err = fails(&args);
    assert!(
        err.contains("train.tsv:3:") && err.contains("expected at least 2 tab-separated columns"),
        "{err}"
    );
}

#[test]
fn empty_dev_sets_empty_labelled_files_and_outputs_onto_inputs_are_refused() {
    let dir = scratch("ft-refusals");
    let model = tiny_model(&dir);
    let data = dir.join("sst2");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.tsv"), sst2(8, 0)).unwrap();
    std::fs::write(data.join("dev.tsv"), "sentence\tlabel\n").unwrap();
    let args = |out: &Path| -> Vec<String> {
        let flags = [
            "--task",
            "sst2",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--data",
            s(&data),
        ];
        let mut a: Vec<String> = ["finetune"]
            .iter()
            .chain(&flags)
            .map(|f| f.to_string())
            .collect();
        a.extend(["--model", s(&model), "--out", s(out)].map(String::from));
        a
    };
    let finetune = |out: &Path| fails(&args(out).iter().map(String::as_str).collect::<Vec<_>>());
    // No dev example: nothing to score an epoch with, so no "best" to report.
    let out = dir.join("out");
    let err = finetune(&out);
    assert!(err.contains("dev.tsv: holds no example"), "{err}");
    assert!(!out.exists(), "a refused run wrote {out:?}");

    // The output on (or in) the model or the data folder.
    std::fs::write(data.join("dev.tsv"), sst2(4, 1)).unwrap();
    let model_files = std::fs::read_dir(&model).unwrap().count();
    for (out, expected) in [
        (model.clone(), "the output is the model"),
        (model.join("tuned"), "the output lies inside the model"),
        (data.clone(), "the output is the data folder"),
    ] {
        let err = finetune(&out);
        assert!(err.contains(expected), "{out:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(&model).unwrap().count(), model_files);
    assert!(!data.join("metrics.jsonl").exists());
    ok(&args(&out).iter().map(String::as_str).collect::<Vec<_>>());

    // predict: an empty labelled file has no metrics to print; the output may not be the input.
    let best = out.join("best");
    let empty = dir.join("empty.tsv");
    std::fs::write(&empty, "sentence\tlabel\n").unwrap();
    let pred = dir.join("pred.tsv");
    let predict = |input: &Path, out: &Path| {
        fails(&[
            "predict",
            "--model",
            s(&best),
            "--input",
            s(input),
            "--out",
            s(out),
            "--labelled",
        ])
    };
    let err = predict(&empty, &pred);
    assert!(err.contains("empty.tsv: holds no example"), "{err}");
    assert!(!pred.exists());
    let dev = data.join("dev.tsv");
    let dev_text = std::fs::read(&dev).unwrap();
    let err = predict(&dev, &dev);
    assert!(err.contains("the output is the input"), "{err}");
    assert_eq!(std::fs::read(&dev).unwrap(), dev_text);
}
