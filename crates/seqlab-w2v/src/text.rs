//! Reading a corpus as a stream: byte-range chunks per thread, lines capped in length,
//! invalid UTF-8 skipped (and counted), optional lower-casing and punctuation stripping.
//!
//! **Token separators are Unicode whitespace** (`char::is_whitespace`: ASCII space, tab and
//! newlines, but also U+3000 IDEOGRAPHIC SPACE, U+00A0 NO-BREAK SPACE, U+2000–U+200A, …), in
//! every reader of a corpus: the vocabulary count, training and `w2v prepare`. So
//! `東京\u{3000}大阪 東京` is three words, `東京` twice (as gensim, whose `LineSentence` splits
//! with Python's `str.split()`; word2vec.c splits on ASCII space, tab and newline only).
//! Byte ranges and over-long lines are cut at ASCII whitespace bytes only ([`is_sep`]), which
//! never fall inside a UTF-8 character; the words inside are then split on Unicode whitespace.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest sentence handed to the trainer; longer lines are cut into pieces of this many
/// words, as gensim's `LineSentence` does (`MAX_WORDS_IN_BATCH` = 10 000).
pub const MAX_SENTENCE: usize = 10_000;

/// A line longer than this many bytes is cut at the next whitespace so that a corpus with
/// no newlines at all is still read in bounded memory.
const MAX_LINE_BYTES: usize = 1 << 16;

/// Read buffer per reader (one per training thread). 64 KiB keeps read calls rare; a
/// larger buffer only adds to the peak memory while the vectors are alive.
const READ_BUFFER: usize = 1 << 16;

/// Text preparation for raw corpora. Defaults: both off (the corpus is taken as already
/// tokenized on whitespace, as word2vec.c and gensim's `LineSentence` take it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// Lower-case every word (Unicode-aware).
    pub lowercase: bool,
    /// Replace punctuation and symbols by spaces; an apostrophe or hyphen between two
    /// letters/digits is kept (`don't`, `well-known`).
    pub strip_punct: bool,
}

impl TextOptions {
    fn is_identity(&self) -> bool {
        !self.lowercase && !self.strip_punct
    }

    /// Applies the options to one valid UTF-8 line, writing the result into `out`.
    pub fn prepare_into(&self, line: &str, out: &mut String) {
        out.clear();
        if !self.strip_punct {
            for c in line.chars() {
                push_case(out, c, self.lowercase);
            }
            return;
        }
        // One pass with one character of look-behind and look-ahead: no per-line buffer of
        // chars, whose ever-changing sizes fragmented the training threads' heaps.
        let mut prev: Option<char> = None;
        let mut it = line.chars().peekable();
        while let Some(c) = it.next() {
            let joiner = c == '\'' || c == '-' || c == '’';
            let keep = c.is_alphanumeric()
                || c.is_whitespace()
                || (joiner
                    && prev.is_some_and(char::is_alphanumeric)
                    && it.peek().is_some_and(|n| n.is_alphanumeric()));
            push_case(out, if keep { c } else { ' ' }, self.lowercase);
            prev = Some(c);
        }
    }
}

#[inline]
fn push_case(out: &mut String, c: char, lower: bool) {
    if lower && !c.is_lowercase() {
        out.extend(c.to_lowercase());
    } else {
        out.push(c);
    }
}

/// ASCII whitespace bytes: where byte ranges and over-long lines may be cut (a byte test,
/// and a multi-byte character never contains one). Words are split on all of Unicode
/// whitespace (see the module docs).
#[inline]
pub fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Reads the lines of one byte range `[start, end)` of a file. A line (or word) that
/// straddles `start` belongs to the previous range: the reader skips to just past the first
/// separator at or after `start - 1`, and stops after the first separator at or after
/// `end - 1`, so consecutive ranges cover every word exactly once.
pub struct ChunkReader {
    path: PathBuf,
    reader: BufReader<File>,
    pos: u64,
    end: u64,
    done: bool,
    /// Invalid UTF-8 bytes skipped so far.
    pub invalid_bytes: u64,
    raw: Vec<u8>,
    prepared: String,
    opts: TextOptions,
}

