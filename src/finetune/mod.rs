//! Fine-tuning a discriminator for sequence classification or regression, with the recipe of
//! `../shared/DESIGN.md` §2: the embeddings and encoder of the discriminator, a head on `[CLS]`
//! (dense H→H → GELU → dropout → dense H→labels), AdamW with layer-wise learning-rate decay,
//! warmup and the GLUE metrics.
//!
//! The parameters live in one flat buffer: the engine's [`ParamLayout`] of a model whose generator
//! is shrunk to nothing (no layers, width E), so the discriminator's tensors keep their layout
//! names and [`encoder_forward`] runs unchanged, followed by the head's four tensors. Only the
//! tensors listed in [`FtLayout`] are trained and saved.

pub mod data;
pub mod metrics;
pub mod run;

use crate::backend::{
    AdamW, Backend, Buf, Dropout, DropoutOp, GatherRowsOp, IBuf, LinearDims, OptimizerStep,
    ParamGroup, Sizes, SoftmaxXentOp, Space, StepScalars,
};
use crate::data::tokenizer::WordPieceTokenizer;
use crate::data::Batch;
use crate::io::export::{hf_config, Network};
use crate::io::tensors::{read_tensors, write_f32_tensors};
use crate::io::IoError;
use crate::model::config::{zeroed_values, ElectraConfig, EncoderConfig};
use crate::model::params::{Dense, DISCRIMINATOR, SHARED};
use crate::model::{
    encoder_forward, BatchShape, DropoutPlan, Encoder, EncoderActs, Model, Tokens, INIT_STD,
};
use crate::rng::{Purpose, Stream};
use crate::tape::{Arena, Tape};
use crate::train::schedule::learning_rate;
use crate::train::{param_group, place_parameters, TrainConfig};
use data::{Target, TaskSpec};
use std::path::{Path, PathBuf};

/// Errors of fine-tuning and prediction.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A data row does not fit the task's layout.
    #[error("{}:{line}: {message}", path.display())]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected and found.
        message: String,
    },
    /// A file could not be read or is not what it should be.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Flags that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// The loss became NaN or infinite.
    #[error("the loss is not finite at step {0}; try a lower --lr")]
    NonFinite(u64),
    /// Reading or writing model files.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Tokenizing.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The backend has no room for the model or for the activations of a batch.
    #[error(transparent)]
    Memory(#[from] crate::backend::OutOfMemory),
}

/// One trained tensor: its name in saved files (HF's), where it lives, and its optimizer group.
#[derive(Clone, Debug)]
pub struct FtTensor {
    /// HF name: `electra.…` for the encoder, `classifier.…` for the head (as
    /// `ElectraForSequenceClassification` names them).
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Where it lives in the parameter space.
    pub buf: Buf,
    /// Whether AdamW decays it (not LayerNorms nor biases).
    pub decay: bool,
    /// 0 for the embeddings (and `embeddings_project`), i+1 for encoder layer i, L+1 for the head.
    pub depth: usize,
}

/// The fine-tuned model's parameters: the trained tensors and the head's handles.
#[derive(Clone, Debug)]
pub struct FtLayout {
    /// Every trained tensor.
    pub tensors: Vec<FtTensor>,
    /// The head's dense H→H layer.
    pub dense: Dense,
    /// The head's output layer H→outputs.
    pub out: Dense,
    /// Values in the whole parameter space (including unused generator slots).
    pub len: usize,
}

/// The sizes of the engine model that carries a fine-tuned discriminator: the generator is cut
/// down to no layers of width E, so it costs almost nothing.
pub fn carrier_config(cfg: &ElectraConfig) -> ElectraConfig {
    let mut c = cfg.clone();
    c.generator = EncoderConfig {
        hidden_size: c.embedding_size,
        num_layers: 0,
        num_heads: 1,
        intermediate_size: c.embedding_size,
    };
    c
}

