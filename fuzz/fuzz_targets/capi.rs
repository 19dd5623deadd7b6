//! The C ABI's entry points that take a caller's bytes (`include/electra.h`): a trainer created
//! from a model configuration and a recipe as JSON text and a vocabulary file, and a tokenizer
//! loaded from a vocabulary file encoding a text. Each call must return a status: OK, or an error
//! code with a message in `electra_last_error()`; never `ELECTRA_INTERNAL` (a panic caught at the
//! boundary is a bug), never a crash, never memory the input's numbers sized.
//! Input: the model JSON, the recipe JSON, a `vocab.txt`, and a text, joined by the separator.
#![no_main]

use electra::capi::encoder::{
    electra_tokenizer_destroy, electra_tokenizer_encode, electra_tokenizer_load, ElectraTokenizer,
};
use electra::capi::trainer::{
    electra_trainer_create, electra_trainer_destroy, electra_trainer_options_default,
    ElectraTrainer, ElectraTrainerOptions,
};
use electra::capi::{electra_last_error, ElectraStatus};
use electra_fuzz::{files, put, scratch};
use libfuzzer_sys::fuzz_target;
use std::ffi::{CStr, CString};

/// The bytes up to the first NUL, as a C string: what a C caller's string can hold.
fn c_string(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).expect("no NUL before `end`")
}

/// Requires `status` to be a clean answer: OK, or an error with a message.
fn answered(status: ElectraStatus, call: &str) {
    assert_ne!(
        status,
        ElectraStatus::Internal,
        "{call}: a panic reached the boundary"
    );
    if status != ElectraStatus::Ok {
        // SAFETY: the library returns a NUL-terminated thread-local message.
        let message = unsafe { CStr::from_ptr(electra_last_error()) };
        assert!(
            !message.to_bytes().is_empty(),
            "{call}: {status:?} without a message"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch("capi");
    let parts = files(data, 4);
    let vocab = dir.join("vocab.txt");
    if let Some(v) = parts[2] {
        put(&vocab, Some(v));
    }
    let vocab_path = CString::new(vocab.to_str().unwrap()).unwrap();
    let (model, train) = (parts[0].map(c_string), parts[1].map(c_string));
    unsafe {
        let mut options = std::mem::zeroed::<ElectraTrainerOptions>();
        answered(
            electra_trainer_options_default(&mut options),
            "options_default",
        );
        match &model {
            Some(m) => {
                options.preset = std::ptr::null();
                options.model_json = m.as_ptr();
            }
            None => options.preset = c"tiny".as_ptr(),
        }
        options.train_json = train.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
        options.vocab_file = if parts[2].is_some() {
            vocab_path.as_ptr()
        } else {
            std::ptr::null()
        };
        let mut trainer: *mut ElectraTrainer = std::ptr::null_mut();
        answered(
            electra_trainer_create(&options, &mut trainer),
            "trainer_create",
        );
        if !trainer.is_null() {
            electra_trainer_destroy(trainer);
        }
        let mut tokenizer: *mut ElectraTokenizer = std::ptr::null_mut();
        let status = electra_tokenizer_load(vocab_path.as_ptr(), &mut tokenizer);
        answered(status, "tokenizer_load");
        if status == ElectraStatus::Ok {
            let text = c_string(parts[3].unwrap_or_default());
            const SEQ: usize = 64;
            let (mut ids, mut mask, mut types) = ([0u32; SEQ], [0u32; SEQ], [0u32; SEQ]);
            let mut length = 0usize;
            let status = electra_tokenizer_encode(
                tokenizer,
                text.as_ptr(),
                std::ptr::null(),
                SEQ,
                ids.as_mut_ptr(),
                mask.as_mut_ptr(),
                types.as_mut_ptr(),
                &mut length,
            );
            answered(status, "tokenizer_encode");
            if status == ElectraStatus::Ok {
                assert!(
                    length <= SEQ,
                    "encode reported {length} tokens for {SEQ} slots"
                );
            }
            electra_tokenizer_destroy(tokenizer);
        }
    }
});
