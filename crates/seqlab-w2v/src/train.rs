//! The trainer: skip-gram / CBOW with negative sampling and/or hierarchical softmax,
//! Hogwild over threads that each stream their own byte range of the corpus.
//!
//! [`train_file`] runs these steps, each a function below:
//! 1. [`Vocab::build`]: one counting pass over the corpus;
//! 2. [`Weights::init`]: input vectors uniform in ±1/dim (gensim 4), output vectors zero;
//! 3. the output layers ([`NegativeSampling`], [`HierarchicalSoftmax`], both behind
//!    [`OutputLayer`]) and the shared tables (subsampling thresholds, logistic table);
//! 4. one [`Worker`] per thread: for each epoch, read its byte range line by line, drop
//!    subsampled words, train each sentence ([`train_sentence_impl`]), and decay the learning
//!    rate on global progress ([`LearningRate`]);
//! 5. join the workers and report.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[cfg(target_arch = "x86_64")]
use crate::simd::Avx2;
use crate::simd::{padded_stride, Scalar, Simd, LANES};
use crate::text::{ranges, ChunkReader, TextOptions, MAX_SENTENCE};
use crate::vocab::{AliasTable, CorpusStats, Huffman, Vocab};
use seqlab_dist::{Collective, SingleProcess};

/// The word2vec architecture (Mikolov et al., 2013, "Efficient Estimation of Word
/// Representations in Vector Space").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Model {
    /// Skip-gram: each context word predicts the centre word (default).
    #[default]
    Skipgram,
    /// Continuous bag of words: the mean (or sum) of the context predicts the centre word.
    Cbow,
}

impl Model {
    /// The name used on the command line and in messages: `skipgram` or `cbow`.
    pub fn name(self) -> &'static str {
        match self {
            Model::Skipgram => "skipgram",
            Model::Cbow => "cbow",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = anyhow::Error;
    /// Accepts `skipgram` (also `skip-gram`, `sg`) and `cbow`; rejects anything else.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skipgram" | "skip-gram" | "sg" => Ok(Model::Skipgram),
            "cbow" => Ok(Model::Cbow),
            _ => bail!("unknown model {s:?} (expected skipgram or cbow)"),
        }
    }
}

/// Training settings. Defaults ([`Config::default`]) follow word2vec.c (and gensim where they
/// agree); each field names its default. Check a config with [`Config::validate`] (which
/// [`train_file`] calls first).
#[derive(Clone, Debug)]
pub struct Config {
    /// Skip-gram or CBOW. Default: skip-gram.
    pub model: Model,
    /// Vector size. Default 100.
    pub dim: usize,
    /// Maximum distance to a context word; each position draws its own in `1..=window`
    /// (word2vec.c's dynamic window). Default 5.
    pub window: usize,
    /// Negative samples per positive, drawn from unigram^0.75 (0: no negative sampling).
    /// Default 5.
    pub negative: usize,
    /// Also train hierarchical softmax over a Huffman tree. Default false.
    pub hs: bool,
    /// Subsampling threshold for frequent words (0: off). Default 1e-3.
    pub sample: f64,
    /// Words seen fewer times are left out of the vocabulary. Default 5.
    pub min_count: u64,
    /// Keep at most this many words (the most frequent); `None`: no limit. Default `None`.
    pub max_vocab: Option<usize>,
    /// Passes over the corpus. Default 5.
    pub epochs: usize,
    /// Initial learning rate; `None`: 0.025 for skip-gram, 0.05 for CBOW (word2vec.c;
    /// gensim uses 0.025 for both). Default `None`.
    pub alpha: Option<f32>,
    /// Final learning rate (linear decay from `alpha`); `None`: alpha · 1e-4. Default `None`.
    pub min_alpha: Option<f32>,
    /// CBOW: average the context vectors (true) or sum them. Default true.
    pub cbow_mean: bool,
    /// Worker threads; with 1 a run is reproducible bit for bit. Default 1.
    pub threads: usize,
    /// Seed of the initial vectors and of every thread's random stream. Default 1.
    pub seed: u64,
    /// Lower-casing / punctuation stripping of the corpus. Default: both off.
    pub text: TextOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            model: Model::Skipgram,
            dim: 100,
            window: 5,
            negative: 5,
            hs: false,
            sample: 1e-3,
            min_count: 5,
            max_vocab: None,
            epochs: 5,
            alpha: None,
            min_alpha: None,
            cbow_mean: true,
            threads: 1,
            seed: 1,
            text: TextOptions::default(),
        }
    }
}

impl Config {
    /// The initial learning rate: `alpha`, or the model's default.
    pub fn alpha0(&self) -> f32 {
        self.alpha.unwrap_or(match self.model {
            Model::Skipgram => 0.025,
            Model::Cbow => 0.05,
        })
    }

    /// The final learning rate: `min_alpha`, or alpha · 1e-4.
    pub fn min_alpha(&self) -> f32 {
        self.min_alpha.unwrap_or(self.alpha0() * 1e-4)
    }

    /// Checks the settings. Rejects: `dim`, `window`, `epochs` or `threads` of 0; `negative`
    /// 0 without `hs` (nothing to train) or above [`MAX_NEGATIVE`]; `max_vocab` of 0; an
    /// `alpha` that is not a positive finite number; a `min_alpha` that is negative, not
    /// finite or above `alpha`; a `sample` that is negative or not finite.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            bail!("dim must be at least 1");
        }
        if self.window == 0 {
            bail!("window must be at least 1");
        }
        if self.negative == 0 && !self.hs {
            bail!("nothing to train: negative is 0 and hierarchical softmax (hs) is off");
        }
        if self.negative > MAX_NEGATIVE {
            bail!("negative must be at most {MAX_NEGATIVE}, got {}", self.negative);
        }
        if self.max_vocab == Some(0) {
            bail!("max_vocab must be at least 1 (leave it unset for no limit)");
        }
        if self.epochs == 0 {
            bail!("epochs must be at least 1");
        }
        if self.threads == 0 {
            bail!("threads must be at least 1");
        }
        let a = self.alpha0();
        if !(a > 0.0 && a.is_finite()) {
            bail!("alpha must be positive, got {a}");
        }
        let m = self.min_alpha();
        if !(m >= 0.0 && m <= a) {
            bail!("min_alpha must be between 0 and alpha ({a}), got {m}");
        }
        if !(self.sample >= 0.0 && self.sample.is_finite()) {
            bail!("sample must be >= 0, got {}", self.sample);
        }
        Ok(())
    }
}

/// Trained input vectors (`syn0`), row-major `[vocab.len(), dim]`.
pub struct Embeddings {
    /// The vocabulary, most frequent word first; row i is word i.
    pub vocab: Vocab,
    /// Vector size.
    pub dim: usize,
    /// `vocab.len() * dim` values.
    pub vectors: Vec<f32>,
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// What the counting pass saw.
    pub corpus: CorpusStats,
    /// Words kept in the vocabulary.
    pub vocab_size: usize,
    /// In-vocabulary words read over all epochs (before subsampling).
    pub words_trained: u64,
    /// Wall time of the training passes, in seconds.
    pub train_seconds: f64,
    /// Wall time of the counting pass, in seconds.
    pub vocab_seconds: f64,
    /// `words_trained / train_seconds`.
    pub words_per_second: f64,
    /// Invalid UTF-8 bytes skipped in the last epoch (summed over threads).
    pub invalid_bytes: u64,
    /// Processes that trained together ([`train_file_distributed`]); `words_trained`,
    /// `words_per_second` and `invalid_bytes` are this rank's.
    pub ranks: usize,
    /// Model synchronisations between ranks (0 on one rank).
    pub sync_rounds: u64,
    /// Wall seconds spent in them (waiting for slower ranks included).
    pub sync_seconds: f64,
}

