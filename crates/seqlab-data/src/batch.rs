//! Batching: seeded shuffles reproducible from `(seed, epoch)`, token-budget batches with
//! length bucketing, right padding with masks, and contiguous `(batch, bptt)` LM streams.
//!
//! Output is plain row-major vectors; the training engine makes tensors of them.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A batching request that cannot be met (zero sizes, too little data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batching: {0}")]
pub struct BatchError(pub String);

/// The RNG for one epoch: ChaCha8 seeded by `seed`, on stream `epoch`. Epochs are independent
/// of each other, so training resumed at epoch `e` shuffles exactly as an unbroken run.
pub fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    rng
}

/// Uniform in `0..bound` (`bound > 0`) by multiply-shift; written out rather than taken from
/// `rand` so the sequence cannot change with a `rand` upgrade (bias < 2^-40 for our sizes).
fn below(rng: &mut ChaCha8Rng, bound: usize) -> usize {
    ((rng.next_u64() as u128 * bound as u128) >> 64) as usize
}

/// Fisher–Yates shuffle driven by `rng`.
pub fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}

/// `0..n` in the order of epoch `epoch` of run `seed`.
pub fn shuffled_indices(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    shuffle(&mut idx, &mut epoch_rng(seed, epoch));
    idx
}

/// Batches of `batch_size` indices over `0..n` (the last may be smaller); shuffled by
/// `(seed, epoch)` when `shuffle`, in order otherwise. For fixed-size items (time-series
/// windows).
pub fn fixed_batches(n: usize, batch_size: usize, shuffle: Option<(u64, u64)>) -> Result<Vec<Vec<usize>>, BatchError> {
    if batch_size == 0 {
        return Err(BatchError("batch_size must be positive".into()));
    }
    let idx = match shuffle {
        Some((seed, epoch)) => shuffled_indices(n, seed, epoch),
        None => (0..n).collect(),
    };
    Ok(idx.chunks(batch_size).map(<[usize]>::to_vec).collect())
}

/// Settings for [`token_budget_batches`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Most tokens per batch, padding included: `batch_len * longest <= max_tokens`.
    /// A single sequence longer than this still gets a batch of its own (cap lengths
    /// beforehand with a `LengthPolicy`).
    pub max_tokens: usize,
    /// Most sequences per batch. Default: unlimited.
    pub max_batch: Option<usize>,
    /// Sequences sorted together when shuffling: larger pools pad less but mix less.
    /// Default: 1000.
    pub pool: usize,
}

impl BudgetConfig {
    /// Budget of `max_tokens` per batch, no cap on sentences, and a sort pool of 1000.
    pub fn new(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            max_batch: None,
            pool: 1000,
        }
    }
}

/// Groups sequence indices into batches of similar lengths within a token budget.
///
/// With `shuffle = Some((seed, epoch))` (training): indices are shuffled, cut into pools of
/// `pool`, each pool sorted by length and cut greedily into batches, and the batch order is
/// shuffled again, all from `(seed, epoch)`. With `None` (evaluation): all indices sorted by
/// length (stable), batches in that order. Every index appears exactly once.
pub fn token_budget_batches(
    lengths: &[usize],
    config: &BudgetConfig,
    shuffle_by: Option<(u64, u64)>,
) -> Result<Vec<Vec<usize>>, BatchError> {
    if config.max_tokens == 0 || config.pool == 0 || config.max_batch == Some(0) {
        return Err(BatchError("max_tokens, pool and max_batch must be positive".into()));
    }
    let mut rng = shuffle_by.map(|(seed, epoch)| epoch_rng(seed, epoch));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let pool = match rng.as_mut() {
        Some(r) => {
            shuffle(&mut order, r);
            config.pool
        }
        None => order.len().max(1),
    };
    let max_batch = config.max_batch.unwrap_or(usize::MAX);
    let mut batches = Vec::new();
    for chunk in order.chunks_mut(pool) {
        chunk.sort_by_key(|&i| lengths[i]);
        let mut cur: Vec<usize> = Vec::new();
        let mut longest = 0;
        for &i in chunk.iter() {
            let l = lengths[i].max(longest);
            if !cur.is_empty() && ((cur.len() + 1) * l > config.max_tokens || cur.len() == max_batch) {
                batches.push(std::mem::take(&mut cur));
                longest = 0;
            }
            longest = longest.max(lengths[i]);
            cur.push(i);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
    }
    if let Some(r) = rng.as_mut() {
        shuffle(&mut batches, r);
    }
    Ok(batches)
}

/// Right-padded sequences: `ids` and `mask` are `[batch, max_len]` row-major; `mask` is 1 on
/// real tokens, 0 on padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedBatch {
    /// Token ids, `[batch, max_len]`, padding filled with the pad id.
    pub ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding, `[batch, max_len]`.
    pub mask: Vec<u8>,
    /// Real length of each sequence.
    pub lengths: Vec<usize>,
    /// Number of sequences.
    pub batch: usize,
    /// Length of the longest sequence (the padded length).
    pub max_len: usize,
}

