//! The shard file: a round trip, the derived model inputs, and every kind of bad file.

use std::fs;
use std::path::{Path, PathBuf};

use electra::data::shard::{fill_example, Shard, ShardHeader, ShardWriter, HEADER_LEN};

const HASH: u64 = 0x1234_5678_9abc_def0;
const SEP: u16 = 3;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn examples() -> Vec<Vec<u16>> {
    vec![
        vec![2, 10, 11, 12, SEP, 20, 21, SEP],
        vec![2, 99, SEP],
        vec![2, 5, 6, SEP, 7, SEP],
    ]
}

/// Writes the three examples above with seq len 8 and vocab size 100.
fn write_shard(path: &Path) {
    let mut writer = ShardWriter::create(path, 100, HASH, 8).unwrap();
    for example in examples() {
        writer.push(&example).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), path);
}

/// Opens `path` expecting failure, and returns the message.
fn open_err(path: &Path, hash: u64) -> String {
    let msg = Shard::open(path, hash).unwrap_err().to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );
    msg
}

#[test]
fn round_trip_keeps_header_and_examples() {
    let dir = scratch("shard_round_trip");
    let path = dir.join("shard-00000.bin");
    write_shard(&path);
    // The temporary file was renamed into place: nothing else is left.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["shard-00000.bin"]);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        (HEADER_LEN + 3 * 8 * 2) as u64
    );
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"ELECSHRD");
    assert_eq!(
        &bytes[8..12],
        &2u32.to_le_bytes(),
        "version 2, little-endian"
    );

    let shard = Shard::open(&path, HASH).unwrap();
    assert_eq!(
        *shard.header(),
        ShardHeader {
            vocab_size: 100,
            vocab_hash: HASH,
            seq_len: 8,
            example_count: 3,
            version: 2,
            body_checksum: crc32fast::hash(&bytes[HEADER_LEN..]),
        }
    );
    for (i, example) in examples().iter().enumerate() {
        let mut padded = example.clone();
        padded.resize(8, 0);
        assert_eq!(shard.example(i), padded);
    }
}

#[test]
fn token_types_and_mask_follow_sep_and_padding() {
    let (mut ids, mut types, mut mask) = ([0u32; 8], [9u32; 8], [9u32; 8]);
    fill_example(
        &[2, 10, 11, SEP, 20, SEP, 0, 0],
        SEP as u32,
        &mut ids,
        &mut types,
        &mut mask,
    );
    assert_eq!(ids, [2, 10, 11, 3, 20, 3, 0, 0]);
    assert_eq!(types, [0, 0, 0, 0, 1, 1, 0, 0]);
    assert_eq!(mask, [1, 1, 1, 1, 1, 1, 0, 0]);

    fill_example(
        &[2, 10, SEP, 0, 0, 0, 0, 0],
        SEP as u32,
        &mut ids,
        &mut types,
        &mut mask,
    );
    assert_eq!(types, [0; 8], "one segment: all type 0");
    assert_eq!(mask, [1, 1, 1, 0, 0, 0, 0, 0]);
}

#[test]
fn an_unfinished_writer_leaves_nothing_behind() {
    let dir = scratch("shard_unfinished");
    let path = dir.join("shard-00000.bin");
    let mut writer = ShardWriter::create(&path, 100, HASH, 8).unwrap();
    writer.push(&[2, 10, SEP]).unwrap();
    let err = writer.push(&[2, 100, SEP]).unwrap_err().to_string();
    assert!(err.contains("token id 100"), "{err}");
    let err = writer.push(&[2; 9]).unwrap_err().to_string();
    assert!(err.contains("does not fit seq len 8"), "{err}");
    drop(writer);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn truncated_shard_is_rejected() {
    let dir = scratch("shard_truncated");
    let path = dir.join("shard-00000.bin");
    write_shard(&path);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
    let msg = open_err(&path, HASH);
    assert!(
        msg.contains("truncated") && msg.contains("header promises 112"),
        "{msg}"
    );

    fs::write(&path, &bytes[..10]).unwrap();
    let msg = open_err(&path, HASH);
    assert!(
        msg.contains("shorter than the 64-byte shard header"),
        "{msg}"
    );
}

#[test]
fn flipped_magic_byte_is_rejected() {
    let dir = scratch("shard_magic");
    let path = dir.join("shard-00000.bin");
    write_shard(&path);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let msg = open_err(&path, HASH);
    assert!(msg.contains("not an electra shard"), "{msg}");
}

#[test]
fn vocab_hash_mismatch_is_rejected() {
    let dir = scratch("shard_hash");
    let path = dir.join("shard-00000.bin");
    write_shard(&path);
    let msg = open_err(&path, HASH ^ 1);
    assert!(
        msg.contains("vocab hash 0x123456789abcdef0 differs") && msg.contains("another vocabulary"),
        "{msg}"
    );
}

#[test]
fn every_other_bad_header_field_is_rejected() {
    let dir = scratch("shard_fields");
    let path = dir.join("shard-00000.bin");
    write_shard(&path);
    let good = fs::read(&path).unwrap();
    let patched = |at: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        fs::write(&path, &bytes).unwrap();
        open_err(&path, HASH)
    };
    let msg = patched(8, &3u32.to_le_bytes());
    assert!(
        msg.contains("unsupported shard version 3 (this build reads versions 1 to 2)"),
        "{msg}"
    );
    let msg = patched(24, &0u32.to_le_bytes());
    assert!(msg.contains("seq len in the header is 0"), "{msg}");
    let msg = patched(12, &0u32.to_le_bytes());
    assert!(msg.contains("vocab size 0"), "{msg}");
    let msg = patched(12, &70_000u32.to_le_bytes());
    assert!(msg.contains("vocab size 70000"), "{msg}");
    let msg = patched(50, &[1]);
    assert!(msg.contains("reserved header bytes"), "{msg}");
    let msg = patched(32, &u64::MAX.to_le_bytes());
    assert!(msg.contains("header promises"), "an absurd count: {msg}");
    // Example 1 holds id 99: with a header vocab of 50 it is out of range.
    let msg = patched(12, &50u32.to_le_bytes());
    assert!(
        msg.contains("example 1, position 1: token id 99 is not below the vocab size 50"),
        "{msg}"
    );
}

#[test]
fn a_flipped_byte_in_the_ids_is_refused_and_version_1_shards_still_open() {
    let dir = scratch("shard_checksum");
    let path = dir.join("shard-00000.bin");
    write_shard(&path);
    let good = fs::read(&path).unwrap();
    for at in [HEADER_LEN, good.len() - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x04;
        fs::write(&path, &bytes).unwrap();
        let msg = open_err(&path, HASH);
        assert!(
            msg.contains("the token ids' checksum") && msg.contains("the file is corrupt"),
            "byte {at}: {msg}"
        );
    }

    // Version 1, as older builds wrote it: no checksum (its bytes reserved, zero), read as is.
    let mut v1 = good.clone();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1[28..32].fill(0);
    fs::write(&path, &v1).unwrap();
    let shard = Shard::open(&path, HASH).unwrap();
    assert_eq!(
        (shard.header().version, shard.header().body_checksum),
        (1, 0)
    );
    assert_eq!(shard.example(1)[..3], [2, 99, SEP]);
    v1[29] = 1;
    fs::write(&path, &v1).unwrap();
    assert!(open_err(&path, HASH).contains("reserved header bytes"));
}
