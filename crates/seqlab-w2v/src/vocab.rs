//! Vocabulary (counted in one streaming pass), subsampling thresholds, the negative
//! sampling distribution (unigram^0.75, alias method) and the Huffman tree for
//! hierarchical softmax.

use std::hash::Hasher;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::text::{ChunkReader, TextOptions};

/// FxHash (rustc's hasher): word lookups sit on the training path, and SipHash's DoS
/// resistance buys nothing for a local corpus.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        self.0 = h;
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Distinct words stored back to back in one buffer and found through a hash table of ids.
/// A few large allocations instead of one per word: the counting pass over a corpus with
/// hundreds of thousands of distinct words stays small, and the allocator can hand the
/// memory back to the system when it is dropped, before the vectors are allocated.
#[derive(Clone, Debug, Default)]
pub struct WordTable {
    text: String,
    /// End offset of word i in `text` (word i starts where word i-1 ends).
    ends: Vec<usize>,
    table: hashbrown::HashTable<u32>,
}

/// Word `id` of a buffer whose word i ends at `ends[i]` (and starts where word i-1 ends).
fn word_at<'a>(text: &'a str, ends: &[usize], id: u32) -> &'a str {
    let i = id as usize;
    &text[if i == 0 { 0 } else { ends[i - 1] }..ends[i]]
}

fn fx_hash(w: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(w.as_bytes());
    h.finish()
}

impl WordTable {
    /// Number of distinct words.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether no word was added.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Word `id`. Panics if `id >= len()`.
    pub fn word(&self, id: u32) -> &str {
        word_at(&self.text, &self.ends, id)
    }

    /// Gives back the spare capacity that growing left behind.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        let (text, ends) = (&self.text, &self.ends);
        self.table.shrink_to_fit(|&i| fx_hash(word_at(text, ends, i)));
    }

    /// The id of `w`, if it was added.
    pub fn get(&self, w: &str) -> Option<u32> {
        self.table.find(fx_hash(w), |&i| self.word(i) == w).copied()
    }

    /// The id of `w`, adding it with the next id if it is new; `true` when added.
    pub fn intern(&mut self, w: &str) -> (u32, bool) {
        let h = fx_hash(w);
        if let Some(id) = self.table.find(h, |&i| word_at(&self.text, &self.ends, i) == w) {
            return (*id, false);
        }
        let id = self.ends.len() as u32;
        self.text.push_str(w);
        self.ends.push(self.text.len());
        let (text, ends) = (&self.text, &self.ends);
        self.table.insert_unique(h, id, |&i| fx_hash(word_at(text, ends, i)));
        (id, true)
    }
}

/// Words sorted by decreasing count; among equal counts the word first seen *later* in the
/// corpus comes first, as gensim 4 orders them (`KeyedVectors.sort_by_descending_frequency`
/// sorts with `np.lexsort((-index, -count))`, index = order of first occurrence). The order
/// is part of the output: evaluators that keep "the first N rows" (gensim's
/// `evaluate_word_analogies(restrict_vocab=30000)`) must see the same N words in both
/// trainers' files. With first-seen-first ties, 677 of the first 30,000 words of the bench
/// corpus differed from gensim's and the analogy test ran 7,931 questions on seqlab's file
/// against 7,651 on gensim's: different tests.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// Word i's count in the corpus.
    pub counts: Vec<u64>,
    /// The words themselves, stored once: training needs only lookups, and one heap
    /// string per word would add a third to the vocabulary's memory while the vectors
    /// are alive.
    index: WordTable,
}

/// What the counting pass saw.
#[derive(Clone, Debug, Default)]
pub struct CorpusStats {
    /// Lines read (long lines count once per piece, see [`ChunkReader`]).
    pub lines: u64,
    /// Words read, in vocabulary or not.
    pub tokens: u64,
    /// Distinct words read (before `min_count` / `max_vocab`).
    pub distinct: u64,
    /// Invalid UTF-8 bytes skipped.
    pub invalid_bytes: u64,
}

