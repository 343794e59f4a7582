//! BERT data: a tokenizer with `[CLS]`/`[SEP]`/`[MASK]`, sentence pairs for next-sentence
//! prediction and the 80/10/10 masking of the MLM objective. Every random choice for example
//! `index` of `epoch` comes from an RNG seeded by (seed, epoch, index), so masks are drawn
//! anew each epoch and a resumed run sees the same data as an uninterrupted one.

use anyhow::{bail, Context, Result};
use seqlab_data::{Tokenizer, TokenizerConfig};
use seqlab_nn::SeqRng;
use std::path::Path;
use tokenizers::AddedToken;

/// BERT's classification token `[CLS]`, put first in every pair.
pub const CLS: &str = "[CLS]";
/// BERT's separator token `[SEP]`, ending each segment of a pair.
pub const SEP: &str = "[SEP]";
/// BERT's mask token `[MASK]`, replacing tokens chosen for masked-LM prediction.
pub const MASK: &str = "[MASK]";
/// seqlab-data's `<pad> <bos> <eos> <unk>` take ids 0..4.
const BASE_SPECIALS: u32 = 4;

/// A BERT tokenizer: seqlab's tokenizer plus the three BERT special tokens (added after its
/// vocabulary), or a Hugging Face WordPiece tokenizer (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`,
/// `[MASK]` in its vocabulary; see [`crate::hf`]). Either way the file it saves is an HF
/// `tokenizer.json`.
#[derive(Clone, Debug)]
pub struct BertTokenizer {
    /// The underlying HF tokenizer (BPE, word or char from seqlab, or WordPiece), the BERT
    /// tokens included. [`BertTokenizer::encode`] adds no special tokens.
    pub hf: tokenizers::Tokenizer,
    /// Id of `[CLS]`.
    pub cls: u32,
    /// Id of `[SEP]`.
    pub sep: u32,
    /// Id of `[MASK]`.
    pub mask: u32,
    /// Id of the padding token (seqlab's `<pad>` = `PAD_ID`, or WordPiece's `[PAD]`).
    pub pad: u32,
    /// The ordinary tokens: masking never selects anything outside, and random replacements
    /// are drawn from them. seqlab: `4..` the first BERT token; WordPiece: after the last
    /// special or `[unusedN]` token up to the vocabulary's end.
    pub ordinary: std::ops::Range<u32>,
}

impl BertTokenizer {
    /// Trains seqlab's tokenizer on `lines`, then adds `[CLS]`, `[SEP]`, `[MASK]` as special
    /// tokens of the HF tokenizer it wraps (so they survive `save`/`load`).
    pub fn train<'a>(cfg: &TokenizerConfig, lines: impl Iterator<Item = &'a str> + Send) -> Result<Self> {
        let base = Tokenizer::train(cfg, lines).map_err(|e| anyhow::anyhow!("training the tokenizer: {}", e.0))?;
        let mut hf = base.hf().clone();
        hf.add_special_tokens([
            AddedToken::from(CLS, true),
            AddedToken::from(SEP, true),
            AddedToken::from(MASK, true),
        ])
        .map_err(|e| anyhow::anyhow!("adding BERT special tokens: {e}"))?;
        Self::from_hf(hf)
    }

    /// Wraps an HF tokenizer that holds the BERT special tokens: a seqlab tokenizer (with
    /// `<pad>` at 0) or a WordPiece one (with `[PAD]` and `[UNK]`). Rejects anything else,
    /// naming the missing token.
    pub fn from_hf(hf: tokenizers::Tokenizer) -> Result<Self> {
        let id = |s: &str| {
            hf.token_to_id(s)
                .ok_or_else(|| anyhow::anyhow!("tokenizer has no {s} token: not a BERT tokenizer"))
        };
        let (cls, sep, mask) = (id(CLS)?, id(SEP)?, id(MASK)?);
        let wordpiece = matches!(hf.get_model(), tokenizers::ModelWrapper::WordPiece(_));
        let (pad, ordinary) = if wordpiece {
            let pad = id(crate::hf::PAD)?;
            id(crate::hf::UNK)?;
            // bert-base-uncased keeps [unused0..98] before [UNK] and [unused99..993] after
            // [MASK]: ordinary pieces start after the last of them.
            let vocab = hf.get_vocab(true);
            let last_special = vocab
                .iter()
                .filter(|(t, _)| t.starts_with('[') && t.ends_with(']') && t.len() > 2)
                .map(|(_, &i)| i)
                .max()
                .unwrap_or(0);
            (pad, last_special + 1..hf.get_vocab_size(true) as u32)
        } else {
            // A seqlab tokenizer: check its own specials (ids 0..4).
            let base = Tokenizer::from_json(&hf.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?)
                .map_err(|e| anyhow::anyhow!("{}", e.0))?;
            (base.pad_id(), BASE_SPECIALS..cls.min(sep).min(mask))
        };
        if ordinary.is_empty() {
            bail!("tokenizer has no ordinary tokens");
        }
        Ok(Self {
            hf,
            cls,
            sep,
            mask,
            pad,
            ordinary,
        })
    }

    /// Loads an HF `tokenizer.json` (one [`BertTokenizer::save`] wrote, or a WordPiece one
    /// from the hub) with the BERT special tokens; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let hf =
            seqlab_data::tokenizer::parse_hf_json(&json).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.0))?;
        Self::from_hf(hf).with_context(|| path.display().to_string())
    }

    /// Writes the underlying tokenizer (special tokens included) as HF `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .hf
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        seqlab_nn::io::write_atomic(path, json.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Number of ids, the BERT special tokens included (embedding table size).
    pub fn vocab_size(&self) -> usize {
        self.hf
            .get_vocab_size(true)
            .max(self.cls.max(self.sep).max(self.mask) as usize + 1)
    }

    /// Ids of `text` without any special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .hf
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    fn is_special(&self, id: u32) -> bool {
        !self.ordinary.contains(&id)
    }

    fn random_token(&self, rng: &mut SeqRng) -> u32 {
        self.ordinary.start + rng.below(self.ordinary.len()) as u32
    }
}

