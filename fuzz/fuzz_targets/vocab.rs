//! `vocab.txt`: `WordPieceTokenizer::from_vocab_file`, as `prepare --vocab`, the data folder's
//! vocabulary and a HF directory's are read; a vocabulary that loads then tokenizes and decodes
//! text, as `prepare` and `finetune` do.
#![no_main]

use electra::data::WordPieceTokenizer;
use electra_fuzz::{names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

const TEXT: &str =
    "The Union is strong, Mr. Speaker! ünïcödé 2024 [MASK] ##ing \u{0} \u{fffd} 中文 tab\there";

fuzz_target!(|data: &[u8]| {
    let path = scratch("vocab").join("vocab.txt");
    put(&path, Some(data));
    match WordPieceTokenizer::from_vocab_file(&path) {
        Ok(tok) => {
            let n = tok.vocab_size();
            assert_eq!(n, tok.vocab().len());
            for id in [
                tok.pad_id(),
                tok.unk_id(),
                tok.cls_id(),
                tok.sep_id(),
                tok.mask_id(),
            ] {
                assert!((id as usize) < n, "special id {id} outside {n} tokens");
            }
            let ids = tok
                .encode(TEXT)
                .expect("a loaded vocabulary tokenizes any text");
            assert!(ids.iter().all(|&id| (id as usize) < n));
            let _ = tok.decode(&ids);
        }
        Err(e) => names_a_file(&e, &[&path]),
    }
});
