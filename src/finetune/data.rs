//! Fine-tuning data: the GLUE TSV layouts (and a generic TSV/CSV one), examples, encoding into
//! `[CLS] A [SEP] (B [SEP])` and padded batches.

use super::FinetuneError;
use crate::data::corpus::line_problem;
use crate::data::tokenizer::WordPieceTokenizer;
use crate::data::Batch;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where a task's texts and labels are in its files, and how it is scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// `cola`, `sst2`, …, or `custom`.
    pub name: String,
    /// Columns (0-based) of text A and, for pair tasks, text B in train/dev files.
    pub text_columns: Vec<usize>,
    /// Column of the label in train/dev files; negative counts from the end (-1 = last).
    pub label_column: isize,
    /// Whether train/dev files start with a header row.
    pub header: bool,
    /// Text columns of an unlabelled test file (GLUE's `test.tsv` puts an index first).
    pub test_text_columns: Vec<usize>,
    /// Whether test files start with a header row.
    pub test_header: bool,
    /// A real-valued target (STS-B) instead of classes.
    pub regression: bool,
    /// Class names in label-id order; empty for regression (and, before training, for a custom
    /// task, whose classes are read from its train file).
    pub labels: Vec<String>,
    /// The dev file's name in `--data DIR`.
    pub dev_file: String,
    /// The metric that picks the best epoch: `accuracy`, `f1`, `matthews` or `spearman`.
    pub main_metric: String,
}

/// The GLUE task names `--task` accepts.
pub const GLUE_TASKS: [&str; 9] = [
    "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
];

impl TaskSpec {
    /// The layout of a GLUE task (`cola`, `sst2`, `mrpc`, `qqp`, `stsb`, `mnli`, `qnli`, `rte`,
    /// `wnli`; `sst-2`, `sts-b` also accepted).
    pub fn glue(task: &str) -> Result<Self, FinetuneError> {
        let name = task.to_lowercase().replace('-', "");
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let binary = strs(&["0", "1"]);
        let nli = strs(&["entailment", "not_entailment"]);
        // (text, label, header, test text, test header, regression, labels, dev, metric)
        #[allow(clippy::type_complexity)]
        let (text, label, header, test, test_header, regression, labels, dev, metric): (
            &[usize],
            isize,
            bool,
            &[usize],
            bool,
            bool,
            Vec<String>,
            &str,
            &str,
        ) = match name.as_str() {
            "cola" => (
                &[3],
                1,
                false,
                &[1],
                true,
                false,
                binary,
                "dev.tsv",
                "matthews",
            ),
            "sst2" => (
                &[0],
                1,
                true,
                &[1],
                true,
                false,
                binary,
                "dev.tsv",
                "accuracy",
            ),
            "mrpc" => (
                &[3, 4],
                0,
                true,
                &[3, 4],
                true,
                false,
                binary,
                "dev.tsv",
                "f1",
            ),
            "qqp" => (
                &[3, 4],
                5,
                true,
                &[1, 2],
                true,
                false,
                binary,
                "dev.tsv",
                "f1",
            ),
            "stsb" => (
                &[7, 8],
                9,
                true,
                &[7, 8],
                true,
                true,
                vec![],
                "dev.tsv",
                "spearman",
            ),
            "mnli" => (
                &[8, 9],
                -1,
                true,
                &[8, 9],
                true,
                false,
                strs(&["contradiction", "entailment", "neutral"]),
                "dev_matched.tsv",
                "accuracy",
            ),
            "qnli" | "rte" => (
                &[1, 2],
                3,
                true,
                &[1, 2],
                true,
                false,
                nli,
                "dev.tsv",
                "accuracy",
            ),
            "wnli" => (
                &[1, 2],
                3,
                true,
                &[1, 2],
                true,
                false,
                binary,
                "dev.tsv",
                "accuracy",
            ),
            _ => {
                return Err(FinetuneError::Usage(format!(
                    "unknown task `{task}` (expected one of {}, or --text-columns and \
                     --label-column for another file)",
                    GLUE_TASKS.join(", ")
                )))
            }
        };
        Ok(TaskSpec {
            name,
            text_columns: text.to_vec(),
            label_column: label,
            header,
            test_text_columns: test.to_vec(),
            test_header,
            regression,
            labels,
            dev_file: dev.into(),
            main_metric: metric.into(),
        })
    }

