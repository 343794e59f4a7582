//! chrF (Popović, 2015) and chrF++ (Popović, 2017) exactly as sacrebleu 2.x `CHRF` computes them.
//!
//! Character n-grams of orders 1..=6 over the segment with all whitespace removed, plus (chrF++)
//! word n-grams of orders 1..=2 after splitting one ASCII punctuation mark off each word's end
//! (or start). With several references, each segment keeps the statistics of the reference with
//! the best segment-level score. Corpus statistics are summed, then precision and recall are
//! averaged over the orders that have both hypothesis and reference n-grams, and combined into
//! an F-beta score (beta 2: recall weighs twice as much).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use crate::text::{py_lower, py_split};
use crate::{check_corpus, MetricError};

/// chrF settings. `Default` is sacrebleu's chrF: char order 6, word order 0, beta 2,
/// case-sensitive, whitespace ignored, effective-order averaging (no eps smoothing).
/// chrF++ is `word_order: 2` (see [`ChrfConfig::chrf_plus_plus`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ChrfConfig {
    /// Character n-gram order. Default 6.
    pub char_order: usize,
    /// Word n-gram order; 2 gives chrF++. Default 0.
    pub word_order: usize,
    /// Weight of recall over precision in the F-score. Default 2.
    pub beta: u32,
    /// Lower-case hypotheses and references first.
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams.
    pub whitespace: bool,
    /// Average per-order F scores with 1e-16 for undefined ones (chrF++.py, Moses, NLTK) instead
    /// of sacrebleu's default effective-order averaging of precision and recall.
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++: sacrebleu's defaults with word order 2.
    pub fn chrf_plus_plus() -> Self {
        ChrfConfig {
            word_order: 2,
            ..Default::default()
        }
    }

    /// Rejects `char_order + word_order = 0` and unreasonably large orders or beta.
    pub fn validate(&self) -> Result<(), MetricError> {
        if self.char_order + self.word_order == 0 {
            return Err(MetricError::Config("char_order + word_order must be at least 1".into()));
        }
        if self.char_order > 100 || self.word_order > 100 || self.beta > 1000 {
            return Err(MetricError::Config(format!(
                "unreasonable chrF settings: char_order {}, word_order {}, beta {}",
                self.char_order, self.word_order, self.beta
            )));
        }
        Ok(())
    }

    /// sacrebleu's name: `chrF2`, `chrF2++` for word order 2.
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    /// sacrebleu's signature fields for this configuration (without nrefs and version).
    pub fn signature(&self) -> String {
        format!(
            "case:{}|eff:{}|nc:{}|nw:{}|space:{}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            if self.whitespace { "yes" } else { "no" }
        )
    }

    fn order(&self) -> usize {
        self.char_order + self.word_order
    }
}

/// A chrF result: `score` in 0..=100.
#[derive(Clone, Debug, PartialEq)]
pub struct ChrfScore {
    /// chrF in 0..=100.
    pub score: f64,
    /// Character n-gram order used.
    pub char_order: usize,
    /// Word n-gram order used.
    pub word_order: usize,
    /// Beta used.
    pub beta: u32,
    /// Summed `[hyp, ref, match]` n-gram counts per order (char orders first, then word orders).
    pub stats: Vec<[u64; 3]>,
}

impl ChrfScore {
    /// The metric name as sacrebleu prints it, e.g. `chrF2` or `chrF2++`.
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    /// The line sacrebleu's `CHRFScore.format(width)` prints, without signature.
    pub fn format(&self, width: usize) -> String {
        format!("{} = {:.*}", self.name(), width, self.score)
    }
}

impl fmt::Display for ChrfScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(2))
    }
}

/// string.punctuation, which chrF++ splits off words.
fn is_ascii_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// sacrebleu's `CHRF._remove_punctuation`: one punctuation mark split off the end of each word
/// of 2+ characters, else off its start ('(hi)' gives '(hi' and ')', as sacrebleu does).
fn split_punctuation(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut chars = w.chars();
        let first = chars.next().expect("py_split yields non-empty words");
        let Some(last) = chars.next_back() else {
            out.push(w);
            continue;
        };
        if is_ascii_punct(last) {
            out.push(&w[..w.len() - 1]);
            out.push(&w[w.len() - 1..]);
        } else if is_ascii_punct(first) {
            out.push(&w[..1]);
            out.push(&w[1..]);
        } else {
            out.push(w);
        }
    }
    out
}

