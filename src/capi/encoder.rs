//! The encoder level: a discriminator that turns batches into last hidden states and per-token
//! replaced-token logits in caller buffers, and the tokenizer that makes those batches from text.

use super::trainer::read_batch;
use super::{
    c_str, check_out, check_room, deref_mut, fail, free, guard, hand_out, opt_c_str, slice_mut,
    CResult, ElectraStatus,
};
use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Buf, Device, LinearDims, Sizes};
use crate::data::{Batch, WordPieceTokenizer};
use crate::finetune::carrier_config;
use crate::finetune::data::encode;
use crate::model::{encoder_forward, BatchShape, DropoutPlan, Encoder, EncoderActs, Model, Tokens};
use crate::tape::{Arena, Tape};
use crate::train::place_parameters;
use std::ffi::c_char;
use std::path::Path;

/// A discriminator on one of the backends.
// One value per handle, and the handle is boxed: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum OnDevice {
    Cpu(CpuBackend),
    Cuda(CudaBackend),
}

/// An opaque encoder handle: a discriminator's weights on a device.
pub struct ElectraEncoder {
    backend: OnDevice,
    /// The engine model carrying the discriminator (the generator cut to nothing).
    model: Model,
    /// Whether the replaced-token-detection head was loaded, so logits can be computed.
    has_head: bool,
    /// The activation and integer sizes reserved so far.
    reserved: (usize, usize),
}

/// The buffers of one forward pass.
struct Plan {
    shape: BatchShape,
    ids: crate::backend::IBuf,
    types: crate::backend::IBuf,
    mask: crate::backend::IBuf,
    encoder: EncoderActs,
    head_pre: Buf,
    head_act: Buf,
    logits: Buf,
}

/// Loads a discriminator from `dir`: a HF directory (`config.json` + `model.safetensors`, as
/// `ElectraForPreTraining` or `ElectraModel` save it, or `electra export`'s `discriminator/`) or
/// a folder with a `discriminator/` subfolder. `device` NULL means `"cpu"`.
///
/// # Safety
/// `dir` and `device` are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_encoder_load(
    dir: *const c_char,
    device: *const c_char,
    out: *mut *mut ElectraEncoder,
) -> ElectraStatus {
    guard(|| {
        check_out(out, "out")?;
        let dir = Path::new(c_str(dir, "dir")?);
        let device: Device = opt_c_str(device, "device")?
            .unwrap_or("cpu")
            .parse()
            .map_err(|m: String| fail(ElectraStatus::Device, m))?;
        let hf = crate::io::hf::load_discriminator(dir)
            .map_err(|e| fail(ElectraStatus::Io, e.to_string()))?;
        let model = Model::new(carrier_config(&hf.config));
        let mut values = model
            .initial_values(0)
            .map_err(|e| fail(ElectraStatus::Device, e.to_string()))?;
        let left = hf
            .fill(&model.layout, &mut values)
            .map_err(|e| fail(ElectraStatus::Io, e.to_string()))?;
        let has_head = hf.has_rtd_head();
        // The carrier's generator is never run; everything else must come from the file.
        let missing: Vec<&String> = left
            .iter()
            .filter(|n| !n.starts_with("generator."))
            .filter(|n| has_head || !n.starts_with("discriminator.discriminator_predictions."))
            .collect();
        if !missing.is_empty() {
            return Err(fail(
                ElectraStatus::Io,
                format!(
                    "{}: the discriminator lacks {missing:?}",
                    hf.source.display()
                ),
            ));
        }
        let memory = |e: crate::backend::OutOfMemory| fail(ElectraStatus::Device, e.to_string());
        let backend = match device {
            Device::Cpu => {
                let mut b = CpuBackend::new();
                place_parameters(&mut b, &values).map_err(memory)?;
                OnDevice::Cpu(b)
            }
            Device::Cuda(n) => {
                let mut b =
                    CudaBackend::new(n).map_err(|e| fail(ElectraStatus::Device, e.to_string()))?;
                place_parameters(&mut b, &values).map_err(memory)?;
                OnDevice::Cuda(b)
            }
        };
        hand_out(
            out,
            ElectraEncoder {
                backend,
                model,
                has_head,
                reserved: (0, 0),
            },
        );
        Ok(())
    })
}

