//! Decoders for [`Seq2SeqTransformer`]: greedy, beam search and sampling, batched over
//! sentences, behind one trait [`Decoder`] chosen by [`DecodeStrategy`].
//!
//! Every decoder runs the cached incremental decoder (`begin_decode`/`decode_step`) unless
//! `use_cache` is off, in which case each step re-runs the decoder over the whole prefix (for
//! tests and timing). A sentence may grow to its source length + 50 tokens (the paper, §6.1),
//! never past the model's positional table, and stops at EOS.

use crate::c;
use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use seqlab_nn::kernels::cross_entropy::log_sum_exp;
use seqlab_nn::kernels::rows::gather_rows_in_place;
use seqlab_nn::sampling::{argmax, Sampler, SamplingConfig};
use seqlab_nn::{DecodeState, EncodedSource, Seq2SeqTransformer};

/// Extra target length allowed over the source length (Vaswani et al. 2017, §6.1).
pub const MAX_LEN_OVER_SOURCE: usize = 50;

/// Which decoder to run.
#[derive(Clone, Debug, PartialEq)]
pub enum DecodeStrategy {
    /// Arg-max at each step.
    Greedy,
    /// Beam search; finished hypotheses are ranked by log-probability / length^`length_penalty`
    /// (0 = raw log-probability; the paper used α = 0.6 with GNMT's penalty, close to this).
    Beam { size: usize, length_penalty: f64 },
    /// Ancestral sampling with [`seqlab_nn::sampling`] (temperature 0 = greedy, top-k
    /// `None`/0 = no filter, top-p 1.0 = no filter), seeded.
    Sampling { sampling: SamplingConfig, seed: u64 },
}

/// Token ids the decoders need.
#[derive(Clone, Copy, Debug)]
pub struct SpecialIds {
    /// Padding id.
    pub pad: u32,
    /// Id that starts every target sequence.
    pub bos: u32,
    /// Id that ends a hypothesis.
    pub eos: u32,
}

impl Default for SpecialIds {
    /// seqlab-data's tokenizer: pad 0, bos 1, eos 2.
    fn default() -> Self {
        Self { pad: 0, bos: 1, eos: 2 }
    }
}

/// A decoder: source ids (B, S) padded with `ids.pad` → B output token lists (no BOS/EOS).
pub trait Decoder {
    fn decode(&mut self, model: &dyn Seq2SeqModel, src: &Tensor, ids: SpecialIds) -> Result<Vec<Vec<u32>>>;
}

/// An encoder-decoder model that the decoders drive one target token at a time.
pub trait Seq2SeqModel {
    /// Encodes `src` (B, S) once; every sentence becomes `expand` rows (beams). Without
    /// `use_cache` each step re-runs the decoder over the whole prefix, where the model has a
    /// cache to skip (for tests and timing).
    fn start<'a>(&'a self, src: &Tensor, expand: usize, use_cache: bool) -> Result<Box<dyn DecodeSession + 'a>>;
    /// Most target positions the model can take (its positional table), `<bos>` included;
    /// outputs are capped so that decoding never asks for more.
    fn max_target_len(&self) -> usize {
        usize::MAX
    }

    /// Whether every row's step values are the same at any row count from `rows` up (then a
    /// decoder may run a step in fewer rows and widen the session after it, bit for bit).
    fn step_rows_exact(&self, _rows: usize) -> bool {
        false
    }
}

/// Incremental decoding over N rows.
pub trait DecodeSession {
    /// Feeds one token per row → logits (N, V) for the next token.
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor>;
    /// Row i of the next step continues former row `idx[i]`. `idx` may be shorter than the
    /// current number of rows: rows of finished sentences leave the batch, so later steps
    /// compute only what is still decoded.
    fn reorder(&mut self, idx: &[u32]) -> Result<()>;
}

impl Seq2SeqModel for Seq2SeqTransformer {
    fn start<'a>(&'a self, src: &Tensor, expand: usize, use_cache: bool) -> Result<Box<dyn DecodeSession + 'a>> {
        Ok(Box::new(Stepper::new(self, src, expand, use_cache)?))
    }

    fn max_target_len(&self) -> usize {
        self.pe.table.dims()[0]
    }

    fn step_rows_exact(&self, rows: usize) -> bool {
        Seq2SeqTransformer::step_rows_exact(self, rows)
    }
}

/// Repeats every row of `t` (dim 0) `k` times: rows of sentence b become b*k .. b*k+k-1
/// ([`seqlab_nn::ops::repeat_rows`]).
pub fn repeat_rows(t: &Tensor, k: usize) -> Result<Tensor> {
    c(seqlab_nn::ops::repeat_rows(t, k))
}

/// The decoder for `strategy`; `use_cache` = false re-runs the full prefix every step.
pub fn decoder(strategy: &DecodeStrategy, use_cache: bool) -> Result<Box<dyn Decoder>> {
    Ok(match *strategy {
        DecodeStrategy::Greedy => Box::new(Greedy { use_cache }),
        DecodeStrategy::Beam { size, length_penalty } => {
            if size == 0 {
                bail!("beam size must be at least 1");
            }
            if !length_penalty.is_finite() {
                bail!("beam length_penalty must be finite, got {length_penalty}");
            }
            Box::new(Beam {
                size,
                length_penalty,
                use_cache,
            })
        }
        DecodeStrategy::Sampling { ref sampling, seed } => Box::new(Sampling {
            sampler: Sampler::new(sampling.clone(), seed).map_err(|e| anyhow::anyhow!("{e}"))?,
            use_cache,
        }),
    })
}

