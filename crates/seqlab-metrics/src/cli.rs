//! `seqlab bleu` and `seqlab chrf`.

use clap::Args;
use std::path::PathBuf;

/// Arguments shared by `seqlab bleu` and `seqlab chrf`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Hypothesis file, one segment per line.
    pub hyp: PathBuf,
    /// Reference file(s), line-aligned with the hypotheses.
    #[arg(required = true)]
    pub refs: Vec<PathBuf>,
    /// Print a JSON object (its `score` field is the metric).
    #[arg(long)]
    pub json: bool,
}

pub fn run_bleu(_args: ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("seqlab bleu is not implemented yet")
}

pub fn run_chrf(_args: ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("seqlab chrf is not implemented yet")
}
