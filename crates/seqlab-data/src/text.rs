//! Readers for text files: plain text (language modelling) and `text<TAB>label`
//! (classification). Every problem is a [`DataError`] naming the file and line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, ErrorKind, Result};
use crate::tokenizer::Tokenizer;

/// Reads a whole file as UTF-8. Missing file, empty (or whitespace-only) file and invalid
/// UTF-8 (reported at its line) are errors.
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::file(path, ErrorKind::Io(e)))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let bytes = e.as_bytes();
            let at = e.utf8_error().valid_up_to();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            return Err(DataError::at(
                path,
                line,
                ErrorKind::InvalidUtf8 { byte: at - line_start },
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(DataError::file(path, ErrorKind::EmptyFile));
    }
    // Spreadsheet exports often start with a byte-order mark, which would otherwise stick to
    // the first header name or token.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Lines of `text` with their 1-based numbers, `\r` stripped, blank lines skipped.
pub fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// What to do with a sequence longer than the model's maximum.
/// Config and command-line spelling: `truncate`, `error`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LengthPolicy {
    /// Keep the first `max` tokens and record a warning (default).
    #[default]
    Truncate,
    /// Fail with an error naming the line.
    Error,
}

impl std::str::FromStr for LengthPolicy {
    type Err = String;
    /// Parses `truncate` or `error`; rejects anything else, listing the two.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "truncate" => Ok(LengthPolicy::Truncate),
            "error" => Ok(LengthPolicy::Error),
            _ => Err(format!("unknown length policy {s:?} (expected truncate or error)")),
        }
    }
}

/// A non-fatal problem met while reading, e.g. a truncated sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The file being read.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What was wrong, for people.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: warning: {}", self.path.display(), self.line, self.message)
    }
}

/// Applies `policy` to `ids` (a sequence from `path:line`) when it exceeds `max` tokens.
pub fn fit_length(
    mut ids: Vec<u32>,
    max: usize,
    policy: LengthPolicy,
    path: &Path,
    line: usize,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<u32>> {
    if ids.len() <= max {
        return Ok(ids);
    }
    match policy {
        LengthPolicy::Error => Err(DataError::at(path, line, ErrorKind::TooLong { len: ids.len(), max })),
        LengthPolicy::Truncate => {
            warnings.push(Warning {
                path: path.to_path_buf(),
                line,
                message: format!("sequence of {} tokens truncated to {max}", ids.len()),
            });
            ids.truncate(max);
            Ok(ids)
        }
    }
}

/// A plain-text corpus for language modelling.
#[derive(Clone, Debug)]
pub struct LmText {
    /// The file read.
    pub path: PathBuf,
    /// Its whole contents.
    pub text: String,
}

impl LmText {
    /// Reads a whole UTF-8 text file for language modelling; errors name the file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self {
            path: path.to_path_buf(),
            text: read_text(path)?,
        })
    }

    /// The whole text as one id stream (for contiguous `(batch, bptt)` training): the
    /// concatenated encodings of every line, each with its `\n`, blank lines included.
    pub fn encode_stream(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        let lines: Vec<&str> = self.text.split_inclusive('\n').collect();
        let encoded = tok
            .encode_batch(&lines)
            .map_err(|e| DataError::file(&self.path, ErrorKind::Tokenizer(e.0)))?;
        Ok(encoded.concat())
    }

    /// One sequence per non-blank line, `<bos> line <eos>`, at most `max_len` tokens in all
    /// (bos/eos included); longer lines follow `policy`.
    pub fn encode_lines(
        &self,
        tok: &Tokenizer,
        max_len: usize,
        policy: LengthPolicy,
        warnings: &mut Vec<Warning>,
    ) -> Result<Vec<Vec<u32>>> {
        let numbered: Vec<(usize, &str)> = numbered_lines(&self.text).collect();
        encode_numbered(&self.path, &numbered, tok, max_len, policy, warnings)
    }
}

fn encode_numbered(
    path: &Path,
    numbered: &[(usize, &str)],
    tok: &Tokenizer,
    max_len: usize,
    policy: LengthPolicy,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<Vec<u32>>> {
    if max_len < 3 {
        return Err(DataError::file(
            path,
            ErrorKind::Invalid(format!("max_len {max_len} leaves no room beside <bos> and <eos>")),
        ));
    }
    let texts: Vec<&str> = numbered.iter().map(|(_, t)| *t).collect();
    let encoded = tok
        .encode_batch(&texts)
        .map_err(|e| DataError::file(path, ErrorKind::Tokenizer(e.0)))?;
    let mut out = Vec::with_capacity(encoded.len());
    for ((line, _), ids) in numbered.iter().zip(encoded) {
        let ids = fit_length(ids, max_len - 2, policy, path, *line, warnings).map_err(|mut e| {
            // Report the limit the user set, counting bos/eos.
            if let ErrorKind::TooLong { len, max } = &mut e.kind {
                *len += 2;
                *max += 2;
            }
            e
        })?;
        let mut seq = Vec::with_capacity(ids.len() + 2);
        seq.push(tok.bos_id());
        seq.extend(ids);
        seq.push(tok.eos_id());
        out.push(seq);
    }
    Ok(out)
}

/// Class names, sorted, so label ids do not depend on the order of the training file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    names: Vec<String>,
}