const EXP_TABLE_SIZE: usize = 1000;
/// Most negative samples per positive (gensim and word2vec.c users go up to 25).
pub const MAX_NEGATIVE: usize = 64;
const MAX_EXP: f32 = 6.0;
/// Words a thread trains between two updates of the shared progress counter (and so of its
/// learning rate), as word2vec.c's 10,000.
const PROGRESS_EVERY: u64 = 10_000;

/// word2vec.c's precomputed logistic on [-MAX_EXP, MAX_EXP]: `exp` costs as much as the
/// 100-wide dot product it follows, and 1000 steps are as accurate as SGD needs.
fn sigmoid_table() -> Vec<f32> {
    (0..EXP_TABLE_SIZE)
        .map(|i| {
            let e = ((i as f32 / EXP_TABLE_SIZE as f32 * 2.0 - 1.0) * MAX_EXP).exp();
            e / (e + 1.0)
        })
        .collect()
}

/// SplitMix64: per-thread stream for window shrinking, subsampling and negative draws.
/// Three multiplies per draw; a ChaCha stream would cost more than the updates it drives.
struct Fast(u64);

impl Fast {
    /// The stream of thread `tid` of a run seeded with `seed`.
    fn for_thread(seed: u64, tid: usize) -> Self {
        Fast(seed ^ (tid as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F))
    }
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// The stream as it will be after `k` more draws (SplitMix64 is a counter, so a later
    /// draw can be computed without taking the ones before it).
    #[inline(always)]
    fn ahead(&self, k: usize) -> Fast {
        Fast(self.0.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k as u64)))
    }
    /// Uniform in `0..n` (n < 2^32).
    #[inline(always)]
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// One 64-byte cache line of f32: the allocation unit of [`Matrix`], so that rows of a padded
/// layout start on a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; LANES]);

/// A row-major `rows × dim` f32 matrix stored `stride` (≥ dim) values apart, 64-byte aligned;
/// the `stride − dim` values after each row are +0.0 and stay so (the primitives write only
/// +0.0 there, see `simd::Avx512`).
///
/// The trainer uses `stride = padded_stride(dim)`: for dim 100, rows of 448 bytes on 7 whole
/// cache lines instead of 400 bytes at any offset, so no 64-byte load or store of a row spans
/// two lines and the AVX-512 tails need no masks.
struct Matrix {
    lines: Vec<Line>,
    rows: usize,
    dim: usize,
    stride: usize,
}

