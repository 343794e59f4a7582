//! Typed errors for every reader: each names the file, the line (1-based, when there is
//! one) and the problem, e.g. `data/train.tsv:17: expected 2 tab-separated columns, found 3`.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong; [`DataError`] adds where.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read file: {0}")]
    Io(#[source] std::io::Error),
    #[error("file is empty")]
    EmptyFile,
    #[error("invalid UTF-8 (byte offset {byte} in the line)")]
    InvalidUtf8 { byte: usize },
    #[error("expected {expected} {sep} columns, found {found}")]
    ColumnCount {
        expected: usize,
        found: usize,
        sep: &'static str,
    },
    #[error("column {column:?} not found in header (columns: {available})")]
    MissingColumn { column: String, available: String },
    #[error("column {column:?}: not a number: {value:?}")]
    NotNumeric { column: String, value: String },
    #[error("empty text")]
    EmptyText,
    #[error("empty label")]
    EmptyLabel,
    #[error("label {label:?} was not seen in training (known: {known})")]
    UnknownLabel { label: String, known: String },
    #[error("sequence of {len} tokens is longer than the maximum {max}")]
    TooLong { len: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// An error in a data file, with its place.
#[derive(Debug)]
pub struct DataError {
    /// The file the error is in.
    pub path: PathBuf,
    /// 1-based line number; `None` for whole-file problems.
    pub line: Option<usize>,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl DataError {
    /// An error about the whole file `path` (no line number).
    pub fn file(path: impl AsRef<Path>, kind: ErrorKind) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            line: None,
            kind,
        }
    }

    /// An error at 1-based line `line` of `path`.
    pub fn at(path: impl AsRef<Path>, line: usize, kind: ErrorKind) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            line: Some(line),
            kind,
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.kind),
            None => write!(f, "{}: {}", self.path.display(), self.kind),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Result whose error defaults to [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_like_compiler_message() {
        let e = DataError::at(
            "data/train.tsv",
            17,
            ErrorKind::ColumnCount {
                expected: 2,
                found: 3,
                sep: "tab-separated",
            },
        );
        assert_eq!(
            e.to_string(),
            "data/train.tsv:17: expected 2 tab-separated columns, found 3"
        );
        let e = DataError::file("x.txt", ErrorKind::EmptyFile);
        assert_eq!(e.to_string(), "x.txt: file is empty");
    }
}
