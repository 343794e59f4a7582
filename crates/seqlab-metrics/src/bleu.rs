//! Corpus and sentence BLEU (Papineni et al., 2002) exactly as sacrebleu 2.x `BLEU` computes it.
//!
//! Per segment: optional lowercasing, `rstrip()`, tokenization (default `13a`), word n-grams of
//! order 1..=4. Hypothesis n-gram counts are clipped by the maximum count over all references;
//! the reference length is the one closest to the hypothesis length (ties: the shorter).
//! Statistics are summed over the corpus before precisions, brevity penalty and smoothing.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::text::{py_lower, py_rstrip, py_split};
use crate::tokenizers::Tokenizer;
use crate::{check_corpus, MetricError};

/// Smoothing of zero n-gram precisions (Chen & Cherry, 2014), as in sacrebleu.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmoothMethod {
    /// No smoothing: a zero precision makes BLEU 0.
    None,
    /// Method 1: a zero count becomes `smooth_value` (default 0.1).
    Floor,
    /// Method 2: add `smooth_value` (default 1) to counts and totals of orders >= 2.
    AddK,
    /// Method 3 (NIST, mteval-v13a): the k-th zero precision becomes `1 / (2^k * total)`.
    #[default]
    Exp,
}

impl SmoothMethod {
    /// The method's name as sacrebleu's signature spells it (`none`, `floor`, `add-k`, `exp`).
    pub fn name(self) -> &'static str {
        match self {
            SmoothMethod::None => "none",
            SmoothMethod::Floor => "floor",
            SmoothMethod::AddK => "add-k",
            SmoothMethod::Exp => "exp",
        }
    }

    /// sacrebleu's `BLEU.SMOOTH_DEFAULTS`.
    pub fn default_value(self) -> Option<f64> {
        match self {
            SmoothMethod::Floor => Some(0.1),
            SmoothMethod::AddK => Some(1.0),
            SmoothMethod::None | SmoothMethod::Exp => None,
        }
    }
}

impl FromStr for SmoothMethod {
    type Err = MetricError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(SmoothMethod::None),
            "floor" => Ok(SmoothMethod::Floor),
            "add-k" => Ok(SmoothMethod::AddK),
            "exp" => Ok(SmoothMethod::Exp),
            other => Err(MetricError::Config(format!(
                "unknown smoothing method {other:?} (expected one of: exp, none, floor, add-k)"
            ))),
        }
    }
}

impl fmt::Display for SmoothMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// BLEU settings. `Default` is sacrebleu's default: case-sensitive, `13a` tokenizer, `exp`
/// smoothing, max n-gram order 4, no effective order (sacrebleu's CLI turns effective order on
/// for sentence-level scores; do the same when scoring single sentences).
#[derive(Clone, Debug, PartialEq)]
pub struct BleuConfig {
    /// Lower-case hypotheses and references first (sacrebleu `-lc`).
    pub lowercase: bool,
    /// Tokenizer applied before counting n-grams (sacrebleu `-tok`). Default `13a`.
    pub tokenizer: Tokenizer,
    /// Smoothing of zero n-gram matches (sacrebleu `-s`). Default `exp`.
    pub smooth_method: SmoothMethod,
    /// For `floor` and `add-k`; `None` means the method's default (0.1 and 1).
    pub smooth_value: Option<f64>,
    /// Highest n-gram order. Default 4.
    pub max_ngram_order: usize,
    /// Average only over the orders up to the last one with a non-zero total.
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        BleuConfig {
            lowercase: false,
            tokenizer: Tokenizer::V13a,
            smooth_method: SmoothMethod::Exp,
            smooth_value: None,
            max_ngram_order: 4,
            effective_order: false,
        }
    }
}