impl Matrix {
    fn zeros(rows: usize, dim: usize, stride: usize) -> Self {
        assert!(stride >= dim);
        let n = (rows * stride).div_ceil(LANES);
        let lines = if n == 0 {
            Vec::new()
        } else {
            let layout = std::alloc::Layout::array::<Line>(n).expect("matrix size overflows");
            // SAFETY: `layout` has a non-zero size; all-zero bytes are valid `Line`s; the
            // allocation has `Vec<Line>`'s layout for capacity `n`, so the Vec may own it.
            unsafe {
                let p = std::alloc::alloc_zeroed(layout);
                if p.is_null() {
                    std::alloc::handle_alloc_error(layout);
                }
                huge_pages(p, layout.size());
                Vec::from_raw_parts(p.cast::<Line>(), n, n)
            }
        };
        Self {
            lines,
            rows,
            dim,
            stride,
        }
    }
    /// All `rows × stride` values, pads included.
    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; LANES]`, so the lines are
        // `lines.len() × LANES` ≥ `rows × stride` contiguous, initialised f32.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.rows * self.stride) }
    }
    fn row_mut(&mut self, r: usize) -> &mut [f32] {
        let (s, d) = (self.stride, self.dim);
        &mut self.as_mut_slice()[r * s..r * s + d]
    }
    /// The rows without their pads (the `rows × dim` layout every API and file sees).
    fn into_dense(mut self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.rows * self.dim);
        for r in 0..self.rows {
            v.extend_from_slice(self.row_mut(r));
        }
        v
    }
}

/// Asks Linux for transparent huge pages over the 2 MiB pages inside `len` bytes at `p` (a
/// hint; no effect where THP is off; this machine has it on `madvise`). The trainer's rows are
/// random accesses over tens of MiB, more than the 4 KiB-page TLB covers. Skip-gram, 1 thread,
/// 1 epoch, medians of 5 alternating runs (machine load about 1.8 of 2 cores, indicative):
/// 1.27 M words/s against 1.19 M without the hint (user CPU 9.43 s against 9.96 s); CBOW the
/// same (4.04 M against 4.03 M) (2026-12-01).
#[allow(unused_variables)]
fn huge_pages(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let page = 4096;
        let start = (p as usize).next_multiple_of(page);
        let end = (p as usize + len) / page * page;
        if end > start {
            // SAFETY: the range lies inside one live allocation of ours; MADV_HUGEPAGE changes
            // no contents, only how the kernel backs the pages (an error is ignored).
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

/// The parameters: input vectors `syn0` (the embeddings), the negative-sampling output
/// vectors `syn1neg` and the hierarchical-softmax inner-node vectors `syn1` (no rows when
/// that output layer is off).
struct Weights {
    syn0: Matrix,
    syn1neg: Matrix,
    syn1: Matrix,
}

impl Weights {
    /// Input vectors uniform in [-1/dim, 1/dim) as gensim 4 (`prep_vectors`), drawn from
    /// ChaCha8 seeded with `cfg.seed` (row by row, so the values do not depend on `stride`);
    /// output vectors zero. word2vec.c uses half that range; gensim's range gave CBOW analogy
    /// 22.47 % / 22.05 % against 22.18 % / 21.54 % on seeds 1 / 2
    /// (bench/w2v_vs_gensim.results.md, 2026-11-30: within seed noise, same direction).
    fn init(vocab_len: usize, cfg: &Config, stride: usize) -> Self {
        let dim = cfg.dim;
        let mut init = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut syn0 = Matrix::zeros(vocab_len, dim, stride);
        for r in 0..vocab_len {
            for x in syn0.row_mut(r) {
                *x = (init.random::<f32>() * 2.0 - 1.0) / dim as f32;
            }
        }
        let syn1neg = Matrix::zeros(if cfg.negative > 0 { vocab_len } else { 0 }, dim, stride);
        let syn1 = Matrix::zeros(if cfg.hs { vocab_len.max(2) } else { 0 }, dim, stride);
        Self { syn0, syn1neg, syn1 }
    }
}

/// A matrix shared by all threads without locks (Hogwild, as word2vec.c and gensim do):
/// updates touch a few rows out of tens of thousands, so two threads rarely write the same
/// row at once, and a lost update is just noise in SGD. Locks or atomics per element would
/// cost more than the arithmetic. A raw pointer because Rust references may not alias
/// mutably; every access is in bounds by construction (word ids < vocab size, inner node
/// ids < vocab size - 1).
#[derive(Clone, Copy)]
struct Rows {
    base: *mut f32,
    dim: usize,
    stride: usize,
}
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    fn of(m: &mut Matrix) -> Self {
        Rows {
            base: m.as_mut_slice().as_mut_ptr(),
            dim: m.dim,
            stride: m.stride,
        }
    }
    /// Row `i` (`dim` values; its pad follows it). Safety: `i` is a row of the matrix; other
    /// threads may write it (Hogwild).
    #[inline(always)]
    unsafe fn row<'a>(self, i: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.base.add(i * self.stride), self.dim)
    }
}

/// Gradient scale for label `label` given the score `f`, or None when the logistic is
/// saturated (gensim skips those updates; their gradient is at most 0.25 % of alpha).
#[inline(always)]
fn grad(sig: &[f32], f: f32, label: f32, alpha: f32) -> Option<f32> {
    if f <= -MAX_EXP || f >= MAX_EXP {
        return None;
    }
    let i = ((f + MAX_EXP) * (EXP_TABLE_SIZE as f32 / MAX_EXP / 2.0)) as usize;
    // SAFETY: -MAX_EXP < f < MAX_EXP, so 0 <= i < EXP_TABLE_SIZE.
    let s = unsafe { *sig.get_unchecked(i.min(EXP_TABLE_SIZE - 1)) };
    Some((label - s) * alpha)
}

/// An output layer: predicts `word` from the input vector `l1` (a syn0 row for skip-gram,
/// the context's mean or sum for CBOW), accumulates the gradient for `l1` into `neu1e` and
/// updates its own weights in place. Implemented by [`NegativeSampling`],
/// [`HierarchicalSoftmax`] and a pair of both (applied in that order: softmax first, as
/// word2vec.c and gensim).
trait OutputLayer: Sync {
    /// One SGD step at learning rate `alpha`. Safety: `word` is a vocabulary id; the rows
    /// written may be written by other threads at the same time (Hogwild).
    unsafe fn step<S: Simd>(&self, sig: &[f32], rng: &mut Fast, l1: &[f32], neu1e: &mut [f32], word: usize, alpha: f32);
    /// Starts fetching the rows that the next step will probably use, before this step:
    /// that step predicts `word` and its random draws start `skip` draws after this step's.
    /// A wrong guess costs only the prefetches. Safety: `word` is a vocabulary id.
    #[inline(always)]
    unsafe fn prefetch_next<S: Simd>(&self, _rng: &Fast, _skip: usize, _word: usize) {}
}

/// Negative sampling (Mikolov et al., 2013b): the true word against `negative` words drawn
/// from unigram^0.75; a draw equal to the true word is skipped.
struct NegativeSampling<'a> {
    syn1neg: Rows,
    negative: usize,
    table: &'a AliasTable,
}

impl OutputLayer for NegativeSampling<'_> {
    /// The next step's targets are random rows of a matrix far larger than the caches; the
    /// prefetch at the start of their own step comes too late to hide their misses (the
    /// dot products waited on them: about a third of skip-gram's `perf record` samples).
    /// Fetched into L2 a step ahead (T1: a step's 42 lines are more than the L1's miss buffers
    /// take). User CPU seconds, 1 thread, 1 epoch of the 11.96 M-token corpus, medians of 4
    /// alternating runs on a loaded machine (indicative): skip-gram 9.96 against 12.37,
    /// CBOW 3.09 against 3.53 (2026-12-01).
    #[inline(always)]
    unsafe fn prefetch_next<S: Simd>(&self, rng: &Fast, skip: usize, word: usize) {
        let mut peek = rng.ahead(self.negative + skip);
        S::prefetch_far(self.syn1neg.row(word));
        for _ in 0..self.negative {
            S::prefetch_far(self.syn1neg.row(self.table.sample(peek.next())));
        }
    }
    #[inline(always)]
    unsafe fn step<S: Simd>(
        &self,
        sig: &[f32],
        rng: &mut Fast,
        l1: &[f32],
        neu1e: &mut [f32],
        word: usize,
        alpha: f32,
    ) {
        // Draw all targets first and prefetch their rows: they are random rows of a table
        // far larger than the caches, and fetching them together overlaps the misses that
        // the dot -> update dependency chain would otherwise take one after another.
        let mut targets = [0u32; MAX_NEGATIVE + 1];
        targets[0] = word as u32;
        S::prefetch(self.syn1neg.row(word));
        for t in targets.iter_mut().take(self.negative + 1).skip(1) {
            *t = self.table.sample(rng.next()) as u32;
            S::prefetch(self.syn1neg.row(*t as usize));
        }
        // All scores first, then the updates: `l1` does not change during the step, so each
        // score equals the one word2vec.c computes just before its update, except when a row
        // is drawn twice; that row's later score is recomputed after its first update. The
        // values are those of the one-at-a-time loop, but the dot products no longer wait on
        // each other's cache misses and reductions.
        let n = self.negative + 1;
        let mut f = [0f32; MAX_NEGATIVE + 1];
        for d in 0..n {
            let target = *targets.get_unchecked(d) as usize;
            if d == 0 || target != word {
                *f.get_unchecked_mut(d) = S::dot(l1, self.syn1neg.row(target));
            }
        }
        for d in 0..n {
            let target = *targets.get_unchecked(d);
            if d > 0 && target as usize == word {
                continue;
            }
            let l2 = self.syn1neg.row(target as usize);
            let score = if targets.get_unchecked(..d).contains(&target) {
                S::dot(l1, l2)
            } else {
                *f.get_unchecked(d)
            };
            let label = if d == 0 { 1.0 } else { 0.0 };
            if let Some(g) = grad(sig, score, label, alpha) {
                S::update(g, l1, l2, neu1e);
            }
        }
    }
}

/// Hierarchical softmax (Morin & Bengio, 2005): one logistic step per inner node on the
/// word's Huffman path, predicting the branch taken.
struct HierarchicalSoftmax<'a> {
    syn1: Rows,
    huff: &'a Huffman,
}

impl OutputLayer for HierarchicalSoftmax<'_> {
    #[inline(always)]
    unsafe fn step<S: Simd>(
        &self,
        sig: &[f32],
        _rng: &mut Fast,
        l1: &[f32],
        neu1e: &mut [f32],
        word: usize,
        alpha: f32,
    ) {
        let h = self.huff;
        let (s, e) = (*h.offsets.get_unchecked(word), *h.offsets.get_unchecked(word + 1));
        // The inner nodes of one path are distinct, so all of a block's scores can be taken
        // before its updates (as in negative sampling above) with word2vec.c's values.
        const BLOCK: usize = 16;
        let mut f = [0f32; BLOCK];
        let mut k0 = s;
        while k0 < e {
            let k1 = (k0 + BLOCK).min(e);
            for k in k0..k1 {
                let p = *h.points.get_unchecked(k) as usize;
                *f.get_unchecked_mut(k - k0) = S::dot(l1, self.syn1.row(p));
            }
            for k in k0..k1 {
                let p = *h.points.get_unchecked(k) as usize;
                let label = 1.0 - *h.codes.get_unchecked(k) as f32;
                if let Some(g) = grad(sig, *f.get_unchecked(k - k0), label, alpha) {
                    S::update(g, l1, self.syn1.row(p), neu1e);
                }
            }
            k0 = k1;
        }
    }
}

impl<A: OutputLayer, B: OutputLayer> OutputLayer for (A, B) {
    #[inline(always)]
    unsafe fn step<S: Simd>(
        &self,
        sig: &[f32],
        rng: &mut Fast,
        l1: &[f32],
        neu1e: &mut [f32],
        word: usize,
        alpha: f32,
    ) {
        self.0.step::<S>(sig, rng, l1, neu1e, word, alpha);
        self.1.step::<S>(sig, rng, l1, neu1e, word, alpha);
    }
    #[inline(always)]
    unsafe fn prefetch_next<S: Simd>(&self, rng: &Fast, skip: usize, word: usize) {
        // Hierarchical softmax (the first layer) takes no draws.
        self.0.prefetch_next::<S>(rng, skip, word);
        self.1.prefetch_next::<S>(rng, skip, word);
    }
}

/// What the sentence kernel needs: the architecture, the input vectors and an output layer.
struct Ctx<'a, O> {
    window: usize,
    cbow: bool,
    cbow_mean: bool,
    sig: &'a [f32],
    syn0: Rows,
    out: O,
}

/// Trains on one sentence (word ids after subsampling).
#[inline(always)]
unsafe fn train_sentence_impl<S: Simd, O: OutputLayer>(
    c: &Ctx<O>,
    rng: &mut Fast,
    sent: &[u32],
    alpha: f32,
    neu1: &mut [f32],
    neu1e: &mut [f32],
) {
    let n = sent.len();
    for i in 0..n {
        let word = *sent.get_unchecked(i) as usize;
        // word2vec.c's dynamic window: the effective window is uniform in 1..=window.
        let b = rng.below(c.window);
        let reach = c.window - b;
        let lo = i.saturating_sub(reach);
        let hi = (i + reach + 1).min(n);
        if c.cbow {
            cbow_step::<S, O>(c, rng, sent, i, lo..hi, alpha, neu1, neu1e);
        } else {
            for j in lo..hi {
                if j == i {
                    continue;
                }
                // As word2vec.c: the context word's input vector predicts the centre word.
                let ctx = *sent.get_unchecked(j) as usize;
                let l1 = c.syn0.row(ctx);
                // The next step: the next context word of this position (no draw between),
                // or the next position's first (after its window draw).
                let more = j + 1 + usize::from(j + 1 == i) < hi;
                if more {
                    c.out.prefetch_next::<S>(rng, 0, word);
                } else if i + 1 < n {
                    c.out.prefetch_next::<S>(rng, 1, *sent.get_unchecked(i + 1) as usize);
                }
                neu1e.fill(0.0);
                c.out.step::<S>(c.sig, rng, l1, neu1e, word, alpha);
                S::axpy(1.0, neu1e, l1);
            }
        }
    }
}

/// CBOW at position `i`: the mean (or sum) of the context rows `ctx` (minus `i`) predicts the
/// centre word; the input gradient goes back to every context row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn cbow_step<S: Simd, O: OutputLayer>(
    c: &Ctx<O>,
    rng: &mut Fast,
    sent: &[u32],
    i: usize,
    ctx: std::ops::Range<usize>,
    alpha: f32,
    neu1: &mut [f32],
    neu1e: &mut [f32],
) {
    let word = *sent.get_unchecked(i) as usize;
    neu1.fill(0.0);
    let mut cw = 0usize;
    for j in ctx.clone() {
        if j != i {
            S::axpy(1.0, c.syn0.row(*sent.get_unchecked(j) as usize), neu1);
            cw += 1;
        }
    }
    if cw == 0 {
        return;
    }
    let inv = 1.0 / cw as f32;
    if c.cbow_mean {
        neu1.iter_mut().for_each(|x| *x *= inv);
    }
    if let Some(&next) = sent.get(i + 1) {
        // The next position's step, after its window draw.
        c.out.prefetch_next::<S>(rng, 1, next as usize);
    }
    neu1e.fill(0.0);
    c.out.step::<S>(c.sig, rng, neu1, neu1e, word, alpha);
    // As gensim: with a summed context the error is shared out over its words.
    let scale = if c.cbow_mean { 1.0 } else { inv };
    for j in ctx {
        if j != i {
            S::axpy(scale, neu1e, c.syn0.row(*sent.get_unchecked(j) as usize));
        }
    }
}

/// Same body compiled for AVX2+FMA (8-wide f32); chosen at run time so the binary still runs on
/// any x86-64. Both paths give identical results on a given machine run to run.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn train_sentence_avx2<O: OutputLayer>(
    c: &Ctx<O>,
    rng: &mut Fast,
    s: &[u32],
    a: f32,
    n1: &mut [f32],
    n1e: &mut [f32],
) {
    train_sentence_impl::<Avx2, O>(c, rng, s, a, n1, n1e)
}

/// Same body with the 16-lane primitives (see `simd`'s module docs for the measurement);
/// `PADDED`: the matrices and scratch rows have a padded layout (see `simd::Avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn train_sentence_avx512<O: OutputLayer, const PADDED: bool>(
    c: &Ctx<O>,
    rng: &mut Fast,
    s: &[u32],
    a: f32,
    n1: &mut [f32],
    n1e: &mut [f32],
) {
    train_sentence_impl::<crate::simd::Avx512<PADDED>, O>(c, rng, s, a, n1, n1e)
}

