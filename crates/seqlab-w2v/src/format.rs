//! Vector files: the word2vec text and binary formats (as word2vec.c and gensim's
//! `KeyedVectors.save_word2vec_format` write them) and safetensors + vocabulary.
//!
//! Text: a header `V D\n`, then per word `word v1 … vD\n`: the word runs up to the first space
//! (as gensim splits the row on `" "`), the values are separated by spaces or tabs; we write
//! Rust's shortest round-trip decimal, as gensim writes `repr`. Binary: the same header, then
//! per word `word ` followed by D little-endian f32; word2vec.c ends each row with `\n` and
//! gensim does not — we write the newline (as word2vec.c) and read both.
//! safetensors: one F32 tensor `vectors` of shape [V, D], words (with counts when known) in a
//! side file `<name>.vocab.txt` (`word count` per line, as word2vec.c's `-save-vocab`).
//!
//! Every reader rejects, with the file and the line, record or byte offset: words that are not
//! valid UTF-8 (as gensim does; decoding them lossily would merge distinct words), empty words,
//! the same word twice, rows with the wrong number of values, and a header that does not match
//! the rows. Every writer goes through [`crate::output::write_atomic`].

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use crate::output::{check_output, write_atomic};

/// Words and their vectors, row-major `[words.len(), dim]`, in file order (most frequent
/// first when the trainer wrote them). Build one with [`WordVectors::new`], which checks
/// the invariants the fields document.
#[derive(Clone, Debug)]
pub struct WordVectors {
    /// Distinct, non-empty words without spaces or newlines.
    pub words: Vec<String>,
    /// Vector size (at least 1).
    pub dim: usize,
    /// `words.len() * dim` values; row i is word i.
    pub vectors: Vec<f32>,
    /// Corpus counts (one per word) when known.
    pub counts: Option<Vec<u64>>,
}

impl WordVectors {
    /// Checks and wraps words and vectors. Rejects: `dim` 0; `vectors.len() != words.len() *
    /// dim`; `counts` of another length than `words`; an empty word; a word containing a space
    /// or a newline (no vector format could hold it); the same word twice (error names both
    /// 1-based rows).
    pub fn new(words: Vec<String>, dim: usize, vectors: Vec<f32>, counts: Option<Vec<u64>>) -> Result<Self> {
        let wv = Self {
            words,
            dim,
            vectors,
            counts,
        };
        wv.check()?;
        Ok(wv)
    }

    /// Checks the invariants that [`WordVectors::new`] checks (for a value built from its
    /// public fields).
    pub fn check(&self) -> Result<()> {
        let (words, dim) = (&self.words, self.dim);
        if dim == 0 {
            bail!("vector size (dim) must be at least 1");
        }
        if words.len().checked_mul(dim) != Some(self.vectors.len()) {
            bail!(
                "{} words of dim {dim} need {} values, got {}",
                words.len(),
                words.len().saturating_mul(dim),
                self.vectors.len()
            );
        }
        if let Some(c) = &self.counts {
            if c.len() != words.len() {
                bail!("{} counts for {} words", c.len(), words.len());
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            check_word(w).with_context(|| format!("row {}", i + 1))?;
            if let Some(j) = seen.insert(w, i) {
                bail!(
                    "the word {w:?} appears twice (rows {} and {}): distinct rows must have distinct words",
                    j + 1,
                    i + 1
                );
            }
        }
        Ok(())
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }
    /// Whether there are no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    /// The vector of word `i` (`dim` values). Panics if `i >= len()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

fn check_word(w: &str) -> Result<()> {
    if w.is_empty() {
        bail!("empty word");
    }
    if w.contains([' ', '\n']) {
        bail!("the word {w:?} contains a space or a newline");
    }
    Ok(())
}

/// A vector file format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// word2vec text (default).
    #[default]
    Text,
    /// word2vec binary (little-endian f32).
    Binary,
    /// safetensors tensor `vectors` plus a `<name>.vocab.txt` side file.
    Safetensors,
}

impl Format {
    /// The name used on the command line: `text`, `binary` or `safetensors`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Binary => "binary",
            Format::Safetensors => "safetensors",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;
    /// Accepts `text`, `binary` (also `bin`) and `safetensors`; rejects anything else.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" | "txt" => Ok(Format::Text),
            "binary" | "bin" => Ok(Format::Binary),
            "safetensors" => Ok(Format::Safetensors),
            _ => bail!("unknown vector format {s:?} (expected text, binary or safetensors)"),
        }
    }
}