/// Per-sentence length limits: non-pad source tokens + 50, capped by the model's target
/// positions (step t feeds position t, so `cap` steps use positions 0 .. cap - 1).
fn max_lens(src: &Tensor, pad: u32, cap: usize) -> Result<Vec<usize>> {
    if src.rank() != 2 {
        bail!("decode: source must be (B, S) token ids, got shape {:?}", src.dims());
    }
    let rows = c(c(src.to_dtype(candle_core::DType::U32))?.to_vec2::<u32>())?;
    Ok(rows
        .iter()
        .map(|r| (r.iter().filter(|&&t| t != pad).count() + MAX_LEN_OVER_SOURCE).min(cap))
        .collect())
}

/// Steps the Transformer decoder for N rows, with or without the cache; rows can be
/// reordered (beams).
pub struct Stepper<'a> {
    model: &'a Seq2SeqTransformer,
    /// With the cache only the padding mask is read (its rows follow the session's); the
    /// memory then keeps the rows it had at the start, as the steps never read it.
    enc: EncodedSource,
    state: Option<DecodeState>,
    /// Tokens fed so far per row (only kept without the cache).
    hist: Vec<Vec<u32>>,
    /// The cross-attention keys/values are contiguous tensors of this session alone (made by
    /// it), so reorders may gather their rows in place.
    cross_owned: bool,
    /// Session rows per cross-attention key/value row: row r attends over key/value row
    /// r / group (a sentence's beams share one copy; see `cross_rows`).
    group: usize,
}

impl<'a> Stepper<'a> {
    /// Encodes `src` (B, S); `expand` repeats every sentence that many times (beam rows).
    pub fn new(model: &'a Seq2SeqTransformer, src: &Tensor, expand: usize, use_cache: bool) -> Result<Self> {
        let enc = c(model.encode(src, false))?;
        let b = c(src.dim(0))?;
        // Decoding needs no gradient: detached, the encoder's activations are freed now.
        let enc = EncodedSource {
            memory: enc.memory.detach(),
            src_key_padding_mask: enc.src_key_padding_mask,
        };
        // Cross-attention keys and values are projected once per sentence and shared by its
        // beams (the attention kernel reads row r / k for beam row r): projecting the
        // repeated memory (B·k rows) cost as much as a few decoding steps of the whole beam,
        // and repeating the projections copied them k times into fresh memory that every
        // step read again. (Not for a single one-token source: gemm multiplies one row in
        // another summation order, and the values must be those of B·k rows.)
        let once = c(enc.memory.dim(0))? * c(enc.memory.dim(1))? >= 2;
        // The cached steps never read the memory (its keys and values are in the caches):
        // it is repeated for the beams only where the steps or `begin_decode` use it.
        let memory = if use_cache && once {
            enc.memory.clone()
        } else {
            repeat_rows(&enc.memory, expand)?
        };
        let expanded = EncodedSource {
            memory,
            src_key_padding_mask: repeat_rows(&enc.src_key_padding_mask, expand)?,
        };
        let group = if use_cache && once { expand.max(1) } else { 1 };
        let state = if use_cache {
            Some(c(model.begin_decode(if once { &enc } else { &expanded }))?)
        } else {
            None
        };
        let enc = expanded;
        Ok(Self {
            model,
            enc,
            state,
            hist: vec![Vec::new(); b * expand.max(1)],
            cross_owned: false,
            group,
        })
    }
}

impl DecodeSession for Stepper<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let dev = self.enc.memory.device().clone();
        match &mut self.state {
            Some(st) => {
                let t = c(Tensor::new(tokens, &dev))?;
                c(self.model.decode_step(&t, &self.enc, st))
            }
            None => {
                for (h, &t) in self.hist.iter_mut().zip(tokens) {
                    h.push(t);
                }
                let (n, l) = (self.hist.len(), self.hist[0].len());
                let flat: Vec<u32> = self.hist.concat();
                let prefix = c(Tensor::from_vec(flat, (n, l), &dev))?;
                let logits = c(self.model.decode(&prefix, &self.enc, false))?;
                c(c(logits.narrow(1, l - 1, 1))?.squeeze(1))
            }
        }
    }

    fn reorder(&mut self, idx: &[u32]) -> Result<()> {
        let rows = self.hist.len();
        // Beams that keep their rows (and greedy's steps where no sentence ends) move nothing.
        if idx.len() == rows && idx.iter().enumerate().all(|(i, &j)| i == j as usize) {
            return Ok(());
        }
        let t = c(Tensor::new(idx, self.enc.memory.device()))?;
        let shrink = idx.len() != rows;
        // A reorder that keeps the row count moves beams within their sentences (beam
        // search's top-k): the shared cross-attention keys/values are not gathered for it.
        // Refuse one that would mix sentences rather than decode wrongly.
        let g = self.group;
        if !shrink && g > 1 && idx.iter().enumerate().any(|(i, &j)| i / g != j as usize / g) {
            bail!("decoding: a reorder of {rows} rows moves rows between sentences ({g} rows each)");
        }
        let gather = |x: &Tensor| c(x.contiguous().and_then(|x| x.index_select(&t, 0)));
        if shrink {
            self.enc = EncodedSource {
                memory: if self.state.is_some() {
                    self.enc.memory.clone()
                } else {
                    gather(&self.enc.memory)?
                },
                src_key_padding_mask: gather(&self.enc.src_key_padding_mask)?,
            };
        }
        if let Some(st) = &mut self.state {
            // Cross-attention K/V start as views into one projection (B, S, 2, H, D), one row
            // per sentence (or per session row). A shrink gathers the rows of the session's
            // own copies in place; the first shrink of views makes such copies. (Fresh tensors
            // at every shrink, zeroed page by page, were ~20 % of beam-4 decoding: perf, 32
            // test sentences.) Reorders that keep the rows reorder beams within their
            // sentences, whose cross-attention keys and values are the same.
            let cross = match shrink {
                true => Some(cross_rows(idx, rows, self.group)),
                false => None,
            };
            let cross_len = c(st.caches[0].cross_k.dim(0))?;
            if let Some((_, group)) = cross {
                self.group = group;
            }
            // The same key/value rows in the same order (the session widened): nothing moves.
            let cross = cross
                .filter(|(list, _)| list.len() != cross_len || list.iter().enumerate().any(|(i, &j)| i != j as usize));
            let in_place = |list: &[u32]| {
                self.cross_owned && list.len() <= cross_len && seqlab_nn::ops::use_fused(&self.enc.memory)
            };
            for cache in st.caches.iter_mut() {
                c(cache.self_kv.reorder(&t))?;
                match &cross {
                    Some((list, _)) if in_place(list) => {
                        cache.cross_k = c(gather_rows_in_place(&cache.cross_k, list))?;
                        cache.cross_v = c(gather_rows_in_place(&cache.cross_v, list))?;
                    }
                    Some((list, _)) => {
                        let l = c(Tensor::new(list.as_slice(), self.enc.memory.device()))?;
                        let pick = |x: &Tensor| c(x.contiguous().and_then(|x| x.index_select(&l, 0)));
                        cache.cross_k = pick(&cache.cross_k)?;
                        cache.cross_v = pick(&cache.cross_v)?;
                    }
                    None => {}
                }
            }
            // Gathered into copies of this session's own (or in place in them).
            self.cross_owned |= cross.is_some();
        }
        self.hist = idx.iter().map(|&i| self.hist[i as usize].clone()).collect();
        Ok(())
    }
}