unsafe fn train_sentence_base<O: OutputLayer>(
    c: &Ctx<O>,
    rng: &mut Fast,
    s: &[u32],
    a: f32,
    n1: &mut [f32],
    n1e: &mut [f32],
) {
    train_sentence_impl::<Scalar, O>(c, rng, s, a, n1, n1e)
}

type SentenceFn<O> = unsafe fn(&Ctx<O>, &mut Fast, &[u32], f32, &mut [f32], &mut [f32]);

/// The sentence kernel for this CPU: AVX-512F when present, else AVX2+FMA, else scalar.
/// Results differ between the three in the last bits (sums in other lanes). `padded`: the
/// rows have a padded layout (the AVX-512 kernel then reads their tails whole).
fn pick_kernel<O: OutputLayer>(padded: bool) -> SentenceFn<O> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return if padded {
            train_sentence_avx512::<O, true>
        } else {
            train_sentence_avx512::<O, false>
        };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return train_sentence_avx2::<O>;
    }
    train_sentence_base::<O>
}

/// Progress reported while training: words done (of `total`), current learning rate.
pub struct Progress<'a> {
    /// In-vocabulary words read so far, over all threads and epochs.
    pub words: &'a AtomicU64,
    /// The learning rate last set by a thread, as `f32::to_bits`.
    pub alpha_bits: &'a AtomicU32,
    /// Words to read in the whole run (vocabulary words × epochs).
    pub total: u64,
}

/// Linear learning-rate decay from `alpha0` at the start to `min_alpha` when `total` words
/// (all epochs) are done, on the words read by all threads together:
/// `alpha0 − (alpha0 − min_alpha) · done / total`, never below `min_alpha`. This is gensim's
/// formula (`get_next_alpha`) on word2vec.c's global progress count. (word2vec.c itself
/// decays `alpha0 · (1 − done / total)` and clamps at `alpha0 · 1e-4`; the two differ by
/// less than `min_alpha`.) gensim's `corpus_file` mode, which the bench compares with, does
/// not decay like this with several workers: each worker measures progress as *its own*
/// words against the whole corpus and restarts every epoch at `alpha0 · (1 − e/E)`, so with
/// 2 workers the rate saw-tooths between `alpha0 · (1 − e/E)` and `alpha0 · (1 − (e+½)/E)`
/// (mean 0.55 · alpha0 for 5 epochs instead of 0.5, never below 0.1 · alpha0). Imitating
/// that (with gensim's init range) was not better: CBOW analogy 22.04 % against 22.18 %,
/// seed 1 (bench/w2v_vs_gensim.results.md), so seqlab keeps the global schedule.
#[derive(Clone, Copy)]
struct LearningRate {
    alpha0: f32,
    min_alpha: f32,
    total: u64,
}