/// The vocabulary side file of a safetensors vector file.
pub fn vocab_path(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "safetensors") {
        path.with_extension("vocab.txt")
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(".vocab.txt");
        PathBuf::from(s)
    }
}

/// The files [`save`] writes for `path` in `format`: the path itself, and for safetensors
/// also its vocabulary side file.
pub fn output_files(path: &Path, format: Format) -> Vec<PathBuf> {
    let mut v = vec![path.to_path_buf()];
    if format == Format::Safetensors {
        v.push(vocab_path(path));
    }
    v
}

/// Checks, before any work, that [`save`] can write `path` in `format` without touching
/// any of `inputs` (see [`check_output`] for what is rejected).
pub fn check_save_target(path: &Path, format: Format, inputs: &[&Path]) -> Result<()> {
    for p in output_files(path, format) {
        check_output(&p, inputs)?;
    }
    Ok(())
}

/// Writes `wv` to `path` atomically (a failed or killed save leaves a previous file intact).
/// For safetensors the vocabulary side file is written first, then the vectors.
pub fn save(wv: &WordVectors, path: &Path, format: Format) -> Result<()> {
    match format {
        Format::Text | Format::Binary => write_atomic(path, |w| {
            writeln!(w, "{} {}", wv.len(), wv.dim)?;
            let mut line = String::new();
            for (i, word) in wv.words.iter().enumerate() {
                if format == Format::Text {
                    use std::fmt::Write as _;
                    line.clear();
                    line.push_str(word);
                    for v in wv.row(i) {
                        write!(line, " {v}")?;
                    }
                    line.push('\n');
                    w.write_all(line.as_bytes())?;
                } else {
                    w.write_all(word.as_bytes())?;
                    w.write_all(b" ")?;
                    for v in wv.row(i) {
                        w.write_all(&v.to_le_bytes())?;
                    }
                    w.write_all(b"\n")?;
                }
            }
            Ok(())
        }),
        Format::Safetensors => {
            let vp = vocab_path(path);
            write_atomic(&vp, |w| {
                for (i, word) in wv.words.iter().enumerate() {
                    let c = wv.counts.as_ref().map_or(0, |c| c[i]);
                    writeln!(w, "{word} {c}")?;
                }
                Ok(())
            })?;
            let bytes: Vec<u8> = wv.vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![wv.len(), wv.dim], &bytes)?;
            let meta = HashMap::from([
                ("format".to_string(), "seqlab-w2v".to_string()),
                (
                    "vocab".to_string(),
                    vp.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                ),
            ]);
            let data = safetensors::tensor::serialize([("vectors", view)], Some(meta))?;
            write_atomic(path, |w| Ok(w.write_all(&data)?))
        }
    }
}

/// Loads a vector file, recognising its format (see [`load_as`]).
pub fn load(path: &Path) -> Result<WordVectors> {
    load_as(path, None)
}

/// Loads a vector file in `format`, or, when `None`, recognises it: `.safetensors` by name;
/// otherwise the `count dim` header is read and the first row decides: a line of a word and
/// `dim` numbers is text, anything else binary. The guess is then verified by reading the
/// whole file; if that fails and the file reads as the other format, that is used (a text
/// file whose first row is `<pad> 0 0 …` is text), else the first error is returned.
pub fn load_as(path: &Path, format: Option<Format>) -> Result<WordVectors> {
    let format = match format {
        Some(f) => f,
        None if path.extension().is_some_and(|e| e == "safetensors") => Format::Safetensors,
        None => {
            let guess = guess_format(path)?;
            return match read_word2vec(path, guess) {
                Ok(wv) => Ok(wv),
                Err(e) => {
                    let other = if guess == Format::Text {
                        Format::Binary
                    } else {
                        Format::Text
                    };
                    read_word2vec(path, other).map_err(|_| e)
                }
            };
        }
    };
    match format {
        Format::Safetensors => load_safetensors(path),
        f => read_word2vec(path, f),
    }
}