    /// A custom layout: text columns A[,B], a label column, a header or not. Classes are read
    /// from the train file ([`TaskSpec::learn_labels`]); test files use the same text columns.
    pub fn custom(
        text_columns: Vec<usize>,
        label_column: usize,
        header: bool,
        regression: bool,
    ) -> Result<Self, FinetuneError> {
        if text_columns.is_empty() || text_columns.len() > 2 {
            return Err(FinetuneError::Usage(
                "--text-columns takes one or two column numbers (A or A,B)".into(),
            ));
        }
        Ok(TaskSpec {
            name: "custom".into(),
            test_text_columns: text_columns.clone(),
            text_columns,
            label_column: label_column as isize,
            header,
            test_header: header,
            regression,
            labels: vec![],
            dev_file: "dev".into(),
            main_metric: if regression { "spearman" } else { "accuracy" }.into(),
        })
    }

    /// Sets the classes of a custom classification task from the labels of `rows` (sorted,
    /// numerically when all are numbers).
    pub fn learn_labels(&mut self, rows: &[Row]) {
        if self.regression || !self.labels.is_empty() {
            return;
        }
        let mut labels: Vec<String> = rows.iter().filter_map(|r| r.label.clone()).collect();
        labels.sort();
        labels.dedup();
        if labels.iter().all(|l| l.parse::<f64>().is_ok()) {
            labels.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse().unwrap()));
        }
        self.labels = labels;
    }

    /// The number of outputs of the head: the classes, or 1 for regression.
    pub fn num_outputs(&self) -> usize {
        if self.regression {
            1
        } else {
            self.labels.len()
        }
    }
}

/// One row of a file: its texts and its label text, with its line number (1-based).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Line in the file, for messages.
    pub line: usize,
    /// Text A and, for pair tasks, text B.
    pub texts: Vec<String>,
    /// The label as written (None when reading unlabelled test files).
    pub label: Option<String>,
}

/// Splits one CSV line (RFC 4180 quotes; a quoted field may not span lines).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Reads the rows of `path` (TSV, or CSV when the name ends in `.csv`): the text columns of
/// `text_columns`, and the label of `label_column` when given. Blank lines are skipped; a line
/// that is not UTF-8, longer than [`MAX_LINE_BYTES`](crate::data::corpus::MAX_LINE_BYTES) or
/// binary is an error naming it.
pub fn read_rows(
    path: &Path,
    text_columns: &[usize],
    label_column: Option<isize>,
    header: bool,
) -> Result<Vec<Row>, FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let bad_line = |i: usize, message: String| FinetuneError::Row {
        path: path.to_path_buf(),
        line: i + 1,
        message,
    };
    let mut rows = vec![];
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if let Some(problem) = line_problem(line) {
            return Err(bad_line(i, problem));
        }
        let line = std::str::from_utf8(line).map_err(|e| {
            let at = e.valid_up_to() + 1;
            bad_line(i, format!("not UTF-8 text (byte {at} of the line)"))
        })?;
        if i < usize::from(header) {
            continue;
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<String> = if csv {
            split_csv(line)
        } else {
            line.split('\t').map(str::to_string).collect()
        };
        let n = fields.len() as isize;
        let label_at = label_column.map(|c| if c < 0 { n + c } else { c });
        let need = text_columns
            .iter()
            .map(|&c| c as isize)
            .chain(label_at)
            .max()
            .unwrap_or(0);
        if need >= n || label_at.is_some_and(|c| c < 0) {
            let what = match label_column {
                Some(c) if c < 0 => format!("text in {text_columns:?}, label in the last column"),
                Some(c) => format!("text in {text_columns:?}, label in {c}"),
                None => format!("text in {text_columns:?}"),
            };
            let separated = if csv {
                "comma-separated"
            } else {
                "tab-separated"
            };
            return Err(bad_line(
                i,
                format!(
                    "expected at least {} {separated} columns (0-based: {what}), found {n}",
                    need + 1
                ),
            ));
        }
        rows.push(Row {
            line: i + 1,
            texts: text_columns.iter().map(|&c| fields[c].clone()).collect(),
            label: label_at.map(|c| fields[c as usize].trim().to_string()),
        });
    }
    Ok(rows)
}

