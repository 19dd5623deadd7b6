//! A HuggingFace `tokenizer.json` (`prepare --vocab tokenizer.json`, and what `prepare` and
//! `export` write beside the vocabulary): `WordPieceTokenizer::load`, then tokenizing and
//! decoding text with what it loaded.
#![no_main]

use electra::data::WordPieceTokenizer;
use electra_fuzz::{names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

const TEXT: &str = "The Union is strong, Mr. Speaker! ünïcödé 2024 [MASK] ##ing 中文 tab\there";

fuzz_target!(|data: &[u8]| {
    let path = scratch("tokenizer_json").join("tokenizer.json");
    put(&path, Some(data));
    match WordPieceTokenizer::load(&path) {
        Ok(tok) => {
            let n = tok.vocab_size();
            if let Ok(ids) = tok.encode(TEXT) {
                assert!(ids.iter().all(|&id| (id as usize) < n), "{ids:?} of {n}");
                let _ = tok.decode(&ids);
            }
        }
        Err(e) => names_a_file(&e, &[&path]),
    }
});
