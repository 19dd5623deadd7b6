//! BERT WordPiece tokenization, through the `tokenizers` crate.
//!
//! ELECTRA uses BERT's uncased pipeline: clean the text, lowercase, strip accents, split on
//! whitespace and punctuation, then greedy longest-match WordPiece with `##` continuations.
//! [`WordPieceTokenizer`] wraps that pipeline and keeps the facts the rest of the engine needs at
//! hand: the special token ids, the vocabulary in id order and a hash that ties shards to it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use rayon::iter::{ParallelBridge, ParallelIterator};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    AddedToken, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    Tokenizer,
};

use super::error::{DataError, Result};

/// The special tokens, in the order a trained vocabulary gives them ids 0..5.
/// `[PAD]` must come first: shards pad with id 0.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A BERT WordPiece tokenizer plus the vocabulary facts that shards and models depend on.
#[derive(Debug, Clone)]
pub struct WordPieceTokenizer {
    inner: Tokenizer,
    vocab: Vec<String>,
    vocab_hash: u64,
    pad_id: u32,
    unk_id: u32,
    cls_id: u32,
    sep_id: u32,
    mask_id: u32,
}

impl WordPieceTokenizer {
    /// Loads `tokenizer.json` (any file ending in `.json`) or a `vocab.txt` (anything else).
    pub fn load(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_tokenizer_json(path)
        } else {
            Self::from_vocab_file(path)
        }
    }

    /// Builds the BERT uncased pipeline around a `vocab.txt` (one token per line, line n = id n).
    pub fn from_vocab_file(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_vocab_bytes(&bytes, &path.display().to_string())
    }

    fn from_vocab_bytes(bytes: &[u8], context: &str) -> Result<Self> {
        let vocab = WordPiece::read_bytes(bytes).map_err(|e| DataError::tokenizer(context, e))?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| DataError::tokenizer(context, e))?;
        Self::from_tokenizer(bert_pipeline(model), context)
    }

    /// Loads a HuggingFace `tokenizer.json` as it is, except for padding and truncation, which are
    /// switched off: the packer decides lengths, and a stored `max_length` would silently cut
    /// sentences or pad them with ids that are not text.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let context = path.display().to_string();
        let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
        // tokenizers 0.22 panics on a JSON syntax error inside the `decoder` field (an
        // `expect("Helper")` in its Deserialize), so the syntax is checked here first.
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| DataError::tokenizer(&context, format!("not valid JSON: {e}")))?;
        let mut inner =
            Tokenizer::from_bytes(&bytes).map_err(|e| DataError::tokenizer(&context, e))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| DataError::tokenizer(&context, e))?;
        Self::from_tokenizer(inner, &context)
    }

    /// Trains a WordPiece vocabulary of at most `vocab_size` tokens, with the special tokens
    /// first (`[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4). `lines` yields the
    /// corpus, once per call: training reads it twice. As in HuggingFace's
    /// `BertWordPieceTokenizer`, a pair must occur twice to be merged and the alphabet keeps the
    /// 1000 most frequent characters (fewer when the vocabulary is too small to hold them and
    /// their `##` forms).
    ///
    /// The same corpus always gives the same vocabulary, in the same order. The `tokenizers`
    /// trainer alone does not (huggingface/tokenizers#1794): it numbers `##` pieces in hash-map
    /// order, and those ids break ties between equally frequent merges. So the first pass here
    /// picks the alphabet and hands the trainer every `##` piece it would create, in sorted
    /// order, and the result is renumbered in a fixed order (specials, then words, then `##`
    /// pieces, each sorted).
    pub fn train<F, I, S>(mut lines: F, vocab_size: usize) -> Result<Self>
    where
        F: FnMut() -> Result<I>,
        I: Iterator<Item = Result<S>> + Send,
        S: AsRef<str> + Send,
    {
        let context = "training a WordPiece vocabulary";
        if vocab_size < SPECIAL_TOKENS.len() {
            return Err(DataError::Invalid(format!(
                "vocab size {vocab_size} cannot even hold the {} special tokens",
                SPECIAL_TOKENS.len()
            )));
        }
        let mut inner = bert_pipeline(WordPiece::default());
        let limit = 1000.min((vocab_size - SPECIAL_TOKENS.len()) / 2);
        let (alphabet, pieces) = alphabet(&inner, lines()?, limit)?;
        let special_tokens = SPECIAL_TOKENS
            .iter()
            .map(|t| t.to_string())
            .chain(pieces)
            .map(|t| AddedToken::from(t, true))
            .collect();
        let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(alphabet)
            .limit_alphabet(limit)
            .show_progress(false)
            .special_tokens(special_tokens)
            .build()
            .into();
        let failure = Mutex::new(None);
        let trained = inner.train(&mut trainer, until_error(lines()?, &failure));
        if let Some(e) = failure.into_inner().expect("no thread panicked holding it") {
            return Err(e);
        }
        trained.map_err(|e| DataError::tokenizer(context, e))?;
        let mut rest: Vec<String> = inner
            .get_vocab(true)
            .into_keys()
            .filter(|token| !SPECIAL_TOKENS.contains(&token.as_str()))
            .collect();
        rest.sort_unstable_by(|a, b| (a.starts_with("##"), a).cmp(&(b.starts_with("##"), b)));
        let text: String = SPECIAL_TOKENS
            .iter()
            .copied()
            .chain(rest.iter().map(String::as_str))
            .flat_map(|token| [token, "\n"])
            .collect();
        // Rebuilding from the token list also makes a trained tokenizer behave exactly like the
        // vocab.txt it saves.
        Self::from_vocab_bytes(text.as_bytes(), context)
    }

    /// Collects the vocabulary in id order and the special ids, and rejects tokenizers the
    /// engine cannot use: ids with gaps (a model row would have no token) or missing specials.
    fn from_tokenizer(inner: Tokenizer, context: &str) -> Result<Self> {
        let mut by_id: Vec<(u32, String)> = inner
            .get_vocab(true)
            .into_iter()
            .map(|(token, id)| (id, token))
            .collect();
        by_id.sort_unstable();
        if let Some((index, (id, _))) = by_id
            .iter()
            .enumerate()
            .find(|(i, (id, _))| *id as usize != *i)
        {
            return Err(DataError::tokenizer(
                context,
                format!("token ids are not contiguous: id {index} is missing (next is {id})"),
            ));
        }
        let vocab: Vec<String> = by_id.into_iter().map(|(_, token)| token).collect();
        let special = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                DataError::tokenizer(context, format!("the vocabulary has no {token} token"))
            })
        };
        Ok(Self {
            pad_id: special("[PAD]")?,
            unk_id: special("[UNK]")?,
            cls_id: special("[CLS]")?,
            sep_id: special("[SEP]")?,
            mask_id: special("[MASK]")?,
            vocab_hash: vocab_hash(&vocab),
            vocab,
            inner,
        })
    }

    /// Token ids of `text`, without `[CLS]`/`[SEP]`: the packer places those itself.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| DataError::tokenizer("tokenizing text", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, with `##` continuations glued back onto their words.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::tokenizer("decoding ids", e))
    }

    /// Every token, at the index of its id.
    pub fn vocab(&self) -> &[String] {
        &self.vocab
    }

    /// Number of tokens, which is also the size of the model's embedding table.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// FNV-1a 64 of the vocabulary in id order; see [`vocab_hash`].
    pub fn vocab_hash(&self) -> u64 {
        self.vocab_hash
    }

    /// Id of `[PAD]`, which shards use for padding (always 0 in a prepared folder).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The special ids a model trained on this vocabulary uses.
    pub fn special_tokens(&self) -> crate::model::config::SpecialTokens {
        crate::model::config::SpecialTokens {
            pad: self.pad_id,
            unk: self.unk_id,
            cls: self.cls_id,
            sep: self.sep_id,
            mask: self.mask_id,
        }
    }

    /// Id of `[UNK]`, which stands for text the vocabulary cannot spell.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Id of `[CLS]`, the first token of every example.
    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    /// Id of `[SEP]`, which ends each segment; token types are derived from it.
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }

    /// Id of `[MASK]`, which the masking step puts in place of chosen tokens.
    pub fn mask_id(&self) -> u32 {
        self.mask_id
    }

    /// Writes the vocabulary as `vocab.txt`, one token per line in id order, the format BERT,
    /// HuggingFace and [`WordPieceTokenizer::from_vocab_file`] read.
    pub fn save_vocab(&self, path: &Path) -> Result<()> {
        let mut text = self.vocab.join("\n");
        text.push('\n');
        fs::write(path, text).map_err(|e| DataError::io(path, e))
    }

    /// Writes the whole pipeline as a HuggingFace `tokenizer.json`.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, true)
            .map_err(|e| DataError::tokenizer(path.display().to_string(), e))
    }
}

