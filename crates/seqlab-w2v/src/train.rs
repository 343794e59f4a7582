//! The trainer: skip-gram / CBOW with negative sampling and/or hierarchical softmax,
//! Hogwild over threads that each stream their own byte range of the corpus.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::text::{ranges, ChunkReader, TextOptions, MAX_SENTENCE};
use crate::vocab::{AliasTable, CorpusStats, Huffman, Vocab};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    Skipgram,
    Cbow,
}

/// Training settings. Defaults follow word2vec.c (and gensim where they agree): skip-gram,
/// dim 100, window 5, negative 5, no hierarchical softmax, sample 1e-3, min_count 5,
/// 5 epochs, alpha 0.025 for skip-gram and 0.05 for CBOW (word2vec.c; gensim uses 0.025 for
/// both), min_alpha = alpha · 1e-4, CBOW takes the mean of the context.
#[derive(Clone, Debug)]
pub struct Config {
    pub model: Model,
    pub dim: usize,
    pub window: usize,
    pub negative: usize,
    pub hs: bool,
    pub sample: f64,
    pub min_count: u64,
    pub max_vocab: Option<usize>,
    pub epochs: usize,
    /// `None`: 0.025 (skip-gram) or 0.05 (CBOW).
    pub alpha: Option<f32>,
    /// `None`: alpha · 1e-4.
    pub min_alpha: Option<f32>,
    pub cbow_mean: bool,
    pub threads: usize,
    pub seed: u64,
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
    pub fn alpha0(&self) -> f32 {
        self.alpha.unwrap_or(match self.model {
            Model::Skipgram => 0.025,
            Model::Cbow => 0.05,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            bail!("dim must be at least 1");
        }
        if self.window == 0 {
            bail!("window must be at least 1");
        }
        if self.negative == 0 && !self.hs {
            bail!("nothing to train: negative is 0 and hierarchical softmax (--hs) is off");
        }
        if self.negative > MAX_NEGATIVE {
            bail!("negative must be at most {MAX_NEGATIVE}, got {}", self.negative);
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
        if !(self.sample >= 0.0 && self.sample.is_finite()) {
            bail!("sample must be >= 0, got {}", self.sample);
        }
        Ok(())
    }
}

/// Trained input vectors (`syn0`), row-major `[vocab.len(), dim]`.
pub struct Embeddings {
    pub vocab: Vocab,
    pub dim: usize,
    pub vectors: Vec<f32>,
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub corpus: CorpusStats,
    pub vocab_size: usize,
    /// In-vocabulary words read over all epochs (before subsampling).
    pub words_trained: u64,
    pub train_seconds: f64,
    pub vocab_seconds: f64,
    pub words_per_second: f64,
    pub invalid_bytes: u64,
}

const EXP_TABLE_SIZE: usize = 1000;
/// Most negative samples per positive (gensim and word2vec.c users go up to 25).
pub const MAX_NEGATIVE: usize = 64;
const MAX_EXP: f32 = 6.0;

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
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n < 2^32).
    #[inline(always)]
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// Parameters shared by all threads without locks (Hogwild, as word2vec.c and gensim do):
/// updates touch a few rows out of tens of thousands, so two threads rarely write the same
/// row at once, and a lost update is just noise in SGD. Locks or atomics per element would
/// cost more than the arithmetic. Raw pointers are used because Rust references may not
/// alias mutably; every access is in bounds by construction (word ids < vocab size, inner
/// node ids < vocab size - 1).
#[derive(Clone, Copy)]
struct Shared {
    syn0: *mut f32,
    syn1neg: *mut f32,
    syn1: *mut f32,
}
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

struct Ctx<'a> {
    dim: usize,
    window: usize,
    negative: usize,
    cbow: bool,
    cbow_mean: bool,
    keep: &'a [u32],
    table: &'a AliasTable,
    huff: Option<&'a Huffman>,
    sig: &'a [f32],
    w: Shared,
}

#[inline(always)]
unsafe fn row<'a>(base: *mut f32, i: usize, dim: usize) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(base.add(i * dim), dim)
}