/// Pads `seqs[i]` for `i` in `idx` with `pad_id` to the longest of them.
pub fn pad_batch(seqs: &[Vec<u32>], idx: &[usize], pad_id: u32) -> PaddedBatch {
    let max_len = idx.iter().map(|&i| seqs[i].len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(idx.len() * max_len);
    let mut mask = Vec::with_capacity(idx.len() * max_len);
    let mut lengths = Vec::with_capacity(idx.len());
    for &i in idx {
        let s = &seqs[i];
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(pad_id, max_len - s.len()));
        mask.extend(std::iter::repeat_n(1u8, s.len()));
        mask.extend(std::iter::repeat_n(0u8, max_len - s.len()));
        lengths.push(s.len());
    }
    PaddedBatch {
        ids,
        mask,
        lengths,
        batch: idx.len(),
        max_len,
    }
}

/// Next-token pairs from whole sequences (`<bos> … <eos>`): `input` is each sequence less
/// its last token, `target` (`[batch, max_len]`, padded with `pad_id`) less its first;
/// `input.mask` marks the positions whose target counts.
pub fn pad_lm_batch(seqs: &[Vec<u32>], idx: &[usize], pad_id: u32) -> (PaddedBatch, Vec<u32>) {
    let inputs: Vec<Vec<u32>> = idx
        .iter()
        .map(|&i| seqs[i][..seqs[i].len().saturating_sub(1)].to_vec())
        .collect();
    let targets: Vec<Vec<u32>> = idx.iter().map(|&i| seqs[i].get(1..).unwrap_or(&[]).to_vec()).collect();
    let all: Vec<usize> = (0..idx.len()).collect();
    let input = pad_batch(&inputs, &all, pad_id);
    let target = pad_batch(&targets, &all, pad_id).ids;
    (input, target)
}

/// One `(batch, len)` chunk of a contiguous stream; `target` is `input` shifted by one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamChunk {
    /// Input ids, `[batch, len]` row-major.
    pub input: Vec<u32>,
    /// Target ids (the next tokens), `[batch, len]` row-major.
    pub target: Vec<u32>,
    /// Number of rows.
    pub batch: usize,
    /// Time steps in this chunk (at most `bptt`).
    pub len: usize,
}

/// Classic char-LM batching: the stream is cut into `batch` equal contiguous columns (the
/// tail that does not divide is dropped) read `bptt` tokens at a time, so row `b` of chunk
/// `k+1` continues row `b` of chunk `k` and a recurrent state can be carried across.
#[derive(Clone, Debug)]
pub struct StreamBatcher {
    data: Vec<u32>,
    batch: usize,
    cols: usize,
}

impl StreamBatcher {
    /// Lays `stream` out as `batch` rows (PyTorch word_language_model's `batchify`), dropping the
    /// remainder. Rejects `batch = 0` and streams too short for 2 tokens per row.
    pub fn new(stream: &[u32], batch: usize) -> Result<Self, BatchError> {
        if batch == 0 {
            return Err(BatchError("batch size must be positive".into()));
        }
        let cols = stream.len() / batch;
        if cols < 2 {
            return Err(BatchError(format!(
                "a stream of {} tokens is too short for {batch} rows of at least 2 tokens",
                stream.len()
            )));
        }
        Ok(Self {
            data: stream[..cols * batch].to_vec(),
            batch,
            cols,
        })
    }

    /// Tokens per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of rows (parallel streams).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of chunks of at most `bptt` steps (the last may be shorter).
    pub fn num_chunks(&self, bptt: usize) -> usize {
        (self.cols - 1).div_ceil(bptt.max(1))
    }

    /// Chunk `k` of `bptt` steps.
    pub fn chunk(&self, k: usize, bptt: usize) -> Option<StreamChunk> {
        let bptt = bptt.max(1);
        let start = k.checked_mul(bptt)?;
        if start >= self.cols - 1 {
            return None;
        }
        let len = bptt.min(self.cols - 1 - start);
        let mut input = Vec::with_capacity(self.batch * len);
        let mut target = Vec::with_capacity(self.batch * len);
        for b in 0..self.batch {
            let row = &self.data[b * self.cols..(b + 1) * self.cols];
            input.extend_from_slice(&row[start..start + len]);
            target.extend_from_slice(&row[start + 1..start + 1 + len]);
        }
        Some(StreamChunk {
            input,
            target,
            batch: self.batch,
            len,
        })
    }