/// Sentences of a paragraph, cut after `.`, `!` or `?` followed by whitespace or the end.
pub fn split_sentences(paragraph: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = paragraph.char_indices().peekable();
    while let Some((i, ch)) = it.next() {
        if matches!(ch, '.' | '!' | '?') && it.peek().is_none_or(|(_, n)| n.is_whitespace()) {
            let end = i + ch.len_utf8();
            out.push(paragraph[start..end].trim());
            start = end;
        }
    }
    out.push(paragraph[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// The RNG of example `index` in `epoch` (SplitMix64 mixing of the three numbers).
pub fn example_rng(seed: u64, epoch: u64, index: usize) -> SeqRng {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SeqRng::new(z ^ (z >> 31))
}

/// Tokenised sentences with their paragraph numbers; pair anchors are the sentences that
/// have a next sentence in the same paragraph.
#[derive(Clone, Debug)]
pub struct PairCorpus {
    /// Token ids of each sentence, without special tokens.
    pub sentences: Vec<Vec<u32>>,
    /// Paragraph number of each sentence.
    pub paragraph: Vec<usize>,
    /// Indices of the sentences followed by another in the same paragraph.
    pub anchors: Vec<usize>,
}

/// One NSP pair: sentence indices and whether `b` really follows `a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Index of the first sentence (segment A).
    pub a: usize,
    /// Index of the second sentence (segment B).
    pub b: usize,
    /// True when `b` is the sentence after `a` (NSP label "IsNext").
    pub is_next: bool,
}

impl PairCorpus {
    /// `paragraphs[p][s]` = token ids of sentence `s` of paragraph `p`; empty sentences dropped.
    pub fn new(paragraphs: Vec<Vec<Vec<u32>>>) -> Result<Self> {
        let (mut sentences, mut paragraph, mut anchors) = (Vec::new(), Vec::new(), Vec::new());
        let mut n_par = 0;
        for p in paragraphs {
            let p: Vec<Vec<u32>> = p.into_iter().filter(|s| !s.is_empty()).collect();
            if p.is_empty() {
                continue;
            }
            for (k, s) in p.iter().enumerate() {
                if k + 1 < p.len() {
                    anchors.push(sentences.len());
                }
                sentences.push(s.clone());
                paragraph.push(n_par);
            }
            n_par += 1;
        }
        if anchors.is_empty() {
            bail!("no paragraph has two sentences: next-sentence pairs need paragraphs of several sentences (one paragraph per line, sentences ending in . ! or ?)");
        }
        if n_par < 2 {
            bail!("need at least two paragraphs to draw random (not-next) sentences");
        }
        Ok(Self {
            sentences,
            paragraph,
            anchors,
        })
    }

    /// Tokenises `lines` (one paragraph each).
    pub fn from_lines<'a>(tok: &BertTokenizer, lines: impl Iterator<Item = &'a str>) -> Result<Self> {
        let mut pars = Vec::new();
        for l in lines {
            pars.push(
                split_sentences(l)
                    .into_iter()
                    .map(|s| tok.encode(s))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        Self::new(pars)
    }

    /// Number of anchor sentences (sentences that have a next sentence).
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// True when no paragraph has two sentences, so no pair can be drawn.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Pair for anchor `k`: with probability 1/2 the true next sentence, else a random
    /// sentence from another paragraph.
    pub fn pair(&self, k: usize, rng: &mut SeqRng) -> Pair {
        let a = self.anchors[k % self.anchors.len()];
        if rng.unit_f32() < 0.5 {
            return Pair {
                a,
                b: a + 1,
                is_next: true,
            };
        }
        let n = self.sentences.len();
        let mut b = rng.below(n);
        let mut tries = 0;
        while self.paragraph[b] == self.paragraph[a] {
            tries += 1;
            // Rejection sampling, then a scan so that one huge paragraph cannot loop forever.
            b = if tries < 16 { rng.below(n) } else { (b + 1) % n };
        }
        Pair { a, b, is_next: false }
    }
}

/// `[CLS] A [SEP] B [SEP]` with segment ids, the longer side cut until it fits `max_len`.
pub fn pair_input(tok: &BertTokenizer, a: &[u32], b: &[u32], max_len: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut la, mut lb) = (a.len(), b.len());
    while la + lb + 3 > max_len && la + lb > 0 {
        if la >= lb {
            la -= 1;
        } else {
            lb -= 1;
        }
    }
    let mut ids = Vec::with_capacity(la + lb + 3);
    ids.push(tok.cls);
    ids.extend_from_slice(&a[..la]);
    ids.push(tok.sep);
    let seg_a = ids.len();
    ids.extend_from_slice(&b[..lb]);
    ids.push(tok.sep);
    let segs = (0..ids.len()).map(|i| u32::from(i >= seg_a)).collect();
    (ids, segs)
}

/// Masking probabilities; defaults are the paper's (15 % selected; 80 % `[MASK]`, 10 %
/// random, 10 % unchanged).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskConfig {
    /// Probability that a token is selected for prediction. Default 0.15.
    pub select: f64,
    /// Probability that a selected token becomes `[MASK]`. Default 0.8.
    pub to_mask: f64,
    /// Probability that a selected token becomes a random ordinary token. Default 0.1.
    pub to_random: f64,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            select: 0.15,
            to_mask: 0.8,
            to_random: 0.1,
        }
    }
}