impl FtLayout {
    /// The layout of `model` (see [`carrier_config`]) plus a head with `outputs` outputs.
    pub fn new(model: &Model, outputs: usize) -> Self {
        let layers = model.config.discriminator.num_layers;
        let h = model.config.discriminator.hidden_size;
        let mut tensors: Vec<FtTensor> = model
            .layout
            .params
            .iter()
            .filter(|p| {
                p.name.starts_with(SHARED)
                    || (p.name.starts_with(DISCRIMINATOR)
                        && !p.name.contains("discriminator_predictions"))
            })
            .map(|p| {
                let name = p.name.strip_prefix(SHARED).unwrap_or(&p.name);
                let name = name.strip_prefix(DISCRIMINATOR).unwrap_or(name);
                let depth = name
                    .strip_prefix("electra.encoder.layer.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|l| l.parse::<usize>().ok())
                    .map_or(0, |l| l + 1);
                FtTensor {
                    name: name.to_string(),
                    shape: p.shape.clone(),
                    buf: p.buf,
                    decay: p.decay,
                    depth,
                }
            })
            .collect();
        let mut offset = model.layout.len();
        let mut add = |name: &str, shape: Vec<usize>, decay: bool| {
            let len = shape.iter().product();
            let buf = Buf {
                space: Space::Param,
                offset,
                len,
            };
            offset += len;
            tensors.push(FtTensor {
                name: name.into(),
                shape,
                buf,
                decay,
                depth: layers + 1,
            });
            buf
        };
        let dense = Dense {
            weight: add("classifier.dense.weight", vec![h, h], true),
            bias: add("classifier.dense.bias", vec![h], false),
        };
        let out = Dense {
            weight: add("classifier.out_proj.weight", vec![outputs, h], true),
            bias: add("classifier.out_proj.bias", vec![outputs], false),
        };
        FtLayout {
            tensors,
            dense,
            out,
            len: offset,
        }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&FtTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The optimizer and schedule of a fine-tuning run.
#[derive(Clone, Debug, PartialEq)]
pub struct FtOptions {
    /// Peak learning rate (of the head; layer d gets `lr · decay^(L+1−d)`).
    pub lr: f32,
    /// Layer-wise learning-rate decay (0.8 in the recipe).
    pub layer_decay: f32,
    /// Decoupled weight decay, not on LayerNorms or biases.
    pub weight_decay: f32,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Steps to the end of the linear decay.
    pub total_steps: u64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f32,
    /// Keys dropout (and the head's initialisation).
    pub seed: u64,
}

impl Default for FtOptions {
    fn default() -> Self {
        FtOptions {
            lr: 3e-4,
            layer_decay: 0.8,
            weight_decay: 0.01,
            warmup_steps: 0,
            total_steps: 1,
            max_grad_norm: 1.0,
            seed: 0,
        }
    }
}

/// The buffers of one pass over a batch shape.
#[derive(Clone, Debug)]
struct Acts {
    shape: BatchShape,
    ids: IBuf,
    types: IBuf,
    mask: IBuf,
    cls_rows: IBuf,
    targets: IBuf,
    encoder: EncoderActs,
    cls: Buf,
    pre: Buf,
    act: Buf,
    dropped: Buf,
    logits: Buf,
    row_loss: Buf,
    sizes: (usize, usize),
}

/// The dropout site of the head (the encoder numbers its sites from 1 up).
const HEAD_DROPOUT_SITE: u32 = 1 << 20;

/// A classifier (or regressor) on a backend: the parameters, their gradients and moments.
pub struct Classifier<B: Backend> {
    /// Holds every buffer.
    pub backend: B,
    /// The carrier model (see [`carrier_config`]).
    pub model: Model,
    /// The trained tensors and the head.
    pub layout: FtLayout,
    /// Head outputs: classes, or 1 for regression.
    pub outputs: usize,
    /// Mean squared error on one output instead of softmax cross-entropy.
    pub regression: bool,
    /// The optimizer settings.
    pub options: FtOptions,
    /// Optimizer steps taken.
    pub step: u64,
    /// The global gradient norm (before clipping) of the last step.
    pub last_grad_norm: f32,
    tape: Tape,
    acts: Option<Acts>,
    reserved: (usize, usize),
}

impl<B: Backend> Classifier<B> {
    /// Puts a model of `config`'s discriminator with `outputs` head outputs on `backend`, with
    /// parameter `values` laid out by [`FtLayout`] (see [`Classifier::initial_values`]).
    pub fn new(
        mut backend: B,
        config: &ElectraConfig,
        outputs: usize,
        regression: bool,
        options: FtOptions,
        values: &[f32],
    ) -> Result<Self, FinetuneError> {
        let model = Model::new(carrier_config(config));
        let layout = FtLayout::new(&model, outputs);
        assert_eq!(values.len(), layout.len, "parameter count");
        place_parameters(&mut backend, values)?;
        Ok(Classifier {
            backend,
            model,
            layout,
            outputs,
            regression,
            options,
            step: 0,
            last_grad_norm: 0.0,
            tape: Tape::new(true),
            acts: None,
            reserved: (0, 0),
        })
    }

    /// Random values for the whole model (the original init: N(0, 0.02) truncated at 2σ, zero
    /// biases, unit LayerNorm gains), then, when `pretrained` is given, the discriminator's
    /// tensors from it. The head is always new.
    pub fn initial_values(
        config: &ElectraConfig,
        outputs: usize,
        seed: u64,
        pretrained: Option<&crate::io::hf::HfDiscriminator>,
    ) -> Result<Vec<f32>, FinetuneError> {
        let model = Model::new(carrier_config(config));
        let layout = FtLayout::new(&model, outputs);
        let mut values = model.initial_values(seed).map_err(IoError::from)?;
        if let Some(p) = pretrained {
            let left = p.fill(&model.layout, &mut values)?;
            let missing: Vec<&String> = left
                .iter()
                .filter(|n| n.starts_with(SHARED) || n.starts_with("discriminator.electra."))
                .collect();
            if !missing.is_empty() {
                return Err(FinetuneError::Usage(format!(
                    "{}: the discriminator lacks {missing:?}",
                    p.source.display()
                )));
            }
        }
        values.resize(layout.len, 0.0);
        for (i, t) in layout.tensors.iter().enumerate() {
            if t.name.starts_with("classifier.") && t.decay {
                Stream::new(seed, Purpose::HeadInit, i as u64)
                    .fill_truncated_normal(&mut values[t.buf.offset..t.buf.end()], INIT_STD);
            }
        }
        Ok(values)
    }

    fn plan(&mut self, batch: usize, seq: usize) -> Result<Acts, FinetuneError> {
        if let Some(a) = &self.acts {
            if a.shape.batch == batch && a.shape.seq == seq {
                return Ok(a.clone());
            }
        }
        let shape = BatchShape {
            batch,
            seq,
            max_masked: 0,
        };
        let cfg = &self.model.config;
        let h = cfg.discriminator.hidden_size;
        let mut a = Arena::default();
        let n = shape.tokens();
        let mut acts = Acts {
            shape,
            ids: a.ints(n),
            types: a.ints(n),
            mask: a.ints(n),
            cls_rows: a.ints(batch),
            targets: a.ints(batch),
            encoder: EncoderActs::new(&mut a, &cfg.discriminator, cfg.embedding_size, shape),
            cls: a.acts(batch * h),
            pre: a.acts(batch * h),
            act: a.acts(batch * h),
            dropped: a.acts(batch * h),
            logits: a.acts(batch * self.outputs),
            row_loss: a.acts(batch),
            sizes: (0, 0),
        };
        acts.sizes = a.used();
        // Reserve the largest plan seen, so that batches of varying length do not reallocate.
        let need = (
            self.reserved.0.max(acts.sizes.0),
            self.reserved.1.max(acts.sizes.1),
        );
        if need != self.reserved {
            self.backend.reserve(Sizes {
                params: self.layout.len,
                acts: need.0,
                ints: need.1,
                grad_sum: 0,
            })?;
            self.reserved = need;
        }
        self.acts = Some(acts.clone());
        Ok(acts)
    }

    /// The forward pass; records it for backward when `train` (which also turns dropout on).
    fn forward(&mut self, batch: &Batch, train: bool) -> Result<Acts, FinetuneError> {
        let acts = self.plan(batch.batch, batch.seq)?;
        let cfg = self.model.config.clone();
        let h = cfg.discriminator.hidden_size;
        let be = &mut self.backend;
        be.write_ints(acts.ids, &batch.input_ids);
        be.write_ints(acts.types, &batch.token_types);
        be.write_ints(acts.mask, &batch.attention_mask);
        let rows: Vec<u32> = (0..batch.batch).map(|b| (b * batch.seq) as u32).collect();
        be.write_ints(acts.cls_rows, &rows);
        if train {
            let grads = Buf {
                space: Space::Grad,
                offset: 0,
                len: self.layout.len,
            };
            be.fill(grads, 0.0);
        }
        self.tape.clear();
        self.tape.set_recording(train);
        let mut drop = if train {
            let (hp, ap) = (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob);
            DropoutPlan::new(hp, ap)
        } else {
            DropoutPlan::off()
        };
        let tape = &mut self.tape;
        let encoder = Encoder {
            config: &cfg.discriminator,
            params: &self.model.params.discriminator,
            acts: &acts.encoder,
        };
        let tokens = Tokens {
            ids: acts.ids,
            token_types: acts.types,
            attention_mask: acts.mask,
            shape: acts.shape,
        };
        let hidden = encoder_forward(be, tape, &self.model, encoder, tokens, &mut drop);
        let b = batch.batch;
        let cls = GatherRowsOp {
            x: hidden,
            rows: acts.cls_rows,
            out: acts.cls,
            width: h,
        };
        tape.run(be, cls);
        let dims = |inp, out| LinearDims { rows: b, inp, out };
        let (d, o) = (self.layout.dense, self.layout.out);
        tape.run(be, d.linear_gelu(acts.cls, acts.pre, acts.act, dims(h, h)));
        let p = cfg.hidden_dropout_prob;
        let x = if train && p > 0.0 {
            let dropout = Dropout {
                p,
                site: HEAD_DROPOUT_SITE,
            };
            let (x, y) = (acts.act, acts.dropped);
            let sequences = b;
            tape.run(
                be,
                DropoutOp {
                    x,
                    y,
                    dropout,
                    sequences,
                    overwrite_dx: false,
                },
            );
            acts.dropped
        } else {
            acts.act
        };
        tape.run(be, o.linear(x, acts.logits, dims(h, self.outputs)));
        Ok(acts)
    }

    /// The head's outputs for `batch` without dropout: `[batch, outputs]` row-major.
    pub fn predict(&mut self, batch: &Batch) -> Result<Vec<f32>, FinetuneError> {
        let acts = self.forward(batch, false)?;
        let mut out = vec![0.0; acts.logits.len];
        self.backend.read(acts.logits, &mut out);
        Ok(out)
    }

    /// What the current step's operations read from the backend: the head's learning rate and
    /// the step's dropout seed.
    fn step_scalars(&self) -> StepScalars {
        let dropout = Stream::new(self.options.seed, Purpose::FinetuneDropoutSeed, self.step);
        StepScalars {
            lr: self.current_lr(),
            dropout_seed: dropout.seed(),
            ..StepScalars::default()
        }
    }

    /// Forward and backward on one batch with dropout; returns the mean loss. Takes no step.
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        targets: &[Target],
    ) -> Result<f32, FinetuneError> {
        assert_eq!(targets.len(), batch.batch);
        self.backend.begin_step(self.step_scalars(), None);
        let loss = self.issue_passes(batch, targets);
        self.backend.end_step();
        loss
    }

    fn issue_passes(&mut self, batch: &Batch, targets: &[Target]) -> Result<f32, FinetuneError> {
        let acts = self.forward(batch, true)?;
        let b = batch.batch;
        let be = &mut self.backend;
        let loss = if self.regression {
            let mut pred = vec![0.0; b];
            be.read(acts.logits, &mut pred);
            let mut grad = vec![0.0; b];
            let mut loss = 0.0f64;
            for i in 0..b {
                let y = match targets[i] {
                    Target::Value(v) => v,
                    Target::Class(c) => c as f32,
                };
                let diff = pred[i] - y;
                loss += (diff as f64).powi(2);
                grad[i] = 2.0 * diff / b as f32;
            }
            be.write(acts.logits.grad(), &grad);
            (loss / b as f64) as f32
        } else {
            let ids: Vec<u32> = targets
                .iter()
                .map(|t| match *t {
                    Target::Class(c) => c as u32,
                    Target::Value(v) => v as u32,
                })
                .collect();
            be.write_ints(acts.targets, &ids);
            be.softmax_xent(&SoftmaxXentOp {
                logits: acts.logits,
                row_stride: self.outputs,
                targets: acts.targets,
                row_loss: acts.row_loss,
                grad_scale: 1.0 / b as f32,
                pick: None,
                rows: b,
                vocab: self.outputs,
            });
            let mut rows = vec![0.0; b];
            be.read(acts.row_loss, &mut rows);
            (rows.iter().map(|&v| v as f64).sum::<f64>() / b as f64) as f32
        };
        self.tape.backward(&mut self.backend, &[acts.logits.grad()]);
        Ok(loss)
    }

    /// The learning rate of the head at the next step (layers get less, see [`FtOptions`]).
    pub fn current_lr(&self) -> f32 {
        let o = &self.options;
        learning_rate(o.lr, self.step, o.warmup_steps, o.total_steps)
    }

    /// Clips, then one AdamW update per tensor at its layer's learning rate.
    pub fn apply_gradients(&mut self) -> f32 {
        let o = &self.options;
        let top = self.model.config.discriminator.num_layers + 1;
        // Adam's settings are pretraining's.
        let adamw = AdamW {
            weight_decay: o.weight_decay,
            ..TrainConfig::default().adamw()
        };
        let groups: Vec<ParamGroup> = self
            .layout
            .tensors
            .iter()
            .map(|t| {
                let lr_scale = o.layer_decay.powi((top - t.depth) as i32);
                param_group(t.buf, lr_scale, t.decay, adamw)
            })
            .collect();
        self.backend.begin_step(self.step_scalars(), None);
        self.backend.optimizer_step(&OptimizerStep {
            groups: &groups,
            max_norm: o.max_grad_norm,
        });
        self.backend.end_step();
        let norm = self.backend.last_grad_norm();
        self.step += 1;
        self.last_grad_norm = norm;
        norm
    }

    /// One training step: forward, loss, backward, clip, AdamW. Returns the loss.
    pub fn train_step(&mut self, batch: &Batch, targets: &[Target]) -> Result<f32, FinetuneError> {
        let loss = self.forward_backward(batch, targets)?;
        if !loss.is_finite() {
            return Err(FinetuneError::NonFinite(self.step));
        }
        self.apply_gradients();
        Ok(loss)
    }

    /// The trained tensors' values under their HF names.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.layout
            .tensors
            .iter()
            .map(|t| {
                let mut v = vec![0.0; t.buf.len];
                self.backend.read(t.buf, &mut v);
                (t.name.clone(), t.shape.clone(), v)
            })
            .collect()
    }
}

/// What a fine-tuned model directory's `config.json` carries beyond HF's fields.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FinetuneInfo {
    /// The task's layout and classes.
    pub task: TaskSpec,
    /// The longest sequence the model was trained on.
    pub max_seq: usize,
    /// The epoch these weights are from.
    pub epoch: usize,
    /// The dev metrics of that epoch.
    pub dev: serde_json::Value,
}

