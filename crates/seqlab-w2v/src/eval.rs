//! Queries and evaluations over word vectors: nearest neighbours, analogies (3CosAdd and
//! 3CosMul, as gensim's `most_similar` / `most_similar_cosmul`), the Google analogy test
//! and word-pair similarity (counted as gensim's `evaluate_word_analogies` /
//! `evaluate_word_pairs` count).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::format::WordVectors;

/// Words with their scores, best first.
pub type Ranked = Vec<(String, f32)>;

/// Word vectors normalised to unit length, with an index; what every query and evaluation
/// runs on.
pub struct Index {
    /// The words, in file order (most frequent first for trained vectors).
    pub words: Vec<String>,
    /// Vector size.
    pub dim: usize,
    /// Unit-length vectors, row-major `[words.len(), dim]` (a zero vector stays zero).
    pub unit: Vec<f32>,
    /// Word -> row.
    pub lookup: HashMap<String, usize>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for a in acc {
        s += a;
    }
    s
}

fn normalise(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl Index {
    /// Normalises and indexes `wv`. Rejects what [`WordVectors::new`] rejects (a value with
    /// public fields may have been built without it): dim 0, a vector count that does not
    /// match, duplicate words.
    pub fn new(wv: &WordVectors) -> Result<Self> {
        wv.check()?;
        let mut unit = wv.vectors.clone();
        for r in unit.chunks_exact_mut(wv.dim) {
            normalise(r);
        }
        let lookup = wv.words.iter().enumerate().map(|(i, w)| (w.clone(), i)).collect();
        Ok(Self {
            words: wv.words.clone(),
            dim: wv.dim,
            unit,
            lookup,
        })
    }

    /// The unit vector of word `i`. Panics if `i` is out of range.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.unit[i * self.dim..(i + 1) * self.dim]
    }

    fn id(&self, w: &str) -> Result<usize> {
        self.lookup
            .get(w)
            .copied()
            .with_context(|| format!("word {w:?} is not in the vocabulary"))
    }

    /// Top `n` rows among the first `limit` by `score`, skipping `exclude` (empty for n = 0).
    fn top(&self, limit: usize, n: usize, exclude: &[usize], score: impl Fn(usize) -> f32) -> Vec<(usize, f32)> {
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(n.min(self.words.len()) + 1);
        if n == 0 {
            return best;
        }
        for i in 0..limit.min(self.words.len()) {
            if exclude.contains(&i) {
                continue;
            }
            let s = score(i);
            if best.len() < n || best.last().is_some_and(|&(_, worst)| s > worst) {
                let pos = best.partition_point(|&(_, b)| b >= s);
                best.insert(pos, (i, s));
                best.truncate(n);
            }
        }
        best
    }

    /// The `n` words closest (cosine) to `word`, best first: [`Index::most_similar`] with
    /// one positive word. Rejects `n` = 0 and a word that is not in the vocabulary.
    pub fn similar(&self, word: &str, n: usize) -> Result<Ranked> {
        self.most_similar(&[word], &[], n)
    }

    fn named(&self, v: Vec<(usize, f32)>) -> Ranked {
        v.into_iter().map(|(i, s)| (self.words[i].clone(), s)).collect()
    }

    /// 3CosAdd over ids (gensim's `most_similar`): the unit mean of the `positive` unit
    /// vectors and the negated `negative` ones; the `n` rows among the first `limit` closest
    /// to it by cosine, the query words left out.
    fn cos_add(&self, positive: &[usize], negative: &[usize], limit: usize, n: usize) -> Vec<(usize, f32)> {
        let mut q = vec![0f32; self.dim];
        for &p in positive {
            q.iter_mut().zip(self.row(p)).for_each(|(x, y)| *x += y);
        }
        for &m in negative {
            q.iter_mut().zip(self.row(m)).for_each(|(x, y)| *x -= y);
        }
        let k = (positive.len() + negative.len()) as f32;
        q.iter_mut().for_each(|x| *x /= k);
        normalise(&mut q);
        let exclude: Vec<usize> = positive.iter().chain(negative).copied().collect();
        self.top(limit, n, &exclude, |i| dot(self.row(i), &q))
    }

    /// The `n` words closest (cosine) to the unit mean of the `positive` words' unit vectors
    /// and the negated `negative` ones, best first, the query words left out: gensim's
    /// `KeyedVectors.most_similar(positive, negative, topn=n)` (3CosAdd). `king woman -man`
    /// is `most_similar(&["king", "woman"], &["man"], n)`. Rejects `n` = 0, no words at all,
    /// and words that are not in the vocabulary (naming them).
    pub fn most_similar(&self, positive: &[&str], negative: &[&str], n: usize) -> Result<Ranked> {
        check_n(n)?;
        if positive.is_empty() && negative.is_empty() {
            bail!("most_similar needs at least one positive or negative word");
        }
        let missing: Vec<&str> = positive
            .iter()
            .chain(negative)
            .copied()
            .filter(|w| !self.lookup.contains_key(*w))
            .collect();
        match missing.as_slice() {
            [] => {}
            [w] => bail!("word {w:?} is not in the vocabulary"),
            ws => bail!("words not in the vocabulary: {ws:?}"),
        }
        let ids = |ws: &[&str]| ws.iter().map(|w| self.lookup[*w]).collect::<Vec<_>>();
        Ok(self.named(self.cos_add(&ids(positive), &ids(negative), usize::MAX, n)))
    }

    /// "a is to b as c is to ?" by 3CosAdd and by 3CosMul (Levy & Goldberg 2014, as
    /// gensim's `most_similar_cosmul`: cosines shifted to [0, 1], epsilon 1e-6); `n` best of
    /// each. Rejects `n` = 0 and words that are not in the vocabulary.
    pub fn analogy(&self, a: &str, b: &str, c: &str, n: usize) -> Result<(Ranked, Ranked)> {
        check_n(n)?;
        let (ia, ib, ic) = (self.id(a)?, self.id(b)?, self.id(c)?);
        let add = self.cos_add(&[ib, ic], &[ia], usize::MAX, n);
        let (ra, rb, rc) = (self.row(ia), self.row(ib), self.row(ic));
        let mul = self.top(usize::MAX, n, &[ia, ib, ic], |i| {
            let r = self.row(i);
            let s = |x: &[f32]| (1.0 + dot(r, x)) / 2.0;
            s(rb) * s(rc) / (s(ra) + 1e-6)
        });
        Ok((self.named(add), self.named(mul)))
    }

    /// gensim's case-insensitive view of the first `restrict` words: upper-cased word ->
    /// the most frequent (earliest) of its spellings.
    fn ok_vocab(&self, restrict: usize) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for i in (0..restrict.min(self.words.len())).rev() {
            m.insert(self.words[i].to_uppercase(), i);
        }
        m
    }
}