impl LabelSet {
    /// Label set from names, sorted and deduplicated; a label's id is its sorted position.
    pub fn from_names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        Self { names }
    }
    /// Id of label `name`, or `None` if unknown.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }
    /// Name of label `id`, or `None` if out of range.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }
    /// All label names, sorted (index = id).
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// Number of labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }
    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One `text<TAB>label` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClsExample {
    /// 1-based line number in the file.
    pub line: usize,
    /// The text before the tab.
    pub text: String,
    /// Label id in the split's [`LabelSet`].
    pub label: usize,
}

/// A classification split read from a `text<TAB>label` file.
#[derive(Clone, Debug)]
pub struct ClsData {
    /// The file read.
    pub path: PathBuf,
    /// The label set the examples' ids refer to.
    pub labels: LabelSet,
    /// The examples, in file order.
    pub examples: Vec<ClsExample>,
}

fn split_tsv<'a>(path: &Path, line: usize, l: &'a str) -> Result<(&'a str, &'a str)> {
    let cols: Vec<&str> = l.split('\t').collect();
    if cols.len() != 2 {
        return Err(DataError::at(
            path,
            line,
            ErrorKind::ColumnCount {
                expected: 2,
                found: cols.len(),
                sep: "tab-separated",
            },
        ));
    }
    let (text, label) = (cols[0].trim(), cols[1].trim());
    if text.is_empty() {
        return Err(DataError::at(path, line, ErrorKind::EmptyText));
    }
    if label.is_empty() {
        return Err(DataError::at(path, line, ErrorKind::EmptyLabel));
    }
    Ok((text, label))
}

impl ClsData {
    /// Reads the training split; its labels define the label set.
    pub fn read_train(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let mut rows = Vec::new();
        for (line, l) in numbered_lines(&text) {
            let (t, lab) = split_tsv(path, line, l)?;
            rows.push((line, t, lab));
        }
        let labels = LabelSet::from_names(rows.iter().map(|r| r.2));
        let examples = rows
            .into_iter()
            .map(|(line, t, lab)| ClsExample {
                line,
                text: t.to_owned(),
                label: labels.id(lab).unwrap(),
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            labels,
            examples,
        })
    }

    /// Reads a validation/test split; a label absent from `labels` is an error.
    pub fn read_eval(path: impl AsRef<Path>, labels: &LabelSet) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let mut examples = Vec::new();
        for (line, l) in numbered_lines(&text) {
            let (t, lab) = split_tsv(path, line, l)?;
            let label = labels.id(lab).ok_or_else(|| {
                DataError::at(
                    path,
                    line,
                    ErrorKind::UnknownLabel {
                        label: lab.to_owned(),
                        known: labels.names.join(", "),
                    },
                )
            })?;
            examples.push(ClsExample {
                line,
                text: t.to_owned(),
                label,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            labels: labels.clone(),
            examples,
        })
    }

    /// Texts to classify (no labels yet), numbered from line 1 under the name `<input>`;
    /// each example's `label` is 0, a placeholder. `labels` is the model's label set.
    pub fn unlabelled(texts: &[&str], labels: &LabelSet) -> Self {
        Self {
            path: PathBuf::from("<input>"),
            labels: labels.clone(),
            examples: texts
                .iter()
                .enumerate()
                .map(|(i, t)| ClsExample {
                    line: i + 1,
                    text: t.to_string(),
                    label: 0,
                })
                .collect(),
        }
    }