impl Vocab {
    /// Builds a vocabulary from distinct words, already in the desired order, and their
    /// counts (word i has count i).
    fn from_words<'a>(words: impl IntoIterator<Item = &'a str>, counts: Vec<u64>) -> Self {
        let mut index = WordTable::default();
        for w in words {
            index.intern(w);
        }
        debug_assert_eq!(index.len(), counts.len(), "words must be distinct, one count each");
        index.shrink_to_fit();
        Self { counts, index }
    }

    /// Word `id` (ids are in order of decreasing count).
    pub fn word(&self, id: usize) -> &str {
        self.index.word(id as u32)
    }

    /// All words in id order.
    pub fn words(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.word(i))
    }

    /// The id of a word, if it is in the vocabulary.
    #[inline]
    pub fn id(&self, w: &str) -> Option<u32> {
        self.index.get(w)
    }

    /// Counts the words of `path` (streamed; words split as [`ChunkReader`] splits them),
    /// keeps those with at least `min_count` occurrences, and at most `max_vocab` of them (the
    /// most frequent; ties keep the first seen) if given. Rejects `max_vocab` = 0, an
    /// unreadable or empty corpus, and one where no word reaches `min_count`.
    pub fn build(
        path: &Path,
        opts: TextOptions,
        min_count: u64,
        max_vocab: Option<usize>,
    ) -> Result<(Self, CorpusStats)> {
        if max_vocab == Some(0) {
            bail!("max_vocab must be at least 1 (leave it unset for no limit)");
        }
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read corpus {}", path.display()))?
            .len();
        let mut reader =
            ChunkReader::open(path, 0, len, opts).with_context(|| format!("cannot open corpus {}", path.display()))?;
        // Ids are in order of first occurrence.
        let mut seen = WordTable::default();
        let mut counts: Vec<u64> = Vec::new();
        let mut stats = CorpusStats::default();
        loop {
            let more = reader
                .next_line(|w| {
                    stats.tokens += 1;
                    let (id, new) = seen.intern(w);
                    if new {
                        counts.push(1);
                    } else {
                        counts[id as usize] += 1;
                    }
                })
                .with_context(|| format!("error reading corpus {}", path.display()))?;
            if !more {
                break;
            }
            stats.lines += 1;
        }
        stats.invalid_bytes = reader.invalid_bytes;
        stats.distinct = counts.len() as u64;
        if stats.tokens == 0 {
            bail!("corpus {} is empty: it contains no words", path.display());
        }
        let mut kept: Vec<u32> = (0..counts.len() as u32)
            .filter(|&i| counts[i as usize] >= min_count)
            .collect();
        if kept.is_empty() {
            bail!(
                "corpus {}: none of its {} distinct words occurs at least min_count = {} times",
                path.display(),
                stats.distinct,
                min_count
            );
        }
        // Ids are in first-occurrence order; ties: later first occurrence first (see `Vocab`).
        kept.sort_unstable_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(b.cmp(&a)));
        if let Some(m) = max_vocab {
            kept.truncate(m);
        }
        let cnts = kept.iter().map(|&i| counts[i as usize]).collect();
        drop(counts);
        Ok((Self::from_words(kept.iter().map(|&i| seen.word(i)), cnts), stats))
    }

    /// The vocabulary and the counting pass's statistics as bytes, for ranks that did not
    /// count (distributed training: the corpus is counted once, on rank 0). Per word: count
    /// (u64 LE), byte length (u32 LE), UTF-8 bytes; after the statistics (4 × u64 LE).
    pub fn to_bytes(&self, stats: &CorpusStats) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [stats.lines, stats.tokens, stats.distinct, stats.invalid_bytes] {
            b.extend(v.to_le_bytes());
        }
        for (w, &c) in self.words().zip(&self.counts) {
            b.extend(c.to_le_bytes());
            b.extend((w.len() as u32).to_le_bytes());
            b.extend(w.as_bytes());
        }
        b
    }

    /// Reads what [`Vocab::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Result<(Self, CorpusStats)> {
        struct Cursor<'a>(&'a [u8]);
        impl<'a> Cursor<'a> {
            fn take(&mut self, n: usize) -> Result<&'a [u8]> {
                anyhow::ensure!(self.0.len() >= n, "truncated vocabulary bytes");
                let (h, t) = self.0.split_at(n);
                self.0 = t;
                Ok(h)
            }
            fn u64(&mut self) -> Result<u64> {
                Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
            }
        }
        let mut c = Cursor(b);
        let stats = CorpusStats {
            lines: c.u64()?,
            tokens: c.u64()?,
            distinct: c.u64()?,
            invalid_bytes: c.u64()?,
        };
        let (mut words, mut counts) = (Vec::new(), Vec::new());
        while !c.0.is_empty() {
            counts.push(c.u64()?);
            let n = u32::from_le_bytes(c.take(4)?.try_into()?) as usize;
            words.push(std::str::from_utf8(c.take(n)?)?);
        }
        Ok((Self::from_words(words, counts), stats))
    }

    /// Number of words kept.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no word was kept (never the case for a vocabulary from [`Vocab::build`]).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Occurrences of the kept words in the corpus (the words one epoch trains on).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Probability of keeping each occurrence under frequent-word subsampling, as a u32
    /// threshold (keep if a uniform u32 is below it). Same formula as word2vec.c and
    /// gensim: `(sqrt(c / (s·N)) + 1) · (s·N) / c`.
    pub fn keep_thresholds(&self, sample: f64) -> Vec<u32> {
        let total = self.total() as f64;
        self.counts
            .iter()
            .map(|&c| {
                if sample <= 0.0 {
                    return u32::MAX;
                }
                let t = sample * total;
                let p = ((c as f64 / t).sqrt() + 1.0) * t / c as f64;
                if p >= 1.0 {
                    u32::MAX
                } else {
                    (p * 4294967296.0) as u32
                }
            })
            .collect()
    }
}

