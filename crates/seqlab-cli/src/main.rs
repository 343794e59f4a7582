//! The `seqlab` command: a thin layer over the seqlab crates.

use clap::{Parser, Subcommand};

mod bench;
mod train_cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// seqlab: sequence models (RNN/LSTM/GRU, Transformer, word2vec, BERT) trained and used from the
/// command line, numerically matching PyTorch.
#[derive(Parser, Debug)]
#[command(name = "seqlab", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model from a TOML config (language model, classifier, forecaster, translation).
    Train(train_cmd::TrainArgs),
    /// Evaluate a checkpoint on the test or validation data.
    Eval(train_cmd::EvalArgs),
    /// Sample text from a language-model checkpoint.
    Generate(train_cmd::GenerateArgs),
    /// Draw loss/metric curves from metrics.jsonl files to PNG or SVG.
    Plot(train_cmd::PlotArgs),
    /// BERT-style pretraining (masked LM + next-sentence prediction) on a text corpus.
    Pretrain(seqlab_bert::cli::PretrainArgs),
    /// Fine-tune a pretrained BERT checkpoint for text<TAB>label classification.
    Finetune(seqlab_bert::cli::FinetuneArgs),
    /// Time training steps of the layer library (tokens/s).
    Bench(bench::BenchArgs),
    /// word2vec: train embeddings, nearest neighbours, analogies, evaluation.
    W2v(seqlab_w2v::cli::W2vArgs),
    /// Translate text with a trained translation model (stdin or a file; beam, greedy or
    /// sampling; BLEU against references; attention pictures).
    Translate(seqlab_mt::cli::TranslateArgs),
    /// Average the parameters of the last N checkpoints of a run (as the paper did).
    AverageCheckpoints(seqlab_mt::cli::AverageArgs),
    /// Draw the sinusoidal positional-encoding table as a heat map.
    PlotPe(seqlab_mt::cli::PlotPeArgs),
    /// Corpus BLEU of a hypothesis file against references (sacrebleu's defaults).
    Bleu(seqlab_metrics::cli::ScoreArgs),
    /// Corpus chrF of a hypothesis file against references (sacrebleu's defaults).
    Chrf(seqlab_metrics::cli::ScoreArgs),
}

/// word2vec's memory is two large matrices and a vocabulary. mimalloc's defaults (arenas
/// committed eagerly, freed memory kept for 10 ms+), which suit the tensor code's constant
/// reuse of buffers, add ~35 MiB of resident memory there. mimalloc reads these options when
/// the process starts, so `seqlab w2v` re-executes itself once with them set.
#[cfg(unix)]
fn lean_allocator_for_w2v() {
    use std::os::unix::process::CommandExt;
    const KEY: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    let mut args = std::env::args_os();
    let Some(exe) = args.next() else { return };
    let rest: Vec<_> = args.collect();
    if rest.first().is_none_or(|a| a != "w2v") || std::env::var_os(KEY).is_some() {
        return;
    }
    let Ok(me) = std::env::current_exe() else { return };
    let err = std::process::Command::new(me)
        .arg0(exe)
        .args(rest)
        .env(KEY, "0")
        .env("MIMALLOC_PURGE_DELAY", "0")
        .exec();
    // Only reached if exec failed: carry on with the defaults.
    eprintln!("note: could not re-execute with lean allocator settings ({err}); continuing");
}

#[cfg(not(unix))]
fn lean_allocator_for_w2v() {}

fn main() {
    lean_allocator_for_w2v();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train_cmd::train(a),
        Command::Eval(a) => train_cmd::eval(a),
        Command::Generate(a) => train_cmd::generate(a),
        Command::Plot(a) => train_cmd::plot(a),
        Command::Pretrain(a) => seqlab_bert::cli::pretrain(&a),
        Command::Finetune(a) => seqlab_bert::cli::finetune(&a),
        Command::Bench(a) => bench::run(a),
        Command::W2v(a) => seqlab_w2v::cli::run(a),
        Command::Translate(a) => seqlab_mt::cli::translate(a),
        Command::AverageCheckpoints(a) => seqlab_mt::cli::average(a),
        Command::PlotPe(a) => seqlab_mt::cli::plot_pe(a),
        Command::Bleu(a) => seqlab_metrics::cli::run_bleu(a),
        Command::Chrf(a) => seqlab_metrics::cli::run_chrf(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