/// Frees an encoder; NULL does nothing.
///
/// # Safety
/// `encoder` is NULL or a handle from this library not destroyed before.
#[no_mangle]
pub unsafe extern "C" fn electra_encoder_destroy(encoder: *mut ElectraEncoder) {
    free(encoder)
}

/// The width of the hidden states (`hidden_size`) and the longest sequence the model takes.
///
/// # Safety
/// `encoder` is NULL or a live handle; the outputs are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_encoder_sizes(
    encoder: *mut ElectraEncoder,
    hidden_size: *mut usize,
    max_seq: *mut usize,
) -> ElectraStatus {
    guard(|| {
        let e = deref_mut(encoder, "encoder")?;
        let h = deref_mut(hidden_size, "hidden_size")?;
        let m = deref_mut(max_seq, "max_seq")?;
        *h = e.model.config.discriminator.hidden_size;
        *m = e.model.config.max_position_embeddings;
        Ok(())
    })
}

impl ElectraEncoder {
    /// Checks the batch against the model, plans its buffers and sizes the backend.
    fn plan(&mut self, b: &Batch) -> CResult<Plan> {
        let cfg = &self.model.config;
        if b.seq > cfg.max_position_embeddings {
            return Err(fail(
                ElectraStatus::Shape,
                format!(
                    "seq is {}, expected at most the model's {} positions",
                    b.seq, cfg.max_position_embeddings
                ),
            ));
        }
        if let Some(bad) = b.input_ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
            return Err(fail(
                ElectraStatus::InvalidArgument,
                format!(
                    "input_ids holds {bad}, expected ids below the vocabulary size {}",
                    cfg.vocab_size
                ),
            ));
        }
        if let Some(bad) = b
            .token_types
            .iter()
            .find(|&&t| t as usize >= cfg.type_vocab_size)
        {
            return Err(fail(
                ElectraStatus::InvalidArgument,
                format!(
                    "token_types holds {bad}, expected types below {}",
                    cfg.type_vocab_size
                ),
            ));
        }
        let shape = BatchShape {
            batch: b.batch,
            seq: b.seq,
            max_masked: 0,
        };
        let n = shape.tokens();
        let h = cfg.discriminator.hidden_size;
        let mut a = Arena::default();
        let plan = Plan {
            shape,
            ids: a.ints(n),
            types: a.ints(n),
            mask: a.ints(n),
            encoder: EncoderActs::new(&mut a, &cfg.discriminator, cfg.embedding_size, shape),
            head_pre: a.acts(n * h),
            head_act: a.acts(n * h),
            logits: a.acts(n),
        };
        let used = a.used();
        let need = (self.reserved.0.max(used.0), self.reserved.1.max(used.1));
        if need != self.reserved {
            let sizes = Sizes {
                params: self.model.layout.len(),
                acts: need.0,
                ints: need.1,
                grad_sum: 0,
            };
            let result = match &mut self.backend {
                OnDevice::Cpu(be) => be.reserve(sizes),
                OnDevice::Cuda(be) => be.reserve(sizes),
            };
            result.map_err(|e| fail(ElectraStatus::Device, e.to_string()))?;
            self.reserved = need;
        }
        Ok(plan)
    }
}