fn counts<T: Eq + Hash>(items: &[T], n: usize) -> HashMap<&[T], u64> {
    let mut m = HashMap::new();
    if n > 0 && items.len() >= n {
        for w in items.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// sacrebleu's `_get_match_statistics`: `[hyp count (0 if the reference has none of this
/// order), ref count, clipped matches]`.
fn match_stats<T: Eq + Hash>(hyp: &HashMap<&[T], u64>, rf: &HashMap<&[T], u64>) -> [u64; 3] {
    let mut matched = 0;
    let mut hyp_count = 0;
    for (ng, &c) in hyp {
        hyp_count += c;
        if let Some(&r) = rf.get(ng) {
            matched += c.min(r);
        }
    }
    [if rf.is_empty() { 0 } else { hyp_count }, rf.values().sum(), matched]
}

/// sacrebleu's `CHRF._compute_f_score`, same operation order.
pub fn f_score(stats: &[[u64; 3]], cfg: &ChrfConfig) -> f64 {
    let eps = 1e-16;
    let factor = (cfg.beta as f64).powi(2);
    let mut score = 0.0;
    let mut effective_order = 0usize;
    let (mut avg_prec, mut avg_rec) = (0.0, 0.0);
    for &[n_hyp, n_ref, n_match] in stats {
        let prec = if n_hyp > 0 { n_match as f64 / n_hyp as f64 } else { eps };
        let rec = if n_ref > 0 { n_match as f64 / n_ref as f64 } else { eps };
        let denom = factor * prec + rec;
        score += if denom > 0.0 {
            (1.0 + factor) * prec * rec / denom
        } else {
            eps
        };
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective_order += 1;
        }
    }
    if cfg.eps_smoothing {
        return 100.0 * score / stats.len() as f64;
    }
    if effective_order == 0 {
        avg_prec = 0.0;
        avg_rec = 0.0;
    } else {
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
    }
    if avg_prec + avg_rec != 0.0 {
        let mut s = (1.0 + factor) * avg_prec * avg_rec;
        s /= factor * avg_prec + avg_rec;
        100.0 * s
    } else {
        0.0
    }
}

/// The n-grams of one (preprocessed) segment: per char order, then per word order.
struct SegmentNgrams<'a> {
    chars: Vec<HashMap<&'a [char], u64>>,
    words: Vec<HashMap<&'a [&'a str], u64>>,
}

fn segment_ngrams<'a>(chars: &'a [char], words: &'a [&'a str], cfg: &ChrfConfig) -> SegmentNgrams<'a> {
    SegmentNgrams {
        chars: (1..=cfg.char_order).map(|n| counts(chars, n)).collect(),
        words: (1..=cfg.word_order).map(|n| counts(words, n)).collect(),
    }
}

/// Characters whose n-grams are counted: all of them with `whitespace`, else the non-whitespace.
fn char_seq(text: &str, cfg: &ChrfConfig) -> Vec<char> {
    if cfg.whitespace {
        text.chars().collect()
    } else {
        py_split(text).flat_map(|w| w.chars()).collect()
    }
}

/// Best-reference `[hyp, ref, match]` statistics of one segment (raw text).
pub fn segment_stats<S: AsRef<str>>(hyp: &str, refs: &[S], cfg: &ChrfConfig) -> Result<Vec<[u64; 3]>, MetricError> {
    cfg.validate()?;
    if refs.is_empty() {
        return Err(MetricError::NoReferences);
    }
    Ok(segment_stats_unchecked(hyp, refs.iter().map(|r| r.as_ref()), cfg))
}