/// Rejects a result count of 0 (a query for no words is a mistake, not an empty answer).
fn check_n(n: usize) -> Result<()> {
    if n == 0 {
        bail!("the number of results (n) must be at least 1");
    }
    Ok(())
}

/// Rejects a `restrict_vocab` of 0 (every question would be out of vocabulary).
fn check_restrict(restrict: usize) -> Result<()> {
    if restrict == 0 {
        bail!("restrict_vocab must be at least 1 (it is how many of the most frequent words are searched)");
    }
    Ok(())
}

/// Reads an evaluation file as UTF-8, naming the line of the first invalid byte.
fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}: line {line}: not valid UTF-8 (byte offset {at})", path.display())
    })
}

/// Accuracy of one group of analogy questions.
#[derive(Clone, Debug, Serialize)]
pub struct SectionResult {
    /// Section name (`capital-common-countries`, ..., or `semantic`/`syntactic`/`total`).
    pub section: String,
    /// Questions answered right.
    pub correct: usize,
    /// Questions asked (in-vocabulary ones).
    pub total: usize,
    /// `correct / total` (0 when `total` is 0).
    pub accuracy: f64,
}

/// What [`eval_analogy`] found.
#[derive(Clone, Debug, Serialize)]
pub struct AnalogyReport {
    /// One result per `: section` of the file, in file order.
    pub sections: Vec<SectionResult>,
    /// Sections whose name does not start with `gram`.
    pub semantic: SectionResult,
    /// Sections whose name starts with `gram`.
    pub syntactic: SectionResult,
    /// All sections.
    pub overall: SectionResult,
    /// Questions in the file (including skipped ones).
    pub questions: usize,
    /// Questions skipped because a word is outside the first `restrict_vocab` words.
    pub oov_questions: usize,
    /// `oov_questions / questions`.
    pub oov_ratio: f64,
    /// How many of the most frequent words were searched.
    pub restrict_vocab: usize,
}

