//! Command-line arguments for the `seqlab` binary (`seqlab pretrain`, `seqlab finetune`).

use crate::task::{FinetuneConfig, PretrainConfig};
use anyhow::Result;
use clap::Args;
use seqlab_train::overrides::load_with;
use seqlab_train::RunFlags;
use std::path::PathBuf;

/// Pretrain a BERT encoder (masked LM + next-sentence prediction).
#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// TOML config (see configs/bert-*.toml); any key can be overridden with `--set`.
    pub config: PathBuf,
    #[command(flatten)]
    pub run: RunFlags,
}

/// Fine-tune a pretrained BERT encoder for `text<TAB>label` classification.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// TOML config with `pretrained`, `run_dir`, `[data] train/valid/test`.
    pub config: PathBuf,
    /// Override `pretrained` (a checkpoint folder or a pretraining run folder).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Train the same model from random weights (the pretrained checkpoint still supplies the
    /// tokenizer and model shape): the baseline that shows what pretraining buys.
    #[arg(long)]
    pub from_scratch: bool,
    #[command(flatten)]
    pub run: RunFlags,
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
    let cfg: PretrainConfig = load_with(&a.config, &a.run.overrides())?;
    let s = crate::task::pretrain(&cfg, a.run.resume)?;
    print_summary(&s, &cfg.run_dir);
    Ok(())
}

pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let mut sets = a.run.overrides();
    if let Some(p) = &a.pretrained {
        sets.push(format!("pretrained={:?}", p.display().to_string()));
    }
    if a.from_scratch {
        sets.push("from_scratch=true".into());
    }
    let cfg: FinetuneConfig = load_with(&a.config, &sets)?;
    let out = crate::task::finetune(&cfg, a.run.resume)?;
    print_summary(&out.summary, &cfg.run_dir);
    if let Some((text, _)) = out.test {
        println!("{text}");
    }
    Ok(())
}