/// Walker's alias table over unigram^power: O(1) exact draws with 8 bytes per word (a
/// word2vec.c-style table of 1e8 entries would be 400 MB, over the memory budget).
pub struct AliasTable {
    prob: Vec<u32>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// The table for P(i) ∝ counts[i]^power (word2vec uses power 0.75). Panics if `counts`
    /// is empty or all zero (a vocabulary from [`Vocab::build`] never is).
    pub fn new(counts: &[u64], power: f64) -> Self {
        assert!(
            counts.iter().any(|&c| c > 0),
            "AliasTable needs at least one positive count"
        );
        let n = counts.len();
        let w: Vec<f64> = counts.iter().map(|&c| (c as f64).powf(power)).collect();
        let sum: f64 = w.iter().sum();
        let mut scaled: Vec<f64> = w.iter().map(|x| x * n as f64 / sum).collect();
        let mut prob = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = (scaled[s] * 4294967296.0).min(4294967295.0) as u32;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Self { prob, alias }
    }

    /// Draws a word from one uniform u64.
    #[inline(always)]
    pub fn sample(&self, r: u64) -> usize {
        let n = self.prob.len() as u64;
        let i = (((r >> 32) * n) >> 32) as usize;
        // SAFETY: i < n since (r>>32) < 2^32.
        unsafe {
            if (r as u32) < *self.prob.get_unchecked(i) {
                i
            } else {
                *self.alias.get_unchecked(i) as usize
            }
        }
    }
}

/// Huffman codes and paths (inner-node indices) of every word, flattened.
pub struct Huffman {
    /// The branch (0/1) taken at each inner node, root first, all words back to back.
    pub codes: Vec<u8>,
    /// The inner nodes (rows of `syn1`) on each word's path, root first.
    pub points: Vec<u32>,
    /// `offsets[w]..offsets[w+1]` indexes `codes`/`points` of word `w`.
    pub offsets: Vec<usize>,
}

