//! Pieces shared by the tasks.

use anyhow::Result;
use candle_core::{Device, Tensor};
use seqlab_data::{Tokenizer, TokenizerConfig};
use seqlab_train::Split;
use std::path::Path;

pub(crate) fn c<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// (B, T) u32 tensor from row-major ids.
pub(crate) fn ids_tensor(ids: &[u32], b: usize, t: usize, dev: &Device) -> Result<Tensor> {
    c(Tensor::from_slice(ids, (b, t), dev))
}

pub(crate) fn print_warnings(w: &[seqlab_data::Warning]) {
    const SHOW: usize = 5;
    for x in w.iter().take(SHOW) {
        eprintln!("{x}");
    }
    if w.len() > SHOW {
        eprintln!("... and {} more warnings of this kind", w.len() - SHOW);
    }
}

/// The tokenizer stored in `saved/tokenizer.json`, or a new one trained on `lines`.
pub(crate) fn tokenizer<'a>(
    saved: Option<&Path>,
    cfg: &TokenizerConfig,
    lines: impl Iterator<Item = &'a str> + Send,
) -> Result<Tokenizer> {
    if let Some(dir) = saved {
        let p = dir.join("tokenizer.json");
        if p.exists() {
            return Ok(Tokenizer::load(&p)?);
        }
    }
    Ok(Tokenizer::train(cfg, lines)?)
}

/// The file an evaluation reads: `path` if given, else the configured test or valid file.
pub(crate) fn eval_file(cfg: &crate::config::Config, split: Split, path: Option<&Path>) -> Result<std::path::PathBuf> {
    let d = &cfg.task.data;
    split.file(path, d.test.as_deref(), d.valid.as_deref())
}

/// The end-of-run split: test if configured, else valid, else none.
pub(crate) fn test_else_valid(cfg: &crate::config::Config) -> Option<Split> {
    let d = &cfg.task.data;
    Split::test_else_valid(d.test.is_some(), d.valid.is_some())
}