fn open(path: &Path) -> Result<BufReader<File>> {
    let f = File::open(path).with_context(|| format!("cannot open vector file {}", path.display()))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        bail!("{} is a folder, not a vector file", path.display());
    }
    Ok(BufReader::with_capacity(1 << 20, f))
}

/// Longest header line accepted (`count dim\n` is a few bytes; a binary file without one
/// must not be read whole looking for a newline).
const MAX_HEADER: u64 = 256;

/// Reads the `count dim` header; returns `(count, dim, bytes read)`.
fn read_header(r: &mut impl BufRead, path: &Path) -> Result<(usize, usize, u64)> {
    let mut line = Vec::new();
    r.take(MAX_HEADER).read_until(b'\n', &mut line)?;
    let s = String::from_utf8_lossy(&line);
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let parsed = match parts.as_slice() {
        [a, b] => a.parse::<usize>().ok().zip(b.parse::<usize>().ok()),
        _ => None,
    };
    match parsed {
        Some((v, d)) if d > 0 && line.last() == Some(&b'\n') => Ok((v, d, line.len() as u64)),
        _ => bail!(
            "{}: not a word2vec file: the first line must be `<count> <dim>` with dim >= 1, found {:?}",
            path.display(),
            s.trim_end()
        ),
    }
}

/// Text or binary, from the first row (see [`load_as`]).
fn guess_format(path: &Path) -> Result<Format> {
    let mut r = open(path)?;
    let (v, dim, _) = read_header(&mut r, path)?;
    if v == 0 {
        return Ok(Format::Text);
    }
    // A text row of `dim` values needs at most ~50 bytes per value.
    let limit = 64 + 64 * dim.min(1 << 16) as u64;
    let mut row = Vec::new();
    r.take(limit).read_until(b'\n', &mut row)?;
    while row.first() == Some(&b'\n') {
        row.remove(0);
    }
    // Lossy: a text file with a word in another encoding is still text (and its reader then
    // names the line); the raw floats of a binary row almost never read as `dim` numbers.
    let is_text = split_text_row(String::from_utf8_lossy(&row).trim_end())
        .is_some_and(|(_, vals)| vals.len() == dim && vals.iter().all(|x| x.parse::<f32>().is_ok()));
    Ok(if is_text { Format::Text } else { Format::Binary })
}

/// A text row's word (up to the first space) and values (split on spaces and tabs).
fn split_text_row(s: &str) -> Option<(&str, Vec<&str>)> {
    let (word, rest) = s.split_once(' ')?;
    Some((word, rest.split([' ', '\t']).filter(|p| !p.is_empty()).collect()))
}

fn read_word2vec(path: &Path, format: Format) -> Result<WordVectors> {
    let mut r = open(path)?;
    let (v, dim, header_len) = read_header(&mut r, path)?;
    let (words, vectors) = if format == Format::Binary {
        read_binary(r, path, v, dim, header_len)?
    } else {
        read_text(r, path, v, dim)?
    };
    WordVectors::new(words, dim, vectors, None).with_context(|| format!("{} ({format} format)", path.display()))
}

type Rows = (Vec<String>, Vec<f32>);