impl Huffman {
    /// Builds the tree as word2vec.c does: counts must be sorted in decreasing order; two
    /// pointers walk the leaves (from the rarest) and the inner nodes (in creation order).
    pub fn new(counts: &[u64]) -> Self {
        let v = counts.len();
        if v < 2 {
            // One word: a single inner node, code 0.
            return Self {
                codes: vec![0; v],
                points: vec![0; v],
                offsets: (0..=v).collect(),
            };
        }
        let mut count = vec![u64::MAX; 2 * v];
        count[..v].copy_from_slice(counts);
        let mut binary = vec![0u8; 2 * v];
        let mut parent = vec![0usize; 2 * v];
        let (mut pos1, mut pos2) = (v as isize - 1, v);
        let pick = |count: &[u64], pos1: &mut isize, pos2: &mut usize| -> usize {
            if *pos1 >= 0 && count[*pos1 as usize] < count[*pos2] {
                *pos1 -= 1;
                (*pos1 + 1) as usize
            } else {
                *pos2 += 1;
                *pos2 - 1
            }
        };
        for a in 0..v - 1 {
            let m1 = pick(&count, &mut pos1, &mut pos2);
            let m2 = pick(&count, &mut pos1, &mut pos2);
            count[v + a] = count[m1] + count[m2];
            parent[m1] = v + a;
            parent[m2] = v + a;
            binary[m2] = 1;
        }
        let root = 2 * v - 2;
        let mut codes = Vec::new();
        let mut points = Vec::new();
        let mut offsets = vec![0];
        let mut c = Vec::new();
        let mut p = Vec::new();
        for w in 0..v {
            c.clear();
            p.clear();
            let mut b = w;
            while b != root {
                c.push(binary[b]);
                b = parent[b];
                p.push((b - v) as u32);
            }
            // Root first, as the path is walked during training.
            codes.extend(c.iter().rev());
            points.extend(p.iter().rev());
            offsets.push(codes.len());
        }
        Self { codes, points, offsets }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn word_table_interns_in_first_occurrence_order() {
        let mut t = WordTable::default();
        let words = ["the", "cat", "the", "", "naïve", "cat", "a"];
        let ids: Vec<(u32, bool)> = words.iter().map(|w| t.intern(w)).collect();
        assert_eq!(
            ids,
            vec![
                (0, true),
                (1, true),
                (0, false),
                (2, true),
                (3, true),
                (1, false),
                (4, true)
            ]
        );
        assert_eq!((t.len(), t.word(3), t.word(2)), (5, "naïve", ""));
        assert_eq!((t.get("cat"), t.get("dog")), (Some(1), None));
        // Growing past many rehashes keeps every id findable.
        for i in 0..10_000 {
            t.intern(&format!("w{i}"));
        }
        assert!((0..10_000).all(|i| t.get(&format!("w{i}")) == Some(5 + i)));
    }

    use super::*;

    fn corpus(name: &str, text: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("w2v-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Issue 13: `東京\u{3000}大阪 東京` counted `東京` once and `東京\u{3000}大阪` once.
    #[test]
    fn counts_split_on_unicode_whitespace() {
        let p = corpus("tokyo.txt", "東京\u{3000}大阪 東京\n");
        let (v, stats) = Vocab::build(&p, TextOptions::default(), 1, None).unwrap();
        assert_eq!(v.words().collect::<Vec<_>>(), ["東京", "大阪"]);
        assert_eq!(v.counts, [2, 1]);
        assert_eq!((stats.tokens, stats.distinct, stats.lines), (3, 2, 1));
    }

    /// gensim 4's order: decreasing count, ties by *decreasing* first occurrence. With the
    /// earlier first-seen-first ties, gensim's `restrict_vocab` evaluation kept other words
    /// of seqlab's files than of gensim's (see [`Vocab`]).
    #[test]
    fn ties_are_ordered_as_gensim_orders_them() {
        let p = corpus(
            "ties.txt",
            "b a d a b c c d e
",
        );
        let (v, _) = Vocab::build(&p, TextOptions::default(), 1, None).unwrap();
        // Counts: a b c d 2, e 1; first seen: b, a, d, c, e.
        assert_eq!(v.words().collect::<Vec<_>>(), ["c", "d", "a", "b", "e"]);
        assert_eq!(v.counts, [2, 2, 2, 2, 1]);
    }

    /// Keep probability `(sqrt(c / (s·N)) + 1) · s·N / c` with N the total of the *kept*
    /// words (gensim's `retain_total`); gensim stores it as `p · (2^32 − 1)` and keeps a word
    /// when a uniform u32 is at most that, seqlab keeps when it is below `p · 2^32`.
    #[test]
    fn keep_thresholds_follow_gensim() {
        let p = corpus("keep.txt", &format!("{}{}x\n", "the ".repeat(900), "cat ".repeat(99)));
        let (v, _) = Vocab::build(&p, TextOptions::default(), 2, None).unwrap();
        // "x" (count 1) is dropped, so N = 999, not 1000.
        assert_eq!((v.counts.clone(), v.total()), (vec![900, 99], 999));
        let keep = v.keep_thresholds(1e-2);
        let t = 1e-2 * 999.0;
        for (k, c) in keep.iter().zip([900.0f64, 99.0]) {
            let want = ((c / t).sqrt() + 1.0) * t / c;
            assert!((*k as f64 / 4294967296.0 - want).abs() < 1e-9, "{k} vs {want}");
        }
        assert_eq!(v.keep_thresholds(0.0), [u32::MAX, u32::MAX]);
        // Rare enough words are always kept.
        assert_eq!(v.keep_thresholds(0.5), [u32::MAX, u32::MAX]);
    }

    #[test]
    fn max_vocab_keeps_the_most_frequent_and_zero_is_rejected() {
        let p = corpus("mv.txt", "a b b c c c\n");
        let (v, _) = Vocab::build(&p, TextOptions::default(), 1, Some(2)).unwrap();
        assert_eq!(v.words().collect::<Vec<_>>(), ["c", "b"]);
        let e = Vocab::build(&p, TextOptions::default(), 1, Some(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_vocab"), "{e}");
        let cfg = crate::train::Config {
            max_vocab: Some(0),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("max_vocab"));
    }

    #[test]
    fn huffman_codes_are_prefix_free_and_frequent_words_short() {
        let counts = [50, 30, 10, 5, 3, 2];
        let h = Huffman::new(&counts);
        let code = |w: usize| h.codes[h.offsets[w]..h.offsets[w + 1]].to_vec();
        for a in 0..counts.len() {
            for b in 0..counts.len() {
                if a != b {
                    assert!(!code(b).starts_with(&code(a)), "{a} is a prefix of {b}");
                }
            }
            // Every path starts at the root (the last inner node).
            assert_eq!(h.points[h.offsets[a]], counts.len() as u32 - 2);
        }
        assert!(code(0).len() <= code(5).len());
    }

    #[test]
    fn alias_table_matches_unigram_075() {
        let counts = [1000u64, 100, 10, 1];
        let t = AliasTable::new(&counts, 0.75);
        let mut hist = [0usize; 4];
        let mut x = 12345u64;
        let n = 400_000;
        for _ in 0..n {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            hist[t.sample(z ^ (z >> 31))] += 1;
        }
        let w: Vec<f64> = counts.iter().map(|&c| (c as f64).powf(0.75)).collect();
        let s: f64 = w.iter().sum();
        for i in 0..4 {
            let got = hist[i] as f64 / n as f64;
            assert!((got - w[i] / s).abs() < 0.005, "word {i}: {got} vs {}", w[i] / s);
        }
    }
}
