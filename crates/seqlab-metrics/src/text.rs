//! Python string semantics that sacrebleu's results depend on, and line reading as its CLI does.

use std::path::{Path, PathBuf};

use crate::MetricError;

/// Python's `str.isspace()` (CPython, Unicode 14): Rust's `char::is_whitespace` plus the ASCII
/// information separators U+001C..U+001F, which CPython counts as whitespace (bidi class B/S).
/// `str.split()` and `str.rstrip()` use this set, so n-gram boundaries depend on it.
pub fn py_isspace(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `s.split()` with no argument.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_isspace).filter(|w| !w.is_empty())
}

/// Python's `s.rstrip()` with no argument.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// Python's `str.lower()`. Rust and CPython both apply the full Unicode lowercase mapping
/// including the final-sigma rule; they may differ only where their Unicode versions differ.
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// Reads a text file as sacrebleu's CLI does: UTF-8, lines split on `\n` only (a final line
/// without `\n` still counts, an empty file has no lines), each line `rstrip()`ped.
pub fn read_lines(path: &Path) -> Result<Vec<String>, MetricError> {
    let bytes = std::fs::read(path).map_err(|error| MetricError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, line)| match std::str::from_utf8(line) {
            Ok(s) => Ok(py_rstrip(s).to_string()),
            Err(e) => Err(MetricError::Utf8 {
                path: PathBuf::from(path),
                line: i + 1,
                byte: e.valid_up_to() + 1,
            }),
        })
        .collect()
}

/// Reads a hypothesis file and line-aligned reference files (each as [`read_lines`]):
/// returns `(hyps, refs)` with `refs[k][i]` the line `i` of reference file `k`. Rejects an
/// empty hypothesis file and a reference file with another number of lines (naming both).
pub fn read_aligned(hyp: &Path, refs: &[PathBuf]) -> Result<(Vec<String>, Vec<Vec<String>>), MetricError> {
    let hyps = read_lines(hyp)?;
    if hyps.is_empty() {
        return Err(MetricError::EmptyHypotheses {
            path: hyp.to_path_buf(),
        });
    }
    let mut ref_lines = Vec::with_capacity(refs.len());
    for r in refs {
        let lines = read_lines(r)?;
        if lines.len() != hyps.len() {
            return Err(MetricError::LineCounts {
                hyp: hyp.to_path_buf(),
                hyp_lines: hyps.len(),
                reference: r.clone(),
                ref_lines: lines.len(),
            });
        }
        ref_lines.push(lines);
    }
    Ok((hyps, ref_lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_count_mismatch_names_both_files() {
        let dir = std::env::temp_dir().join(format!("seqlab-metrics-aligned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (h, r) = (dir.join("hyp.txt"), dir.join("ref.txt"));
        std::fs::write(&h, "a\nb\n").unwrap();
        std::fs::write(&r, "a\n").unwrap();
        let e = read_aligned(&h, std::slice::from_ref(&r)).unwrap_err().to_string();
        assert!(
            e.contains("hyp.txt") && e.contains("ref.txt") && e.contains("2 lines"),
            "{e}"
        );
        std::fs::write(&r, "x\ny\n").unwrap();
        let (hyps, refs) = read_aligned(&h, std::slice::from_ref(&r)).unwrap();
        assert_eq!(
            (hyps, refs),
            (
                vec!["a".to_string(), "b".into()],
                vec![vec!["x".to_string(), "y".into()]]
            )
        );
        std::fs::write(&h, "").unwrap();
        let e = read_aligned(&h, &[r]).unwrap_err().to_string();
        assert!(e.contains("hyp.txt") && e.contains("no lines"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn isspace_matches_cpython() {
        // Made with: [hex(c) for c in range(sys.maxunicode+1) if chr(c).isspace()] (CPython 3.11).
        let expected: Vec<u32> = vec![
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
            0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
        ];
        let got: Vec<u32> = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .filter(|&c| py_isspace(c))
            .map(|c| c as u32)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn split_and_rstrip_like_python() {
        assert_eq!(py_split("  a\u{a0}b\u{1f}c \t").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(py_rstrip(" a b\r\u{3000}"), " a b");
        assert_eq!(py_split("").count(), 0);
    }

    #[test]
    fn read_lines_like_sacrebleu_cli() {
        let dir = std::env::temp_dir().join(format!("seqlab-metrics-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.txt");
        std::fs::write(&p, "one \r\n\ntwo\rthree\nlast").unwrap();
        assert_eq!(read_lines(&p).unwrap(), ["one", "", "two\rthree", "last"]);
        std::fs::write(&p, "").unwrap();
        assert!(read_lines(&p).unwrap().is_empty());
        std::fs::write(&p, b"ok\nbad \xff here\n").unwrap();
        let err = read_lines(&p).unwrap_err().to_string();
        assert!(err.contains("a.txt") && err.contains("line 2"), "{err}");
        let err = read_lines(&dir.join("missing.txt")).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
