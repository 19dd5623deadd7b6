//! WordPiece tokenization: a vocabulary built here, the real BERT uncased vocabulary when
//! `scripts/fetch-data.sh` has fetched it, training, and the files a tokenizer reads and writes.

use std::fs;
use std::path::{Path, PathBuf};

use electra::data::tokenizer::{vocab_hash, WordPieceTokenizer};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

const SMALL_VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "##es", "jump",
    "##s", "over", "lazy", "dog", ".", ",", "cafe",
];

fn small_tokenizer(dir: &Path) -> WordPieceTokenizer {
    let path = dir.join("vocab.txt");
    fs::write(&path, SMALL_VOCAB.join("\n") + "\n").unwrap();
    WordPieceTokenizer::load(&path).unwrap()
}

fn tokens(tokenizer: &WordPieceTokenizer, text: &str) -> Vec<String> {
    let ids = tokenizer.encode(text).unwrap();
    ids.iter()
        .map(|&id| tokenizer.vocab()[id as usize].clone())
        .collect()
}

#[test]
fn small_vocab_splits_lowercases_strips_accents_and_round_trips() {
    let dir = scratch("tokenizer_small");
    let t = small_tokenizer(&dir);
    assert_eq!(t.vocab_size(), SMALL_VOCAB.len());
    assert_eq!(
        (t.pad_id(), t.cls_id(), t.sep_id(), t.mask_id()),
        (0, 2, 3, 4)
    );
    let text = "The QUICK brown Foxes jumps over the lazy dog, CAFÉ.";
    assert_eq!(
        tokens(&t, text),
        [
            "the", "quick", "brown", "fox", "##es", "jump", "##s", "over", "the", "lazy", "dog",
            ",", "cafe", "."
        ]
    );
    let ids = t.encode(text).unwrap();
    assert_eq!(
        t.decode(&ids).unwrap(),
        "the quick brown foxes jumps over the lazy dog, cafe."
    );
    assert_eq!(tokens(&t, "zebra fox"), ["[UNK]", "fox"]);
    // [CLS] and [SEP] are the packer's business, never the tokenizer's.
    assert!(!ids.contains(&t.cls_id()) && !ids.contains(&t.sep_id()));
}

#[test]
fn bert_uncased_vocab_gives_the_known_ids() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/vocab.txt");
    if !path.exists() {
        println!(
            "skipped: {} is absent (run scripts/fetch-data.sh to fetch the BERT vocabulary)",
            path.display()
        );
        return;
    }
    let t = WordPieceTokenizer::load(&path).unwrap();
    assert_eq!(t.vocab_size(), 30522);
    assert_eq!(
        (t.pad_id(), t.cls_id(), t.sep_id(), t.mask_id()),
        (0, 101, 102, 103)
    );
    // The ids HuggingFace's bert-base-uncased tokenizer gives for these inputs.
    assert_eq!(t.encode("Hello, world!").unwrap(), [7592, 1010, 2088, 999]);
    assert_eq!(
        tokens(&t, "John Johanson's house"),
        ["john", "johan", "##son", "'", "s", "house"]
    );
    assert_eq!(tokens(&t, "Héllo"), ["hello"]);
    let text = "the president addressed the congress on the state of the union.";
    assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
}

#[test]
fn trained_vocab_puts_specials_first_and_round_trips() {
    let lines: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "the nation grows stronger in year {} and the people prosper",
                i % 17
            )
        })
        .collect();
    let t = WordPieceTokenizer::train(|| Ok(lines.iter().map(Ok)), 120).unwrap();
    assert_eq!(
        &t.vocab()[..5],
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    );
    assert!(t.vocab_size() <= 120, "vocab size {}", t.vocab_size());
    assert!(t.vocab().iter().any(|token| token.starts_with("##")));
    let ids = t.encode(&lines[3]).unwrap();
    assert!(
        !ids.contains(&1),
        "no [UNK] in text the vocabulary was trained on"
    );
    assert_eq!(t.decode(&ids).unwrap(), lines[3]);

    // The trainer's internal numbering follows hash-map order; ours must not.
    let again = WordPieceTokenizer::train(|| Ok(lines.iter().map(Ok)), 120).unwrap();
    assert_eq!(again.vocab(), t.vocab());
}

#[test]
fn vocab_txt_and_tokenizer_json_reload_to_the_same_vocabulary() {
    let dir = scratch("tokenizer_files");
    let t = small_tokenizer(&dir);
    let txt = dir.join("again.txt");
    t.save_vocab(&txt).unwrap();
    let again = WordPieceTokenizer::load(&txt).unwrap();
    assert_eq!(again.vocab(), t.vocab());
    assert_eq!(again.vocab_hash(), t.vocab_hash());

    // A tokenizer.json that pads and truncates: loading switches both off.
    let json = dir.join("tokenizer.json");
    t.save_json(&json).unwrap();
    let mut hf = tokenizers::Tokenizer::from_file(&json).unwrap();
    hf.with_padding(Some(tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::Fixed(32),
        ..Default::default()
    }));
    hf.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 2,
        ..Default::default()
    }))
    .unwrap();
    hf.save(&json, false).unwrap();
    let loaded = WordPieceTokenizer::load(&json).unwrap();
    assert_eq!(loaded.vocab_hash(), t.vocab_hash());
    assert_eq!(
        loaded.encode("the quick brown fox").unwrap(),
        t.encode("the quick brown fox").unwrap()
    );
}

#[test]
fn vocab_hash_depends_on_every_token_and_its_position() {
    let v = |tokens: &[&str]| vocab_hash(&tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    assert_eq!(v(&[]), 0xcbf2_9ce4_8422_2325, "FNV-1a 64 offset basis");
    assert_ne!(v(&["ab", "c"]), v(&["a", "bc"]));
    assert_ne!(v(&["a", "b"]), v(&["b", "a"]));
    assert_eq!(v(&["a", "b"]), v(&["a", "b"]));
}

#[test]
fn vocabularies_the_engine_cannot_use_are_refused() {
    let dir = scratch("tokenizer_bad");
    let no_sep = dir.join("no_sep.txt");
    fs::write(&no_sep, "[PAD]\n[UNK]\n[CLS]\n[MASK]\nword\n").unwrap();
    let err = WordPieceTokenizer::load(&no_sep).unwrap_err().to_string();
    assert!(
        err.contains("no_sep.txt") && err.contains("no [SEP] token"),
        "{err}"
    );

    let duplicate = dir.join("duplicate.txt");
    fs::write(
        &duplicate,
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nword\nword\n",
    )
    .unwrap();
    let err = WordPieceTokenizer::load(&duplicate)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("duplicate.txt") && err.contains("not contiguous"),
        "{err}"
    );

    let missing = dir.join("missing.txt");
    let err = WordPieceTokenizer::load(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.txt"), "{err}");
}