fn read_text(r: impl BufRead, path: &Path, v: usize, dim: usize) -> Result<Rows> {
    // The header is not trusted with the allocation: growth is amortised anyway.
    let mut words = Vec::with_capacity(v.min(1 << 16));
    let mut vectors = Vec::with_capacity(v.saturating_mul(dim).min(1 << 20));
    let mut lines = r.split(b'\n');
    let mut lineno = 1;
    while words.len() < v {
        lineno += 1;
        let line = match lines.next() {
            Some(l) => l.with_context(|| format!("error reading {}", path.display()))?,
            None => bail!(
                "{}: truncated: the header announces {v} vectors but the file has only {}",
                path.display(),
                words.len()
            ),
        };
        let s = std::str::from_utf8(&line).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {lineno}: not valid UTF-8 (bad byte at byte {} of the line); not a text vector file, or a \
                 word in another encoding",
                path.display(),
                e.valid_up_to() + 1
            )
        })?;
        let s = s.trim_end_matches([' ', '\t', '\r']);
        let (word, vals) = split_text_row(s).unwrap_or((s, Vec::new()));
        if word.is_empty() || vals.len() != dim {
            bail!(
                "{}: line {lineno}: expected a word and {dim} values, found {} values{}",
                path.display(),
                vals.len(),
                if vals.len() < dim { " (truncated row?)" } else { "" }
            );
        }
        for x in vals {
            let f: f32 = x
                .parse()
                .with_context(|| format!("{}: line {lineno}: bad number {x:?}", path.display()))?;
            vectors.push(f);
        }
        words.push(word.to_string());
    }
    for l in lines {
        let l = l?;
        lineno += 1;
        if l.iter().any(|b| !b.is_ascii_whitespace()) {
            bail!(
                "{}: the header announces {v} vectors but the file has more rows (line {lineno})",
                path.display(),
            );
        }
    }
    Ok((words, vectors))
}