fn segment_stats_unchecked<'r>(hyp: &str, refs: impl Iterator<Item = &'r str>, cfg: &ChrfConfig) -> Vec<[u64; 3]> {
    let prep = |s: &str| {
        if cfg.lowercase {
            py_lower(s)
        } else {
            s.to_string()
        }
    };
    let hyp = prep(hyp);
    let hyp_chars = char_seq(&hyp, cfg);
    let hyp_words = if cfg.word_order > 0 {
        split_punctuation(&hyp)
    } else {
        Vec::new()
    };
    let h = segment_ngrams(&hyp_chars, &hyp_words, cfg);
    let mut best: Option<(f64, Vec<[u64; 3]>)> = None;
    for r in refs {
        let r = prep(r);
        let ref_chars = char_seq(&r, cfg);
        let ref_words = if cfg.word_order > 0 {
            split_punctuation(&r)
        } else {
            Vec::new()
        };
        let rn = segment_ngrams(&ref_chars, &ref_words, cfg);
        let mut stats = Vec::with_capacity(cfg.order());
        for (hc, rc) in h.chars.iter().zip(&rn.chars) {
            stats.push(match_stats(hc, rc));
        }
        for (hw, rw) in h.words.iter().zip(&rn.words) {
            stats.push(match_stats(hw, rw));
        }
        let f = f_score(&stats, cfg);
        // Strictly better only: the first reference wins ties, as in sacrebleu.
        if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
            best = Some((f, stats));
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| vec![[0; 3]; cfg.order()])
}

/// Corpus chrF of `hyps` against `refs`, where `refs[k][i]` is the k-th reference of segment `i`
/// (sacrebleu's `CHRF(...).corpus_score(hyps, refs)`).
pub fn corpus_chrf<S: AsRef<str>>(hyps: &[S], refs: &[Vec<S>], cfg: &ChrfConfig) -> Result<ChrfScore, MetricError> {
    cfg.validate()?;
    check_corpus(hyps, refs)?;
    let mut total = vec![[0u64; 3]; cfg.order()];
    for (i, hyp) in hyps.iter().enumerate() {
        let seg = segment_stats_unchecked(hyp.as_ref(), refs.iter().map(|s| s[i].as_ref()), cfg);
        for (t, s) in total.iter_mut().zip(&seg) {
            for j in 0..3 {
                t[j] += s[j];
            }
        }
    }
    Ok(score_from_stats(total, cfg))
}

/// Sentence chrF of one hypothesis against its references.
pub fn sentence_chrf<S: AsRef<str>>(hyp: &str, refs: &[S], cfg: &ChrfConfig) -> Result<ChrfScore, MetricError> {
    let stats = segment_stats(hyp, refs, cfg)?;
    Ok(score_from_stats(stats, cfg))
}

fn score_from_stats(stats: Vec<[u64; 3]>, cfg: &ChrfConfig) -> ChrfScore {
    ChrfScore {
        score: f_score(&stats, cfg),
        char_order: cfg.char_order,
        word_order: cfg.word_order,
        beta: cfg.beta,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn punctuation_split_like_sacrebleu() {
        assert_eq!(
            split_punctuation("(hi) a, .b c «x»"),
            ["(hi", ")", "a", ",", ".", "b", "c", "«x»"]
        );
        assert_eq!(split_punctuation("! ab!"), ["!", "ab", "!"]);
    }

    // sacrebleu 2.6.0: CHRF().corpus_score(hyps, refs).score and CHRF(word_order=2)...
    #[test]
    fn small_corpus_matches_sacrebleu() {
        let hyps = s(&["The cat sat on the mat.", "There is a dog in the garden!"]);
        let refs = vec![s(&["The cat is on the mat.", "A dog is in the garden."])];
        let c = corpus_chrf(&hyps, &refs, &ChrfConfig::default()).unwrap();
        let cpp = corpus_chrf(&hyps, &refs, &ChrfConfig::chrf_plus_plus()).unwrap();
        assert!((c.score - 64.48740111536092).abs() < 1e-9, "{}", c.score);
        assert!((cpp.score - 64.21976715339666).abs() < 1e-9, "{}", cpp.score);
        assert_eq!(c.name(), "chrF2");
        assert_eq!(cpp.name(), "chrF2++");
    }

    #[test]
    fn degenerate_inputs() {
        let c = corpus_chrf(&s(&[""]), &[s(&["abc"])], &ChrfConfig::default()).unwrap();
        assert_eq!(c.score, 0.0);
        let c = corpus_chrf(&s(&["abc"]), &[s(&[""])], &ChrfConfig::default()).unwrap();
        assert_eq!(c.score, 0.0);
        let c = corpus_chrf(&s(&["a b c"]), &[s(&["abc"])], &ChrfConfig::default()).unwrap();
        assert!((c.score - 100.0).abs() < 1e-12);
        let bad = ChrfConfig {
            char_order: 0,
            ..Default::default()
        };
        assert!(corpus_chrf(&s(&["a"]), &[s(&["a"])], &bad).is_err());
    }
}