fn result(section: &str, correct: usize, total: usize) -> SectionResult {
    SectionResult {
        section: section.to_string(),
        correct,
        total,
        accuracy: if total > 0 { correct as f64 / total as f64 } else { 0.0 },
    }
}

/// The Google analogy test, as gensim's `evaluate_word_analogies(restrict_vocab=…,
/// case_insensitive=True)`: questions with a word outside the first `restrict` words are
/// skipped and counted; the answer is the best 3CosAdd candidate among the top 5 that is
/// not one of the question words (case-insensitively). Rejects `restrict` = 0, a file that is
/// not UTF-8, a question before the first section line and a file without questions.
pub fn eval_analogy(ix: &Index, questions: &Path, restrict: usize) -> Result<AnalogyReport> {
    check_restrict(restrict)?;
    let text = read_utf8(questions)?;
    let ok = ix.ok_vocab(restrict);
    let mut sections: Vec<(String, Vec<[usize; 4]>, usize)> = Vec::new();
    let mut n_questions = 0;
    let mut oov = 0;
    for (ln, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix(": ") {
            sections.push((name.trim().to_string(), Vec::new(), 0));
            continue;
        }
        let w: Vec<String> = line.split_whitespace().map(|w| w.to_uppercase()).collect();
        if w.len() != 4 {
            continue; // gensim skips malformed lines (and blank ones).
        }
        let Some(sec) = sections.last_mut() else {
            bail!(
                "{}: line {}: a question before the first `: section` line",
                questions.display(),
                ln + 1
            );
        };
        n_questions += 1;
        match (ok.get(&w[0]), ok.get(&w[1]), ok.get(&w[2]), ok.get(&w[3])) {
            (Some(&a), Some(&b), Some(&c), Some(&d)) => sec.1.push([a, b, c, d]),
            _ => {
                oov += 1;
                sec.2 += 1;
            }
        }
    }
    if n_questions == 0 {
        bail!("{}: no analogy questions found", questions.display());
    }
    let upper: Vec<String> = (0..restrict.min(ix.words.len()))
        .map(|i| ix.words[i].to_uppercase())
        .collect();
    let mut out = Vec::new();
    let (mut sem, mut syn) = ((0, 0), (0, 0));
    for (name, qs, _) in &sections {
        let correct: usize = qs
            .par_iter()
            .map(|&[a, b, c, d]| {
                let ignore: HashSet<&str> = [a, b, c].iter().map(|&i| upper[i].as_str()).collect();
                let mut predicted = None;
                for (i, _) in ix.cos_add(&[b, c], &[a], restrict, 5) {
                    predicted = Some(i);
                    if !ignore.contains(upper[i].as_str()) {
                        break;
                    }
                }
                usize::from(predicted.is_some_and(|p| upper[p] == upper[d]))
            })
            .sum();
        let slot = if name.starts_with("gram") { &mut syn } else { &mut sem };
        slot.0 += correct;
        slot.1 += qs.len();
        out.push(result(name, correct, qs.len()));
    }
    Ok(AnalogyReport {
        sections: out,
        semantic: result("semantic", sem.0, sem.1),
        syntactic: result("syntactic", syn.0, syn.1),
        overall: result("total", sem.0 + syn.0, sem.1 + syn.1),
        questions: n_questions,
        oov_questions: oov,
        oov_ratio: oov as f64 / n_questions as f64,
        restrict_vocab: restrict,
    })
}

/// What [`eval_similarity`] found.
#[derive(Clone, Debug, Serialize)]
pub struct SimilarityReport {
    /// Pairs in the file (including skipped ones).
    pub pairs: usize,
    /// Pairs skipped because a word is outside the first `restrict_vocab` words.
    pub oov_pairs: usize,
    /// `oov_pairs / pairs`.
    pub oov_ratio: f64,
    /// Spearman's rank correlation of cosine similarity with the human scores.
    pub spearman: f64,
    /// Pearson's correlation of cosine similarity with the human scores.
    pub pearson: f64,
}