fn read_binary(mut r: impl BufRead, path: &Path, v: usize, dim: usize, header_len: u64) -> Result<Rows> {
    let len = std::fs::metadata(path)?.len() as u128;
    let need = (v as u128) * (dim as u128 * 4 + 2);
    if need > len {
        bail!(
            "{}: truncated or wrong header: {v} vectors of dim {dim} need at least {need} bytes, the file has {len}",
            path.display(),
        );
    }
    let mut words = Vec::with_capacity(v);
    let mut vectors = vec![0f32; v * dim];
    let mut word = Vec::new();
    // dim * 4 < len when v > 0 (checked above); with no rows, nothing is read.
    let mut bytes = vec![0u8; if v > 0 { dim * 4 } else { 0 }];
    let mut offset = header_len;
    for i in 0..v {
        word.clear();
        // A word longer than this is not a word: the file is not what the header says.
        (&mut r).take(1 << 16).read_until(b' ', &mut word)?;
        if word.last() != Some(&b' ') {
            bail!(
                "{}: truncated or corrupt: no word ending in a space for record {} of {v} (byte offset {offset})",
                path.display(),
                i + 1
            );
        }
        let start = word.iter().position(|&b| b != b'\n').unwrap_or(word.len());
        let w = std::str::from_utf8(&word[start..word.len() - 1]).map_err(|e| {
            anyhow::anyhow!(
                "{}: record {} (byte offset {}): the word is not valid UTF-8 (bytes {:?}); gensim refuses such files \
                 too; re-encode the words as UTF-8",
                path.display(),
                i + 1,
                offset + start as u64 + e.valid_up_to() as u64,
                String::from_utf8_lossy(&word[start..word.len() - 1])
            )
        })?;
        check_word(w).with_context(|| format!("{}: record {} (byte offset {offset})", path.display(), i + 1))?;
        let w = w.to_string();
        r.read_exact(&mut bytes).map_err(|_| {
            anyhow::anyhow!(
                "{}: truncated row {} ({w:?}): fewer than {dim} values (header announces {v} vectors)",
                path.display(),
                i + 1
            )
        })?;
        offset += (word.len() + bytes.len()) as u64;
        for (d, c) in vectors[i * dim..(i + 1) * dim].iter_mut().zip(bytes.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        words.push(w);
    }
    let mut rest = [0u8; 4096];
    loop {
        let n = r.read(&mut rest)?;
        if n == 0 {
            break;
        }
        if rest[..n].iter().any(|b| !b.is_ascii_whitespace()) {
            bail!(
                "{}: the header announces {v} vectors but more bytes follow them (from byte offset {offset})",
                path.display(),
            );
        }
    }
    Ok((words, vectors))
}

fn load_safetensors(path: &Path) -> Result<WordVectors> {
    let buf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&buf)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let t = st
        .tensor("vectors")
        .with_context(|| format!("{}: no tensor named `vectors`", path.display()))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 || t.shape()[1] == 0 {
        bail!(
            "{}: `vectors` must be a 2-D F32 tensor with at least one column, found {:?} {:?}",
            path.display(),
            t.dtype(),
            t.shape()
        );
    }
    let (v, dim) = (t.shape()[0], t.shape()[1]);
    let vectors: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let vp = vocab_path(path);
    let text = std::fs::read(&vp)
        .with_context(|| format!("cannot read the vocabulary {} of {}", vp.display(), path.display()))?;
    let text = String::from_utf8(text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not valid UTF-8 (bad byte at byte offset {})",
            vp.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let mut words = Vec::with_capacity(v);
    let mut counts = Vec::with_capacity(v);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let (w, c) = line.rsplit_once(' ').unwrap_or((line, "0"));
        words.push(w.to_string());
        counts.push(
            c.parse()
                .with_context(|| format!("{}: line {}: bad count {c:?}", vp.display(), i + 1))?,
        );
    }
    if words.len() != v {
        bail!(
            "{}: {} words for {v} vectors in {}",
            vp.display(),
            words.len(),
            path.display()
        );
    }
    WordVectors::new(words, dim, vectors, Some(counts)).with_context(|| format!("{}", vp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("w2v-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn sample() -> WordVectors {
        WordVectors {
            words: vec!["the".into(), "café".into(), "x".into()],
            dim: 3,
            vectors: vec![0.1, -0.25, 3e-8, 1.0, 2.5, -7.125, 1e10, -0.0, 0.333_333_34],
            counts: Some(vec![10, 5, 5]),
        }
    }

    #[test]
    fn round_trips_text_binary_safetensors() {
        let wv = sample();
        for (f, name) in [
            (Format::Text, "a.txt"),
            (Format::Binary, "a.bin"),
            (Format::Safetensors, "a.safetensors"),
        ] {
            let p = tmp(name);
            save(&wv, &p, f).unwrap();
            let back = load(&p).unwrap();
            assert_eq!(back.words, wv.words, "{f:?}");
            assert_eq!(back.dim, 3);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back.vectors), bits(&wv.vectors), "{f:?}");
        }
    }

    /// Fixtures written by gensim 4.4 `KeyedVectors.save_word2vec_format` (text and binary;
    /// made by scripts/make_w2v_fixtures.py): both must load to the same vectors, which
    /// match the values that script printed into `gensim_small.expected.txt`.
    #[test]
    fn reads_gensim_fixtures() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let t = load(&dir.join("gensim_small.txt")).unwrap();
        let b = load(&dir.join("gensim_small.bin")).unwrap();
        assert_eq!(t.words, b.words);
        assert_eq!(t.vectors, b.vectors);
        let expected = std::fs::read_to_string(dir.join("gensim_small.expected.txt")).unwrap();
        let mut it = expected.split_whitespace();
        let (n, d): (usize, usize) = (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap());
        assert_eq!((t.len(), t.dim), (n, d));
        let first = it.next().unwrap();
        assert_eq!(t.words[0], first);
        let v0: f32 = it.next().unwrap().parse().unwrap();
        assert_eq!(t.vectors[0], v0);
    }

    #[test]
    fn bad_files_give_clear_errors_naming_the_file() {
        let wv = sample();
        let p = tmp("short.txt");
        save(&wv, &p, Format::Text).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        // Header announces more vectors than present.
        std::fs::write(&p, text.replacen("3 3", "4 3", 1)).unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("short.txt") && e.contains("truncated"), "{e}");
        // Header announces fewer.
        std::fs::write(&p, text.replacen("3 3", "2 3", 1)).unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("short.txt") && e.contains("more rows"), "{e}");
        // A truncated row.
        let cut: String = text.lines().take(3).collect::<Vec<_>>().join("\n") + "\nx 1.0\n";
        std::fs::write(&p, cut).unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("short.txt") && e.contains("line 4"), "{e}");
        // Binary, cut in the middle of the last row.
        let pb = tmp("short.bin");
        save(&wv, &pb, Format::Binary).unwrap();
        let bytes = std::fs::read(&pb).unwrap();
        std::fs::write(&pb, &bytes[..bytes.len() - 6]).unwrap();
        let e = format!("{:#}", load(&pb).unwrap_err());
        assert!(e.contains("short.bin") && e.contains("truncated"), "{e}");
        // Not a word2vec file at all.
        std::fs::write(&p, "hello world\n").unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("short.txt") && e.contains("not a word2vec file"), "{e}");
    }

    fn write_bytes(name: &str, bytes: &[u8]) -> PathBuf {
        let p = tmp(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn binary_record(word: &[u8], v: &[f32]) -> Vec<u8> {
        let mut b = word.to_vec();
        b.push(b' ');
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.push(b'\n');
        b
    }

    /// Issue 13: a text file whose first row is all zeros was taken for binary.
    #[test]
    fn text_file_starting_with_a_zero_row_is_read_as_text() {
        let zeros = vec!["0"; 10].join(" ");
        let text = format!(
            "3 10\n<pad> {zeros}\n<unk> {zeros}\nthe {}\n",
            vec!["0.5"; 10].join(" ")
        );
        let p = write_bytes("pad.txt", text.as_bytes());
        let wv = load(&p).unwrap();
        assert_eq!(wv.words, ["<pad>", "<unk>", "the"]);
        assert_eq!(wv.row(2), &[0.5; 10]);
        // One value of 0: the first row is a 2-byte line.
        let p = write_bytes("pad1.txt", b"2 1\n<pad> 0\nx 1\n");
        assert_eq!(load(&p).unwrap().words, ["<pad>", "x"]);
        // The override forces a format, and a wrong one is an error, not a misreading.
        assert_eq!(load_as(&p, Some(Format::Text)).unwrap().words, ["<pad>", "x"]);
        let e = format!("{:#}", load_as(&p, Some(Format::Binary)).unwrap_err());
        assert!(e.contains("pad1.txt"), "{e}");
        let e = format!("{:#}", load_as(&p, Some(Format::Safetensors)).unwrap_err());
        assert!(e.contains("pad1.txt") && e.contains("safetensors"), "{e}");
    }

    /// A binary file whose first row happens to be text-like still reads as binary.
    #[test]
    fn binary_files_are_recognised_and_verified() {
        let wv = sample();
        for (name, f) in [("rt.bin", Format::Binary), ("rt.txt", Format::Text)] {
            let p = tmp(name);
            save(&wv, &p, f).unwrap();
            assert_eq!(load(&p).unwrap().words, wv.words, "{f}");
            assert_eq!(load_as(&p, Some(f)).unwrap().words, wv.words, "{f}");
        }
        // gensim writes binary rows without the trailing newline.
        let mut b = b"2 2\n".to_vec();
        for (w, v) in [(&b"a"[..], [1.0f32, 2.0]), (b"b", [3.0, 4.0])] {
            let mut r = binary_record(w, &v);
            r.pop();
            b.extend(r);
        }
        let p = write_bytes("gensim-style.bin", &b);
        let got = load(&p).unwrap();
        assert_eq!(
            (got.words.clone(), got.vectors.clone()),
            (vec!["a".into(), "b".into()], vec![1.0, 2.0, 3.0, 4.0])
        );
    }

    /// Issue 13: Latin-1 words (caf\xe9, caf\xe8) were both read as `caf\u{fffd}`.
    #[test]
    fn invalid_utf8_words_are_refused_naming_record_and_offset() {
        let mut b = b"2 2\n".to_vec();
        b.extend(binary_record(b"caf\xe9", &[1.0, 2.0]));
        b.extend(binary_record(b"caf\xe8", &[3.0, 4.0]));
        let p = write_bytes("latin1.bin", &b);
        let e = format!("{:#}", load(&p).unwrap_err());
        // "2 2\n" is 4 bytes, "caf" 3 more: the bad byte is at offset 7.
        assert!(
            e.contains("latin1.bin") && e.contains("record 1") && e.contains("byte offset 7") && e.contains("UTF-8"),
            "{e}"
        );
        let p = write_bytes("latin1.txt", b"2 1\ncaf\xe9 1\ncaf\xe8 2\n");
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("latin1.txt") && e.contains("line 2") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_words_are_an_error_in_every_format() {
        let mut b = b"2 2\n".to_vec();
        b.extend(binary_record(b"caf\xc3\xa9", &[1.0, 2.0]));
        b.extend(binary_record(b"caf\xc3\xa9", &[3.0, 4.0]));
        let p = write_bytes("dup.bin", &b);
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("dup.bin") && e.contains("appears twice") && e.contains("rows 1 and 2"),
            "{e}"
        );
        let p = write_bytes("dup.txt", b"3 1\na 1\nb 2\na 3\n");
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("dup.txt") && e.contains("\"a\" appears twice") && e.contains("rows 1 and 3"),
            "{e}"
        );
        let p = tmp("dup.safetensors");
        save(&sample(), &p, Format::Safetensors).unwrap();
        std::fs::write(vocab_path(&p), "the 1\nthe 2\nx 3\n").unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("dup.vocab.txt") && e.contains("appears twice"), "{e}");
        let e = WordVectors::new(vec!["a".into(), "a".into()], 1, vec![1.0, 2.0], None).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
    }

    #[test]
    fn word_vectors_new_rejects_what_it_documents() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(WordVectors::new(w(&["a"]), 0, vec![], None).is_err());
        assert!(WordVectors::new(w(&["a"]), 2, vec![1.0], None).is_err());
        assert!(WordVectors::new(w(&["a"]), 1, vec![1.0], Some(vec![1, 2])).is_err());
        assert!(WordVectors::new(w(&[""]), 1, vec![1.0], None).is_err());
        assert!(WordVectors::new(w(&["a b"]), 1, vec![1.0], None).is_err());
        assert!(WordVectors::new(w(&["a\nb"]), 1, vec![1.0], None).is_err());
        assert!(WordVectors::new(w(&["a", "b"]), usize::MAX, vec![1.0], None).is_err());
        let ok = WordVectors::new(w(&["a", "東京"]), 1, vec![1.0, 2.0], Some(vec![3, 1])).unwrap();
        assert_eq!(ok.row(1), &[2.0]);
    }

    #[test]
    fn save_targets_are_checked_before_work() {
        let input = tmp("input-corpus.txt");
        std::fs::write(&input, "a b\n").unwrap();
        let e = check_save_target(&input, Format::Text, &[&input])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the input file"), "{e}");
        // safetensors also writes NAME.vocab.txt: that must not be the input either.
        let st = tmp("input-corpus.txt.safetensors");
        let vocab_as_input = vocab_path(&st);
        std::fs::write(&vocab_as_input, "x 1\n").unwrap();
        assert!(check_save_target(&st, Format::Safetensors, &[&vocab_as_input]).is_err());
        assert!(check_save_target(&st, Format::Text, &[&vocab_as_input]).is_ok());
        let missing = tmp("no-such-folder").join("v.bin");
        let e = check_save_target(&missing, Format::Binary, &[&input])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        // save itself fails cleanly there too.
        assert!(save(&sample(), &missing, Format::Binary).is_err());
        assert!(!missing.exists());
    }
}
