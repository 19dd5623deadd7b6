//! `prepare`: packing invariants, determinism across thread counts, and bad input.

use std::fs;
use std::path::{Path, PathBuf};

use electra::data::prepare::UNFINISHED;
use electra::data::{prepare, Batcher, PrepareOptions, Shard, WordPieceTokenizer};

mod common;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jump", "over", "lazy", "dog", "nation", "people", "state",
    "union", "congress", "year", "law", "peace", ".", ",",
];

fn tokenizer(dir: &Path) -> WordPieceTokenizer {
    let path = dir.join("test-vocab.txt");
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let vocab: Vec<&str> = specials.iter().chain(WORDS).copied().collect();
    fs::write(&path, vocab.join("\n")).unwrap();
    WordPieceTokenizer::load(&path).unwrap()
}

/// A line of `n` words drawn by a tiny LCG, so the corpus is fixed without a random crate.
fn line(state: &mut u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            WORDS[(*state >> 33) as usize % WORDS.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes a corpus of 6 documents in 3 files (one in a subfolder, one without a final newline)
/// plus a hidden file that must be ignored, and returns the documents in the order prepare reads
/// them: files sorted by path.
fn write_corpus(dir: &Path) -> Vec<Vec<String>> {
    let mut state = 7;
    let mut doc =
        |lines: &[usize]| -> Vec<String> { lines.iter().map(|&n| line(&mut state, n)).collect() };
    let docs = vec![
        doc(&[12, 30, 5, 44, 9, 17, 3, 25, 31, 8, 19, 22, 6, 40]),
        doc(&[400]), // one line far longer than seq_len
        doc(&[2]),
        doc(&[15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15]),
        doc(&[60, 1, 33, 27, 90, 4, 4, 4, 18]),
        doc(&[20, 21, 22, 23, 24, 25, 26, 27]),
    ];
    let text = |docs: &[Vec<String>], sep: &str| {
        docs.iter()
            .map(|d| d.join("\n"))
            .collect::<Vec<_>>()
            .join(sep)
    };
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.txt"), text(&docs[0..3], "\n\n   \n") + "\n").unwrap();
    fs::write(dir.join("c.txt"), text(&docs[3..4], "")).unwrap();
    fs::write(
        dir.join("sub/b.txt"),
        "\n".to_owned() + &text(&docs[4..6], "\n\n") + "\n\n",
    )
    .unwrap();
    fs::write(dir.join(".hidden.txt"), "the lazy dog\n").unwrap();
    docs
}

fn read_examples(out: &Path, t: &WordPieceTokenizer) -> Vec<Vec<u16>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|p| {
            let shard = Shard::open(p, t.vocab_hash()).unwrap();
            (0..shard.len())
                .map(|i| shard.example(i).to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Checks the layout of every example and returns its text tokens and whether it has two
/// segments.
fn check_example(ids: &[u16], t: &WordPieceTokenizer) -> (Vec<u16>, bool) {
    let (cls, sep) = (t.cls_id() as u16, t.sep_id() as u16);
    let len = ids.iter().position(|&id| id == 0).unwrap_or(ids.len());
    let (real, pad) = ids.split_at(len);
    assert!(
        pad.iter().all(|&id| id == 0),
        "padding only at the end: {ids:?}"
    );
    assert!(real.len() >= 3, "at least [CLS] x [SEP]: {ids:?}");
    assert_eq!(real[0], cls, "[CLS] first: {ids:?}");
    assert_eq!(*real.last().unwrap(), sep, "[SEP] last: {ids:?}");
    assert!(!real[1..].contains(&cls), "one [CLS]: {ids:?}");
    let seps: Vec<usize> = (0..len).filter(|&i| real[i] == sep).collect();
    assert!(seps.len() <= 2, "at most two segments: {ids:?}");
    assert!(seps[0] > 1, "segment A is not empty: {ids:?}");
    if seps.len() == 2 {
        assert!(seps[1] > seps[0] + 1, "segment B is not empty: {ids:?}");
    }
    let text = real
        .iter()
        .copied()
        .filter(|&id| id != cls && id != sep)
        .collect();
    (text, seps.len() == 2)
}

fn options(seed: u64) -> PrepareOptions {
    PrepareOptions {
        seq_len: 32,
        seed,
        examples_per_shard: 10,
    }
}

#[test]
fn packs_every_token_in_order_within_documents() {
    let dir = scratch("prepare_invariants");
    let t = tokenizer(&dir);
    let docs = write_corpus(&dir.join("corpus"));
    let out = dir.join("out");
    let summary = prepare(&[dir.join("corpus")], &out, &t, &options(1)).unwrap();
    println!("{summary}");

    let examples = read_examples(&out, &t);
    assert_eq!(summary.examples, examples.len() as u64);
    assert_eq!(summary.documents, 6);
    assert_eq!(summary.sources, 3, "the hidden file is skipped");
    assert_eq!(summary.lossy_lines, 0);
    assert!(examples.len() > 40, "{} examples", examples.len());
    assert_eq!(summary.shards.len(), examples.len().div_ceil(10));

    let mut packed = Vec::new();
    let mut example_ends = vec![0];
    let mut pairs = 0;
    for ids in &examples {
        assert_eq!(ids.len(), 32);
        let (text, pair) = check_example(ids, &t);
        packed.extend(text);
        example_ends.push(packed.len());
        pairs += pair as usize;
    }
    let mut expected = Vec::new();
    for doc in &docs {
        for line in doc {
            expected.extend(t.encode(line).unwrap().iter().map(|&id| id as u16));
        }
        // An example never spans two documents.
        assert!(
            example_ends.contains(&expected.len()),
            "a document ends inside an example"
        );
    }
    assert_eq!(
        packed, expected,
        "every input token, in order, exactly once"
    );
    assert_eq!(summary.tokens, expected.len() as u64);
    assert!(
        pairs > 0 && pairs < examples.len(),
        "both one- and two-segment examples"
    );

    // The vocabulary travels with the shards.
    let saved = WordPieceTokenizer::load(&out.join("vocab.txt")).unwrap();
    assert_eq!(saved.vocab_hash(), t.vocab_hash());
    let saved = WordPieceTokenizer::load(&out.join("tokenizer.json")).unwrap();
    assert_eq!(saved.vocab_hash(), t.vocab_hash());
}

#[test]
fn same_seed_gives_identical_shards_whatever_the_thread_count() {
    let dir = scratch("prepare_determinism");
    let t = tokenizer(&dir);
    write_corpus(&dir.join("corpus"));
    let run = |threads: usize, seed: u64| {
        let out = dir.join(format!("out-{threads}-{seed}"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let summary = pool
            .install(|| prepare(&[dir.join("corpus")], &out, &t, &options(seed)))
            .unwrap();
        summary
            .shards
            .iter()
            .map(|p| fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    let one = run(1, 5);
    assert_eq!(one, run(3, 5));
    assert_ne!(one, run(3, 6), "the seed matters");
}

#[test]
fn invalid_utf8_is_decoded_lossily_and_counted() {
    let dir = scratch("prepare_lossy");
    let t = tokenizer(&dir);
    let input = dir.join("latin1.txt");
    fs::write(&input, b"the quick \xff\xfe fox\nthe lazy dog\n").unwrap();
    let summary = prepare(
        std::slice::from_ref(&input),
        &dir.join("out"),
        &t,
        &options(0),
    )
    .unwrap();
    assert_eq!(summary.lossy_lines, 1);
    let first = format!("(the first: {}:1)", input.display());
    let text = summary.to_string();
    assert!(
        text.contains("1 line(s) were not valid UTF-8") && text.contains(&first),
        "{summary}"
    );
    // The bad bytes become U+FFFD, which BERT's normalizer then drops.
    let text: Vec<u16> = read_examples(&dir.join("out"), &t)
        .iter()
        .flat_map(|ids| check_example(ids, &t).0)
        .collect();
    let expected: Vec<u16> = ["the quick fox", "the lazy dog"]
        .iter()
        .flat_map(|line| t.encode(line).unwrap())
        .map(|id| id as u16)
        .collect();
    assert_eq!(text, expected);
}

/// What a `prepare` killed midway leaves (its mark, finished shards, a temporary one): training
/// refuses the folder, a second `prepare` into it clears it and writes what a first would have;
/// beside a file that `prepare` does not write, the mark does not make the folder replaceable.
#[test]
fn an_interrupted_prepare_is_refused_by_training_and_cleared_by_the_next() {
    let dir = scratch("prepare_interrupted");
    let t = tokenizer(&dir);
    let input = dir.join("text.txt");
    let mut state = 7;
    let text: Vec<String> = (0..40).map(|_| line(&mut state, 12)).collect();
    fs::write(&input, text.join("\n")).unwrap();
    let inputs = [input];
    let reference = dir.join("reference");
    prepare(&inputs, &reference, &t, &options(0)).unwrap();
    assert!(
        !reference.join(UNFINISHED).exists(),
        "a finished prepare leaves no mark"
    );

    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join(UNFINISHED), "").unwrap();
    fs::copy(
        reference.join("shard-00000.bin"),
        out.join("shard-00000.bin"),
    )
    .unwrap();
    fs::write(out.join(".shard-00001.bin.tmp-4242"), b"ELECSHRD half").unwrap();
    fs::copy(reference.join("vocab.txt"), out.join("vocab.txt")).unwrap();
    let err = Batcher::open(&out, 2, 0).unwrap_err().to_string();
    assert!(
        err.contains(&out.join(UNFINISHED).display().to_string()) && err.contains("did not finish"),
        "{err}"
    );

    let summary = prepare(&inputs, &out, &t, &options(0)).unwrap();
    assert_eq!(summary.removed.len(), 4, "{:?}", summary.removed);
    let listing = |d: &Path| {
        let mut files: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    assert!(
        listing(&out) == listing(&reference),
        "prepared again as new"
    );
    Batcher::open(&out, 2, 0).unwrap();

    let mixed = dir.join("mixed");
    fs::create_dir_all(&mixed).unwrap();
    fs::write(mixed.join(UNFINISHED), "").unwrap();
    fs::write(mixed.join("notes.txt"), "mine").unwrap();
    let err = prepare(&inputs, &mixed, &t, &options(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.txt") && err.contains("interrupted"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&mixed).unwrap().count(), 2, "nothing removed");
}

/// A prepare that fails after it began writing (here: the input holds no token) removes what it
/// wrote, its mark included.
#[test]
fn empty_corpus_is_a_clear_error() {
    let dir = scratch("prepare_empty");
    let t = tokenizer(&dir);
    let corpus = dir.join("corpus");
    fs::create_dir_all(&corpus).unwrap();
    fs::write(corpus.join("empty.txt"), "").unwrap();
    fs::write(corpus.join("blank.txt"), "\n\n   \n\t\n").unwrap();
    let out = dir.join("out");
    let err = prepare(&[corpus], &out, &t, &options(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no tokens") && err.contains("2 file(s)"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "nothing written: {err}"
    );
}

#[test]
fn refuses_bad_options_and_a_folder_that_is_not_empty() {
    let dir = scratch("prepare_refusals");
    let t = tokenizer(&dir);
    let input = dir.join("text.txt");
    fs::write(&input, "the lazy dog\n").unwrap();
    let inputs = [input];

    let short = PrepareOptions {
        seq_len: 4,
        ..options(0)
    };
    let err = prepare(&inputs, &dir.join("a"), &t, &short)
        .unwrap_err()
        .to_string();
    assert!(err.contains("seq len 4"), "{err}");

    prepare(&inputs, &dir.join("b"), &t, &options(0)).unwrap();
    let err = prepare(&inputs, &dir.join("b"), &t, &options(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds 3 file(s) (shard-00000.bin ...)"),
        "{err}"
    );
    // Nor into a folder that holds anything else: prepare writes only into an empty folder.
    let notes = dir.join("d");
    fs::create_dir_all(&notes).unwrap();
    fs::write(notes.join("notes.txt"), "mine").unwrap();
    let err = prepare(&inputs, &notes, &t, &options(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds 1 file(s) (notes.txt ...)"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&notes).unwrap().count(), 1);

    let err = prepare(&[dir.join("nope.txt")], &dir.join("c"), &t, &options(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.txt"), "{err}");
}

#[test]
fn sotu_with_the_bert_vocab_packs_every_token() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    if !data.join("vocab.txt").exists() || !data.join("sotu").exists() {
        println!("skipped: data/vocab.txt or data/sotu is absent (run scripts/fetch-data.sh)");
        return;
    }
    let dir = scratch("prepare_sotu");
    let t = WordPieceTokenizer::load(&data.join("vocab.txt")).unwrap();
    let opts = PrepareOptions {
        seq_len: 128,
        seed: 0,
        examples_per_shard: 4096,
    };
    let summary = prepare(&[data.join("sotu")], &dir, &t, &opts).unwrap();
    println!("{summary}");
    assert_eq!((summary.sources, summary.documents), (233, 233));
    let examples = read_examples(&dir, &t);
    let text: usize = examples
        .iter()
        .map(|ids| check_example(ids, &t).0.len())
        .sum();
    assert_eq!(text as u64, summary.tokens);
    // SOTU is one long line per address: almost every example is full.
    let full = examples.iter().filter(|ids| ids[127] != 0).count();
    assert!(
        full * 10 > examples.len() * 8,
        "{full} of {} full",
        examples.len()
    );
}

#[test]
fn binary_files_and_endless_lines_are_refused_by_name_and_line() {
    let dir = scratch("prepare_bounded");
    let t = tokenizer(&dir);
    let text = dir.join("text");
    fs::create_dir_all(&text).unwrap();
    fs::write(text.join("a.txt"), "the quick fox\n\nthe lazy dog\n").unwrap();
    // A binary file among the text: refused, not tokenized into stray characters.
    let binary = text.join("b.bin");
    fs::write(&binary, b"the\n\x7fELF\x02\x01\x01\x00\x00\x00 junk\n").unwrap();
    let err = prepare(
        std::slice::from_ref(&text),
        &dir.join("out-binary"),
        &t,
        &options(0),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("{}:2: a NUL byte", binary.display())),
        "{err}"
    );
    fs::remove_file(&binary).unwrap();

    // One line past the limit, with no line break: refused after reading at most one more
    // byte than the limit, naming the file and line.
    let endless = text.join("c.txt");
    let mut long = b"the fox\n".to_vec();
    long.extend(std::iter::repeat_n(
        b'a',
        electra::data::corpus::MAX_LINE_BYTES + 10,
    ));
    fs::write(&endless, &long).unwrap();
    let err = prepare(
        std::slice::from_ref(&text),
        &dir.join("out-long"),
        &t,
        &options(0),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "{}:2: a line longer than 1 MiB",
            endless.display()
        )),
        "{err}"
    );
    // A line at the limit is text like any other, its line break not counted.
    long.truncate(8 + electra::data::corpus::MAX_LINE_BYTES);
    long.push(b'\n');
    fs::write(&endless, &long).unwrap();
    prepare(&[text], &dir.join("out-limit"), &t, &options(0)).unwrap();
}

#[test]
fn the_command_refuses_an_output_inside_its_input_before_training_a_vocabulary() {
    let dir = scratch("prepare_onto_input");
    let corpus = dir.join("corpus");
    fs::create_dir_all(&corpus).unwrap();
    fs::write(corpus.join("a.txt"), "the lazy dog\n").unwrap();
    let inside = corpus.join("shards");
    let err = common::fails(&[
        "prepare",
        "--input",
        common::s(&corpus),
        "--train-vocab",
        "50",
        "--out",
        common::s(&inside),
    ]);
    assert!(err.contains("the output lies inside the input"), "{err}");
    assert!(!inside.exists());
}