/// Masks `ids` in place: `round(select · n)` (at least one) of the `n` non-special positions
/// are chosen; returns (position, original id) of each, sorted by position.
pub fn mask_tokens(ids: &mut [u32], tok: &BertTokenizer, m: &MaskConfig, rng: &mut SeqRng) -> Vec<(usize, u32)> {
    let mut cand: Vec<usize> = (0..ids.len()).filter(|&i| !tok.is_special(ids[i])).collect();
    if cand.is_empty() {
        return Vec::new();
    }
    let k = ((m.select * cand.len() as f64).round() as usize).clamp(1, cand.len());
    // Partial Fisher-Yates: the first k of a uniform shuffle.
    for i in 0..k {
        let j = i + rng.below(cand.len() - i);
        cand.swap(i, j);
    }
    let mut chosen: Vec<usize> = cand[..k].to_vec();
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|p| {
            let orig = ids[p];
            let u = rng.unit_f32() as f64;
            if u < m.to_mask {
                ids[p] = tok.mask;
            } else if u < m.to_mask + m.to_random {
                ids[p] = tok.random_token(rng);
            }
            (p, orig)
        })
        .collect()
}

/// A padded pretraining batch, row-major (B, L).
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainBatch {
    /// Number of rows B.
    pub batch: usize,
    /// Padded length L.
    pub len: usize,
    /// Input ids (B, L) after masking, `[CLS] A [SEP] B [SEP]` then padding.
    pub ids: Vec<u32>,
    /// Segment ids (B, L): 0 for `[CLS] A [SEP]`, 1 for `B [SEP]` (HF `token_type_ids`).
    pub segments: Vec<u32>,
    /// 1 = padding.
    pub padding: Vec<u8>,
    /// Flat positions (row · L + col) of the MLM targets, and their original ids.
    pub masked: Vec<u32>,
    /// Original ids at the `masked` positions (the MLM targets).
    pub mlm_labels: Vec<u32>,
    /// 0 = B follows A, 1 = random B (HF's `next_sentence_label`).
    pub nsp_labels: Vec<u32>,
}