/// The forward pass without dropout: the hidden states, and the head's logits when `logits`.
fn forward<B: Backend>(
    be: &mut B,
    model: &Model,
    plan: &Plan,
    b: &Batch,
    hidden_out: Option<&mut [f32]>,
    logits_out: Option<&mut [f32]>,
) {
    be.write_ints(plan.ids, &b.input_ids);
    be.write_ints(plan.types, &b.token_types);
    be.write_ints(plan.mask, &b.attention_mask);
    let cfg = &model.config;
    let mut tape = Tape::new(false);
    let encoder = Encoder {
        config: &cfg.discriminator,
        params: &model.params.discriminator,
        acts: &plan.encoder,
    };
    let tokens = Tokens {
        ids: plan.ids,
        token_types: plan.types,
        attention_mask: plan.mask,
        shape: plan.shape,
    };
    let hidden = encoder_forward(
        be,
        &mut tape,
        model,
        encoder,
        tokens,
        &mut DropoutPlan::off(),
    );
    if let Some(out) = hidden_out {
        be.read(hidden, &mut out[..hidden.len]);
    }
    if let Some(out) = logits_out {
        let (n, h) = (plan.shape.tokens(), cfg.discriminator.hidden_size);
        let head = &model.params.discriminator_head;
        let dims = |out| LinearDims {
            rows: n,
            inp: h,
            out,
        };
        tape.run(
            be,
            head.dense
                .linear_gelu(hidden, plan.head_pre, plan.head_act, dims(h)),
        );
        tape.run(
            be,
            head.prediction.linear(plan.head_act, plan.logits, dims(1)),
        );
        be.read(plan.logits, &mut out[..n]);
    }
}

/// Runs the discriminator on `batch` sequences of `seq` tokens (three `[batch, seq]` row-major
/// `uint32_t` arrays, as for [`electra_trainer_step`](super::trainer::electra_trainer_step)),
/// without dropout. Writes the last hidden states `[batch, seq, hidden_size]` into `hidden`
/// (room for `hidden_len` floats; NULL to skip) and one replaced-token logit per token
/// `[batch, seq]` into `logits` (room for `logits_len`; NULL to skip; needs a model saved with
/// its replaced-token-detection head). Padding positions get values too; ignore them.
///
/// # Safety
/// `encoder` is NULL or a live handle; the arrays are NULL or hold `batch · seq` values; each
/// output is NULL or has room for the length given with it.
#[no_mangle]
pub unsafe extern "C" fn electra_encoder_forward(
    encoder: *mut ElectraEncoder,
    input_ids: *const u32,
    attention_mask: *const u32,
    token_types: *const u32,
    batch: usize,
    seq: usize,
    hidden: *mut f32,
    hidden_len: usize,
    logits: *mut f32,
    logits_len: usize,
) -> ElectraStatus {
    guard(|| {
        let e = deref_mut(encoder, "encoder")?;
        let b = read_batch(input_ids, attention_mask, token_types, batch, seq)?;
        let n = batch * seq;
        let h = e.model.config.discriminator.hidden_size;
        let hidden = if hidden.is_null() {
            None
        } else {
            check_room("hidden_len", hidden_len, n * h, "[batch, seq, hidden_size]")?;
            Some(slice_mut(hidden, hidden_len, "hidden")?)
        };
        let logits = if logits.is_null() {
            None
        } else {
            check_room("logits_len", logits_len, n, "[batch, seq]")?;
            if !e.has_head {
                return Err(fail(
                    ElectraStatus::InvalidArgument,
                    "logits were asked for, but the model was saved without its \
                     replaced-token-detection head (discriminator_predictions); pass NULL",
                ));
            }
            Some(slice_mut(logits, logits_len, "logits")?)
        };
        let plan = e.plan(&b)?;
        match &mut e.backend {
            OnDevice::Cpu(be) => forward(be, &e.model, &plan, &b, hidden, logits),
            OnDevice::Cuda(be) => forward(be, &e.model, &plan, &b, hidden, logits),
        }
        Ok(())
    })
}

/// An opaque tokenizer handle: BERT's uncased WordPiece pipeline over a vocabulary.
pub struct ElectraTokenizer {
    inner: WordPieceTokenizer,
}