impl ChunkReader {
    /// Opens `path` to read the words of bytes `[start, end)` (see the type's docs); `end`
    /// may exceed the file length.
    pub fn open(path: &Path, start: u64, end: u64, opts: TextOptions) -> io::Result<Self> {
        Self::open_buffered(path, start, end, opts, READ_BUFFER)
    }

    fn open_buffered(path: &Path, start: u64, end: u64, opts: TextOptions, buffer: usize) -> io::Result<Self> {
        let f = File::open(path)?;
        let mut reader = BufReader::with_capacity(buffer, f);
        let mut pos = 0;
        if start > 0 {
            reader.seek(SeekFrom::Start(start - 1))?;
            pos = start - 1;
            // Skip the tail of the word that began in the previous range.
            loop {
                let buf = reader.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                match buf.iter().position(|&b| is_sep(b)) {
                    Some(i) => {
                        reader.consume(i + 1);
                        pos += i as u64 + 1;
                        break;
                    }
                    None => {
                        let n = buf.len();
                        reader.consume(n);
                        pos += n as u64;
                    }
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            pos,
            end,
            done: start >= end,
            invalid_bytes: 0,
            raw: Vec::new(),
            prepared: String::new(),
            opts,
        })
    }

    /// Reads the next line of the range and calls `f` with its words (split on Unicode
    /// whitespace, after the text options). Returns `false` at the end of the range.
    pub fn next_line<F: FnMut(&str)>(&mut self, mut f: F) -> io::Result<bool> {
        if self.done || self.pos >= self.end {
            return Ok(false);
        }
        self.raw.clear();
        let line_start = self.pos;
        // Read up to a newline, or up to the first separator past MAX_LINE_BYTES.
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                self.done = true;
                if self.raw.is_empty() {
                    return Ok(false);
                }
                break;
            }
            // A newline counts only within the cap; past it, any separator ends the piece.
            // Measured from the line's start, not the buffer's, so the pieces do not
            // depend on where the buffer boundaries fall.
            let room = MAX_LINE_BYTES.saturating_sub(self.raw.len()).min(buf.len());
            let found = buf[..room]
                .iter()
                .position(|&b| b == b'\n')
                .or_else(|| buf[room..].iter().position(|&b| is_sep(b)).map(|i| i + room));
            match found {
                Some(i) => {
                    self.raw.extend_from_slice(&buf[..=i]);
                    self.reader.consume(i + 1);
                    self.pos += i as u64 + 1;
                    break;
                }
                None => {
                    let n = buf.len();
                    self.raw.extend_from_slice(buf);
                    self.reader.consume(n);
                    self.pos += n as u64;
                }
            }
        }
        // Cut the line at the range end (first separator at or after end - 1).
        if self.pos > self.end {
            let from = (self.end - 1).saturating_sub(line_start) as usize;
            if let Some(i) = self.raw[from.min(self.raw.len())..].iter().position(|&b| is_sep(b)) {
                self.raw.truncate(from + i);
            }
            self.done = true;
        }
        let raw = std::mem::take(&mut self.raw);
        self.words_of(&raw, &mut f);
        self.raw = raw;
        Ok(true)
    }

    fn words_of<F: FnMut(&str)>(&mut self, raw: &[u8], f: &mut F) {
        match std::str::from_utf8(raw) {
            Ok(s) => self.emit(s, f),
            Err(_) => {
                // Invalid bytes act as word separators so that two valid halves of a broken
                // word are not glued together.
                let mut clean = String::with_capacity(raw.len());
                for chunk in raw.utf8_chunks() {
                    clean.push_str(chunk.valid());
                    if !chunk.invalid().is_empty() {
                        self.invalid_bytes += chunk.invalid().len() as u64;
                        clean.push(' ');
                    }
                }
                self.emit(&clean, f);
            }
        }
    }

    fn emit<F: FnMut(&str)>(&mut self, s: &str, f: &mut F) {
        if self.opts.is_identity() {
            for w in s.split_whitespace() {
                f(w);
            }
        } else {
            let mut prepared = std::mem::take(&mut self.prepared);
            self.opts.prepare_into(s, &mut prepared);
            for w in prepared.split_whitespace() {
                f(w);
            }
            self.prepared = prepared;
        }
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What [`prepare_file`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareStats {
    /// Non-empty lines written.
    pub lines: u64,
    /// Words written.
    pub words: u64,
    /// Invalid UTF-8 bytes skipped in the input.
    pub invalid_bytes: u64,
}

/// Writes a prepared copy of the corpus `input` to `output`: the words of each input line
/// (after `opts`, split on Unicode whitespace) joined by one space, empty lines dropped. The
/// output is checked before reading (see [`crate::output::check_output`]; it may not be the
/// input) and written atomically.
pub fn prepare_file(input: &Path, output: &Path, opts: TextOptions) -> anyhow::Result<PrepareStats> {
    use anyhow::Context;
    use std::io::Write;
    let len = std::fs::metadata(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .len();
    crate::output::check_output(output, &[input])?;
    let mut r = ChunkReader::open(input, 0, len, opts).with_context(|| format!("cannot open {}", input.display()))?;
    let mut stats = PrepareStats::default();
    crate::output::write_atomic(output, |w| {
        let mut line = String::new();
        loop {
            line.clear();
            let more = r
                .next_line(|t| {
                    if !line.is_empty() {
                        line.push(' ');
                    }
                    line.push_str(t);
                    stats.words += 1;
                })
                .with_context(|| format!("error reading {}", input.display()))?;
            if !more {
                break;
            }
            if !line.is_empty() {
                line.push('\n');
                w.write_all(line.as_bytes())?;
                stats.lines += 1;
            }
        }
        Ok(())
    })?;
    stats.invalid_bytes = r.invalid_bytes;
    Ok(stats)
}

/// Splits a file of `len` bytes into `n` nearly equal byte ranges.
pub fn ranges(len: u64, n: usize) -> Vec<(u64, u64)> {
    let n = n.max(1) as u64;
    (0..n).map(|i| (len * i / n, len * (i + 1) / n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn words_in(path: &Path, start: u64, end: u64, opts: TextOptions) -> (Vec<Vec<String>>, u64) {
        let mut r = ChunkReader::open(path, start, end, opts).unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if !r.next_line(|w| line.push(w.to_string())).unwrap() {
                break;
            }
            lines.push(line);
        }
        (lines, r.invalid_bytes)
    }

    #[test]
    fn ranges_cover_every_word_once() {
        let dir = std::env::temp_dir().join(format!("w2v-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.txt");
        let text = "alpha beta gamma\ndelta  epsilon\n\nzeta eta theta iota kappa\nlambda";
        std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
        let all: Vec<String> = text.split_whitespace().map(String::from).collect();
        for n in 1..=text.len() {
            let mut got = Vec::new();
            for (s, e) in ranges(text.len() as u64, n) {
                let (lines, _) = words_in(&p, s, e, TextOptions::default());
                got.extend(lines.into_iter().flatten());
            }
            assert_eq!(got, all, "{n} ranges");
        }
    }

    #[test]
    fn long_lines_are_cut_in_the_same_places_whatever_the_buffer() {
        let dir = std::env::temp_dir().join(format!("w2v-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("long.txt");
        // One 200 KB line of 5-byte words ("wNNN "), then a short line.
        let long: String = (0..40_000).map(|i| format!("w{:03} ", i % 1000)).collect();
        let text = format!("{long}\nshort line\n");
        std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
        let pieces = |buffer| {
            let mut r = ChunkReader::open_buffered(&p, 0, text.len() as u64, TextOptions::default(), buffer).unwrap();
            let mut lens = Vec::new();
            loop {
                let mut n = 0;
                if !r.next_line(|_| n += 1).unwrap() {
                    break;
                }
                lens.push(n);
            }
            lens
        };
        // Cut at the first separator at or after byte 65,536 of the line: 65,536 / 5 words
        // plus the one straddling the cap, three times, then the rest and "short line".
        let first = MAX_LINE_BYTES / 5 + 1;
        let expected = vec![first, first, first, 40_000 - 3 * first, 2];
        for buffer in [4096, 1 << 16, 1 << 18, 1 << 20] {
            assert_eq!(pieces(buffer), expected, "buffer {buffer}");
        }
    }

    #[test]
    fn invalid_utf8_is_skipped_and_counted() {
        let dir = std::env::temp_dir().join(format!("w2v-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.txt");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(b"good wo\xff\xferd caf\xc3\xa9\n")
            .unwrap();
        let (lines, bad) = words_in(&p, 0, 100, TextOptions::default());
        assert_eq!(lines, vec![vec!["good", "wo", "rd", "café"]]);
        assert_eq!(bad, 2);
    }

    #[test]
    fn preparation_lowercases_and_strips_punctuation() {
        let o = TextOptions {
            lowercase: true,
            strip_punct: true,
        };
        let mut out = String::new();
        o.prepare_into("Hello, World! Don't re-use \"É\"-- ok.", &mut out);
        let w: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(w, ["hello", "world", "don't", "re-use", "é", "ok"]);
        // Joiners at the ends of a line or next to punctuation are stripped.
        o.prepare_into("'Tis well-- -x y- o'k'", &mut out);
        let w: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(w, ["tis", "well", "x", "y", "o'k"]);
    }

    /// Issue 13: `東京\u{3000}大阪 東京` was two words (`東京\u{3000}大阪`, `東京`).
    #[test]
    fn words_are_split_on_unicode_whitespace_with_and_without_options() {
        let dir = std::env::temp_dir().join(format!("w2v-ws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ws.txt");
        let text = "東京\u{3000}大阪 東京\na\u{a0}b\u{2009}c\td\u{85}e\u{2028}f\n";
        std::fs::write(&p, text).unwrap();
        for opts in [
            TextOptions::default(),
            TextOptions {
                lowercase: true,
                strip_punct: false,
            },
            TextOptions {
                lowercase: false,
                strip_punct: true,
            },
        ] {
            let (lines, _) = words_in(&p, 0, 1000, opts);
            assert_eq!(
                lines,
                vec![vec!["東京", "大阪", "東京"], vec!["a", "b", "c", "d", "e", "f"]],
                "{opts:?}"
            );
        }
        // Every byte range split still covers each word once.
        let all: Vec<String> = text.split_whitespace().map(String::from).collect();
        for n in 1..=8 {
            let mut got = Vec::new();
            for (s, e) in ranges(text.len() as u64, n) {
                got.extend(words_in(&p, s, e, TextOptions::default()).0.into_iter().flatten());
            }
            assert_eq!(got, all, "{n} ranges");
        }
        let out = dir.join("ws.prepared.txt");
        let st = prepare_file(&p, &out, TextOptions::default()).unwrap();
        assert_eq!((st.lines, st.words), (2, 9));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "東京 大阪 東京\na b c d e f\n");
    }

    #[test]
    fn prepare_refuses_to_overwrite_its_input() {
        let dir = std::env::temp_dir().join(format!("w2v-prep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("in.txt");
        std::fs::write(&p, "Hello, World\n").unwrap();
        let e = prepare_file(&p, &p, TextOptions::default()).unwrap_err().to_string();
        assert!(e.contains("is the input file"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "Hello, World\n");
        let e = prepare_file(&p, &dir.join("missing/out.txt"), TextOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