impl BleuConfig {
    /// Checks the settings; every scoring function calls this first.
    pub fn validate(&self) -> Result<(), MetricError> {
        if !(1..=100).contains(&self.max_ngram_order) {
            return Err(MetricError::Config(format!(
                "max_ngram_order must be in 1..=100, got {}",
                self.max_ngram_order
            )));
        }
        if let Some(v) = self.smooth_value {
            if !v.is_finite() || v < 0.0 {
                return Err(MetricError::Config(format!(
                    "smooth_value must be finite and >= 0, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// sacrebleu's signature fields for this configuration (without nrefs and version).
    pub fn signature(&self) -> String {
        let mut smooth = self.smooth_method.name().to_string();
        if let Some(def) = self.smooth_method.default_value() {
            smooth += &format!("[{:.2}]", self.smooth_value.unwrap_or(def));
        }
        format!(
            "case:{}|eff:{}|tok:{}|smooth:{}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.effective_order { "yes" } else { "no" },
            self.tokenizer.name(),
            smooth
        )
    }

    fn preprocess(&self, segment: &str) -> String {
        if self.lowercase {
            self.tokenizer.tokenize(py_rstrip(&py_lower(segment)))
        } else {
            self.tokenizer.tokenize(py_rstrip(segment))
        }
    }
}

/// Sufficient statistics of BLEU; add segments' statistics to get the corpus's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Reference length in tokens.
    pub ref_len: u64,
    /// Clipped n-gram matches per order (index 0 = unigrams).
    pub counts: Vec<u64>,
    /// Hypothesis n-grams per order.
    pub totals: Vec<u64>,
}

impl BleuStats {
    /// Empty statistics for n-gram orders 1..=`max_order`.
    pub fn zeros(max_order: usize) -> Self {
        BleuStats {
            sys_len: 0,
            ref_len: 0,
            counts: vec![0; max_order],
            totals: vec![0; max_order],
        }
    }

    /// Adds `other`'s lengths and n-gram counts (corpus BLEU sums per-sentence statistics).
    pub fn add(&mut self, other: &BleuStats) {
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.totals.iter_mut().zip(&other.totals) {
            *a += b;
        }
    }
}

/// A BLEU result with the fields sacrebleu's `BLEUScore` has. Scores are in 0..=100.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuScore {
    /// BLEU in 0..=100.
    pub score: f64,
    /// n-gram precisions in percent (after smoothing), index 0 = unigrams.
    pub precisions: Vec<f64>,
    /// Brevity penalty, in (0, 1].
    pub bp: f64,
    /// `sys_len / ref_len`, 0 when `ref_len` is 0.
    pub ratio: f64,
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Reference length in tokens.
    pub ref_len: u64,
    /// Matches per order as counted (sacrebleu's `add-k` also adds k into the counts and totals
    /// it returns; these stay the raw counts).
    pub counts: Vec<u64>,
    /// Hypothesis n-grams per order (precision denominators).
    pub totals: Vec<u64>,
}

impl BleuScore {
    /// sacrebleu's verbose part: `58.3/31.0/19.5/12.6 (BP = 0.950 ratio = 0.951 hyp_len = 9 ref_len = 9)`.
    pub fn verbose(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            prec.join("/"),
            self.bp,
            self.ratio,
            self.sys_len,
            self.ref_len
        )
    }

    /// The line sacrebleu's `BLEUScore.format(width)` prints, without signature.
    pub fn format(&self, width: usize) -> String {
        format!("BLEU = {:.*} {}", width, self.score, self.verbose())
    }
}

impl fmt::Display for BleuScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(2))
    }
}

/// sacrebleu's `my_log`: log with log(0) floored to -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// BLEU from summed statistics (sacrebleu's `BLEU.compute_bleu`, same operation order).
pub fn compute_bleu(stats: &BleuStats, cfg: &BleuConfig) -> Result<BleuScore, MetricError> {
    cfg.validate()?;
    let order = cfg.max_ngram_order;
    if stats.counts.len() != order || stats.totals.len() != order {
        return Err(MetricError::Config(format!(
            "statistics have {} orders but max_ngram_order is {order}",
            stats.counts.len()
        )));
    }
    let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let ratio = if ref_len > 0 {
        sys_len as f64 / ref_len as f64
    } else {
        0.0
    };
    let mut precisions = vec![0.0; order];
    let mut result = BleuScore {
        score: 0.0,
        precisions: precisions.clone(),
        bp,
        ratio,
        sys_len,
        ref_len,
        counts: stats.counts.clone(),
        totals: stats.totals.clone(),
    };
    // sacrebleu returns 0 straight away when nothing matches (its issue #141), whatever smoothing.
    if stats.counts.iter().all(|&c| c == 0) {
        return Ok(result);
    }
    let smooth_value = cfg.smooth_value.or(cfg.smooth_method.default_value()).unwrap_or(0.0);
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = order;
    for n in 1..=order {
        let mut correct = stats.counts[n - 1] as f64;
        let mut total = stats.totals[n - 1] as f64;
        if cfg.smooth_method == SmoothMethod::AddK && n > 1 {
            correct += smooth_value;
            total += smooth_value;
        }
        if total == 0.0 {
            break;
        }
        if cfg.effective_order {
            eff_order = n;
        }
        if correct == 0.0 {
            match cfg.smooth_method {
                SmoothMethod::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total);
                }
                SmoothMethod::Floor => precisions[n - 1] = 100.0 * smooth_value / total,
                SmoothMethod::None | SmoothMethod::AddK => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct / total;
        }
    }
    let log_sum = precisions[..eff_order].iter().fold(0.0, |acc, &p| acc + my_log(p));
    result.score = bp * (log_sum / eff_order as f64).exp();
    result.precisions = precisions;
    Ok(result)
}

