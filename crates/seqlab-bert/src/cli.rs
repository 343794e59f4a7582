//! Command-line arguments for the `seqlab` binary (`seqlab bert-pretrain`, `seqlab bert-finetune`).

use crate::task::{FinetuneConfig, PretrainConfig};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Pretrain a BERT encoder (masked LM + next-sentence prediction).
#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// TOML config (see configs/bert-*.toml).
    pub config: PathBuf,
    /// Continue the run from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override `run_dir`.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Override `train.max_steps`.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Override `data.corpus`.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Override `data.max_paragraphs`.
    #[arg(long)]
    pub max_paragraphs: Option<usize>,
}

/// Fine-tune a pretrained BERT encoder for `text<TAB>label` classification.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// TOML config with `pretrained`, `run_dir`, `[data] train/valid`.
    pub config: PathBuf,
    /// Override `pretrained` (a checkpoint folder or a pretraining run folder).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    #[arg(long)]
    pub max_steps: Option<u64>,
}

fn print_summary(s: &seqlab_train::trainer::RunSummary, run_dir: &std::path::Path) {
    let m: Vec<String> = s.last_eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    println!(
        "{} steps ({:?}); last evaluation: {}; run folder {}",
        s.steps,
        s.reason,
        m.join("  "),
        run_dir.display()
    );
}

pub fn pretrain(a: &PretrainArgs) -> Result<()> {
    let mut cfg = PretrainConfig::from_file(&a.config)?;
    if let Some(d) = &a.run_dir {
        cfg.run_dir = d.clone();
    }
    if let Some(n) = a.max_steps {
        cfg.train.max_steps = n;
    }
    if let Some(c) = &a.corpus {
        cfg.data.corpus = c.clone();
    }
    if a.max_paragraphs.is_some() {
        cfg.data.max_paragraphs = a.max_paragraphs;
    }
    let s = crate::task::pretrain(&cfg, a.resume)?;
    print_summary(&s, &cfg.run_dir);
    Ok(())
}

pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let mut cfg = FinetuneConfig::from_file(&a.config)?;
    if let Some(p) = &a.pretrained {
        cfg.pretrained = p.clone();
    }
    if let Some(d) = &a.run_dir {
        cfg.run_dir = d.clone();
    }
    if let Some(n) = a.max_steps {
        cfg.train.max_steps = n;
    }
    let s = crate::task::finetune(&cfg, a.resume)?;
    print_summary(&s, &cfg.run_dir);
    Ok(())
}
