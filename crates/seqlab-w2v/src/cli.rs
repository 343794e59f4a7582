//! `seqlab w2v …` subcommands.

use clap::{Args, Subcommand};

/// word2vec: train embeddings and query/evaluate them.
#[derive(Args, Debug)]
pub struct W2vArgs {
    #[command(subcommand)]
    pub command: W2vCommand,
}

#[derive(Subcommand, Debug)]
pub enum W2vCommand {
    /// Train word vectors (not implemented yet).
    Train,
}

pub fn run(args: W2vArgs) -> anyhow::Result<()> {
    match args.command {
        W2vCommand::Train => anyhow::bail!("seqlab w2v train is not implemented yet"),
    }
}
