//! The fine-tuning loop (epochs, dev evaluation, best model, metrics.jsonl) and prediction.

use super::data::{self, Encoded, Target, TaskSpec};
use super::{evaluate, load_model, save_model, Classifier, FinetuneError, FinetuneInfo, FtOptions};
use crate::backend::Backend;
use crate::data::tokenizer::WordPieceTokenizer;
use crate::io::hf::load_discriminator;
use crate::io::{paths, IoError};
use crate::rng::{Purpose, Stream};
use crate::validate::{require, require_non_negative};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `electra finetune` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The task's layout (a GLUE task or a custom one).
    pub task: TaskSpec,
    /// Folder with train and dev files.
    pub data: PathBuf,
    /// HF discriminator directory (or pair folder) with `vocab.txt`.
    pub model: PathBuf,
    /// Output folder: `metrics.jsonl` and `best/`.
    pub out: PathBuf,
    /// Passes over the training set.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Sequences per batch.
    pub batch: usize,
    /// Layer-wise learning-rate decay.
    pub layer_decay: f32,
    /// Keys shuffling, dropout and the head's initialisation.
    pub seed: u64,
    /// Longest sequence, special tokens included (default: 128, or the model's positions if fewer).
    pub max_seq: Option<usize>,
    /// Share of the steps spent warming up.
    pub warmup_fraction: f64,
    /// Same architecture, random weights (the baseline).
    pub random_init: bool,
    /// Print a progress line every this many steps (0: only per epoch).
    pub log_every: u64,
}

impl RunOptions {
    /// Checks the numbers a run needs before any file is read: a negative learning rate or a layer
    /// decay of 0 would otherwise train to garbage, or not at all, without a word.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        let positive = |name: &str, n: usize| require(n > 0, name, "positive", n);
        positive("--epochs", self.epochs)
            .and(positive("--batch", self.batch))
            .and(require_non_negative("--lr", self.lr))
            .and(require(
                self.layer_decay > 0.0 && self.layer_decay <= 1.0,
                "--layer-decay",
                "in (0, 1]",
                self.layer_decay,
            ))
            .and(require(
                (0.0..1.0).contains(&self.warmup_fraction),
                "--warmup-fraction",
                "in [0, 1)",
                self.warmup_fraction,
            ))
            .map_err(FinetuneError::Usage)
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The best epoch's main metric.
    pub best: f64,
    /// The epoch it came from (1-based).
    pub best_epoch: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f32>,
}

/// `dir/stem.tsv`, or `dir/stem.csv` when only that exists; `name` with an extension is taken as it is.
fn data_file(dir: &Path, name: &str) -> Result<PathBuf, FinetuneError> {
    if Path::new(name).extension().is_some() {
        let p = dir.join(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(FinetuneError::File {
                path: p,
                message: "not found".into(),
            })
        };
    }
    for ext in ["tsv", "csv"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(FinetuneError::File {
        path: dir.join(format!("{name}.tsv")),
        message: format!("not found (nor {name}.csv)"),
    })
}

/// Labelled examples of one file, tokenized.
struct Split {
    encoded: Vec<Encoded>,
    targets: Vec<Target>,
}

fn load_split(
    spec: &TaskSpec,
    path: &Path,
    rows: Vec<data::Row>,
    tok: &WordPieceTokenizer,
    max_seq: usize,
) -> Result<Split, FinetuneError> {
    let targets = data::targets(spec, &rows, path)?;
    let encoded = rows
        .iter()
        .map(|r| data::encode(tok, &r.texts, max_seq))
        .collect::<Result<_, _>>()?;
    Ok(Split { encoded, targets })
}

/// A permutation of `0..n` for `epoch`, from `seed` (Fisher–Yates on Philox draws).
fn shuffled(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let stream = Stream::new(seed, Purpose::FinetuneShuffle, epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let w = stream.words(i as u32);
        let r = ((w[0] as u64) << 32 | w[1] as u64) % (i as u64 + 1);
        order.swap(i, r as usize);
    }
    order
}

/// Runs the head over `examples` in batches of `batch`: the outputs, `[n, outputs]`.
fn outputs_of<B: Backend>(
    clf: &mut Classifier<B>,
    examples: &[Encoded],
    batch: usize,
    pad: u32,
) -> Result<Vec<f32>, FinetuneError> {
    let mut out = Vec::with_capacity(examples.len() * clf.outputs);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        out.extend(clf.predict(&data::pad_batch(&refs, pad))?);
    }
    Ok(out)
}