/// Word-pair similarity (WordSim353 / SimLex-999 style: `w1 w2 score`, tab- or
/// space-separated, `#` comments), case-insensitive over the first `restrict` words as
/// gensim's `evaluate_word_pairs`; pairs with an unknown word are skipped and counted. Lines
/// that are not `word word number` are skipped as gensim skips them. Rejects `restrict` = 0,
/// a file that is not UTF-8, a file without pairs, and fewer than 2 pairs in the vocabulary.
pub fn eval_similarity(ix: &Index, pairs: &Path, restrict: usize) -> Result<SimilarityReport> {
    check_restrict(restrict)?;
    let text = read_utf8(pairs)?;
    let ok = ix.ok_vocab(restrict);
    let (mut gold, mut model) = (Vec::new(), Vec::new());
    let (mut n, mut oov) = (0, 0);
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = if line.contains('\t') {
            line.split('\t').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        let [a, b, s] = f.as_slice() else { continue };
        let Ok(s) = s.parse::<f64>() else { continue };
        n += 1;
        match (ok.get(&a.to_uppercase()), ok.get(&b.to_uppercase())) {
            (Some(&i), Some(&j)) => {
                gold.push(s);
                model.push(dot(ix.row(i), ix.row(j)) as f64);
            }
            _ => oov += 1,
        }
    }
    if n == 0 {
        bail!("{}: no `word word score` pairs found", pairs.display());
    }
    if gold.len() < 2 {
        bail!(
            "{}: fewer than 2 of its {n} pairs are in the vocabulary",
            pairs.display()
        );
    }
    Ok(SimilarityReport {
        pairs: n,
        oov_pairs: oov,
        oov_ratio: oov as f64 / n as f64,
        spearman: pearson(&ranks(&gold), &ranks(&model)),
        pearson: pearson(&gold, &model),
    })
}

/// Ranks with ties sharing their mean rank (as scipy's `rankdata`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = mean;
        }
        i = j + 1;
    }
    r
}

