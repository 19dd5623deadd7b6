//! Shards: `Shard::open` (the header, its checksum, the ids against the vocabulary) on one file,
//! then `Batcher::open` on a prepared folder of up to two such files beside a fixed `vocab.txt`,
//! drawing batches from it as training does.
#![no_main]

use electra::data::shard::{fill_example, Shard};
use electra::data::Batcher;
use electra_fuzz::{files, names_a_file, put, scratch};
use libfuzzer_sys::fuzz_target;

/// The vocabulary of the seed shards (`fuzz/make-seeds.sh`).
const VOCAB: &[u8] = include_bytes!("../seeds/common/vocab.txt");

fuzz_target!(|data: &[u8]| {
    let dir = scratch("shard");
    let parts = files(data, 2);
    let paths = [dir.join("shard-00000.bin"), dir.join("shard-00001.bin")];
    for (path, bytes) in paths.iter().zip(&parts) {
        put(path, *bytes);
    }
    let first = &paths[0];
    // The hash the header itself claims: the comparison with the vocabulary's is one line, and
    // taking it from the file lets every input reach the checks after it.
    let hash = data
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    match Shard::open(first, hash) {
        Ok(shard) => {
            let seq = shard.header().seq_len as usize;
            let (mut ids, mut types, mut mask) = (vec![0; seq], vec![0; seq], vec![0; seq]);
            for i in 0..shard.len() {
                fill_example(shard.example(i), 3, &mut ids, &mut types, &mut mask);
            }
        }
        Err(e) => names_a_file(&e, &[first]),
    }

    put(&dir.join("vocab.txt"), Some(VOCAB));
    match Batcher::open(&dir, 2, 0) {
        Ok(mut batcher) => {
            // Twice the examples: every example, and an epoch boundary.
            for _ in 0..batcher.example_count().min(64) {
                batcher.next_batch();
            }
            let _ = batcher.data_checksum();
        }
        // NoShards names the folder, the others the shard.
        Err(e) => names_a_file(&e, &[&paths[0], &paths[1], &dir]),
    }
});