    /// All chunks of at most `bptt` steps, in order (truncated BPTT, as PyTorch's `get_batch`).
    pub fn chunks(&self, bptt: usize) -> impl Iterator<Item = StreamChunk> + '_ {
        (0..self.num_chunks(bptt)).map_while(move |k| self.chunk(k, bptt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_reproducible_from_seed_and_epoch() {
        let a = shuffled_indices(100, 7, 3);
        assert_eq!(a, shuffled_indices(100, 7, 3));
        assert_ne!(a, shuffled_indices(100, 7, 4));
        assert_ne!(a, shuffled_indices(100, 8, 3));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        // Pinned so a dependency upgrade that changes the order is caught: resumed runs
        // must see the same order as the run that wrote the checkpoint.
        assert_eq!(shuffled_indices(8, 42, 0), PINNED_8_42_0);
    }
    const PINNED_8_42_0: [usize; 8] = [4, 7, 0, 1, 3, 2, 6, 5];

    #[test]
    fn fixed_batches_cover_all() {
        let b = fixed_batches(10, 4, None).unwrap();
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        let b = fixed_batches(10, 4, Some((1, 0))).unwrap();
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(fixed_batches(10, 0, None).is_err());
    }

    #[test]
    fn token_budget_respected_and_complete() {
        let lengths: Vec<usize> = (0..500).map(|i| 1 + (i * 37) % 60).collect();
        let mut cfg = BudgetConfig::new(256);
        cfg.pool = 100;
        for shuffle in [None, Some((5u64, 2u64))] {
            let batches = token_budget_batches(&lengths, &cfg, shuffle).unwrap();
            let mut seen: Vec<usize> = batches.concat();
            seen.sort();
            assert_eq!(seen, (0..500).collect::<Vec<_>>());
            let mut padded = 0;
            for b in &batches {
                let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
                assert!(b.len() * longest <= 256);
                padded += b.len() * longest;
            }
            // bucketing keeps padding low
            let real: usize = lengths.iter().sum();
            assert!((padded as f64) < 1.25 * real as f64, "{padded} vs {real}");
            assert_eq!(batches, token_budget_batches(&lengths, &cfg, shuffle).unwrap());
        }
        let a = token_budget_batches(&lengths, &cfg, Some((5, 2))).unwrap();
        let b = token_budget_batches(&lengths, &cfg, Some((5, 3))).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn token_budget_edge_cases() {
        let cfg = BudgetConfig {
            max_tokens: 10,
            max_batch: Some(2),
            pool: 1000,
        };
        let b = token_budget_batches(&[20, 1, 1, 1], &cfg, None).unwrap();
        assert_eq!(b, vec![vec![1, 2], vec![3], vec![0]]);
        assert!(token_budget_batches(&[], &cfg, Some((1, 1))).unwrap().is_empty());
        assert!(token_budget_batches(&[1], &BudgetConfig::new(0), None).is_err());
    }

    #[test]
    fn padding_and_masks() {
        let seqs = vec![vec![5, 6, 7], vec![8], vec![9, 10]];
        let p = pad_batch(&seqs, &[0, 1], 0);
        assert_eq!((p.batch, p.max_len), (2, 3));
        assert_eq!(p.ids, [5, 6, 7, 8, 0, 0]);
        assert_eq!(p.mask, [1, 1, 1, 1, 0, 0]);
        assert_eq!(p.lengths, [3, 1]);
        let (inp, tgt) = pad_lm_batch(&seqs, &[0, 2], 0);
        assert_eq!(inp.ids, [5, 6, 9, 0]);
        assert_eq!(inp.mask, [1, 1, 1, 0]);
        assert_eq!(tgt, [6, 7, 10, 0]);
    }

    #[test]
    fn stream_chunks_are_contiguous() {
        let stream: Vec<u32> = (0..23).collect();
        let s = StreamBatcher::new(&stream, 2).unwrap();
        assert_eq!(s.cols(), 11);
        assert_eq!(s.num_chunks(4), 3);
        let chunks: Vec<_> = s.chunks(4).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].input, [0, 1, 2, 3, 11, 12, 13, 14]);
        assert_eq!(chunks[0].target, [1, 2, 3, 4, 12, 13, 14, 15]);
        assert_eq!(chunks[2].len, 2);
        assert_eq!(chunks[2].input, [8, 9, 19, 20]);
        assert_eq!(chunks[2].target, [9, 10, 20, 21]);
        assert!(s.chunk(3, 4).is_none());
        assert!(StreamBatcher::new(&stream, 0).is_err());
        assert!(StreamBatcher::new(&stream[..3], 2).is_err());
    }
}