/// The cross-attention key/value rows after a reorder that changes the row count (`idx` over
/// `rows` session rows, `group` rows per key/value row): (former key/value row of each new
/// one, new rows per key/value row). Every block of new rows that continues one former
/// key/value row keeps sharing it: blocks of the former group size (finished sentences
/// leaving a beam search) or, when the session widens n-fold, of n times it (beam search's
/// first step, one row per sentence, widening to its beams). Otherwise one key/value row per
/// new row.
fn cross_rows(idx: &[u32], rows: usize, group: usize) -> (Vec<u32>, usize) {
    let n = idx.len();
    let blocks = |g: usize| -> Option<Vec<u32>> {
        if g == 0 || !n.is_multiple_of(g) {
            return None;
        }
        idx.chunks(g)
            .map(|b| {
                let src = b[0] / group as u32;
                b.iter().all(|&r| r / group as u32 == src).then_some(src)
            })
            .collect()
    };
    let wider = (rows > 0 && n > rows && n.is_multiple_of(rows)).then(|| group * (n / rows));
    for g in wider.into_iter().chain([group]) {
        if let Some(list) = blocks(g) {
            return (list, g);
        }
    }
    (idx.iter().map(|&r| r / group as u32).collect(), 1)
}

/// Logits (N, V) → their values, row-major (one copy, no per-row vectors).
fn logits_rows(logits: &Tensor) -> Result<(Vec<f32>, usize)> {
    let v = c(logits.dim(1))?;
    let flat = c(logits
        .to_dtype(candle_core::DType::F32)
        .and_then(|l| l.flatten_all())
        .and_then(|l| l.to_vec1::<f32>()))?;
    Ok((flat, v))
}

/// `f` on the logits (N, V) as one row-major slice and V: read where they lie when they are a
/// contiguous f32 CPU tensor (not copied into a fresh vector: 4 MB per beam-4 step of a batch
/// of 32 over 8k words), else copied.
fn with_logits<R>(logits: &Tensor, f: impl FnOnce(&[f32], usize) -> R) -> Result<R> {
    let v = c(logits.dim(1))?;
    {
        let (storage, layout) = logits.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[a..b], v));
        }
    }
    let (flat, v) = logits_rows(logits)?;
    Ok(f(&flat, v))
}

/// Log-softmax of one logits row: x − [`log_sum_exp`].
fn log_softmax_row(r: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(r);
    r.iter().map(|&x| x - lse).collect()
}

/// Greedy's choice: the first arg-max of the row's log-softmax, found on the logits without
/// the log-softmax (V scalar exponentials per row: by count of instructions, the same order
/// as the row's d_model × V output projection; an estimate, not measured). x ↦ x − lse is
/// monotone, so the two arg-maxes agree
/// unless rounding makes a smaller logit before the maximum equal to it after the
/// subtraction; that needs the two within one ulp of |max − lse| ≤ ln V, and only then (any
/// earlier logit within 1e-3 of the maximum, or a non-finite maximum) is the log-softmax
/// computed, so the choice is always the log-softmax's.
fn greedy_pick(row: &[f32]) -> u32 {
    let i = argmax(row) as usize;
    let x = row[i];
    if !x.is_finite() || row[..i].iter().any(|&y| x - y <= 1e-3) {
        return argmax(&log_softmax_row(row));
    }
    i as u32
}

/// `keep` (former row indices, ascending) with at least `min(2, rows)` entries: the first
/// other rows are added while it is shorter. gemm multiplies a single row with a different
/// summation order than a block of rows, so a batch never shrinks to one row and every
/// sentence's logits stay those of the full batch, bit for bit.
fn at_least_two_rows(mut keep: Vec<u32>, rows: usize) -> Vec<u32> {
    let want = rows.min(2);
    let mut r = 0;
    while keep.len() < want {
        if !keep.contains(&r) {
            keep.push(r);
        }
        r += 1;
    }
    keep.sort_unstable();
    keep
}