/// Loads a tokenizer from `path`: a `vocab.txt`, a `tokenizer.json`, or a directory holding
/// either (`vocab.txt` first), such as an export's `discriminator/`.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_tokenizer_load(
    path: *const c_char,
    out: *mut *mut ElectraTokenizer,
) -> ElectraStatus {
    guard(|| {
        check_out(out, "out")?;
        let path = Path::new(c_str(path, "path")?);
        let file = if path.is_dir() {
            let vocab = path.join("vocab.txt");
            if vocab.is_file() {
                vocab
            } else {
                path.join("tokenizer.json")
            }
        } else {
            path.to_path_buf()
        };
        let inner =
            WordPieceTokenizer::load(&file).map_err(|e| fail(ElectraStatus::Io, e.to_string()))?;
        hand_out(out, ElectraTokenizer { inner });
        Ok(())
    })
}

/// Frees a tokenizer; NULL does nothing.
///
/// # Safety
/// `tokenizer` is NULL or a handle from this library not destroyed before.
#[no_mangle]
pub unsafe extern "C" fn electra_tokenizer_destroy(tokenizer: *mut ElectraTokenizer) {
    free(tokenizer)
}

/// The number of tokens in the vocabulary.
///
/// # Safety
/// `tokenizer` is NULL or a live handle; `size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_tokenizer_vocab_size(
    tokenizer: *mut ElectraTokenizer,
    size: *mut usize,
) -> ElectraStatus {
    guard(|| {
        let t = deref_mut(tokenizer, "tokenizer")?;
        *deref_mut(size, "size")? = t.inner.vocab_size();
        Ok(())
    })
}

/// Tokenizes one example into a row of `seq` tokens: `[CLS] text_a [SEP]`, or with `text_b`
/// (NULL for none) `[CLS] text_a [SEP] text_b [SEP]`, cutting the longer text first when it does
/// not fit, then padding. Writes `seq` values into each of `input_ids`, `attention_mask` (1 real,
/// 0 padding) and `token_types` (0 for A, 1 for B), and the number of real tokens into `length`
/// (NULL to skip). To fill a batch, call it once per row with pointers `row · seq` further on.
///
/// # Safety
/// `tokenizer` is NULL or a live handle; the texts are NULL or NUL-terminated; each array is
/// NULL or has room for `seq` values; `length` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn electra_tokenizer_encode(
    tokenizer: *mut ElectraTokenizer,
    text_a: *const c_char,
    text_b: *const c_char,
    seq: usize,
    input_ids: *mut u32,
    attention_mask: *mut u32,
    token_types: *mut u32,
    length: *mut usize,
) -> ElectraStatus {
    guard(|| {
        let t = deref_mut(tokenizer, "tokenizer")?;
        let mut texts = vec![c_str(text_a, "text_a")?.to_string()];
        if let Some(b) = opt_c_str(text_b, "text_b")? {
            texts.push(b.to_string());
        }
        let specials = texts.len() + 1;
        if seq < specials {
            return Err(fail(
                ElectraStatus::Shape,
                format!("seq is {seq}, expected at least {specials} (the special tokens)"),
            ));
        }
        let ids = slice_mut(input_ids, seq, "input_ids")?;
        let mask = slice_mut(attention_mask, seq, "attention_mask")?;
        let types = slice_mut(token_types, seq, "token_types")?;
        let encoded = encode(&t.inner, &texts, seq)
            .map_err(|e| fail(ElectraStatus::InvalidArgument, e.to_string()))?;
        let n = encoded.ids.len();
        let pad = t.inner.pad_id();
        for i in 0..seq {
            ids[i] = encoded.ids.get(i).copied().unwrap_or(pad);
            types[i] = encoded.types.get(i).copied().unwrap_or(0);
            mask[i] = u32::from(i < n);
        }
        if let Some(l) = length.as_mut() {
            *l = n;
        }
        Ok(())
    })
}