impl LearningRate {
    fn at(&self, done: u64) -> f32 {
        let progress = done as f64 / self.total.max(1) as f64;
        let a = self.alpha0 as f64 - (self.alpha0 - self.min_alpha) as f64 * progress;
        (a as f32).max(self.min_alpha)
    }
}

/// What every worker shares: settings, vocabulary, subsampling thresholds, the kernel and its
/// context, and the global progress counters.
struct Shared<'a, O> {
    path: &'a Path,
    cfg: &'a Config,
    vocab: &'a Vocab,
    keep: &'a [u32],
    ctx: Ctx<'a, O>,
    kernel: SentenceFn<O>,
    lr: LearningRate,
    words_done: AtomicU64,
    /// With several ranks, the word count of the next synchronisation round: workers that
    /// reach it wait until the round is over (`u64::MAX` on one process). Without the wait,
    /// a rank whose partner is slow (descheduled, a loaded machine) kept training on a stale
    /// model while it waited in the round, and its deltas grew far beyond `sync_words`:
    /// measured on the sample corpus, 2 ranks' similarity fell to 0.13–0.16 against one
    /// process's 0.18–0.19.
    hold_at: AtomicU64,
    alpha_bits: AtomicU32,
    /// Global index of this process's first thread (rank × threads): thread random streams
    /// differ across ranks.
    tid0: usize,
}

/// One training thread: its byte range of the corpus, random stream and scratch buffers.
struct Worker<'a, O> {
    sh: &'a Shared<'a, O>,
    range: (u64, u64),
    rng: Fast,
    /// Scratch rows in the matrices' layout (the kernel's primitives read their pads).
    neu1: Matrix,
    neu1e: Matrix,
    sent: Vec<u32>,
    /// Words read since the last progress update.
    local: u64,
    alpha: f32,
}

impl<'a, O: OutputLayer> Worker<'a, O> {
    fn new(sh: &'a Shared<'a, O>, tid: usize, range: (u64, u64)) -> Self {
        let (dim, stride) = (sh.cfg.dim, sh.ctx.syn0.stride);
        Self {
            sh,
            range,
            rng: Fast::for_thread(sh.cfg.seed, sh.tid0 + tid),
            neu1: Matrix::zeros(1, dim, stride),
            neu1e: Matrix::zeros(1, dim, stride),
            sent: Vec::with_capacity(MAX_SENTENCE),
            local: 0,
            alpha: sh.lr.alpha0,
        }
    }

    /// Every epoch over the range; returns the invalid UTF-8 bytes of the last epoch.
    fn run(mut self) -> Result<u64> {
        let mut invalid = 0;
        for _epoch in 0..self.sh.cfg.epochs {
            invalid = self.epoch()?;
        }
        self.sh.words_done.fetch_add(self.local, Ordering::Relaxed);
        Ok(invalid)
    }

    /// One pass over the range, line by line; returns the invalid UTF-8 bytes skipped.
    fn epoch(&mut self) -> Result<u64> {
        let path = self.sh.path;
        let mut reader = ChunkReader::open(path, self.range.0, self.range.1, self.sh.cfg.text)
            .with_context(|| format!("cannot open corpus {}", path.display()))?;
        loop {
            self.sent.clear();
            let more = reader
                .next_line(|w| self.add_word(w))
                .with_context(|| format!("error reading corpus {}", path.display()))?;
            if !self.sent.is_empty() {
                self.flush();
            }
            if self.local >= PROGRESS_EVERY {
                self.report_progress();
            }
            if !more {
                return Ok(reader.invalid_bytes);
            }
        }
    }

    /// Adds a corpus word to the current sentence unless it is out of the vocabulary or
    /// subsampled away; trains the sentence when it reaches [`MAX_SENTENCE`] words.
    #[inline]
    fn add_word(&mut self, w: &str) {
        let Some(id) = self.sh.vocab.id(w) else { return };
        self.local += 1;
        // Subsampling: keep with probability keep[id] / 2^32.
        let k = self.sh.keep[id as usize];
        if k == u32::MAX || (self.rng.next() as u32) < k {
            self.sent.push(id);
        }
        if self.sent.len() >= MAX_SENTENCE {
            self.flush();
        }
    }

    /// Trains the current sentence and empties it.
    fn flush(&mut self) {
        // SAFETY: ids in `sent` are < vocab size; see `Rows`.
        unsafe {
            (self.sh.kernel)(
                &self.sh.ctx,
                &mut self.rng,
                &self.sent,
                self.alpha,
                self.neu1.row_mut(0),
                self.neu1e.row_mut(0),
            )
        };
        self.sent.clear();
    }

    /// Adds the words read since the last report to the global count and sets this
    /// thread's learning rate from it.
    fn report_progress(&mut self) {
        let sh = self.sh;
        let done = sh.words_done.fetch_add(self.local, Ordering::Relaxed) + self.local;
        self.local = 0;
        self.alpha = sh.lr.at(done);
        sh.alpha_bits.store(self.alpha.to_bits(), Ordering::Relaxed);
        while done >= sh.hold_at.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Runs one worker per byte range on scoped threads, calling `on_progress` about every
/// 100 ms from the calling thread; returns the invalid UTF-8 bytes of the last epoch.
///
/// With `sync` (several ranks), the calling thread also runs the model synchronisation
/// rounds while the workers train, and keeps taking part in rounds after its own workers
/// finished until every rank's have.
fn run_workers<O: OutputLayer>(
    sh: &Shared<O>,
    parts: &[(u64, u64)],
    on_progress: &mut dyn FnMut(&Progress),
    mut sync: Option<&mut ModelSync>,
) -> Result<u64> {
    std::thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(tid, &range)| s.spawn(move || Worker::new(sh, tid, range).run()))
            .collect();
        let prog = Progress {
            words: &sh.words_done,
            alpha_bits: &sh.alpha_bits,
            total: sh.lr.total,
        };
        loop {
            let local_done = handles.iter().all(|h| h.is_finished());
            on_progress(&prog);
            let all_done = match sync.as_deref_mut() {
                Some(m) => {
                    let all = m.poll(sh.words_done.load(Ordering::Relaxed), local_done)?;
                    // Releases the workers waiting for this round (see `Shared::hold_at`).
                    sh.hold_at.store(m.next_at, Ordering::Release);
                    all
                }
                None => local_done,
            };
            if all_done {
                break;
            }
            // A rank whose workers are done waits in the next round's collective, not here.
            if !local_done {
                // With ranks, workers wait at each round's mark until this thread runs it.
                std::thread::sleep(Duration::from_millis(if sync.is_some() { 1 } else { 100 }));
            }
        }
        let mut invalid = 0;
        for h in handles {
            invalid += h.join().map_err(|_| anyhow!("a training thread panicked"))??;
        }
        Ok(invalid)
    })
}

/// Everything [`train_passes`] needs besides the output layer.
struct Setup<'a, 's> {
    path: &'a Path,
    cfg: &'a Config,
    vocab: &'a Vocab,
    keep: &'a [u32],
    sig: &'a [f32],
    syn0: Rows,
    lr: LearningRate,
    comm: &'a dyn Collective,
    sync: Option<&'s mut ModelSync<'a>>,
}

/// Values per block of a synchronisation round: the all-reduce buffers stay at 16 MiB
/// whatever the model's size.
const SYNC_BLOCK: usize = 4 << 20;

