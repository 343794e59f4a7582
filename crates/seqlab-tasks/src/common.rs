//! Pieces shared by the tasks.

use anyhow::Result;
use candle_core::{Device, Tensor};
use seqlab_data::{Tokenizer, TokenizerConfig};
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

/// A finished evaluation: text for people, JSON for tools.
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
}

/// Which data an evaluation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Valid,
    Test,
}

/// The file an evaluation reads: `path` if given, else the configured test or valid file.
pub(crate) fn eval_file(
    cfg: &crate::config::RunConfig,
    split: Split,
    path: Option<&Path>,
) -> Result<std::path::PathBuf> {
    let (file, key) = match split {
        Split::Test => (&cfg.data.test, "test"),
        Split::Valid => (&cfg.data.valid, "valid"),
    };
    match (path, file) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, Some(f)) => Ok(f.clone()),
        (None, None) => anyhow::bail!("no data.{key} in the config; pass --data FILE"),
    }
}
