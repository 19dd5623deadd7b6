//! Text for `electra prepare`: `data::prepare` (reading the file line by line, tokenizing,
//! packing, writing shards) with the seeds' vocabulary, then `Batcher::open` on what it wrote,
//! which must be data holding every token of the text.
#![no_main]

use electra::data::{prepare, Batcher, DataError, PrepareOptions};
use electra_fuzz::{names_a_file, put, scratch, seed_tokenizer as tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch("prepare_text");
    let (text, out) = (dir.join("text.txt"), dir.join("shards"));
    put(&text, Some(data));
    let options = PrepareOptions {
        seq_len: 8,
        seed: 0,
        examples_per_shard: 4,
    };
    match prepare(std::slice::from_ref(&text), &out, tokenizer(), &options) {
        Ok(summary) => {
            assert!(summary.tokens > 0 && summary.examples > 0);
            let batcher = Batcher::open(&out, 2, 0).expect("prepared data opens");
            assert_eq!(batcher.example_count(), summary.examples);
        }
        // No token in the text: a message about the input, with counts, not one file.
        Err(DataError::EmptyCorpus { .. }) => {}
        Err(e) => names_a_file(&e, &[&text]),
    }
});