/// The periodic model synchronisation of distributed word2vec (the model-averaging
/// schedule of Ji et al., "Parallelizing Word2Vec in Shared and Distributed Memory", 2016,
/// with deltas summed rather than averaged, so every rank's updates count once as in
/// single-process Hogwild). Each rank keeps the model as of the last round (`snapshot`);
/// a round sums the deltas `current − snapshot` over ranks and adds the other ranks' part
/// to the live matrices. Workers that reach the round's mark wait for it
/// ([`Shared::hold_at`]); one still short of its next progress report keeps updating
/// meanwhile (Hogwild across the round: its update is kept and goes out in the next one).
/// The last round (every rank done, no thread writing) sets every rank's model to the same
/// values.
struct ModelSync<'a> {
    comm: &'a dyn Collective,
    /// Words this rank reads between rounds.
    every: u64,
    next_at: u64,
    /// The matrices (pointer, length) and their values as of the last round.
    mats: Vec<(*mut f32, usize, Vec<f32>)>,
    rounds: u64,
    seconds: f64,
}

impl<'a> ModelSync<'a> {
    fn new(comm: &'a dyn Collective, every: u64, mats: Vec<&mut [f32]>) -> Self {
        Self {
            comm,
            every,
            next_at: every,
            mats: mats
                .into_iter()
                .map(|m| (m.as_mut_ptr(), m.len(), m.to_vec()))
                .collect(),
            rounds: 0,
            seconds: 0.0,
        }
    }

    /// Runs a round when this rank read `every` more words or its workers are done
    /// (`local_done`); returns whether every rank's workers are done (then training ends).
    fn poll(&mut self, words: u64, local_done: bool) -> Result<bool> {
        if !local_done && words < self.next_at {
            return Ok(false);
        }
        self.next_at = words + self.every;
        let t0 = Instant::now();
        let all_done = {
            let mut f = [f64::from(u8::from(local_done))];
            self.comm.all_reduce_sum_f64(&mut f)?;
            f[0] as usize == self.comm.size()
        };
        let (mut mine, mut sum) = (Vec::new(), Vec::new());
        for (ptr, len, snap) in &mut self.mats {
            for start in (0..*len).step_by(SYNC_BLOCK) {
                let end = (start + SYNC_BLOCK).min(*len);
                // SAFETY: in bounds (the matrix has `len` values and outlives the training
                // passes); the workers write the same memory concurrently, the Hogwild
                // races the module accepts for all its threads (see `Rows`).
                let cur = unsafe { std::slice::from_raw_parts_mut(ptr.add(start), end - start) };
                let snap = &mut snap[start..end];
                mine.clear();
                mine.extend(cur.iter().zip(snap.iter()).map(|(c, s)| c - s));
                sum.clear();
                sum.extend_from_slice(&mine);
                self.comm.all_reduce_sum_f32(&mut sum)?;
                for i in 0..cur.len() {
                    snap[i] += sum[i];
                    cur[i] = if all_done { snap[i] } else { cur[i] + (sum[i] - mine[i]) };
                }
            }
        }
        self.rounds += 1;
        self.seconds += t0.elapsed().as_secs_f64();
        Ok(all_done)
    }
}

/// Trains with output layer `out`: sets up the shared state and runs the workers.
fn train_passes<O: OutputLayer>(st: Setup, out: O, on_progress: &mut dyn FnMut(&Progress)) -> Result<(u64, u64)> {
    let (rank, size) = (st.comm.rank(), st.comm.size());
    let sh = Shared {
        path: st.path,
        cfg: st.cfg,
        vocab: st.vocab,
        keep: st.keep,
        ctx: Ctx {
            window: st.cfg.window,
            cbow: st.cfg.model == Model::Cbow,
            cbow_mean: st.cfg.cbow_mean,
            sig: st.sig,
            syn0: st.syn0,
            out,
        },
        kernel: pick_kernel::<O>(st.syn0.stride == padded_stride(st.syn0.dim)),
        lr: st.lr,
        words_done: AtomicU64::new(0),
        hold_at: AtomicU64::new(st.sync.as_ref().map_or(u64::MAX, |m| m.next_at)),
        alpha_bits: AtomicU32::new(st.lr.alpha0.to_bits()),
        tid0: rank * st.cfg.threads,
    };
    let file_len = std::fs::metadata(st.path)
        .with_context(|| format!("cannot read corpus {}", st.path.display()))?
        .len();
    // Rank r's threads take the r-th group of `threads` byte ranges of the whole corpus.
    let t = st.cfg.threads;
    let parts = ranges(file_len, t * size)[rank * t..(rank + 1) * t].to_vec();
    let invalid = run_workers(&sh, &parts, on_progress, st.sync)?;
    Ok((invalid, sh.words_done.load(Ordering::Relaxed)))
}

/// Builds the vocabulary of `path` and trains. `on_progress` is called about every 100 ms
/// from the calling thread while worker threads train. Fails on an invalid config (see
/// [`Config::validate`]), an unreadable or empty corpus, or a corpus with no word of
/// `min_count` occurrences.
pub fn train_file(path: &Path, cfg: &Config, on_progress: impl FnMut(&Progress)) -> Result<(Embeddings, Summary)> {
    train_file_distributed(path, cfg, &SingleProcess, 0, on_progress)
}

/// [`train_file`] with the ranks of `comm` (`mpirun -np N seqlab w2v train`): rank 0 counts
/// the vocabulary and broadcasts it; rank r's `cfg.threads` Hogwild threads train on the
/// r-th of N equal byte ranges of the corpus; every `sync_words` words a rank reads, the
/// ranks sum their model deltas ([`ModelSync`]); the learning rate decays on each rank's
/// own progress through its share of the words. Every rank returns the same final vectors.
/// `sync_words` must be > 0 when there are several ranks.
pub fn train_file_distributed(
    path: &Path,
    cfg: &Config,
    comm: &dyn Collective,
    sync_words: u64,
    on_progress: impl FnMut(&Progress),
) -> Result<(Embeddings, Summary)> {
    train_with_stride(path, cfg, comm, sync_words, on_progress, padded_stride(cfg.dim))
}

