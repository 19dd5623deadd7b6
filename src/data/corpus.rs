//! Reading raw text: files, folders and stdin, as a stream of documents.
//!
//! The layout is the one google-research/electra's `build_pretraining_dataset.py` expects: one
//! sentence or paragraph per line, and a blank line or the end of a file ends a document.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};

/// The input name that stands for standard input.
pub const STDIN: &str = "-";

/// One document: its non-blank lines, trimmed, in order.
pub type Document = Vec<String>;

/// The longest line of text the engine reads (1 MiB): five times the longest paragraph of the
/// State of the Union corpus. Tokenizing a line takes about a hundred times its size, so an
/// input without line breaks (or a binary file) must stop here rather than take the machine's
/// memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What is wrong with a line of text (its line break included or not), or `None`: too long (the
/// caller reads at most one byte more than [`MAX_LINE_BYTES`] and the break) or holding a NUL
/// byte, which text never does and binary files nearly always do.
pub fn line_problem(line: &[u8]) -> Option<String> {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    if text.len() > MAX_LINE_BYTES {
        Some(format!(
            "a line longer than {} MiB; the input must be text with one sentence or paragraph \
             per line",
            MAX_LINE_BYTES >> 20
        ))
    } else if line.contains(&0) {
        Some("a NUL byte: this is a binary file, not text; leave it out of the input".into())
    } else {
        None
    }
}

/// A sequence of text sources read one after the other as documents.
pub struct Corpus {
    sources: Vec<PathBuf>,
    next_source: usize,
    current: Option<(PathBuf, Box<dyn BufRead + Send>)>,
    total_bytes: Option<u64>,
    bytes_read: u64,
    lossy_lines: u64,
    /// The first line that was decoded lossily, as `FILE:LINE`.
    first_lossy: Option<String>,
    /// 1-based number of the line last read from the current source.
    line_number: u64,
    line: Vec<u8>,
}

impl Corpus {
    /// Resolves `inputs`: files are taken as given, folders are walked recursively in sorted
    /// order (so the document order, and with it every seeded choice, is the same on every
    /// machine), hidden entries are skipped, and `-` is stdin.
    pub fn open(inputs: &[PathBuf]) -> Result<Self> {
        if inputs.is_empty() {
            return Err(DataError::Invalid("no input files or folders given".into()));
        }
        let mut sources = Vec::new();
        for input in inputs {
            if input.as_os_str() == STDIN {
                sources.push(input.clone());
            } else {
                collect_files(input, &mut sources)?;
            }
        }
        let mut total_bytes = Some(0);
        for source in &sources {
            total_bytes = match (total_bytes, source.as_os_str() == STDIN) {
                (Some(total), false) => {
                    let meta = fs::metadata(source).map_err(|e| DataError::io(source, e))?;
                    Some(total + meta.len())
                }
                _ => None,
            };
        }
        Ok(Self {
            sources,
            next_source: 0,
            current: None,
            total_bytes,
            bytes_read: 0,
            lossy_lines: 0,
            first_lossy: None,
            line_number: 0,
            line: Vec::new(),
        })
    }

    /// The next document, or `None` once every source is exhausted. Text that is not UTF-8 is
    /// decoded lossily (U+FFFD) and counted in [`Corpus::lossy_lines`]: one bad byte in a large
    /// crawl should cost a character, not the run. A line longer than [`MAX_LINE_BYTES`] or
    /// holding a NUL byte (a binary file) is an error naming the file and the line.
    pub fn next_document(&mut self) -> Result<Option<Document>> {
        let mut document = Document::new();
        loop {
            let Some((path, reader)) = self.current.as_mut() else {
                if !document.is_empty() {
                    return Ok(Some(document));
                }
                if !self.open_next_source()? {
                    return Ok(None);
                }
                continue;
            };
            self.line.clear();
            let n = reader
                .by_ref()
                .take(MAX_LINE_BYTES as u64 + 2)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| DataError::io(path.as_path(), e))?;
            self.bytes_read += n as u64;
            if n == 0 {
                self.current = None;
                continue;
            }
            self.line_number += 1;
            let at = || format!("{}:{}", path.display(), self.line_number);
            if let Some(problem) = line_problem(&self.line) {
                return Err(DataError::Invalid(format!("{}: {problem}", at())));
            }
            let text = match std::str::from_utf8(&self.line) {
                Ok(text) => text.trim().to_owned(),
                Err(_) => {
                    self.lossy_lines += 1;
                    self.first_lossy.get_or_insert_with(at);
                    String::from_utf8_lossy(&self.line).trim().to_owned()
                }
            };
            match (text.is_empty(), document.is_empty()) {
                (false, _) => document.push(text),
                (true, false) => return Ok(Some(document)),
                (true, true) => {}
            }
        }
    }

    /// Every line of every document, in order: the view a vocabulary trainer needs.
    pub fn into_lines(mut self) -> impl Iterator<Item = Result<String>> + Send {
        std::iter::from_fn(move || self.next_document().transpose()).flat_map(|document| {
            match document {
                Ok(lines) => lines.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            }
        })
    }

    fn open_next_source(&mut self) -> Result<bool> {
        let Some(path) = self.sources.get(self.next_source) else {
            return Ok(false);
        };
        self.next_source += 1;
        let reader: Box<dyn BufRead + Send> = if path.as_os_str() == STDIN {
            Box::new(BufReader::new(io::stdin()))
        } else {
            Box::new(BufReader::new(
                File::open(path).map_err(|e| DataError::io(path, e))?,
            ))
        };
        self.current = Some((path.clone(), reader));
        self.line_number = 0;
        Ok(true)
    }

    /// Number of sources (files, and stdin if given).
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Sum of the file sizes, or `None` when stdin is among the sources.
    pub fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Lines so far that were not valid UTF-8 and were decoded lossily.
    pub fn lossy_lines(&self) -> u64 {
        self.lossy_lines
    }

    /// The first of them, as `FILE:LINE`.
    pub fn first_lossy(&self) -> Option<&str> {
        self.first_lossy.as_deref()
    }
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries = fs::read_dir(path)
        .and_then(|dir| {
            dir.map(|e| e.map(|e| e.path()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|e| DataError::io(path, e))?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden {
            collect_files(&entry, out)?;
        }
    }
    Ok(())
}