/// Writes `dir/model.safetensors` (HF `ElectraForSequenceClassification` names), `config.json`
/// (HF's fields, the labels, and `electra_finetune`: the task, sizes and dev metrics) and
/// `vocab.txt`. The directory is replaced.
pub fn save_model<B: Backend>(
    clf: &Classifier<B>,
    info: &FinetuneInfo,
    tokenizer: &WordPieceTokenizer,
    dir: &Path,
) -> Result<(), FinetuneError> {
    let io = |e: std::io::Error| FinetuneError::File {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    write_f32_tensors(&dir.join("model.safetensors"), &clf.tensors(), None)?;
    let mut cfg = hf_config(&clf.model.config, Network::Discriminator);
    let labels: Vec<String> = if info.task.regression {
        vec!["score".into()]
    } else {
        info.task.labels.clone()
    };
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    let problem = if info.task.regression {
        "regression"
    } else {
        "single_label_classification"
    };
    cfg["architectures"] = serde_json::json!(["ElectraForSequenceClassification"]);
    cfg["num_labels"] = labels.len().into();
    cfg["id2label"] = id2label.into();
    cfg["label2id"] = label2id.into();
    cfg["problem_type"] = problem.into();
    cfg["electra_finetune"] = serde_json::to_value(info).expect("serialisable");
    let text = serde_json::to_string_pretty(&cfg).expect("serialisable");
    crate::io::write_atomic(&dir.join("config.json"), text.as_bytes())?;
    tokenizer.save_vocab(&dir.join("vocab.txt"))?;
    Ok(())
}

/// A fine-tuned model read back: its classifier, task and tokenizer.
pub struct Finetuned<B: Backend> {
    /// The model on its backend.
    pub classifier: Classifier<B>,
    /// Task, classes, sizes.
    pub info: FinetuneInfo,
    /// The model's vocabulary.
    pub tokenizer: WordPieceTokenizer,
}

/// Reads a directory written by [`save_model`] (e.g. `OUT/best`).
pub fn load_model<B: Backend>(dir: &Path, backend: B) -> Result<Finetuned<B>, FinetuneError> {
    let config_file = dir.join("config.json");
    let bad = |message: String| FinetuneError::File {
        path: config_file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&config_file).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let info: FinetuneInfo = serde_json::from_value(json["electra_finetune"].clone())
        .map_err(|e| bad(format!("not a fine-tuned model (electra_finetune: {e})")))?;
    let mut config = ElectraConfig::from_hf(&config_file, &config_file).map_err(IoError::from)?;
    let tokenizer = WordPieceTokenizer::from_vocab_file(&dir.join("vocab.txt"))?;
    config.special_tokens = tokenizer.special_tokens();
    let outputs = info.task.num_outputs();
    let model = Model::new(carrier_config(&config));
    let layout = FtLayout::new(&model, outputs);
    let file = dir.join("model.safetensors");
    let tensors = read_tensors(&file)?;
    let mut values = zeroed_values(layout.len).map_err(IoError::from)?;
    let mut problems = vec![];
    for t in &layout.tensors {
        let Some(found) = tensors.get(&t.name) else {
            problems.push(format!("{} is missing", t.name));
            continue;
        };
        match found.to_f32() {
            Some(v) if found.shape == t.shape => {
                values[t.buf.offset..t.buf.end()].copy_from_slice(&v)
            }
            _ => problems.push(format!(
                "{} is {}, expected a float tensor of {:?}",
                t.name,
                found.describe(),
                t.shape
            )),
        }
    }
    if !problems.is_empty() {
        return Err(FinetuneError::File {
            path: file,
            message: problems.join("; "),
        });
    }
    let regression = info.task.regression;
    let options = FtOptions::default();
    let classifier = Classifier::new(backend, &config, outputs, regression, options, &values)?;
    Ok(Finetuned {
        classifier,
        info,
        tokenizer,
    })
}

/// Dev metrics of predictions: classification (accuracy, and for two classes F1 of class 1 and
/// Matthews) or regression (Pearson, Spearman, MSE).
pub fn evaluate(spec: &TaskSpec, outputs: &[f32], gold: &[Target]) -> serde_json::Value {
    let k = spec.num_outputs();
    if spec.regression {
        let pred: Vec<f64> = outputs.iter().map(|&v| v as f64).collect();
        let gold: Vec<f64> = gold
            .iter()
            .map(|t| match *t {
                Target::Value(v) => v as f64,
                Target::Class(c) => c as f64,
            })
            .collect();
        let mse = pred
            .iter()
            .zip(&gold)
            .map(|(p, g)| (p - g).powi(2))
            .sum::<f64>()
            / pred.len().max(1) as f64;
        serde_json::json!({
            "pearson": metrics::pearson(&pred, &gold),
            "spearman": metrics::spearman(&pred, &gold),
            "mse": mse,
        })
    } else {
        let pred = argmax_rows(outputs, k);
        let gold: Vec<usize> = gold
            .iter()
            .map(|t| match *t {
                Target::Class(c) => c,
                Target::Value(v) => v as usize,
            })
            .collect();
        let mut m = serde_json::json!({ "accuracy": metrics::accuracy(&pred, &gold) });
        if k == 2 {
            m["f1"] = metrics::f1(&pred, &gold, 1).into();
            m["matthews"] = metrics::matthews(&pred, &gold).into();
        } else {
            m["matthews"] = metrics::matthews(&pred, &gold).into();
        }
        m
    }
}

/// The index of the largest value of each row of `k`.
pub fn argmax_rows(values: &[f32], k: usize) -> Vec<usize> {
    values
        .chunks(k)
        .map(|r| {
            (0..k)
                .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
                .unwrap_or(0)
        })
        .collect()
}
