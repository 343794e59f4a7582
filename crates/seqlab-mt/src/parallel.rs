//! Parallel text: one `source<TAB>target` pair per line.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// A sentence pair and its 1-based line number.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// 1-based line number in the file.
    pub line: usize,
    /// Source sentence.
    pub src: String,
    /// Target sentence.
    pub tgt: String,
}

/// Reads `src<TAB>tgt` lines. Blank lines are skipped; a line without exactly one tab, with
/// an empty side, or with invalid UTF-8 is an error naming `file:line`.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read file", path.display()))?;
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "{}:{line}: invalid UTF-8 (byte offset {} in the line)",
                path.display(),
                e.valid_up_to()
            )
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = text.split('\t').collect();
        if cols.len() != 2 {
            bail!(
                "{}:{line}: expected 2 tab-separated columns (source, target), found {}",
                path.display(),
                cols.len()
            );
        }
        let (src, tgt) = (cols[0].trim(), cols[1].trim());
        if src.is_empty() || tgt.is_empty() {
            bail!(
                "{}:{line}: empty {} sentence",
                path.display(),
                if src.is_empty() { "source" } else { "target" }
            );
        }
        out.push(Pair {
            line,
            src: src.to_string(),
            tgt: tgt.to_string(),
        });
    }
    if out.is_empty() {
        bail!("{}: no sentence pairs", path.display());
    }
    Ok(out)
}

/// Keeps pairs whose token counts are both within `max_len` and whose length ratio is at most
/// `max_ratio` (the usual clean-corpus filter); returns the kept pairs and how many were dropped.
pub fn filter_by_length<T>(
    pairs: Vec<(T, Vec<u32>, Vec<u32>)>,
    max_len: usize,
    max_ratio: f64,
) -> (Vec<(T, Vec<u32>, Vec<u32>)>, usize) {
    let n = pairs.len();
    let kept: Vec<_> = pairs
        .into_iter()
        .filter(|(_, s, t)| {
            let (a, b) = (s.len().max(1) as f64, t.len().max(1) as f64);
            s.len() <= max_len && t.len() <= max_len && a.max(b) / a.min(b) <= max_ratio
        })
        .collect();
    let dropped = n - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, body: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("seqlab-mt-{}-{name}", std::process::id()));
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn reads_pairs_and_reports_file_line() {
        let p = file("ok.tsv", b"hello\tbonjour\n\nthe cat\tle chat\r\n");
        let v = read_pairs(&p).unwrap();
        assert_eq!(
            v,
            vec![
                Pair {
                    line: 1,
                    src: "hello".into(),
                    tgt: "bonjour".into()
                },
                Pair {
                    line: 3,
                    src: "the cat".into(),
                    tgt: "le chat".into()
                }
            ]
        );
        let bad = file("bad.tsv", b"a\tb\nno tab here\n");
        let e = read_pairs(&bad).unwrap_err().to_string();
        assert!(
            e.ends_with("bad.tsv:2: expected 2 tab-separated columns (source, target), found 1"),
            "{e}"
        );
        let three = file("three.tsv", b"a\tb\tc\n");
        assert!(read_pairs(&three).unwrap_err().to_string().contains(":1: expected 2"));
        let empty_side = file("es.tsv", b"a\t \n");
        assert!(read_pairs(&empty_side)
            .unwrap_err()
            .to_string()
            .contains(":1: empty target"));
        let utf = file("utf.tsv", b"ok\tok\n\xff\tb\n");
        assert!(read_pairs(&utf).unwrap_err().to_string().contains(":2: invalid UTF-8"));
        let none = file("none.tsv", b"\n\n");
        assert!(read_pairs(&none).unwrap_err().to_string().contains("no sentence pairs"));
        assert!(read_pairs(Path::new("/nonexistent/x.tsv"))
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        for p in [p, bad, three, empty_side, utf, none] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn length_filter() {
        let pairs = vec![
            (0, vec![1; 3], vec![1; 4]),
            (1, vec![1; 9], vec![1; 2]),
            (2, vec![1; 20], vec![1; 20]),
        ];
        let (kept, dropped) = filter_by_length(pairs, 10, 2.0);
        assert_eq!(kept.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(dropped, 2);
    }
}