/// Shared loop of greedy and sampling: `pick` chooses each row's next token from its logits.
/// Rows of finished sentences leave the session.
fn left_to_right(
    model: &dyn Seq2SeqModel,
    src: &Tensor,
    ids: SpecialIds,
    use_cache: bool,
    mut pick: impl FnMut(&[f32]) -> u32,
) -> Result<Vec<Vec<u32>>> {
    let limits = max_lens(src, ids.pad, model.max_target_len())?;
    let b = limits.len();
    let mut st = model.start(src, 1, use_cache)?;
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    // rows[r]: the sentence that row r of the session decodes (ascending).
    let mut rows: Vec<usize> = (0..b).collect();
    let mut feed = vec![ids.bos; b];
    let longest = limits.iter().copied().max().unwrap_or(0);
    for t in 0..longest {
        if rows.iter().all(|&s| done[s]) {
            break;
        }
        with_logits(&st.step(&feed)?, |logits, v| {
            for (r, &i) in rows.iter().enumerate() {
                if done[i] {
                    feed[r] = ids.eos;
                    continue;
                }
                let tok = pick(&logits[r * v..(r + 1) * v]);
                if tok == ids.eos {
                    done[i] = true;
                } else {
                    out[i].push(tok);
                    if t + 1 >= limits[i] {
                        done[i] = true;
                    }
                }
                feed[r] = tok;
            }
        })?;
        let live: Vec<u32> = (0..rows.len() as u32).filter(|&r| !done[rows[r as usize]]).collect();
        if live.len() < rows.len() && !live.is_empty() {
            let keep = at_least_two_rows(live, rows.len());
            if keep.len() < rows.len() {
                st.reorder(&keep)?;
                rows = keep.iter().map(|&r| rows[r as usize]).collect();
                feed = keep.iter().map(|&r| feed[r as usize]).collect();
            }
        }
    }
    Ok(out)
}

struct Greedy {
    use_cache: bool,
}

impl Decoder for Greedy {
    fn decode(&mut self, model: &dyn Seq2SeqModel, src: &Tensor, ids: SpecialIds) -> Result<Vec<Vec<u32>>> {
        left_to_right(model, src, ids, self.use_cache, greedy_pick)
    }
}

struct Sampling {
    sampler: Sampler,
    use_cache: bool,
}

impl Decoder for Sampling {
    fn decode(&mut self, model: &dyn Seq2SeqModel, src: &Tensor, ids: SpecialIds) -> Result<Vec<Vec<u32>>> {
        let sampler = &mut self.sampler;
        left_to_right(model, src, ids, self.use_cache, |logits| {
            sampler.sample(&log_softmax_row(logits))
        })
    }
}

struct Beam {
    size: usize,
    length_penalty: f64,
    use_cache: bool,
}

impl Beam {
    fn norm(&self, score: f64, len: usize) -> f64 {
        score / (len.max(1) as f64).powf(self.length_penalty)
    }
}

/// The `n` largest log-probabilities of a logits row as (log-probability, token), best first,
/// ties to the lower token. One pass over the row after its [`log_sum_exp`], with the same
/// arithmetic as [`log_softmax_row`], and no V-wide vector. Once `n` are held, a block of
/// logits none of whose x − lse beats the n-th is skipped whole after one branch-free pass
/// (a NaN never enters a full list either). The per-token loop, a compare and branch for
/// each of the V logits, was ~5 % of beam-4 decoding (perf, 1 thread); a block maximum
/// (16-lane `row_max`) per 64 logits instead cost as much as it saved.
fn top_log_probs(row: &[f32], n: usize) -> Vec<(f32, u32)> {
    let mut out: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return out;
    }
    let lse = log_sum_exp(row);
    const BLOCK: usize = 128;
    for (b, block) in row.chunks(BLOCK).enumerate() {
        if out.len() == n {
            let worst = out[n - 1].0;
            if block.iter().fold(0u32, |a, &x| a | u32::from(x - lse > worst)) == 0 {
                continue;
            }
        }
        for (i, &x) in block.iter().enumerate() {
            keep_best(&mut out, n, x - lse, (b * BLOCK + i) as u32);
        }
    }
    out
}

/// Puts (`lp`, `token`) into `out`, the best `n` so far (best first, ties to the earlier
/// token), if it belongs there.
#[inline(always)]
fn keep_best(out: &mut Vec<(f32, u32)>, n: usize, lp: f32, token: u32) {
    if out.len() == n && lp <= out[n - 1].0 {
        return;
    }
    let pos = out.iter().position(|&(y, _)| y < lp).unwrap_or(out.len());
    out.insert(pos, (lp, token));
    out.truncate(n);
}

/// [`top_log_probs`] token by token, without skipping blocks (the reference of its test).
#[cfg(test)]
fn top_log_probs_plain(row: &[f32], n: usize) -> Vec<(f32, u32)> {
    let mut out: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return out;
    }
    let lse = log_sum_exp(row);
    for (tok, &x) in row.iter().enumerate() {
        keep_best(&mut out, n, x - lse, tok as u32);
    }
    out
}