/// The examples `anchors` (indices into `corpus.anchors`) of `epoch`, masked and padded.
pub fn pretrain_batch(
    corpus: &PairCorpus,
    tok: &BertTokenizer,
    anchors: &[usize],
    seed: u64,
    epoch: u64,
    max_len: usize,
    m: &MaskConfig,
) -> PretrainBatch {
    let mut rows = Vec::with_capacity(anchors.len());
    for &k in anchors {
        let mut rng = example_rng(seed, epoch, k);
        let p = corpus.pair(k, &mut rng);
        let (mut ids, segs) = pair_input(tok, &corpus.sentences[p.a], &corpus.sentences[p.b], max_len);
        let targets = mask_tokens(&mut ids, tok, m, &mut rng);
        rows.push((ids, segs, targets, p.is_next));
    }
    let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let b = rows.len();
    let mut out = PretrainBatch {
        batch: b,
        len,
        ids: vec![tok.pad; b * len],
        segments: vec![0; b * len],
        padding: vec![1; b * len],
        masked: vec![],
        mlm_labels: vec![],
        nsp_labels: vec![],
    };
    for (r, (ids, segs, targets, is_next)) in rows.into_iter().enumerate() {
        let o = r * len;
        out.ids[o..o + ids.len()].copy_from_slice(&ids);
        out.segments[o..o + segs.len()].copy_from_slice(&segs);
        out.padding[o..o + ids.len()].iter_mut().for_each(|p| *p = 0);
        for (pos, orig) in targets {
            out.masked.push((o + pos) as u32);
            out.mlm_labels.push(orig);
        }
        out.nsp_labels.push(u32::from(!is_next));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use seqlab_data::TokenizerKind;

    pub(crate) fn corpus_lines() -> Vec<String> {
        let words = [
            "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "bird", "sang", "in", "tree", "fish",
            "swam",
        ];
        let mut rng = SeqRng::new(7);
        (0..60)
            .map(|_| {
                (0..4)
                    .map(|_| {
                        let n = 4 + rng.below(5);
                        let s: Vec<&str> = (0..n).map(|_| words[rng.below(words.len())]).collect();
                        format!("{} .", s.join(" "))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    pub(crate) fn tokenizer(lines: &[String]) -> BertTokenizer {
        let cfg = TokenizerConfig {
            vocab_size: 120,
            ..TokenizerConfig::new(TokenizerKind::Bpe)
        };
        BertTokenizer::train(&cfg, lines.iter().map(String::as_str)).unwrap()
    }

    #[test]
    fn sentences_split_on_terminators() {
        assert_eq!(split_sentences("A b. C? D!e f. "), vec!["A b.", "C?", "D!e f."]);
        assert_eq!(split_sentences("no end"), vec!["no end"]);
        assert!(split_sentences("  ").is_empty());
    }

    #[test]
    fn special_tokens_added_and_saved() {
        let lines = corpus_lines();
        let tok = tokenizer(&lines);
        assert!(tok.ordinary.end > 4 && tok.ordinary.start == 4);
        assert!(tok.cls.max(tok.sep).max(tok.mask) < tok.vocab_size() as u32);
        let ids = tok.encode("[CLS] the cat [SEP]").unwrap();
        assert_eq!(ids.first(), Some(&tok.cls));
        assert_eq!(ids.last(), Some(&tok.sep));
        let dir = std::env::temp_dir().join(format!("seqlab-bert-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tok.save(&dir.join("t.json")).unwrap();
        let back = BertTokenizer::load(&dir.join("t.json")).unwrap();
        assert_eq!((back.cls, back.sep, back.mask), (tok.cls, tok.sep, tok.mask));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn masking_statistics() {
        let lines = corpus_lines();
        let tok = tokenizer(&lines);
        let m = MaskConfig::default();
        let base: Vec<u32> = (0..200).map(|i| 4 + (i % (tok.ordinary.end - 4))).collect();
        let (mut n, mut sel, mut masked, mut random, mut same) = (0usize, 0usize, 0usize, 0usize, 0usize);
        for idx in 0..500 {
            let mut ids = base.clone();
            ids[0] = tok.cls;
            let mut rng = example_rng(3, 0, idx);
            let t = mask_tokens(&mut ids, &tok, &m, &mut rng);
            assert_eq!(ids[0], tok.cls, "specials are never selected");
            n += base.len() - 1;
            sel += t.len();
            for (p, orig) in t {
                assert_eq!(orig, base[p]);
                if ids[p] == tok.mask {
                    masked += 1;
                } else if ids[p] == orig {
                    same += 1;
                } else {
                    assert!(!tok.is_special(ids[p]));
                    random += 1;
                }
            }
        }
        let f = |a: usize, b: usize| a as f64 / b as f64;
        assert!((f(sel, n) - 0.15).abs() < 0.005, "selected {}", f(sel, n));
        assert!((f(masked, sel) - 0.8).abs() < 0.02, "[MASK] {}", f(masked, sel));
        // Random draws can hit the original token (1 in ~ordinary.len()); allow for it.
        assert!((f(random, sel) - 0.1).abs() < 0.02, "random {}", f(random, sel));
        assert!((f(same, sel) - 0.1).abs() < 0.02, "unchanged {}", f(same, sel));
    }

    #[test]
    fn masks_are_pure_and_change_between_epochs() {
        let lines = corpus_lines();
        let tok = tokenizer(&lines);
        let corpus = PairCorpus::from_lines(&tok, lines.iter().map(String::as_str)).unwrap();
        let m = MaskConfig::default();
        let a = pretrain_batch(&corpus, &tok, &[0, 1, 2, 3], 5, 0, 64, &m);
        assert_eq!(a, pretrain_batch(&corpus, &tok, &[0, 1, 2, 3], 5, 0, 64, &m));
        let b = pretrain_batch(&corpus, &tok, &[0, 1, 2, 3], 5, 1, 64, &m);
        assert_ne!(a.masked, b.masked);
        for (&p, &l) in a.masked.iter().zip(&a.mlm_labels) {
            assert_eq!(a.padding[p as usize], 0);
            assert!(!tok.is_special(l));
        }
    }

    #[test]
    fn pair_sampling_is_half_true_and_true_pairs_are_consecutive() {
        let lines = corpus_lines();
        let tok = tokenizer(&lines);
        let corpus = PairCorpus::from_lines(&tok, lines.iter().map(String::as_str)).unwrap();
        assert_eq!(corpus.len(), 60 * 3);
        let mut next = 0;
        let n = 4000;
        for i in 0..n {
            let mut rng = example_rng(9, 0, i);
            let p = corpus.pair(i, &mut rng);
            if p.is_next {
                next += 1;
                assert_eq!(p.b, p.a + 1);
                assert_eq!(corpus.paragraph[p.a], corpus.paragraph[p.b]);
            } else {
                assert_ne!(corpus.paragraph[p.a], corpus.paragraph[p.b]);
            }
        }
        assert!((next as f64 / n as f64 - 0.5).abs() < 0.03, "true pairs {next}/{n}");
        // The text of a true pair really is consecutive in its paragraph.
        let par = split_sentences(&lines[0]);
        assert_eq!(corpus.sentences[1], tok.encode(par[1]).unwrap());
    }

    #[test]
    fn pair_input_fits_and_segments() {
        let lines = corpus_lines();
        let tok = tokenizer(&lines);
        let (ids, segs) = pair_input(&tok, &[10; 20], &[11; 5], 16);
        assert_eq!(ids.len(), 16);
        assert_eq!(ids[0], tok.cls);
        assert_eq!(ids.iter().filter(|&&i| i == tok.sep).count(), 2);
        let first_b = ids.iter().position(|&i| i == 11).unwrap();
        assert!(segs[..first_b].iter().all(|&s| s == 0) && segs[first_b..].iter().all(|&s| s == 1));
    }

    #[test]
    fn corpus_without_pairs_is_an_error() {
        let e = PairCorpus::new(vec![vec![vec![5]], vec![vec![6]]]).unwrap_err();
        assert!(e.to_string().contains("two sentences"), "{e}");
    }
}