/// A training target: a class id, or a real value for regression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Index into [`TaskSpec::labels`].
    Class(usize),
    /// The regression target.
    Value(f32),
}

/// The targets of labelled rows, with an error naming the file and line of a bad label.
pub fn targets(spec: &TaskSpec, rows: &[Row], path: &Path) -> Result<Vec<Target>, FinetuneError> {
    rows.iter()
        .map(|r| {
            let label = r.label.as_deref().unwrap_or_default();
            let bad = |message: String| FinetuneError::Row {
                path: path.to_path_buf(),
                line: r.line,
                message,
            };
            if spec.regression {
                label
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .map(Target::Value)
                    .ok_or_else(|| bad(format!("expected a number as the label, found `{label}`")))
            } else {
                spec.labels
                    .iter()
                    .position(|l| l == label)
                    .map(Target::Class)
                    .ok_or_else(|| {
                        bad(format!(
                            "expected a label in {:?}, found `{label}`",
                            spec.labels
                        ))
                    })
            }
        })
        .collect()
}

/// One tokenized example: `[CLS] A [SEP] (B [SEP])` and its segment ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub types: Vec<u32>,
}

/// Tokenizes a row into at most `max_seq` tokens, trimming the longer text first (as BERT's
/// `_truncate_seq_pair` does).
pub fn encode(
    tok: &WordPieceTokenizer,
    texts: &[String],
    max_seq: usize,
) -> Result<Encoded, FinetuneError> {
    let mut a = tok.encode(&texts[0])?;
    let mut b = match texts.get(1) {
        Some(t) => Some(tok.encode(t)?),
        None => None,
    };
    let specials = if b.is_some() { 3 } else { 2 };
    let budget = max_seq.saturating_sub(specials);
    loop {
        let lb = b.as_ref().map_or(0, Vec::len);
        if a.len() + lb <= budget {
            break;
        }
        match &mut b {
            Some(b) if b.len() >= a.len() => b.pop(),
            _ => a.pop(),
        };
    }
    let (cls, sep) = (tok.cls_id(), tok.sep_id());
    let mut ids = vec![cls];
    ids.extend(&a);
    ids.push(sep);
    let mut types = vec![0; ids.len()];
    if let Some(b) = b {
        ids.extend(&b);
        ids.push(sep);
        types.resize(ids.len(), 1);
    }
    Ok(Encoded { ids, types })
}

/// Pads `examples` with `pad` to the longest of them.
pub fn pad_batch(examples: &[&Encoded], pad: u32) -> Batch {
    let seq = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut b = Batch {
        batch: examples.len(),
        seq,
        input_ids: Vec::with_capacity(examples.len() * seq),
        token_types: Vec::with_capacity(examples.len() * seq),
        attention_mask: Vec::with_capacity(examples.len() * seq),
    };
    for e in examples {
        let n = e.ids.len();
        b.input_ids.extend(&e.ids);
        b.input_ids.resize(b.input_ids.len() + seq - n, pad);
        b.token_types.extend(&e.types);
        b.token_types.resize(b.token_types.len() + seq - n, 0);
        b.attention_mask.extend(std::iter::repeat_n(1, n));
        b.attention_mask.extend(std::iter::repeat_n(0, seq - n));
    }
    b
}
