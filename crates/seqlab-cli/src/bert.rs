//! `seqlab pretrain` and `seqlab finetune`: thin aliases of `seqlab train` for the two BERT
//! tasks (a config without a `task` key is read as theirs).

use crate::train::{run_training, RunFlags};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// The config file, given as `seqlab pretrain F` or `seqlab pretrain --config F`.
#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// TOML config (presets in configs/bert-*.toml); same as `--config`.
    #[arg(
        value_name = "CONFIG",
        required_unless_present = "config_flag",
        conflicts_with = "config_flag"
    )]
    pub config: Option<PathBuf>,
    /// TOML config, as in `seqlab train --config`.
    #[arg(long = "config", short = 'c', value_name = "CONFIG")]
    pub config_flag: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| self.config_flag.clone())
            .expect("clap requires one of them")
    }
}

/// Pretrain a BERT encoder (masked LM + next-sentence prediction): `task = "bert-pretrain"`.
#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub run: RunFlags,
}

/// Fine-tune a pretrained BERT encoder for `text<TAB>label` classification:
/// `task = "bert-finetune"`.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Override `pretrained` (a checkpoint folder or a pretraining run folder; default: the
    /// config's).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Start from a Hugging Face BERT folder instead (`config.json`, `model.safetensors`,
    /// `tokenizer.json` or `vocab.txt`); sets the config key `init_from` (default: the config's).
    #[arg(long, value_name = "DIR", conflicts_with = "pretrained")]
    pub init_from: Option<PathBuf>,
    /// Train the same model from random weights (the pretrained checkpoint still supplies the
    /// tokenizer and model shape): the baseline that shows what pretraining buys.
    #[arg(long)]
    pub from_scratch: bool,
    #[command(flatten)]
    pub run: RunFlags,
}

/// `seqlab pretrain`.
pub fn pretrain(a: PretrainArgs) -> Result<()> {
    run_training(&a.config.path(), &a.run, Some("bert-pretrain"), Vec::new())
}

/// `seqlab finetune`.
pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let mut sets = Vec::new();
    if let Some(p) = &a.pretrained {
        sets.push(format!("pretrained={:?}", p.display().to_string()));
    }
    if let Some(p) = &a.init_from {
        sets.push(format!("init_from={:?}", p.display().to_string()));
    }
    if a.from_scratch {
        sets.push("from_scratch=true".into());
    }
    run_training(&a.config.path(), &a.run, Some("bert-finetune"), sets)
}
