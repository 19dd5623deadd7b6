//! The batcher: epochs cover every example once, orders are seeded, and a saved cursor resumes
//! the identical sequence of batches.

use std::fs;
use std::path::{Path, PathBuf};

use electra::data::shard::ShardWriter;
use electra::data::{Batcher, Cursor, WordPieceTokenizer};

const SEQ: usize = 6;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A prepared folder: vocab.txt plus 23 examples over 3 shards (10, 10, 3). Example n is
/// `[CLS] n [SEP] n [SEP]` with a distinct id n, so every row tells which example it is.
fn prepared(name: &str) -> (PathBuf, WordPieceTokenizer) {
    let dir = scratch(name);
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    vocab.extend((0..23).map(|n| format!("w{n}")));
    fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let t = WordPieceTokenizer::load(&dir.join("vocab.txt")).unwrap();
    for (shard, range) in [0..10, 10..20, 20..23].into_iter().enumerate() {
        let path = dir.join(format!("shard-{shard:05}.bin"));
        let mut w =
            ShardWriter::create(&path, t.vocab_size() as u32, t.vocab_hash(), SEQ as u32).unwrap();
        for n in range {
            let id = 5 + n as u16;
            w.push(&[2, id, 3, id, 3]).unwrap();
        }
        w.finish().unwrap();
    }
    (dir, t)
}

/// The example number of each row of the next batch, after checking the row's layout.
fn next_rows(batcher: &mut Batcher) -> Vec<u32> {
    let b = batcher.next_batch();
    (0..b.batch)
        .map(|r| {
            let row = r * SEQ..(r + 1) * SEQ;
            let ids = &b.input_ids[row.clone()];
            assert_eq!(ids[0], 2);
            assert_eq!(&b.token_types[row.clone()], [0, 0, 0, 1, 1, 0]);
            assert_eq!(&b.attention_mask[row], [1, 1, 1, 1, 1, 0]);
            ids[1] - 5
        })
        .collect()
}

#[test]
fn each_epoch_visits_every_example_once_in_a_new_order() {
    let (dir, _) = prepared("batcher_epochs");
    let mut batcher = Batcher::open(&dir, 5, 42).unwrap();
    assert_eq!(batcher.example_count(), 23);
    assert_eq!(batcher.seq_len(), SEQ);
    let rows: Vec<u32> = (0..23).flat_map(|_| next_rows(&mut batcher)).collect(); // 5 epochs
    let epochs: Vec<&[u32]> = rows.chunks(23).collect();
    for epoch in &epochs {
        let mut sorted = epoch.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..23).collect::<Vec<_>>());
    }
    assert_ne!(epochs[0], epochs[1], "reshuffled every epoch");
    assert_ne!(epochs[0], (0..23).collect::<Vec<_>>(), "shuffled at all");
    assert_eq!(
        batcher.cursor(),
        Cursor {
            epoch: 4,
            position: 23
        }
    );

    let mut again = Batcher::open(&dir, 5, 42).unwrap();
    assert_eq!(next_rows(&mut again), rows[..5], "same seed, same order");
    let mut other = Batcher::open(&dir, 5, 43).unwrap();
    let other_rows: Vec<u32> = (0..5).flat_map(|_| next_rows(&mut other)).collect();
    assert_ne!(other_rows[..23], rows[..23], "another seed, another order");
}

#[test]
fn a_restored_cursor_continues_the_identical_sequence() {
    let (dir, _) = prepared("batcher_resume");
    let mut first = Batcher::open(&dir, 7, 9).unwrap();
    for _ in 0..5 {
        next_rows(&mut first); // 35 examples: into the second epoch
    }
    let saved = serde_json::to_string(&first.cursor()).unwrap();
    assert_eq!(saved, r#"{"epoch":1,"position":12}"#);
    let expected: Vec<Vec<u32>> = (0..8).map(|_| next_rows(&mut first)).collect();

    let mut resumed = Batcher::open(&dir, 7, 9).unwrap();
    resumed
        .restore(serde_json::from_str(&saved).unwrap())
        .unwrap();
    let got: Vec<Vec<u32>> = (0..8).map(|_| next_rows(&mut resumed)).collect();
    assert_eq!(got, expected);
    assert_eq!(resumed.cursor(), first.cursor());

    // Jumping back to the start of epoch 0 replays the beginning too.
    let mut fresh = Batcher::open(&dir, 7, 9).unwrap();
    let start = next_rows(&mut fresh);
    resumed.restore(Cursor::default()).unwrap();
    assert_eq!(next_rows(&mut resumed), start);

    let err = resumed
        .restore(Cursor {
            epoch: 0,
            position: 24,
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cursor position 24 is past the 23 examples"),
        "{err}"
    );
}

#[test]
fn mismatched_or_missing_shards_are_refused() {
    let (dir, t) = prepared("batcher_bad");
    let odd = dir.join("shard-00003.bin");
    let mut w = ShardWriter::create(&odd, t.vocab_size() as u32, t.vocab_hash(), 9).unwrap();
    w.push(&[2, 5, 3]).unwrap();
    w.finish().unwrap();
    let err = Batcher::open(&dir, 4, 0).unwrap_err().to_string();
    assert!(
        err.contains("shard-00003.bin") && err.contains("seq len 9 differs from 6"),
        "{err}"
    );

    // Shards of another vocabulary.
    fs::remove_file(&odd).unwrap();
    fs::write(
        dir.join("vocab.txt"),
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nother\n",
    )
    .unwrap();
    let err = Batcher::open(&dir, 4, 0).unwrap_err().to_string();
    assert!(
        err.contains("shard-00000.bin") && err.contains("another vocabulary"),
        "{err}"
    );

    // A header whose vocabulary size is not that of the vocabulary its hash names.
    let (dir, t) = prepared("batcher_bad_size");
    let bigger = dir.join("shard-00001.bin");
    let size = t.vocab_size() as u32 + 100;
    let mut w = ShardWriter::create(&bigger, size, t.vocab_hash(), SEQ as u32).unwrap();
    w.push(&[2, 120, 3, 5, 3]).unwrap();
    w.finish().unwrap();
    let err = Batcher::open(&dir, 4, 0).unwrap_err().to_string();
    assert!(
        err.contains("shard-00001.bin")
            && err.contains(&format!(
                "vocab size {size} differs from the {}",
                t.vocab_size()
            )),
        "{err}"
    );

    let empty = scratch("batcher_empty");
    fs::copy(dir.join("vocab.txt"), empty.join("vocab.txt")).unwrap();
    let err = Batcher::open(&empty, 4, 0).unwrap_err().to_string();
    assert!(err.contains("no shard-*.bin files"), "{err}");

    let err = Batcher::open(&scratch("batcher_no_vocab"), 4, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab.txt"), "{err}");
}
