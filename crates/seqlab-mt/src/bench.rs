//! Decoding throughput for `seqlab bench translate` (and `bench/run.py`'s decoding rows):
//! sentences/s and output tokens/s of [`MtTask::translate_ids`], the path `seqlab translate`
//! takes (sentences sorted by length, decoded in batches with the cached decoder).

use crate::decode::DecodeStrategy;
use crate::task::MtTask;
use anyhow::Result;
use seqlab_train::bench::{time_units, Timing};
use serde::Serialize;

/// The result of [`bench_decode`].
#[derive(Clone, Debug, Serialize)]
pub struct DecodeBench {
    /// Sentences decoded per timed pass.
    pub sentences: usize,
    /// Output tokens (without `<eos>`) per timed pass.
    pub output_tokens: usize,
    /// Source tokens (with `<eos>`) per pass.
    pub source_tokens: usize,
    /// The timed passes; units are output tokens.
    pub timing: Timing,
}

/// Tokenizes `sources` once, then decodes them all `warmup` times untimed and `repeats` times
/// timed with `strategy`, `batch_size` sentences at a time (cached decoder). Rejects an empty
/// `sources` and `repeats = 0`.
pub fn bench_decode(
    task: &MtTask,
    sources: &[&str],
    strategy: &DecodeStrategy,
    batch_size: usize,
    warmup: usize,
    repeats: usize,
) -> Result<DecodeBench> {
    anyhow::ensure!(!sources.is_empty(), "no sentences to decode");
    let ids: Vec<Vec<u32>> = sources.iter().map(|s| task.encode_source(s)).collect::<Result<_>>()?;
    let mut output_tokens = 0;
    let timing = time_units(warmup, repeats, || {
        let out = task.translate_ids(&ids, strategy, batch_size, true)?;
        output_tokens = out.iter().map(Vec::len).sum();
        Ok(output_tokens)
    })?;
    Ok(DecodeBench {
        sentences: sources.len(),
        output_tokens,
        source_tokens: ids.iter().map(Vec::len).sum(),
        timing,
    })
}