    /// Token ids per example as `<bos> text <eos>` (at most `max_len`, bos/eos included;
    /// longer texts follow `policy`), and the label ids.
    pub fn encode(
        &self,
        tok: &Tokenizer,
        max_len: usize,
        policy: LengthPolicy,
        warnings: &mut Vec<Warning>,
    ) -> Result<(Vec<Vec<u32>>, Vec<usize>)> {
        let numbered: Vec<(usize, &str)> = self.examples.iter().map(|e| (e.line, e.text.as_str())).collect();
        let seqs = encode_numbered(&self.path, &numbered, tok, max_len, policy, warnings)?;
        Ok((seqs, self.examples.iter().map(|e| e.label).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{TokenizerConfig, TokenizerKind};

    /// A scratch directory removed on drop.
    pub(crate) struct Scratch(pub PathBuf);
    impl Scratch {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("seqlab-data-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn err_string<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn missing_and_empty_files() {
        let s = Scratch::new("empty");
        let missing = s.0.join("nope.txt");
        let e = LmText::read(&missing).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Io(_)));
        assert!(e
            .to_string()
            .starts_with(&format!("{}: cannot read file", missing.display())));
        let p = s.file("empty.txt", b"");
        assert_eq!(err_string(LmText::read(&p)), format!("{}: file is empty", p.display()));
        let p = s.file("blank.tsv", b"\n  \n");
        assert!(matches!(
            ClsData::read_train(&p).unwrap_err().kind,
            ErrorKind::EmptyFile
        ));
    }

    #[test]
    fn byte_order_mark_is_dropped() {
        let s = Scratch::new("bom");
        let p = s.file("bom.tsv", "\u{feff}text\tlab\n".as_bytes());
        assert_eq!(ClsData::read_train(&p).unwrap().examples[0].text, "text");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let s = Scratch::new("utf8");
        let p = s.file("bad.txt", b"fine\nalso fine\nab\xffcd\n");
        assert_eq!(
            err_string(LmText::read(&p)),
            format!("{}:3: invalid UTF-8 (byte offset 2 in the line)", p.display())
        );
    }

    #[test]
    fn tsv_column_count_and_empty_fields() {
        let s = Scratch::new("tsv");
        let p = s.file("train.tsv", b"a b c\tx\n\nd e\tx\ty\n");
        assert_eq!(
            err_string(ClsData::read_train(&p)),
            format!("{}:3: expected 2 tab-separated columns, found 3", p.display())
        );
        let p = s.file("one.tsv", b"no label here\n");
        assert_eq!(
            err_string(ClsData::read_train(&p)),
            format!("{}:1: expected 2 tab-separated columns, found 1", p.display())
        );
        let p = s.file("nolabel.tsv", b"text\t \n");
        assert!(matches!(
            ClsData::read_train(&p).unwrap_err().kind,
            ErrorKind::EmptyLabel
        ));
        let p = s.file("notext.tsv", b"\tlab\n");
        assert!(matches!(
            ClsData::read_train(&p).unwrap_err().kind,
            ErrorKind::EmptyText
        ));
    }

    #[test]
    fn labels_sorted_and_unknown_label_is_error() {
        let s = Scratch::new("labels");
        let tr = s.file("train.tsv", b"one\tzeta\r\ntwo\talpha\nthree\tzeta\n");
        let d = ClsData::read_train(&tr).unwrap();
        assert_eq!(d.labels.names(), ["alpha", "zeta"]);
        let got: Vec<_> = d.examples.iter().map(|e| (e.line, e.text.as_str(), e.label)).collect();
        assert_eq!(got, [(1, "one", 1), (2, "two", 0), (3, "three", 1)]);
        let va = s.file("valid.tsv", b"x\talpha\ny\tbeta\n");
        assert_eq!(
            err_string(ClsData::read_eval(&va, &d.labels)),
            format!(
                "{}:2: label \"beta\" was not seen in training (known: alpha, zeta)",
                va.display()
            )
        );
    }

    fn char_tok() -> Tokenizer {
        let cfg = TokenizerConfig {
            kind: TokenizerKind::Char,
            vocab_size: 100,
            min_frequency: 1,
        };
        Tokenizer::train(&cfg, ["abcdefgh ij"].into_iter()).unwrap()
    }

    #[test]
    fn too_long_truncates_with_warning_or_errors() {
        let s = Scratch::new("long");
        let tok = char_tok();
        let p = s.file("train.tsv", b"abc\tx\nabcdefgh\ty\n");
        let d = ClsData::read_train(&p).unwrap();
        let mut w = Vec::new();
        let (seqs, labels) = d.encode(&tok, 6, LengthPolicy::Truncate, &mut w).unwrap();
        assert_eq!(labels, [0, 1]);
        assert_eq!(seqs[0].len(), 5);
        assert_eq!(seqs[1].len(), 6);
        assert_eq!((seqs[1][0], seqs[1][5]), (tok.bos_id(), tok.eos_id()));
        assert_eq!(tok.decode(&seqs[1], true).unwrap(), "abcd");
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].to_string(),
            format!("{}:2: warning: sequence of 8 tokens truncated to 4", p.display())
        );
        let mut w = Vec::new();
        assert_eq!(
            err_string(d.encode(&tok, 6, LengthPolicy::Error, &mut w)),
            format!("{}:2: sequence of 10 tokens is longer than the maximum 6", p.display())
        );
        assert!(d.encode(&tok, 2, LengthPolicy::Truncate, &mut w).is_err());
    }

    #[test]
    fn lm_stream_and_lines() {
        let s = Scratch::new("lm");
        let tok = char_tok();
        let p = s.file("lm.txt", b"ab c\n\nde\n");
        let lm = LmText::read(&p).unwrap();
        let stream = lm.encode_stream(&tok).unwrap();
        assert_eq!(stream.len(), 9);
        assert_eq!(tok.decode(&stream, false).unwrap(), "ab c\n\nde\n");
        let mut w = Vec::new();
        let lines = lm.encode_lines(&tok, 64, LengthPolicy::Error, &mut w).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            [
                tok.bos_id(),
                tok.token_to_id("d").unwrap(),
                tok.token_to_id("e").unwrap(),
                tok.eos_id()
            ]
        );
    }
}