impl Decoder for Beam {
    fn decode(&mut self, model: &dyn Seq2SeqModel, src: &Tensor, ids: SpecialIds) -> Result<Vec<Vec<u32>>> {
        let limits = max_lens(src, ids.pad, model.max_target_len())?;
        let (b, k) = (limits.len(), self.size);
        // At step 0 every beam of a sentence is `<bos>` on the same source: one row per
        // sentence is computed, and the session widens to k rows per sentence after it (its
        // first reorder), where the model gives each row the same values at both counts.
        let first = if k > 1 && model.step_rows_exact(b) { 1 } else { k };
        let mut st = model.start(src, first, self.use_cache)?;
        // Row s*k + j of `scores` and `hyps` is beam j of sentence s. Only beam 0 is alive at
        // the start, so the first step does not pick k copies of the same token.
        let mut scores: Vec<f64> = (0..b * k)
            .map(|r| if r % k == 0 { 0.0 } else { f64::NEG_INFINITY })
            .collect();
        let mut hyps: Vec<Vec<u32>> = vec![Vec::new(); b * k];
        let mut finished: Vec<Vec<(f64, Vec<u32>)>> = vec![Vec::new(); b];
        let mut done = vec![false; b];
        // act[a]: the sentence whose beams are rows a*k .. a*k + k of the session; finished
        // sentences leave it.
        let mut act: Vec<usize> = (0..b).collect();
        let mut feed = vec![ids.bos; b * first];
        let longest = limits.iter().copied().max().unwrap_or(0);
        for t in 0..longest {
            if act.iter().all(|&s| done[s]) {
                break;
            }
            // Session rows per sentence at this step; beam j of the a-th sentence is row
            // a * per + j (at step 0 only beam 0 is alive, and j < per for it).
            let per = if t == 0 { first } else { k };
            // Every live beam's best 2k continuations, rows in parallel: the log-sum-exp over
            // the vocabulary is the per-row cost, and run serially it left the second thread
            // idle between the steps' GEMMs.
            let tops: Vec<Vec<(f32, u32)>> = with_logits(&st.step(&feed)?, |logits, v| {
                let n = (2 * k).min(v);
                (0..act.len() * k)
                    .into_par_iter()
                    .map(|row| {
                        let (s, j) = (act[row / k], row % k);
                        if done[s] || scores[s * k + j] == f64::NEG_INFINITY {
                            return Vec::new();
                        }
                        let r = row / k * per + j;
                        top_log_probs(&logits[r * v..(r + 1) * v], n)
                    })
                    .collect()
            })?;
            let mut reorder: Vec<u32> = (0..(act.len() * k) as u32).collect();
            let mut new_scores = scores.clone();
            let mut new_hyps = hyps.clone();
            for (a, &s) in act.iter().enumerate() {
                if done[s] {
                    continue;
                }
                // Best 2k continuations over all beams: at most k of them end in EOS, so k
                // live ones remain.
                let mut cand: Vec<(f64, usize, u32)> = Vec::with_capacity(2 * k * k);
                for j in 0..k {
                    let r = s * k + j;
                    if scores[r] == f64::NEG_INFINITY {
                        continue;
                    }
                    cand.extend(tops[a * k + j].iter().map(|&(x, v)| (scores[r] + x as f64, j, v)));
                }
                // Ties go to the lower beam and token, as greedy's first-maximum arg-max.
                cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
                let last = t + 1 >= limits[s];
                let mut live = 0;
                for (score, j, v) in cand {
                    if live == k {
                        break;
                    }
                    let prev = &hyps[s * k + j];
                    if v == ids.eos {
                        if finished[s].len() < k {
                            finished[s].push((self.norm(score, prev.len() + 1), prev.clone()));
                        }
                        continue;
                    }
                    let r = s * k + live;
                    let mut h = prev.clone();
                    h.push(v);
                    if last {
                        finished[s].push((self.norm(score, h.len()), h.clone()));
                    }
                    new_scores[r] = score;
                    new_hyps[r] = h;
                    reorder[a * k + live] = (a * k + j) as u32;
                    live += 1;
                }
                for r in s * k + live..(s + 1) * k {
                    new_scores[r] = f64::NEG_INFINITY;
                }
                if finished[s].len() >= k || last || live == 0 {
                    done[s] = true;
                }
            }
            scores = new_scores;
            hyps = new_hyps;
            let live: Vec<u32> = (0..act.len() as u32).filter(|&a| !done[act[a as usize]]).collect();
            if live.is_empty() {
                break;
            }
            // With one beam a sentence is one row; see `at_least_two_rows`.
            let keep = if k == 1 {
                at_least_two_rows(live, act.len())
            } else {
                live
            };
            // `reorder` names former rows as if every sentence had k of them: mapped to the
            // session's `per` (a dead beam's row, whose values are never read, to the
            // sentence's first).
            let idx: Vec<u32> = keep
                .iter()
                .flat_map(|&a| reorder[a as usize * k..(a as usize + 1) * k].iter().copied())
                .map(|r| (r as usize / k * per + (r as usize % k).min(per - 1)) as u32)
                .collect();
            act = keep.iter().map(|&a| act[a as usize]).collect();
            feed = act
                .iter()
                .flat_map(|&s| (s * k..(s + 1) * k).map(move |r| (s, r)))
                .map(|(s, r)| {
                    if done[s] || scores[r] == f64::NEG_INFINITY {
                        ids.eos
                    } else {
                        *hyps[r].last().unwrap_or(&ids.bos)
                    }
                })
                .collect();
            st.reorder(&idx)?;
        }
        Ok(finished
            .into_iter()
            .map(|f| {
                f.into_iter()
                    .enumerate()
                    .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(b.0.cmp(&a.0)))
                    .map(|(_, (_, h))| h)
                    .unwrap_or_default()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use seqlab_nn::{Seq2SeqConfig, TransformerConfig, VarStore};

    pub(crate) fn tiny_model(seed: u64, vocab: usize) -> (VarStore, Seq2SeqTransformer) {
        let vs = VarStore::new(seed, &Device::Cpu);
        let tc = TransformerConfig {
            d_model: 32,
            nhead: 4,
            num_encoder_layers: 2,
            num_decoder_layers: 2,
            dim_feedforward: 64,
            dropout: 0.0,
            ..Default::default()
        };
        let m = Seq2SeqTransformer::new(&Seq2SeqConfig::new(vocab, tc), &vs).unwrap();
        (vs, m)
    }

    fn src() -> Tensor {
        Tensor::new(
            &[[5u32, 6, 7, 8, 9, 2], [10, 11, 12, 2, 0, 0], [4, 4, 13, 14, 2, 0]],
            &Device::Cpu,
        )
        .unwrap()
    }

    /// Skipping blocks changes nothing: the same (log-probability, token) list, bit for bit,
    /// as the token-by-token loop, on rows with ties across and within blocks, NaN, ±∞,
    /// zeros of both signs, maxima in the first, last and a partial block, and every n up to
    /// past the row.
    #[test]
    fn top_log_probs_equals_the_plain_loop() {
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let mut x = 12345u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        };
        for len in [1, 5, 127, 128, 129, 300, 1000] {
            rows.push((0..len).map(|_| next()).collect());
            // Coarse values: many ties, across blocks too.
            rows.push((0..len).map(|_| (next() * 2.0).round()).collect());
            let mut r: Vec<f32> = (0..len).map(|_| next()).collect();
            r[len - 1] = 9.0;
            rows.push(r);
            let mut r: Vec<f32> = (0..len).map(|_| next()).collect();
            r[0] = 9.0;
            r[len / 2] = f32::NAN;
            rows.push(r);
            let mut r: Vec<f32> = (0..len).map(|i| if i % 2 == 0 { 0.0 } else { -0.0 }).collect();
            r[len / 3] = f32::NEG_INFINITY;
            rows.push(r);
        }
        rows.push(vec![f32::NEG_INFINITY; 130]);
        rows.push(vec![1.0, f32::INFINITY, 2.0]);
        let bits = |v: Vec<(f32, u32)>| v.into_iter().map(|(a, t)| (a.to_bits(), t)).collect::<Vec<_>>();
        for r in &rows {
            for n in [1, 2, 4, 8, 70, r.len() + 1] {
                assert_eq!(
                    bits(top_log_probs(r, n)),
                    bits(top_log_probs_plain(r, n)),
                    "n {n}, row of {}",
                    r.len()
                );
            }
        }
    }

    /// Which cross-attention key/value rows a reorder keeps, and how many session rows share
    /// each.
    #[test]
    fn cross_rows_keep_sentences_shared() {
        // Beam search's first step, one row per sentence, widening to 3 beams each.
        assert_eq!(cross_rows(&[0, 0, 0, 1, 1, 1], 2, 1), (vec![0, 1], 3));
        // 3 sentences × 2 beams; sentence 1 finished, beams of the others reordered.
        assert_eq!(cross_rows(&[1, 1, 4, 5], 6, 2), (vec![0, 2], 2));
        // Rows that do not come in blocks of one sentence: one key/value row each.
        assert_eq!(cross_rows(&[0, 2], 4, 2), (vec![0, 1], 1));
        assert_eq!(cross_rows(&[0, 1, 2], 4, 2), (vec![0, 0, 1], 1));
        // Greedy: one row per sentence throughout.
        assert_eq!(cross_rows(&[0, 2, 3], 4, 1), (vec![0, 2, 3], 1));
        assert_eq!(cross_rows(&[], 4, 2), (vec![], 2));
    }

    /// A session that starts with one row per sentence and widens to its beams (as beam
    /// search does where the model allows it) steps like one that starts with the beams,
    /// through beam reorders and sentences leaving, bit for bit.
    #[test]
    fn widened_session_equals_expanded_session() {
        // Wide enough that a step's values do not depend on its row count (`step_rows_exact`).
        let vs = VarStore::new(5, &Device::Cpu);
        let tc = TransformerConfig {
            d_model: 128,
            nhead: 4,
            num_encoder_layers: 1,
            num_decoder_layers: 2,
            dim_feedforward: 256,
            dropout: 0.0,
            ..Default::default()
        };
        let m = Seq2SeqTransformer::new(&Seq2SeqConfig::new(130, tc), &vs).unwrap();
        assert!(m.step_rows_exact(3));
        let s = src();
        let mut wide = Stepper::new(&m, &s, 1, true).unwrap();
        let mut expanded = Stepper::new(&m, &s, 2, true).unwrap();
        let bits = |x: &Tensor| {
            x.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect::<Vec<_>>()
        };
        let first = wide.step(&[1, 1, 1]).unwrap();
        let all = expanded.step(&[1; 6]).unwrap();
        let pick = Tensor::new(&[0u32, 2, 4], &Device::Cpu).unwrap();
        assert_eq!(bits(&first), bits(&all.index_select(&pick, 0).unwrap()));
        wide.reorder(&[0, 0, 1, 1, 2, 2]).unwrap();
        // Rows 0 and 2 belong to different sentences, which share no keys/values: refused
        // before anything changes (the steps below still match).
        assert!(wide.reorder(&[2, 1, 0, 3, 4, 5]).is_err());
        for (t, idx) in [&[1u32, 0, 2, 2, 4, 5][..], &[0, 1, 4, 5], &[1, 1, 2, 2], &[0, 1]]
            .iter()
            .enumerate()
        {
            let feed: Vec<u32> = (0..idx.len().max(6) as u32).map(|i| 3 + (i + t as u32) % 7).collect();
            let rows = [6, 6, 4, 4][t];
            let (a, b) = (wide.step(&feed[..rows]).unwrap(), expanded.step(&feed[..rows]).unwrap());
            assert_eq!(bits(&a), bits(&b), "step {t}");
            wide.reorder(idx).unwrap();
            expanded.reorder(idx).unwrap();
        }
        let feed = [3u32, 4];
        assert_eq!(bits(&wide.step(&feed).unwrap()), bits(&expanded.step(&feed).unwrap()));
    }

    #[test]
    fn cached_step_equals_full_rerun() {
        let (_vs, m) = tiny_model(3, 20);
        let s = src();
        let mut cached = Stepper::new(&m, &s, 1, true).unwrap();
        let mut full = Stepper::new(&m, &s, 1, false).unwrap();
        let mut feed = vec![1u32; 3];
        for _ in 0..8 {
            let a = cached.step(&feed).unwrap();
            let b = full.step(&feed).unwrap();
            let d = seqlab_nn::testing::max_abs_diff(&a, &b);
            assert!(d < 1e-5, "cached vs full logits differ by {d}");
            let (ra, rb) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
            feed = ra.iter().map(|r| argmax(r)).collect();
            assert_eq!(feed, rb.iter().map(|r| argmax(r)).collect::<Vec<_>>());
        }
        // Whole decoders agree too, for every strategy (a random model rarely emits EOS, so
        // this runs to the length limit).
        for strat in [
            DecodeStrategy::Greedy,
            DecodeStrategy::Beam {
                size: 3,
                length_penalty: 0.6,
            },
            DecodeStrategy::Sampling {
                sampling: SamplingConfig {
                    temperature: 1.0,
                    top_k: Some(5),
                    top_p: 0.9,
                },
                seed: 7,
            },
        ] {
            let a = decoder(&strat, true)
                .unwrap()
                .decode(&m, &s, SpecialIds::default())
                .unwrap();
            let b = decoder(&strat, false)
                .unwrap()
                .decode(&m, &s, SpecialIds::default())
                .unwrap();
            assert_eq!(a, b, "{strat:?}");
        }
    }

    /// Outputs of fixed tiny models, pinned: a speed change to the decoders (row shrinking,
    /// cache layout, fused selection) must not change a single token. A 7-token vocabulary
    /// makes the random models end sentences at different steps, so finished rows leave the
    /// batch while others go on; a 40-token one gives less repetitive outputs. Pinned with
    /// the decoders of commit 63741b6.
    #[test]
    fn outputs_of_fixed_models_are_pinned() {
        let s = Tensor::new(
            &[
                [5u32, 6, 4, 3, 5, 2],
                [6, 5, 3, 2, 0, 0],
                [4, 4, 6, 3, 2, 0],
                [3, 2, 0, 0, 0, 0],
                [5, 5, 5, 6, 4, 2],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mut got = String::new();
        for (seed, vocab) in (0..6).map(|s| (s, 7)).chain((0..4).map(|s| (s, 40))) {
            let (_vs, m) = tiny_model(seed, vocab);
            for strat in [
                DecodeStrategy::Greedy,
                DecodeStrategy::Beam {
                    size: 4,
                    length_penalty: 0.6,
                },
                DecodeStrategy::Beam {
                    size: 2,
                    length_penalty: 0.0,
                },
            ] {
                let out = decoder(&strat, true)
                    .unwrap()
                    .decode(&m, &s, SpecialIds::default())
                    .unwrap();
                let rows: Vec<String> = out
                    .iter()
                    .map(|o| o.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","))
                    .collect();
                got.push_str(&format!("{}\n", rows.join(" ")));
            }
        }
        // FNV-1a 64 of the text (15,616 bytes, 30 lines; printed on failure).
        let hash = got.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        assert_eq!(
            (got.len(), hash),
            (15_616, 0x5e16_f088_00e0_a19f),
            "outputs changed:\n{got}"
        );
    }

    /// Issue 13: a source near the position table's length made the +50 output limit ask
    /// for positions past the table and failed the whole batch. Outputs are now capped by the
    /// table, for every strategy, and the other sentences of the batch decode as usual.
    #[test]
    fn output_length_is_capped_by_the_position_table() {
        let vs = VarStore::new(4, &Device::Cpu);
        let tc = TransformerConfig {
            d_model: 16,
            nhead: 2,
            num_encoder_layers: 1,
            num_decoder_layers: 1,
            dim_feedforward: 32,
            dropout: 0.0,
            ..Default::default()
        };
        let cfg = Seq2SeqConfig {
            max_len: 16,
            ..Seq2SeqConfig::new(12, tc)
        };
        let m = Seq2SeqTransformer::new(&cfg, &vs).unwrap();
        assert_eq!(m.max_target_len(), 16);
        let long: Vec<u32> = (0..15).map(|i| 3 + i % 8).chain([2]).collect();
        let short: Vec<u32> = [5u32, 6, 2].into_iter().chain([0; 13]).collect();
        let s = Tensor::new(vec![long, short], &Device::Cpu).unwrap();
        for strat in [
            DecodeStrategy::Greedy,
            DecodeStrategy::Beam {
                size: 2,
                length_penalty: 0.0,
            },
            DecodeStrategy::Sampling {
                sampling: SamplingConfig {
                    temperature: 1.0,
                    top_k: None,
                    top_p: 1.0,
                },
                seed: 1,
            },
        ] {
            let out = decoder(&strat, true)
                .unwrap()
                .decode(&m, &s, SpecialIds::default())
                .unwrap_or_else(|e| panic!("{strat:?}: {e}"));
            assert_eq!(out.len(), 2);
            assert!(out.iter().all(|o| o.len() <= 16), "{strat:?}: {out:?}");
        }
    }

    #[test]
    fn beam_one_equals_greedy() {
        for seed in 0..4 {
            let (_vs, m) = tiny_model(seed, 12);
            let s = src().clamp(0u32, 11u32).unwrap();
            let g = decoder(&DecodeStrategy::Greedy, true)
                .unwrap()
                .decode(&m, &s, SpecialIds::default())
                .unwrap();
            let b1 = decoder(
                &DecodeStrategy::Beam {
                    size: 1,
                    length_penalty: 1.0,
                },
                true,
            )
            .unwrap()
            .decode(&m, &s, SpecialIds::default())
            .unwrap();
            assert_eq!(g, b1, "seed {seed}");
            // Source lengths 5, 3, 4 (non-pad) → at most +50 tokens.
            for (o, n) in g.iter().zip([56, 54, 55]) {
                assert!(o.len() <= n);
            }
        }
    }

    #[test]
    fn beam_search_never_scores_below_greedy() {
        // With no length penalty, the beam's best finished hypothesis has at least greedy's
        // log-probability. A 5-token vocabulary (3 specials + 2 words) makes an untrained
        // model end sentences early for some seeds (greedy often loops on one word); the test
        // counts the seeds where both searches finished and needs several of them.
        let s = Tensor::new(&[[3u32, 4, 3, 2]], &Device::Cpu).unwrap();
        let limit = 3 + MAX_LEN_OVER_SOURCE;
        let mut compared = 0;
        let mut beam_better = 0;
        for seed in 0..32 {
            let (_vs, m) = tiny_model(seed, 5);
            let score = |toks: &[u32]| -> f64 {
                let mut st = Stepper::new(&m, &s, 1, true).unwrap();
                let mut feed = 1u32;
                let mut total = 0.0;
                for &t in toks.iter().chain([2u32].iter()) {
                    let lp = log_softmax_row(&st.step(&[feed]).unwrap().to_vec2::<f32>().unwrap()[0]);
                    total += lp[t as usize] as f64;
                    feed = t;
                }
                total
            };
            let g = decoder(&DecodeStrategy::Greedy, true)
                .unwrap()
                .decode(&m, &s, SpecialIds::default())
                .unwrap();
            let b = decoder(
                &DecodeStrategy::Beam {
                    size: 4,
                    length_penalty: 0.0,
                },
                true,
            )
            .unwrap()
            .decode(&m, &s, SpecialIds::default())
            .unwrap();
            if g[0].len() < limit && b[0].len() < limit {
                let (sb, sg) = (score(&b[0]), score(&g[0]));
                assert!(sb >= sg - 1e-4, "seed {seed}: beam {sb} < greedy {sg}");
                compared += 1;
                beam_better += usize::from(sb > sg + 1e-4);
            }
        }
        assert!(compared >= 4, "only {compared} of 32 seeds finished both searches");
        eprintln!("beam beat greedy on {beam_better} of {compared} seeds");
    }

    /// The sampler's one meaning holds in the decoder: temperature 0 is greedy and top-k 1
    /// is greedy whatever the seed; top-k 0 is no filter (the same draws as `None`).
    #[test]
    fn sampling_settings_mean_what_the_sampler_says() {
        let (_vs, m) = tiny_model(2, 20);
        let s = src();
        let run = |temperature: f64, top_k: Option<usize>, seed: u64| {
            let strat = DecodeStrategy::Sampling {
                sampling: SamplingConfig {
                    temperature,
                    top_k,
                    top_p: 1.0,
                },
                seed,
            };
            decoder(&strat, true)
                .unwrap()
                .decode(&m, &s, SpecialIds::default())
                .unwrap()
        };
        let greedy = decoder(&DecodeStrategy::Greedy, true)
            .unwrap()
            .decode(&m, &s, SpecialIds::default())
            .unwrap();
        assert_eq!(run(0.0, None, 1), greedy);
        assert_eq!(run(2.0, Some(1), 3), greedy);
        assert_eq!(run(2.0, Some(0), 4), run(2.0, None, 4));
        assert_ne!(run(2.0, None, 4), greedy, "a hot sampler leaves the greedy path");
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(decoder(
            &DecodeStrategy::Beam {
                size: 0,
                length_penalty: 1.0
            },
            true
        )
        .is_err());
        for (temperature, top_p, key) in [(-1.0, 1.0, "temperature"), (1.0, 1.5, "top_p")] {
            let strat = DecodeStrategy::Sampling {
                sampling: SamplingConfig {
                    temperature,
                    top_k: None,
                    top_p,
                },
                seed: 0,
            };
            let e = decoder(&strat, true)
                .err()
                .expect("invalid sampling settings")
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        let (_vs, m) = tiny_model(0, 10);
        let bad = Tensor::new(&[5u32, 6], &Device::Cpu).unwrap();
        assert!(decoder(&DecodeStrategy::Greedy, true)
            .unwrap()
            .decode(&m, &bad, SpecialIds::default())
            .is_err());
        let oov = Tensor::new(&[[50u32, 2]], &Device::Cpu).unwrap();
        assert!(decoder(&DecodeStrategy::Greedy, true)
            .unwrap()
            .decode(&m, &oov, SpecialIds::default())
            .is_err());
    }

    /// Timing, not a check (random d_model 32 model, 16 sentences of 10 tokens, runs to the
    /// +50 limit): `cargo test -p seqlab-mt --lib -- --ignored --nocapture bench`.
    #[test]
    #[ignore]
    fn bench_beam4_cached_vs_full() {
        let (_vs, m) = tiny_model(0, 64);
        let mut rng = seqlab_nn::SeqRng::new(1);
        let rows: Vec<u32> = (0..16 * 10).map(|_| 4 + rng.below(60) as u32).collect();
        let s = Tensor::from_vec(rows, (16, 10), &Device::Cpu).unwrap();
        for cache in [true, false] {
            let t = std::time::Instant::now();
            let out = decoder(
                &DecodeStrategy::Beam {
                    size: 4,
                    length_penalty: 0.6,
                },
                cache,
            )
            .unwrap()
            .decode(&m, &s, SpecialIds::default())
            .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let toks: usize = out.iter().map(|o| o.len()).sum();
            println!(
                "beam 4, batch 16, cache {cache}: {:.1} sentences/s ({toks} tokens out, {secs:.2} s)",
                16.0 / secs
            );
        }
    }
}
