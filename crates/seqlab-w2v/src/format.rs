//! Vector files: the word2vec text and binary formats (as word2vec.c and gensim's
//! `KeyedVectors.save_word2vec_format` write them) and safetensors + vocabulary.
//!
//! Text: a header `V D\n`, then per word `word v1 … vD\n` (values space-separated; we write
//! Rust's shortest round-trip decimal, as gensim writes `repr`). Binary: the same header, then
//! per word `word ` followed by D little-endian f32; word2vec.c ends each row with `\n` and
//! gensim does not — we write the newline (as word2vec.c) and read both.
//! safetensors: one F32 tensor `vectors` of shape [V, D], words (with counts when known) in a
//! side file `<name>.vocab.txt` (`word count` per line, as word2vec.c's `-save-vocab`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Words and their vectors, row-major `[words.len(), dim]`, in file order (most frequent
/// first when the trainer wrote them).
#[derive(Clone, Debug)]
pub struct WordVectors {
    pub words: Vec<String>,
    pub dim: usize,
    pub vectors: Vec<f32>,
    pub counts: Option<Vec<u64>>,
}

impl WordVectors {
    pub fn len(&self) -> usize {
        self.words.len()
    }
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Binary,
    Safetensors,
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

pub fn save(wv: &WordVectors, path: &Path, format: Format) -> Result<()> {
    let ctx = || format!("cannot write vectors to {}", path.display());
    match format {
        Format::Text | Format::Binary => {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(path).with_context(ctx)?);
            writeln!(w, "{} {}", wv.len(), wv.dim).with_context(ctx)?;
            let mut line = String::new();
            for (i, word) in wv.words.iter().enumerate() {
                if format == Format::Text {
                    use std::fmt::Write as _;
                    line.clear();
                    line.push_str(word);
                    for v in wv.row(i) {
                        write!(line, " {v}").unwrap();
                    }
                    line.push('\n');
                    w.write_all(line.as_bytes()).with_context(ctx)?;
                } else {
                    w.write_all(word.as_bytes()).with_context(ctx)?;
                    w.write_all(b" ").with_context(ctx)?;
                    for v in wv.row(i) {
                        w.write_all(&v.to_le_bytes()).with_context(ctx)?;
                    }
                    w.write_all(b"\n").with_context(ctx)?;
                }
            }
            w.flush().with_context(ctx)?;
        }
        Format::Safetensors => {
            let bytes: Vec<u8> = wv.vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![wv.len(), wv.dim], &bytes)?;
            let vp = vocab_path(path);
            let meta = HashMap::from([
                ("format".to_string(), "seqlab-w2v".to_string()),
                (
                    "vocab".to_string(),
                    vp.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                ),
            ]);
            safetensors::tensor::serialize_to_file([("vectors", view)], Some(meta), path).with_context(ctx)?;
            let mut w = BufWriter::new(
                File::create(&vp).with_context(|| format!("cannot write vocabulary to {}", vp.display()))?,
            );
            for (i, word) in wv.words.iter().enumerate() {
                let c = wv.counts.as_ref().map_or(0, |c| c[i]);
                writeln!(w, "{word} {c}")?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

/// Loads a vector file, recognising the format: `.safetensors` by name, binary vs text by
/// content (the bytes after the first word are decimal text or not).
pub fn load(path: &Path) -> Result<WordVectors> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return load_safetensors(path);
    }
    let mut r = BufReader::with_capacity(1 << 20, open(path)?);
    let (v, dim) = read_header(&mut r, path)?;
    let binary = {
        let buf = r.fill_buf()?;
        let start = buf.iter().position(|&b| b != b'\n').unwrap_or(buf.len());
        let rest = &buf[start..];
        match rest.iter().position(|&b| b == b' ') {
            Some(i) => {
                let probe = &rest[i + 1..rest.len().min(i + 1 + 4 * dim)];
                !probe.iter().all(|b| b"0123456789.-+eEinfaINFA \n\r\t".contains(b))
            }
            None => false,
        }
    };
    if binary {
        read_binary(r, path, v, dim)
    } else {
        read_text(r, path, v, dim)
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open vector file {}", path.display()))
}

fn read_header(r: &mut impl BufRead, path: &Path) -> Result<(usize, usize)> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let s = String::from_utf8_lossy(&line);
    let parts: Vec<&str> = s.split_whitespace().collect();
    let parsed = match parts.as_slice() {
        [a, b] => a.parse::<usize>().ok().zip(b.parse::<usize>().ok()),
        _ => None,
    };
    match parsed {
        Some((v, d)) if d > 0 => Ok((v, d)),
        _ => bail!(
            "{}: not a word2vec file: the first line must be `<count> <dim>`, found {:?}",
            path.display(),
            s.trim_end()
        ),
    }
}

fn read_text(r: impl BufRead, path: &Path, v: usize, dim: usize) -> Result<WordVectors> {
    let mut words = Vec::with_capacity(v.min(1 << 20));
    let mut vectors = Vec::with_capacity((v * dim).min(1 << 26));
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
        let s = String::from_utf8_lossy(&line);
        let s = s.trim_end();
        let mut parts = s.split(' ');
        let word = parts.next().unwrap_or("");
        let vals: Vec<&str> = parts.filter(|p| !p.is_empty()).collect();
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
        if l.iter().any(|b| !b.is_ascii_whitespace()) {
            bail!(
                "{}: the header announces {v} vectors but the file has more rows (line {})",
                path.display(),
                lineno + 1
            );
        }
        lineno += 1;
    }
    Ok(WordVectors {
        words,
        dim,
        vectors,
        counts: None,
    })
}

