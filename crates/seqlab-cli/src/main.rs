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
    /// Train a model from a TOML config (language model, classifier, forecaster).
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
    /// Average the parameters of the last N checkpoints of a run (as the paper did).
    AverageCheckpoints(seqlab_mt::cli::AverageArgs),
    /// Draw the sinusoidal positional-encoding table as a heat map.
    PlotPe(seqlab_mt::cli::PlotPeArgs),
    /// Corpus BLEU of a hypothesis file against references (sacrebleu's defaults).
    Bleu(seqlab_metrics::cli::ScoreArgs),
    /// Corpus chrF of a hypothesis file against references (sacrebleu's defaults).
    Chrf(seqlab_metrics::cli::ScoreArgs),
}

fn main() {
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