/// N-gram counts of all orders 1..=max_order; keys are token slices.
fn ngram_counts<'a>(tokens: &'a [&'a str], max_order: usize) -> HashMap<&'a [&'a str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=max_order.min(tokens.len()) {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// sacrebleu's `_get_closest_ref_len`: closest to `hyp_len`, the shorter one on ties.
fn closest_ref_len(hyp_len: u64, ref_lens: &[u64]) -> u64 {
    let mut best: Option<(u64, u64)> = None; // (diff, len)
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, l)) if diff < d || (diff == d && r < l) => Some((diff, r)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Statistics of one hypothesis against its references (raw text; preprocessing is applied here).
pub fn segment_stats<S: AsRef<str>>(hyp: &str, refs: &[S], cfg: &BleuConfig) -> Result<BleuStats, MetricError> {
    cfg.validate()?;
    if refs.is_empty() {
        return Err(MetricError::NoReferences);
    }
    Ok(segment_stats_unchecked(hyp, refs.iter().map(|r| r.as_ref()), cfg))
}

fn segment_stats_unchecked<'r>(hyp: &str, refs: impl Iterator<Item = &'r str>, cfg: &BleuConfig) -> BleuStats {
    let order = cfg.max_ngram_order;
    let ref_texts: Vec<String> = refs.map(|r| cfg.preprocess(r)).collect();
    let ref_tokens: Vec<Vec<&str>> = ref_texts.iter().map(|t| py_split(t).collect()).collect();
    let mut ref_max: HashMap<&[&str], u64> = HashMap::new();
    let mut ref_lens = Vec::with_capacity(ref_tokens.len());
    for toks in &ref_tokens {
        ref_lens.push(toks.len() as u64);
        for (ng, c) in ngram_counts(toks, order) {
            let e = ref_max.entry(ng).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let hyp_text = cfg.preprocess(hyp);
    let hyp_tokens: Vec<&str> = py_split(&hyp_text).collect();
    let hyp_len = hyp_tokens.len() as u64;
    let mut stats = BleuStats::zeros(order);
    stats.sys_len = hyp_len;
    stats.ref_len = closest_ref_len(hyp_len, &ref_lens);
    for (ng, c) in ngram_counts(&hyp_tokens, order) {
        let n = ng.len() - 1;
        stats.totals[n] += c;
        if let Some(&r) = ref_max.get(ng) {
            stats.counts[n] += c.min(r);
        }
    }
    stats
}

/// Corpus BLEU of `hyps` against `refs`, where `refs[k][i]` is the k-th reference of segment `i`
/// (sacrebleu's `BLEU(...).corpus_score(hyps, refs)`).
pub fn corpus_bleu<S: AsRef<str>>(hyps: &[S], refs: &[Vec<S>], cfg: &BleuConfig) -> Result<BleuScore, MetricError> {
    cfg.validate()?;
    check_corpus(hyps, refs)?;
    let mut total = BleuStats::zeros(cfg.max_ngram_order);
    for (i, hyp) in hyps.iter().enumerate() {
        let seg = segment_stats_unchecked(hyp.as_ref(), refs.iter().map(|s| s[i].as_ref()), cfg);
        total.add(&seg);
    }
    compute_bleu(&total, cfg)
}

/// Sentence BLEU of one hypothesis against its references (sacrebleu's `sentence_score`; it
/// recommends `effective_order: true` for this).
pub fn sentence_bleu<S: AsRef<str>>(hyp: &str, refs: &[S], cfg: &BleuConfig) -> Result<BleuScore, MetricError> {
    let stats = segment_stats(hyp, refs, cfg)?;
    compute_bleu(&stats, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    // Expected values: sacrebleu 2.6.0, BLEU().corpus_score(hyps, refs) and
    // BLEU(effective_order=True).sentence_score(h, refs); see scripts/make_metric_fixtures.py.
    #[test]
    fn small_corpus_matches_sacrebleu() {
        let hyps = s(&["The cat sat on the mat.", "There is a dog in the garden!"]);
        let refs = vec![s(&["The cat is on the mat.", "A dog is in the garden."])];
        let b = corpus_bleu(&hyps, &refs, &BleuConfig::default()).unwrap();
        assert_eq!(b.sys_len, 15);
        assert_eq!(b.ref_len, 14);
        assert_eq!(b.counts, vec![11, 6, 3, 1]);
        assert_eq!(b.totals, vec![15, 13, 11, 9]);
        assert!((b.score - 31.823566221963034).abs() < 1e-9, "{}", b.score);
        assert_eq!(
            b.to_string(),
            "BLEU = 31.82 73.3/46.2/27.3/11.1 (BP = 1.000 ratio = 1.071 hyp_len = 15 ref_len = 14)"
        );
    }

    #[test]
    fn closest_ref_len_prefers_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, &[7, 3, 6]), 6);
        assert_eq!(closest_ref_len(5, &[7, 3]), 3);
        assert_eq!(closest_ref_len(5, &[5, 4]), 5);
    }

    #[test]
    fn no_match_and_empty() {
        let b = corpus_bleu(&s(&["x y z"]), &[s(&["a b c"])], &BleuConfig::default()).unwrap();
        assert_eq!(b.score, 0.0);
        assert_eq!(b.precisions, vec![0.0; 4]);
        let b = corpus_bleu(&s(&[""]), &[s(&["a b c"])], &BleuConfig::default()).unwrap();
        assert_eq!((b.score, b.bp, b.sys_len, b.ref_len), (0.0, 0.0, 0, 3));
    }

    #[test]
    fn exp_smoothing_and_effective_order() {
        // Two tokens: no 3- or 4-grams.
        let cfg = BleuConfig {
            effective_order: true,
            ..Default::default()
        };
        let b = sentence_bleu("a b", &["a b"], &cfg).unwrap();
        assert!((b.score - 100.0).abs() < 1e-12);
        let b = sentence_bleu("a b", &["a b"], &BleuConfig::default()).unwrap();
        assert_eq!(b.score, 0.0);
        // One zero order with exp smoothing: precision 100 / (2 * total).
        let b = sentence_bleu("a b c d", &["a b x c d"], &BleuConfig::default()).unwrap();
        assert_eq!(b.counts, vec![4, 2, 0, 0]);
        assert_eq!(b.precisions[2], 100.0 / (2.0 * 2.0));
        assert_eq!(b.precisions[3], 100.0 / (4.0 * 1.0));
    }

    #[test]
    fn python_style_rounding_in_format() {
        // Python's format rounds the exact binary value half-to-even; so does Rust's.
        assert_eq!(format!("{:.1}", 12.25f64), "12.2");
        assert_eq!(format!("{:.1}", 0.75f64), "0.8");
        assert_eq!(format!("{:.3}", 0.0625f64), "0.062");
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = corpus_bleu(&s(&["a", "b"]), &[s(&["a"])], &BleuConfig::default()).unwrap_err();
        assert!(e.to_string().contains("1 segments but there are 2"), "{e}");
        assert!(corpus_bleu::<String>(&[], &[vec![]], &BleuConfig::default()).is_err());
        assert!(corpus_bleu(&s(&["a"]), &[], &BleuConfig::default()).is_err());
        let cfg = BleuConfig {
            max_ngram_order: 0,
            ..Default::default()
        };
        assert!(corpus_bleu(&s(&["a"]), &[s(&["a"])], &cfg).is_err());
        assert!("exq".parse::<SmoothMethod>().is_err());
    }
}