/// FNV-1a 64 over the tokens in id order, each followed by a newline so that ["ab", "c"] and
/// ["a", "bc"] differ. Shards record it, and readers compare it, so that ids are never read
/// against a vocabulary they were not written with.
pub fn vocab_hash(tokens: &[String]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    tokens
        .iter()
        .flat_map(|t| t.bytes().chain(std::iter::once(b'\n')))
        .fold(OFFSET, |hash, byte| {
            (hash ^ byte as u64).wrapping_mul(PRIME)
        })
}

/// The first training pass: the `limit` most frequent characters of the normalized words (ties
/// broken by code point), and the `##` piece of each of them that occurs inside a word, sorted.
/// These are exactly the characters and pieces the trainer would pick itself, minus its
/// hash-order numbering.
fn alphabet<S: AsRef<str> + Send>(
    pipeline: &Tokenizer,
    lines: impl Iterator<Item = Result<S>> + Send,
    limit: usize,
) -> Result<(HashSet<char>, Vec<String>)> {
    let context = "training a WordPiece vocabulary";
    let normalizer = pipeline
        .get_normalizer()
        .expect("the BERT pipeline has one");
    let pre_tokenizer = pipeline
        .get_pre_tokenizer()
        .expect("the BERT pipeline has one");
    // Per character: occurrences, and whether it ever follows another character in a word.
    let seen = lines
        .par_bridge()
        .try_fold(
            HashMap::new,
            |mut seen: HashMap<char, (u64, bool)>, line| {
                let mut words = PreTokenizedString::from(line?.as_ref());
                words
                    .normalize(|n| normalizer.normalize(n))
                    .and_then(|()| pre_tokenizer.pre_tokenize(&mut words))
                    .map_err(|e| DataError::tokenizer(context, e))?;
                for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte)
                {
                    for (i, c) in word.chars().enumerate() {
                        let entry = seen.entry(c).or_default();
                        entry.0 += 1;
                        entry.1 |= i > 0;
                    }
                }
                Ok(seen)
            },
        )
        .try_reduce(HashMap::new, |mut all, part| {
            for (c, (count, inside)) in part {
                let entry = all.entry(c).or_default();
                entry.0 += count;
                entry.1 |= inside;
            }
            Ok(all)
        })?;
    let mut chars: Vec<(char, (u64, bool))> = seen.into_iter().collect();
    chars.sort_unstable_by(|(a, (na, _)), (b, (nb, _))| nb.cmp(na).then(a.cmp(b)));
    chars.truncate(limit);
    chars.sort_unstable_by_key(|&(c, _)| c);
    let pieces = chars
        .iter()
        .filter(|(_, (_, inside))| *inside)
        .map(|(c, _)| format!("##{c}"))
        .collect();
    Ok((chars.into_iter().map(|(c, _)| c).collect(), pieces))
}

/// Yields the `Ok` items of `items` and stops at the first error, which it leaves in `failure`:
/// the `tokenizers` trainer takes plain strings, but reading a corpus can fail.
fn until_error<'a, S: Send + 'a>(
    items: impl Iterator<Item = Result<S>> + Send + 'a,
    failure: &'a Mutex<Option<DataError>>,
) -> impl Iterator<Item = S> + Send + 'a {
    items.map_while(move |item| {
        item.map_err(|e| *failure.lock().expect("no thread panicked holding it") = Some(e))
            .ok()
    })
}

/// BERT's uncased text pipeline around a WordPiece model.
fn bert_pipeline(model: WordPiece) -> Tokenizer {
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, Some(true), true)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    tokenizer
}