/// Fine-tunes and evaluates: after each epoch the dev metrics go to `out/metrics.jsonl`, and the
/// best epoch (by the task's main metric) is saved in `out/best/`. `out` may not be, contain or
/// lie inside the model or the data folder, nor be a run or a data folder.
pub fn finetune<B: Backend>(backend: B, opts: &RunOptions) -> Result<RunSummary, FinetuneError> {
    opts.validate()?;
    let inputs = [
        ("the model", opts.model.as_path()),
        ("the data folder", &opts.data),
    ];
    paths::check_apart(&opts.out, &inputs)
        .and_then(|()| paths::check_not_protected(&opts.out))
        .map_err(IoError::from)?;
    let disc = load_discriminator(&opts.model)?;
    let vocab = disc.source.join("vocab.txt");
    let tok = WordPieceTokenizer::from_vocab_file(&vocab)?;
    if tok.vocab_size() != disc.config.vocab_size {
        return Err(FinetuneError::File {
            path: vocab,
            message: format!(
                "{} tokens, but the model's embedding table has {} rows",
                tok.vocab_size(),
                disc.config.vocab_size
            ),
        });
    }
    let positions = disc.config.max_position_embeddings;
    let max_seq = opts.max_seq.unwrap_or(positions.min(128));
    if max_seq < 3 || max_seq > positions {
        return Err(FinetuneError::Usage(format!(
            "--max-seq {max_seq} must be between 3 and the model's {positions} positions"
        )));
    }
    let mut spec = opts.task.clone();
    let cols = spec.text_columns.clone();
    let train_path = data_file(&opts.data, "train")?;
    let train_rows = data::read_rows(&train_path, &cols, Some(spec.label_column), spec.header)?;
    spec.learn_labels(&train_rows);
    if !spec.regression && spec.labels.len() < 2 {
        return Err(FinetuneError::File {
            path: train_path,
            message: format!("needs at least two classes, found {:?}", spec.labels),
        });
    }
    let dev_path = data_file(&opts.data, &spec.dev_file)?;
    let dev_rows = data::read_rows(&dev_path, &cols, Some(spec.label_column), spec.header)?;
    let train = load_split(&spec, &train_path, train_rows, &tok, max_seq)?;
    let dev = load_split(&spec, &dev_path, dev_rows, &tok, max_seq)?;
    for (split, path, needed) in [
        (&train, &train_path, "to train on"),
        (&dev, &dev_path, "to score each epoch and pick the best"),
    ] {
        if split.encoded.is_empty() {
            return Err(FinetuneError::File {
                path: path.clone(),
                message: format!("holds no example; at least one is needed {needed}"),
            });
        }
    }
    let per_epoch = train.encoded.len().div_ceil(opts.batch) as u64;
    let total = per_epoch * opts.epochs as u64;
    let options = FtOptions {
        lr: opts.lr,
        layer_decay: opts.layer_decay,
        warmup_steps: (total as f64 * opts.warmup_fraction).round() as u64,
        total_steps: total,
        seed: opts.seed,
        ..FtOptions::default()
    };
    let outputs = spec.num_outputs();
    let pretrained = (!opts.random_init).then_some(&disc);
    let values = Classifier::<B>::initial_values(&disc.config, outputs, opts.seed, pretrained)?;
    let mut clf = Classifier::new(
        backend,
        &disc.config,
        outputs,
        spec.regression,
        options,
        &values,
    )?;
    let io = |p: &Path, e: std::io::Error| FinetuneError::File {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| io(&opts.out, e))?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics_file =
        std::fs::File::create(&metrics_path).map_err(|e| io(&metrics_path, e))?;
    eprintln!(
        "fine-tuning {} ({} init) on {} train / {} dev examples: {} epochs × {per_epoch} steps, \
         batch {}, lr {}, layer decay {}, {} outputs",
        spec.name,
        if opts.random_init {
            "random"
        } else {
            "pretrained"
        },
        train.encoded.len(),
        dev.encoded.len(),
        opts.epochs,
        opts.batch,
        opts.lr,
        opts.layer_decay,
        outputs
    );
    let pad = tok.pad_id();
    let start = std::time::Instant::now();
    let mut best = f64::NEG_INFINITY;
    let mut best_epoch = 0;
    let mut epoch_losses = vec![];
    for epoch in 1..=opts.epochs {
        let order = shuffled(train.encoded.len(), opts.seed, epoch);
        let mut sum = 0.0f64;
        let mut window = (0.0f64, 0u64);
        for idx in order.chunks(opts.batch) {
            let refs: Vec<&Encoded> = idx.iter().map(|&i| &train.encoded[i]).collect();
            let targets: Vec<Target> = idx.iter().map(|&i| train.targets[i]).collect();
            let loss = clf.train_step(&data::pad_batch(&refs, pad), &targets)?;
            sum += loss as f64;
            window = (window.0 + loss as f64, window.1 + 1);
            if opts.log_every > 0 && clf.step % opts.log_every == 0 {
                eprintln!(
                    "step {}/{total} loss {:.4} lr {:.2e} grad norm {:.3}",
                    clf.step,
                    window.0 / window.1 as f64,
                    clf.current_lr(),
                    clf.last_grad_norm
                );
                window = (0.0, 0);
            }
        }
        let train_loss = (sum / per_epoch as f64) as f32;
        epoch_losses.push(train_loss);
        let out = outputs_of(&mut clf, &dev.encoded, opts.batch.max(64), pad)?;
        let dev_metrics = evaluate(&spec, &out, &dev.targets);
        let main = dev_metrics[spec.main_metric.as_str()]
            .as_f64()
            .unwrap_or(f64::NAN);
        let is_best = main > best;
        let line = serde_json::json!({
            "epoch": epoch,
            "step": clf.step,
            "train_loss": train_loss,
            "dev": dev_metrics,
            "main_metric": spec.main_metric,
            "best": is_best,
            "elapsed_s": start.elapsed().as_secs_f64(),
        });
        writeln!(metrics_file, "{line}").map_err(|e| io(&metrics_path, e))?;
        eprintln!(
            "epoch {epoch}: train loss {train_loss:.4}, dev {} {main:.4}{}",
            spec.main_metric,
            if is_best { " (best)" } else { "" }
        );
        if is_best {
            best = main;
            best_epoch = epoch;
            let info = FinetuneInfo {
                task: spec.clone(),
                max_seq,
                epoch,
                dev: dev_metrics,
            };
            save_model(&clf, &info, &tok, &opts.out.join("best"))?;
        }
    }
    Ok(RunSummary {
        best,
        best_epoch,
        steps: clf.step,
        epoch_losses,
    })
}