/// Pearson's correlation of `x` and `y` (same length); NaN when either is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1, 2, 2, 5, 3], [2, 1, 4, 4, 7]).statistic == 0.605263157894737 (scipy 1.x)
        let r = pearson(&ranks(&[1.0, 2.0, 2.0, 5.0, 3.0]), &ranks(&[2.0, 1.0, 4.0, 4.0, 7.0]));
        assert!((r - 0.605263157894737).abs() < 1e-12, "{r}");
    }

    fn toy() -> Index {
        // Planted geometry: x-axis = royal, y-axis = female, z: other.
        let wv = WordVectors {
            words: ["king", "queen", "man", "woman", "apple", "King"]
                .map(String::from)
                .to_vec(),
            dim: 3,
            vectors: vec![
                1.0, 0.0, 0.1, 1.0, 1.0, 0.1, 0.0, 0.0, 0.1, 0.0, 1.0, 0.1, 0.0, 0.0, 5.0, 1.0, 0.0, 0.12,
            ],
            counts: None,
        };
        Index::new(&wv).unwrap()
    }

    #[test]
    fn analogy_and_similar_on_planted_vectors() {
        let ix = toy();
        let (add, mul) = ix.analogy("man", "woman", "king", 1).unwrap();
        assert_eq!(add[0].0, "queen");
        assert_eq!(mul[0].0, "queen");
        assert_eq!(ix.similar("king", 1).unwrap()[0].0, "King");
        assert!(ix.similar("nope", 1).is_err());
    }

    /// gensim's `most_similar(positive=["king", "woman"], negative=["man"])`: the same
    /// words and scores as the analogy, the cosine with the unit mean computed by hand, and
    /// every query word left out.
    #[test]
    fn most_similar_is_3cosadd_over_positive_and_negative_words() {
        let ix = toy();
        let got = ix.most_similar(&["king", "woman"], &["man"], 3).unwrap();
        assert_eq!(got, ix.analogy("man", "woman", "king", 3).unwrap().0);
        assert_eq!(got[0].0, "queen");
        let unit = |w: &str| ix.row(ix.lookup[w]).to_vec();
        let (k, w, m, q) = (unit("king"), unit("woman"), unit("man"), unit("queen"));
        let mean: Vec<f32> = (0..3).map(|i| (k[i] + w[i] - m[i]) / 3.0).collect();
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        let want: f32 = (0..3).map(|i| mean[i] / norm * q[i]).sum();
        assert!((got[0].1 - want).abs() < 1e-6, "{} vs {want}", got[0].1);
        assert!(got.iter().all(|(x, _)| !["king", "woman", "man"].contains(&x.as_str())));
        // Only negative words: the words farthest from "apple" come first, apple excluded.
        let far = ix.most_similar(&[], &["apple"], 6).unwrap();
        assert_eq!(far.len(), 5);
        assert!(far.windows(2).all(|p| p[0].1 >= p[1].1));
        let e = ix
            .most_similar(&["king", "nope"], &["zilch"], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("zilch"), "{e}");
        assert!(ix.most_similar(&[], &[], 1).is_err());
        assert!(ix.most_similar(&["king"], &[], 0).is_err());
    }

    /// Issue 13: `w2v similar vec.txt the -n 0` panicked (index out of bounds).
    #[test]
    fn zero_counts_are_errors_not_panics() {
        let ix = toy();
        for e in [
            ix.similar("king", 0).unwrap_err(),
            ix.analogy("man", "woman", "king", 0).unwrap_err(),
        ] {
            assert!(e.to_string().contains("at least 1"), "{e}");
        }
        // More results than words: all the others, no panic.
        assert_eq!(ix.similar("king", 100).unwrap().len(), 5);
        assert_eq!(ix.analogy("man", "woman", "king", 100).unwrap().0.len(), 3);
        let d = std::env::temp_dir().join(format!("w2v-eval0-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let q = d.join("q.txt");
        std::fs::write(&q, ": family\nman woman king queen\n").unwrap();
        assert!(eval_analogy(&ix, &q, 0)
            .unwrap_err()
            .to_string()
            .contains("restrict_vocab"));
        let p = d.join("p.txt");
        std::fs::write(&p, "king queen 8\nman woman 7\n").unwrap();
        assert!(eval_similarity(&ix, &p, 0)
            .unwrap_err()
            .to_string()
            .contains("restrict_vocab"));
        std::fs::write(&p, b"king queen 8\nman wo\xffman 7\n").unwrap();
        let e = eval_similarity(&ix, &p, 10).unwrap_err().to_string();
        assert!(
            e.contains("p.txt") && e.contains("line 2") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn index_refuses_what_word_vectors_refuses() {
        let wv = WordVectors {
            words: vec!["a".into(), "a".into()],
            dim: 1,
            vectors: vec![1.0, 2.0],
            counts: None,
        };
        assert!(Index::new(&wv).err().unwrap().to_string().contains("appears twice"));
        let wv = WordVectors {
            words: vec!["a".into()],
            dim: 0,
            vectors: vec![],
            counts: None,
        };
        assert!(Index::new(&wv).is_err());
    }

    #[test]
    fn eval_analogy_counts_like_gensim() {
        let ix = toy();
        let d = std::env::temp_dir().join(format!("w2v-eval-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let q = d.join("q.txt");
        // 1 correct, 1 OOV; "KING" and "king" are one word case-insensitively.
        std::fs::write(
            &q,
            ": family\nman woman KING queen\nman woman prince princess\n: gram1\nbad line\n",
        )
        .unwrap();
        let r = eval_analogy(&ix, &q, 30000).unwrap();
        assert_eq!((r.questions, r.oov_questions), (2, 1));
        assert_eq!((r.semantic.correct, r.semantic.total), (1, 1));
        assert_eq!(r.syntactic.total, 0);
        let p = d.join("p.txt");
        std::fs::write(&p, "# comment\nking\tqueen\t8\nman woman 7\napple king 1\nfoo bar 3\n").unwrap();
        let s = eval_similarity(&ix, &p, 30000).unwrap();
        assert_eq!((s.pairs, s.oov_pairs), (4, 1));
    }
}