fn read_binary(mut r: impl BufRead, path: &Path, v: usize, dim: usize) -> Result<WordVectors> {
    let len = std::fs::metadata(path)?.len() as u128;
    if (v as u128) * (dim as u128 * 4 + 2) > len {
        bail!(
            "{}: truncated or wrong header: {v} vectors of dim {dim} need at least {} bytes, the file has {len}",
            path.display(),
            (v as u128) * (dim as u128 * 4 + 2)
        );
    }
    let mut words = Vec::with_capacity(v);
    let mut vectors = vec![0f32; v * dim];
    let mut word = Vec::new();
    let mut bytes = vec![0u8; dim * 4];
    for i in 0..v {
        word.clear();
        r.read_until(b' ', &mut word)?;
        if word.last() != Some(&b' ') {
            bail!(
                "{}: truncated: the header announces {v} vectors but the file ends after {i}",
                path.display()
            );
        }
        word.pop();
        let start = word.iter().position(|&b| b != b'\n').unwrap_or(word.len());
        let w = String::from_utf8_lossy(&word[start..]).into_owned();
        r.read_exact(&mut bytes).map_err(|_| {
            anyhow::anyhow!(
                "{}: truncated row {} ({w:?}): fewer than {dim} values (header announces {v} vectors)",
                path.display(),
                i + 1
            )
        })?;
        for (d, c) in vectors[i * dim..(i + 1) * dim].iter_mut().zip(bytes.chunks_exact(4)) {
            *d = f32::from_le_bytes(c.try_into().unwrap());
        }
        words.push(w);
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    if rest.iter().any(|b| !b.is_ascii_whitespace()) {
        bail!(
            "{}: the header announces {v} vectors but {} more bytes follow them",
            path.display(),
            rest.len()
        );
    }
    Ok(WordVectors {
        words,
        dim,
        vectors,
        counts: None,
    })
}

fn load_safetensors(path: &Path) -> Result<WordVectors> {
    let buf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&buf)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let t = st
        .tensor("vectors")
        .with_context(|| format!("{}: no tensor named `vectors`", path.display()))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 {
        bail!(
            "{}: `vectors` must be a 2-D F32 tensor, found {:?} {:?}",
            path.display(),
            t.dtype(),
            t.shape()
        );
    }
    let (v, dim) = (t.shape()[0], t.shape()[1]);
    let vectors: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let vp = vocab_path(path);
    let text = std::fs::read_to_string(&vp)
        .with_context(|| format!("cannot read the vocabulary {} of {}", vp.display(), path.display()))?;
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
    Ok(WordVectors {
        words,
        dim,
        vectors,
        counts: Some(counts),
    })
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
}