/// Writes `index\tprediction` for every row of `input` (label names, or numbers for regression)
/// to `out`. `labelled`: `input` has the train/dev layout (else GLUE's test layout). Returns the
/// number of rows and, for labelled input, the metrics. `out` may not be the input or lie inside
/// the model, and labelled input must hold at least one row.
pub fn predict<B: Backend>(
    backend: B,
    model_dir: &Path,
    input: &Path,
    out: &Path,
    labelled: bool,
    batch: usize,
) -> Result<(usize, Option<serde_json::Value>), FinetuneError> {
    paths::check_apart(out, &[("the input", input), ("the model", model_dir)])
        .map_err(IoError::from)?;
    let mut m = load_model(model_dir, backend)?;
    let spec = m.info.task.clone();
    let rows = if labelled {
        let label = Some(spec.label_column);
        let rows = data::read_rows(input, &spec.text_columns, label, spec.header)?;
        if rows.is_empty() {
            return Err(FinetuneError::File {
                path: input.to_path_buf(),
                message: "holds no example, so there is nothing to score (--labelled)".into(),
            });
        }
        rows
    } else {
        data::read_rows(input, &spec.test_text_columns, None, spec.test_header)?
    };
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|r| data::encode(&m.tokenizer, &r.texts, m.info.max_seq))
        .collect::<Result<_, _>>()?;
    let pad = m.tokenizer.pad_id();
    let outputs = outputs_of(&mut m.classifier, &encoded, batch, pad)?;
    let mut text = String::from("index\tprediction\n");
    if spec.regression {
        for (i, v) in outputs.iter().enumerate() {
            text.push_str(&format!("{i}\t{v:.4}\n"));
        }
    } else {
        for (i, c) in super::argmax_rows(&outputs, spec.num_outputs())
            .iter()
            .enumerate()
        {
            text.push_str(&format!("{i}\t{}\n", spec.labels[*c]));
        }
    }
    crate::io::write_atomic(out, text.as_bytes())?;
    let metrics = if labelled {
        let targets = data::targets(&spec, &rows, input)?;
        Some(evaluate(&spec, &outputs, &targets))
    } else {
        None
    };
    Ok((rows.len(), metrics))
}