/// Vector primitives over rows of `dim` f32. Two implementations: portable scalar code,
/// and AVX2+FMA intrinsics (LLVM does not vectorize an f32 dot product by itself, since
/// that reorders the sum; the 100-wide dot and axpy are nearly all of the training time).
trait Simd {
    /// Hint that `row` will be read soon.
    unsafe fn prefetch(row: &[f32]);
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += a · x`
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]);
}

struct Scalar;

impl Simd for Scalar {
    #[inline(always)]
    unsafe fn prefetch(_row: &[f32]) {}
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 4];
        let n = a.len().min(b.len());
        let mut i = 0;
        while i + 4 <= n {
            for k in 0..4 {
                acc[k] += a[i + k] * b[i + k];
            }
            i += 4;
        }
        let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        for (yi, xi) in y[..n].iter_mut().zip(&x[..n]) {
            *yi += a * xi;
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

/// Unaligned 8 x f32. Reading/writing a packed field by value compiles to `vmovups`, like
/// `_mm256_loadu_ps`, but without the `copy_nonoverlapping` precondition checks that builds
/// with debug assertions (our dev/test profile) put around every such load.
#[cfg(target_arch = "x86_64")]
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct U8(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn ld(p: *const f32) -> std::arch::x86_64::__m256 {
    (*(p as *const U8)).0
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn st(p: *mut f32, v: std::arch::x86_64::__m256) {
    (*(p as *mut U8)).0 = v;
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    #[inline(always)]
    unsafe fn prefetch(row: &[f32]) {
        use std::arch::x86_64::*;
        let p = row.as_ptr() as *const i8;
        let bytes = row.len() * 4;
        let mut o = 0;
        while o < bytes {
            _mm_prefetch::<_MM_HINT_T0>(p.add(o));
            o += 64;
        }
    }
    /// Caller guarantees AVX2 and FMA (checked once in `pick_kernel`) and `a.len() == b.len()`.
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm256_setzero_ps();
        let mut s1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(ld(pa.add(i)), ld(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(ld(pa.add(i + 8)), ld(pb.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(ld(pa.add(i)), ld(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        r
    }
    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            st(py.add(i), _mm256_fmadd_ps(va, ld(px.add(i)), ld(py.add(i))));
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
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

/// One output-layer step for input `l1` (a syn0 row or the CBOW hidden vector) predicting
/// `word`: accumulates the input gradient into `neu1e` and updates the output rows.
#[inline(always)]
unsafe fn output_step<S: Simd>(c: &Ctx, rng: &mut Fast, l1: &[f32], neu1e: &mut [f32], word: usize, alpha: f32) {
    let dim = c.dim;
    if let Some(h) = c.huff {
        let (s, e) = (*h.offsets.get_unchecked(word), *h.offsets.get_unchecked(word + 1));
        for k in s..e {
            let p = *h.points.get_unchecked(k) as usize;
            let l2 = row(c.w.syn1, p, dim);
            let label = 1.0 - *h.codes.get_unchecked(k) as f32;
            if let Some(g) = grad(c.sig, S::dot(l1, l2), label, alpha) {
                S::axpy(g, l2, neu1e);
                S::axpy(g, l1, l2);
            }
        }
    }
    if c.negative > 0 {
        // Draw all targets first and prefetch their rows: they are random rows of a table
        // far larger than the caches, and fetching them together overlaps the misses that
        // the dot -> update dependency chain would otherwise take one after another.
        let mut targets = [0u32; MAX_NEGATIVE + 1];
        targets[0] = word as u32;
        S::prefetch(row(c.w.syn1neg, word, dim));
        for t in targets.iter_mut().take(c.negative + 1).skip(1) {
            *t = c.table.sample(rng.next()) as u32;
            S::prefetch(row(c.w.syn1neg, *t as usize, dim));
        }
        for d in 0..=c.negative {
            let target = *targets.get_unchecked(d) as usize;
            if d > 0 && target == word {
                continue;
            }
            let label = if d == 0 { 1.0 } else { 0.0 };
            let l2 = row(c.w.syn1neg, target, dim);
            if let Some(g) = grad(c.sig, S::dot(l1, l2), label, alpha) {
                S::axpy(g, l2, neu1e);
                S::axpy(g, l1, l2);
            }
        }
    }
}

/// Trains on one sentence (word ids after subsampling).
#[inline(always)]
unsafe fn train_sentence_impl<S: Simd>(
    c: &Ctx,
    rng: &mut Fast,
    sent: &[u32],
    alpha: f32,
    neu1: &mut [f32],
    neu1e: &mut [f32],
) {
    let dim = c.dim;
    let n = sent.len();
    for i in 0..n {
        let word = *sent.get_unchecked(i) as usize;
        // word2vec.c's dynamic window: the effective window is uniform in 1..=window.
        let b = rng.below(c.window);
        let reach = c.window - b;
        let lo = i.saturating_sub(reach);
        let hi = (i + reach + 1).min(n);
        if c.cbow {
            neu1.fill(0.0);
            let mut cw = 0usize;
            for j in lo..hi {
                if j != i {
                    let ctx = *sent.get_unchecked(j) as usize;
                    S::axpy(1.0, row(c.w.syn0, ctx, dim), neu1);
                    cw += 1;
                }
            }
            if cw == 0 {
                continue;
            }
            let inv = 1.0 / cw as f32;
            if c.cbow_mean {
                neu1.iter_mut().for_each(|x| *x *= inv);
            }
            neu1e.fill(0.0);
            output_step::<S>(c, rng, neu1, neu1e, word, alpha);
            // As gensim: with a summed context the error is shared out over its words.
            let scale = if c.cbow_mean { 1.0 } else { inv };
            for j in lo..hi {
                if j != i {
                    let ctx = *sent.get_unchecked(j) as usize;
                    S::axpy(scale, neu1e, row(c.w.syn0, ctx, dim));
                }
            }
        } else {
            for j in lo..hi {
                if j == i {
                    continue;
                }
                // As word2vec.c: the context word's input vector predicts the centre word.
                let ctx = *sent.get_unchecked(j) as usize;
                let l1 = row(c.w.syn0, ctx, dim);
                neu1e.fill(0.0);
                output_step::<S>(c, rng, l1, neu1e, word, alpha);
                S::axpy(1.0, neu1e, l1);
            }
        }
    }
}

/// Same body compiled for AVX2+FMA (8-wide f32); chosen at run time so the binary still runs on
/// any x86-64. Both paths give identical results on a given machine run to run.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn train_sentence_avx2(c: &Ctx, rng: &mut Fast, s: &[u32], a: f32, n1: &mut [f32], n1e: &mut [f32]) {
    train_sentence_impl::<Avx2>(c, rng, s, a, n1, n1e)
}

unsafe fn train_sentence_base(c: &Ctx, rng: &mut Fast, s: &[u32], a: f32, n1: &mut [f32], n1e: &mut [f32]) {
    train_sentence_impl::<Scalar>(c, rng, s, a, n1, n1e)
}

type SentenceFn = unsafe fn(&Ctx, &mut Fast, &[u32], f32, &mut [f32], &mut [f32]);

fn pick_kernel() -> SentenceFn {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return train_sentence_avx2;
    }
    train_sentence_base
}

/// Progress reported while training: words done (of `total`), current learning rate.
pub struct Progress<'a> {
    pub words: &'a AtomicU64,
    pub alpha_bits: &'a AtomicU32,
    pub total: u64,
}

/// Builds the vocabulary of `path` and trains. `on_progress` is called about every 200 ms
/// from the calling thread while worker threads train.
pub fn train_file(path: &Path, cfg: &Config, mut on_progress: impl FnMut(&Progress)) -> Result<(Embeddings, Summary)> {
    cfg.validate()?;
    let t0 = Instant::now();
    let (vocab, stats) = Vocab::build(path, cfg.text, cfg.min_count, cfg.max_vocab)?;
    let vocab_seconds = t0.elapsed().as_secs_f64();
    let v = vocab.len();
    let dim = cfg.dim;
    let train_words = vocab.total();
    let total = train_words * cfg.epochs as u64;

    // Input vectors uniform in [-0.5/dim, 0.5/dim) as word2vec.c and gensim; output
    // vectors zero.
    let mut init = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut syn0: Vec<f32> = (0..v * dim)
        .map(|_| (init.random::<f32>() - 0.5) / dim as f32)
        .collect();
    let mut syn1neg = if cfg.negative > 0 {
        vec![0f32; v * dim]
    } else {
        Vec::new()
    };
    let mut syn1 = if cfg.hs { vec![0f32; v.max(2) * dim] } else { Vec::new() };
    let table = AliasTable::new(&vocab.counts, 0.75);
    let huff = if cfg.hs {
        Some(Huffman::new(&vocab.counts))
    } else {
        None
    };
    let keep = vocab.keep_thresholds(cfg.sample);
    let sig = sigmoid_table();
    let file_len = std::fs::metadata(path)?.len();
    let parts = ranges(file_len, cfg.threads);
    let alpha0 = cfg.alpha0();
    let min_alpha = cfg.min_alpha.unwrap_or(alpha0 * 1e-4);

    let words_done = AtomicU64::new(0);
    let alpha_bits = AtomicU32::new(alpha0.to_bits());
    let shared = Shared {
        syn0: syn0.as_mut_ptr(),
        syn1neg: syn1neg.as_mut_ptr(),
        syn1: syn1.as_mut_ptr(),
    };
    let kernel = pick_kernel();
    let ctx = Ctx {
        dim,
        window: cfg.window,
        negative: cfg.negative,
        cbow: cfg.model == Model::Cbow,
        cbow_mean: cfg.cbow_mean,
        keep: &keep,
        table: &table,
        huff: huff.as_ref(),
        sig: &sig,
        w: shared,
    };

    let t1 = Instant::now();
    let invalid = std::thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(tid, &(start, end))| {
                let ctx = &ctx;
                let words_done = &words_done;
                let alpha_bits = &alpha_bits;
                let vocab = &vocab;
                s.spawn(move || -> Result<u64> {
                    let mut rng = Fast(cfg.seed ^ (tid as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                    let mut neu1 = vec![0f32; dim];
                    let mut neu1e = vec![0f32; dim];
                    let mut sent: Vec<u32> = Vec::with_capacity(MAX_SENTENCE);
                    let mut local = 0u64;
                    let mut alpha = alpha0;
                    let mut invalid = 0u64;
                    for _epoch in 0..cfg.epochs {
                        let mut reader = ChunkReader::open(path, start, end, cfg.text)
                            .with_context(|| format!("cannot open corpus {}", path.display()))?;
                        loop {
                            sent.clear();
                            let mut flush = |sent: &mut Vec<u32>, alpha: f32, rng: &mut Fast| {
                                // SAFETY: ids in `sent` are < vocab size; see `Shared`.
                                unsafe { kernel(ctx, rng, sent, alpha, &mut neu1, &mut neu1e) };
                                sent.clear();
                            };
                            let more = reader
                                .next_line(|w| {
                                    if let Some(id) = vocab.id(w) {
                                        local += 1;
                                        // Subsampling: keep with probability keep[id] / 2^32.
                                        let k = ctx.keep[id as usize];
                                        if k == u32::MAX || (rng.next() as u32) < k {
                                            sent.push(id);
                                        }
                                        if sent.len() >= MAX_SENTENCE {
                                            flush(&mut sent, alpha, &mut rng);
                                        }
                                    }
                                })
                                .with_context(|| format!("error reading corpus {}", path.display()))?;
                            if !sent.is_empty() {
                                flush(&mut sent, alpha, &mut rng);
                            }
                            if local >= 10_000 {
                                // Linear decay on global progress, as word2vec.c.
                                let done = words_done.fetch_add(local, Ordering::Relaxed) + local;
                                local = 0;
                                alpha = (alpha0 * (1.0 - done as f32 / (total + 1) as f32)).max(min_alpha);
                                alpha_bits.store(alpha.to_bits(), Ordering::Relaxed);
                            }
                            if !more {
                                break;
                            }
                        }
                        invalid = reader.invalid_bytes;
                    }
                    words_done.fetch_add(local, Ordering::Relaxed);
                    Ok(invalid)
                })
            })
            .collect();
        let prog = Progress {
            words: &words_done,
            alpha_bits: &alpha_bits,
            total,
        };
        while !handles.iter().all(|h| h.is_finished()) {
            on_progress(&prog);
            std::thread::sleep(Duration::from_millis(100));
        }
        on_progress(&prog);
        let mut invalid = 0;
        for h in handles {
            invalid += h.join().map_err(|_| anyhow::anyhow!("a training thread panicked"))??;
        }
        Ok(invalid)
    })?;
    let train_seconds = t1.elapsed().as_secs_f64();
    let words_trained = words_done.load(Ordering::Relaxed);
    drop(syn1neg);
    drop(syn1);
    let summary = Summary {
        corpus: stats,
        vocab_size: v,
        words_trained,
        train_seconds,
        vocab_seconds,
        words_per_second: words_trained as f64 / train_seconds.max(1e-9),
        invalid_bytes: invalid,
    };
    Ok((
        Embeddings {
            vocab,
            dim,
            vectors: syn0,
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
            let ix = Index::new(&wv(e));
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
        assert_eq!(e.vocab.words().collect::<Vec<_>>(), ["one", "two", "three"]);
    }
}
