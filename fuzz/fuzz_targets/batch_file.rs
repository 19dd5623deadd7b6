//! Batch files of `electra loss --batch`: `batch_file::read_batch_file` (a safetensors file of
//! integer tensors, checked against each other).
#![no_main]

use electra::io::batch_file::read_batch_file;
use electra_fuzz::{names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch("batch_file").join("batch.safetensors");
    put(&path, Some(data));
    match read_batch_file(&path) {
        Ok(file) => {
            file.batch.validate().expect("a batch read is consistent");
            if let Some(r) = &file.replaced {
                assert_eq!(r.len(), file.batch.batch * file.batch.seq);
            }
        }
        Err(e) => names_a_file(&e, &[&path]),
    }
});