/// [`train_file_distributed`] with the parameter matrices' rows `stride` values apart
/// (`cfg.dim`: dense; [`padded_stride`]: the padded layout the public functions use).
fn train_with_stride(
    path: &Path,
    cfg: &Config,
    comm: &dyn Collective,
    sync_words: u64,
    mut on_progress: impl FnMut(&Progress),
    stride: usize,
) -> Result<(Embeddings, Summary)> {
    cfg.validate()?;
    let size = comm.size();
    anyhow::ensure!(size == 1 || sync_words > 0, "sync_words must be > 0");
    let t0 = Instant::now();
    let (vocab, stats) = if size == 1 {
        Vocab::build(path, cfg.text, cfg.min_count, cfg.max_vocab)?
    } else {
        let mut bytes = Vec::new();
        if comm.rank() == 0 {
            let (v, st) = Vocab::build(path, cfg.text, cfg.min_count, cfg.max_vocab)?;
            bytes = v.to_bytes(&st);
        }
        comm.broadcast_bytes(&mut bytes, 0)?;
        Vocab::from_bytes(&bytes)?
    };
    let vocab_seconds = t0.elapsed().as_secs_f64();
    let dim = cfg.dim;
    let mut w = Weights::init(vocab.len(), cfg, stride);
    let table = AliasTable::new(&vocab.counts, 0.75);
    let huff = cfg.hs.then(|| Huffman::new(&vocab.counts));
    let keep = vocab.keep_thresholds(cfg.sample);
    let sig = sigmoid_table();
    let st = Setup {
        path,
        cfg,
        vocab: &vocab,
        keep: &keep,
        sig: &sig,
        syn0: Rows::of(&mut w.syn0),
        lr: LearningRate {
            alpha0: cfg.alpha0(),
            min_alpha: cfg.min_alpha(),
            total: vocab.total() * cfg.epochs as u64 / size as u64,
        },
        comm,
        sync: None,
    };
    let (syn1neg, syn1) = (Rows::of(&mut w.syn1neg), Rows::of(&mut w.syn1));
    // The pads take part in the rounds: their deltas are 0.
    let mut sync = (size > 1).then(|| {
        let mats = vec![w.syn0.as_mut_slice(), w.syn1neg.as_mut_slice(), w.syn1.as_mut_slice()];
        ModelSync::new(comm, sync_words, mats)
    });
    let mut st = st;
    st.sync = sync.as_mut();
    let neg = || NegativeSampling {
        syn1neg,
        negative: cfg.negative,
        table: &table,
    };
    let hs = |huff| HierarchicalSoftmax { syn1, huff };
    let t1 = Instant::now();
    let on_progress: &mut dyn FnMut(&Progress) = &mut on_progress;
    let (invalid, words_trained) = match (huff.as_ref(), cfg.negative > 0) {
        (Some(h), true) => train_passes(st, (hs(h), neg()), on_progress)?,
        (Some(h), false) => train_passes(st, hs(h), on_progress)?,
        (None, _) => train_passes(st, neg(), on_progress)?,
    };
    let train_seconds = t1.elapsed().as_secs_f64();
    let summary = Summary {
        corpus: stats,
        vocab_size: vocab.len(),
        words_trained,
        train_seconds,
        vocab_seconds,
        words_per_second: words_trained as f64 / train_seconds.max(1e-9),
        invalid_bytes: invalid,
        ranks: size,
        sync_rounds: sync.as_ref().map_or(0, |s| s.rounds),
        sync_seconds: sync.as_ref().map_or(0.0, |s| s.seconds),
    };
    // The output layers go before the dense copy of syn0 is made: peak RSS (CBOW, 2 threads)
    // was 74 MB with them alive, 56 MB without (51 MB on main, before the padded layout).
    let Weights { syn0, syn1neg, syn1 } = w;
    drop((syn1neg, syn1));
    Ok((
        Embeddings {
            vocab,
            dim,
            vectors: syn0.into_dense(),
        },
        summary,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Index;
    use crate::format::WordVectors;
    use std::path::PathBuf;

    fn write_tmp(name: &str, text: &[u8]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("w2v-train-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Groups i = 0..6 of two words `a{i}` / `b{i}`; every sentence holds one of them with
    /// words of its group (`t{i}_k`) and of its kind (`ua_k` / `ub_k`), so that
    /// a_i − b_i is the same offset for every group.
    fn planted_corpus() -> String {
        let mut x = 7u64;
        let mut r = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut s = String::new();
        for _ in 0..3000 {
            let i = r(6);
            let kind = if r(2) == 0 { "a" } else { "b" };
            let mut w = [
                format!("{kind}{i}"),
                format!("t{i}_{}", r(4)),
                format!("t{i}_{}", r(4)),
                format!("u{kind}_{}", r(4)),
                format!("u{kind}_{}", r(4)),
            ];
            for k in (1..w.len()).rev() {
                w.swap(k, r(k as u64 + 1) as usize);
            }
            s.push_str(&w.join(" "));
            s.push('\n');
        }
        s
    }

    fn small_cfg() -> Config {
        Config {
            dim: 16,
            min_count: 1,
            sample: 0.0,
            epochs: 10,
            threads: 1,
            ..Config::default()
        }
    }

    fn wv(e: Embeddings) -> WordVectors {
        WordVectors {
            words: e.vocab.words().map(str::to_string).collect(),
            dim: e.dim,
            vectors: e.vectors,
            counts: None,
        }
    }

    #[test]
    fn planted_analogies_come_out_right() {
        let p = write_tmp("planted.txt", planted_corpus().as_bytes());
        let variants = [
            ("skip-gram, negative", Config { ..small_cfg() }),
            (
                "cbow, negative",
                Config {
                    model: Model::Cbow,
                    ..small_cfg()
                },
            ),
            (
                "skip-gram, hs",
                Config {
                    negative: 0,
                    hs: true,
                    ..small_cfg()
                },
            ),
            (
                "cbow sum, hs+neg, 2 threads",
                Config {
                    model: Model::Cbow,
                    cbow_mean: false,
                    hs: true,
                    threads: 2,
                    ..small_cfg()
                },
            ),
        ];
        for (name, cfg) in variants {
            let (e, s) = train_file(&p, &cfg, |_| {}).unwrap();
            assert_eq!(s.words_trained, 15_000 * 10, "{name}");
            let ix = Index::new(&wv(e)).unwrap();
            let mut wrong = Vec::new();
            for i in 0..6 {
                for k in 0..6 {
                    if i != k {
                        let (add, _) = ix
                            .analogy(&format!("a{i}"), &format!("b{i}"), &format!("a{k}"), 1)
                            .unwrap();
                        if add[0].0 != format!("b{k}") {
                            wrong.push(format!("a{i}:b{i}::a{k}:{}", add[0].0));
                        }
                    }
                }
            }
            assert!(wrong.is_empty(), "{name}: {wrong:?}");
        }
    }

    /// Negative sampling takes all scores before its updates; with rows drawn several times
    /// (3 words, 12 draws) the result must still equal word2vec.c's one-at-a-time loop bit
    /// for bit (the reference below), for the scalar, AVX2 and AVX-512 primitives alike.
    #[test]
    fn scores_first_equals_the_sequential_loop() {
        fn reference<S: Simd>(
            ns: &NegativeSampling,
            sig: &[f32],
            rng: &mut Fast,
            l1: &[f32],
            e: &mut [f32],
            word: usize,
        ) {
            let targets: Vec<usize> = std::iter::once(word)
                .chain((0..ns.negative).map(|_| ns.table.sample(rng.next())))
                .collect();
            for (d, &t) in targets.iter().enumerate() {
                if d > 0 && t == word {
                    continue;
                }
                let l2 = unsafe { ns.syn1neg.row(t) };
                let label = if d == 0 { 1.0 } else { 0.0 };
                if let Some(g) = grad(sig, unsafe { S::dot(l1, l2) }, label, 0.5) {
                    unsafe { S::axpy(g, l2, e) };
                    unsafe { S::axpy(g, l1, l2) };
                }
            }
        }
        /// `stride`: the rows' layout (dense, or padded for `Avx512<true>`).
        fn run<S: Simd>(stride: usize) {
            let (dim, negative) = (19, 12);
            let table = AliasTable::new(&[5, 3, 1], 0.75);
            let sig = sigmoid_table();
            let mut init = Matrix::zeros(3, dim, stride);
            for r in 0..3 {
                for (i, x) in init.row_mut(r).iter_mut().enumerate() {
                    *x = (((r * dim + i) * 37 % 23) as f32 - 11.0) / 10.0;
                }
            }
            let mut l1 = Matrix::zeros(1, dim, stride);
            for (i, x) in l1.row_mut(0).iter_mut().enumerate() {
                *x = ((i * 13 % 7) as f32 - 3.0) / 4.0;
            }
            let l1 = &*l1.row_mut(0);
            let mut m_new = Matrix::zeros(3, dim, stride);
            m_new.as_mut_slice().copy_from_slice(init.as_mut_slice());
            let mut m_ref = init;
            let (mut e_new, mut e_ref) = (Matrix::zeros(1, dim, stride), Matrix::zeros(1, dim, stride));
            let (mut r_new, mut r_ref) = (Fast::for_thread(7, 0), Fast::for_thread(7, 0));
            for step in 0..50 {
                let word = step % 3;
                let ns = NegativeSampling {
                    syn1neg: Rows::of(&mut m_new),
                    negative,
                    table: &table,
                };
                unsafe { ns.step::<S>(&sig, &mut r_new, l1, e_new.row_mut(0), word, 0.5) };
                let ns = NegativeSampling {
                    syn1neg: Rows::of(&mut m_ref),
                    negative,
                    table: &table,
                };
                reference::<S>(&ns, &sig, &mut r_ref, l1, e_ref.row_mut(0), word);
                // Pads included: they must stay +0.0 on both sides.
                let bits = |m: &mut Matrix| m.as_mut_slice().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&mut m_new), bits(&mut m_ref), "rows differ after step {step}");
                assert_eq!(
                    bits(&mut e_new),
                    bits(&mut e_ref),
                    "input gradient differs after step {step}"
                );
            }
        }
        let (dense, padded) = (19, padded_stride(19));
        run::<Scalar>(dense);
        run::<Scalar>(padded);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            run::<Avx2>(dense);
            run::<Avx2>(padded);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            run::<crate::simd::Avx512<false>>(dense);
            run::<crate::simd::Avx512<false>>(padded);
            run::<crate::simd::Avx512<true>>(padded);
        }
    }

    #[test]
    fn learning_rate_decays_linearly_from_alpha_to_min_alpha() {
        let lr = LearningRate {
            alpha0: 0.025,
            min_alpha: 0.0001,
            total: 1_000_000,
        };
        let close = |a: f32, b: f32| (a - b).abs() < 1e-7;
        assert!(close(lr.at(0), 0.025));
        assert!(close(lr.at(500_000), 0.01255), "{}", lr.at(500_000));
        assert!(close(lr.at(800_000), 0.025 - 0.0249 * 0.8), "{}", lr.at(800_000));
        assert!(close(lr.at(1_000_000), 0.0001));
        assert!(close(lr.at(2_000_000), 0.0001));
    }

    /// word2vec.c's dynamic window: the offset `b` is uniform in `0..window`, so the reach
    /// `window − b` is uniform in `1..=window` (gensim: `reduced_windows[i] = rand % window`).
    /// The prefetch of the next step's rows peeks at its draws with `ahead`.
    #[test]
    fn ahead_gives_the_draws_after_k_more() {
        let mut rng = Fast::for_thread(3, 1);
        for k in [0, 1, 5, 6] {
            let mut peek = rng.ahead(k);
            let (a, b) = (peek.next(), peek.next());
            for _ in 0..k {
                rng.next();
            }
            assert_eq!((rng.next(), rng.next()), (a, b), "k={k}");
        }
    }

    #[test]
    fn window_reduction_is_uniform_below_window() {
        let mut rng = Fast::for_thread(1, 0);
        let mut seen = [0u32; 5];
        for _ in 0..100_000 {
            seen[rng.below(5)] += 1;
        }
        assert!(seen.iter().all(|&n| (19_000..21_000).contains(&n)), "{seen:?}");
    }

    /// gensim 4's range, [-1/dim, 1/dim) (word2vec.c: half of it); output vectors zero.
    #[test]
    fn input_vectors_start_uniform_in_one_over_dim() {
        let mut w = Weights::init(1000, &Config::default(), 112);
        let (lo, hi) = w
            .syn0
            .as_mut_slice()
            .iter()
            .fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(lo >= -0.01 && lo < -0.0099 && hi < 0.01 && hi > 0.0099, "{lo} {hi}");
        assert!(w.syn1neg.as_mut_slice().iter().all(|&x| x == 0.0));
    }

    #[test]
    fn one_thread_is_deterministic() {
        let p = write_tmp("det.txt", planted_corpus().as_bytes());
        let cfg = Config {
            epochs: 2,
            sample: 1e-2,
            ..small_cfg()
        };
        let a = train_file(&p, &cfg, |_| {}).unwrap().0.vectors;
        let b = train_file(&p, &cfg, |_| {}).unwrap().0.vectors;
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let c = train_file(&p, &Config { seed: 2, ..cfg }, |_| {}).unwrap().0.vectors;
        assert_ne!(a, c);
    }

    /// The padded row layout the trainer uses trains the dense layout's vectors bit for bit
    /// (one thread, so runs are deterministic), for both models and output layers and for a
    /// dim with and without a partial last vector; the vectors come back dense.
    #[test]
    fn padded_layout_trains_the_same_vectors() {
        let p = write_tmp("padded.txt", planted_corpus().as_bytes());
        let base = Config {
            epochs: 2,
            sample: 1e-2,
            ..small_cfg()
        };
        for dim in [19, 32, 100] {
            let variants = [
                Config { dim, ..base.clone() },
                Config {
                    dim,
                    model: Model::Cbow,
                    ..base.clone()
                },
                Config {
                    dim,
                    model: Model::Cbow,
                    cbow_mean: false,
                    hs: true,
                    ..base.clone()
                },
                Config {
                    dim,
                    negative: 0,
                    hs: true,
                    ..base.clone()
                },
            ];
            for cfg in variants {
                let train = |stride| {
                    train_with_stride(&p, &cfg, &SingleProcess, 0, |_| {}, stride)
                        .unwrap()
                        .0
                };
                let (dense, padded) = (train(dim), train(padded_stride(dim)));
                assert_eq!(padded.dim, dim);
                assert_eq!(padded.vectors.len(), padded.vocab.len() * dim);
                let bits = |e: &Embeddings| e.vectors.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&dense) == bits(&padded),
                    "dim {dim}, {cfg:?}: padded layout trained other vectors"
                );
            }
        }
    }

    #[test]
    fn bad_corpora_give_clear_errors() {
        let p = write_tmp("empty.txt", b"  \n\n");
        let e = format!("{:#}", train_file(&p, &small_cfg(), |_| {}).err().unwrap());
        assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
        let p = write_tmp("rare.txt", b"a b c d\n");
        let cfg = Config {
            min_count: 5,
            ..small_cfg()
        };
        let e = format!("{:#}", train_file(&p, &cfg, |_| {}).err().unwrap());
        assert!(e.contains("rare.txt") && e.contains("min_count = 5"), "{e}");
        let p = std::env::temp_dir().join("w2v-no-such-dir/none.txt");
        let e = format!("{:#}", train_file(&p, &small_cfg(), |_| {}).err().unwrap());
        assert!(e.contains("none.txt"), "{e}");
        let e = format!(
            "{:#}",
            train_file(
                &p,
                &Config {
                    negative: 0,
                    ..small_cfg()
                },
                |_| {}
            )
            .err()
            .unwrap()
        );
        assert!(e.contains("nothing to train"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_counted_not_fatal() {
        let p = write_tmp("bad-utf8.txt", b"one two \xff\xfe three\none two three\n");
        let (e, s) = train_file(
            &p,
            &Config {
                epochs: 1,
                ..small_cfg()
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(s.corpus.invalid_bytes, 2);
        // Equal counts: the word seen last comes first (gensim's order).
        assert_eq!(e.vocab.words().collect::<Vec<_>>(), ["three", "two", "one"]);
    }
}
