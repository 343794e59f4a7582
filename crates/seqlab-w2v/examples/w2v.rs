//! The `seqlab w2v` subcommands as a stand-alone binary, for benchmarking without
//! building the whole `seqlab` CLI (same code, same profile):
//! `cargo build -p seqlab-w2v --example w2v`, then `w2v train …` as `seqlab w2v train …`.

use clap::Parser;

// Same allocator as the `seqlab` binary, so memory figures match.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: seqlab_w2v::cli::W2vArgs,
}

fn main() -> anyhow::Result<()> {
    // Accept `w2v train …` too, so scripts can call this binary or `seqlab` alike.
    let args: Vec<String> = std::env::args()
        .enumerate()
        .filter(|(i, a)| !(*i == 1 && a == "w2v"))
        .map(|(_, a)| a)
        .collect();
    seqlab_w2v::cli::run(Cli::parse_from(args).args)
}
