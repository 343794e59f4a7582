//! The `seqlab` command: a thin layer over the seqlab crates, and the only place that parses
//! arguments. Each module holds the clap structs of a group of commands and calls library
//! functions: [`train`] (train, eval, generate, plot), [`predict`], [`mt`] (translate,
//! average-checkpoints, plot-pe), [`bert`] (pretrain, finetune aliases), `bench`, and the
//! w2v/bleu/chrF commands.

use clap::{Parser, Subcommand};

mod bench;
mod bert;
mod config_cmd;
mod export;
mod mt;
mod predict;
mod score;
mod serve_cmd;
mod train;
mod w2v;

/// Every task `seqlab train` / `seqlab eval` know: one `register` call per task crate.
pub(crate) fn registry() -> seqlab_train::Registry {
    let mut r = seqlab_train::Registry::new();
    seqlab_tasks::register(&mut r);
    seqlab_mt::register(&mut r);
    seqlab_bert::register(&mut r);
    r
}

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
    /// Train a model from a TOML config; its `task` key picks the task (lm, classify,
    /// forecast, mt, bert-pretrain, bert-finetune).
    Train(train::TrainArgs),
    /// Evaluate a checkpoint of any task on its test or validation data, or a file.
    Eval(train::EvalArgs),
    /// Sample text from a language-model checkpoint.
    Generate(train::GenerateArgs),
    /// Predict with any trained model: classify texts (label and probabilities), forecast
    /// series (with baselines), score texts under a language model, translate, or find the
    /// nearest words to sums of word vectors; input from stdin or a file, text or JSON lines.
    Predict(predict::PredictArgs),
    /// Draw loss/metric curves from metrics.jsonl files to PNG or SVG.
    Plot(train::PlotArgs),
    /// BERT-style pretraining (masked LM + next-sentence prediction) on a text corpus:
    /// `seqlab train` for task = "bert-pretrain".
    Pretrain(bert::PretrainArgs),
    /// Fine-tune a pretrained BERT checkpoint for text<TAB>label classification:
    /// `seqlab train` for task = "bert-finetune".
    Finetune(bert::FinetuneArgs),
    /// Time training steps (layers, whole run configs), decoding, generation, the sgemm peak
    /// and the CPU's FMA limit.
    Bench(bench::BenchArgs),
    /// word2vec: train embeddings, nearest neighbours, analogies, evaluation.
    W2v(w2v::W2vArgs),
    /// Translate text with a trained translation model (stdin or a file; beam, greedy or
    /// sampling; BLEU against references; attention pictures).
    Translate(mt::TranslateArgs),
    /// Average the parameters of the last N checkpoints of a run (as the paper did).
    AverageCheckpoints(mt::AverageArgs),
    /// Draw the sinusoidal positional-encoding table as a heat map.
    PlotPe(mt::PlotPeArgs),
    /// Corpus BLEU of a hypothesis file against references (sacrebleu's defaults).
    Bleu(score::BleuArgs),
    /// Corpus chrF of a hypothesis file against references (sacrebleu's defaults).
    Chrf(score::ChrfArgs),
    /// Serve checkpoints over HTTP/JSON with dynamic batching, metrics and a web page.
    Serve(serve_cmd::ServeArgs),
    /// Inspect run configs: `seqlab config keys TASK` prints every key, its default and meaning.
    Config(config_cmd::ConfigArgs),
    /// Write a trained translation model as a Hugging Face M2M100 folder (Transformers, CTranslate2).
    /// The model loads on the CPU whatever device it trained on (export computes nothing, so
    /// it takes no --device).
    Export(export::ExportArgs),
}

/// mimalloc options per kind of work. mimalloc reads them only when the process starts, so
/// `seqlab` re-executes itself once with them set (unless the caller set any of them).
/// - word2vec's memory is two large matrices and a vocabulary; the defaults (arenas
///   committed eagerly, freed memory kept for 10 ms) add ~35 MiB of resident memory there.
/// - The tensor code frees and re-allocates the same large buffers every step, usually
///   more than 10 ms apart: with the default purge the kernel zeroes them afresh each time.
///   Never purging cut a translation model's training CPU time per step by ~20 % (its system
///   time went from 17 % of the total to nothing) for ~10 % more peak memory.
fn allocator_options(command: &str) -> &'static [(&'static str, &'static str)] {
    match command {
        "w2v" => &[("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")],
        "train" | "eval" | "generate" | "predict" | "pretrain" | "finetune" | "bench" | "translate" | "serve" => {
            &[("MIMALLOC_PURGE_DELAY", "-1")]
        }
        _ => &[],
    }
}

#[cfg(unix)]
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let Some(exe) = args.next() else { return };
    let rest: Vec<_> = args.collect();
    let Some(options) = rest.first().and_then(|c| c.to_str()).map(allocator_options) else {
        return;
    };
    if options.is_empty() || options.iter().any(|(k, _)| std::env::var_os(k).is_some()) {
        return;
    }
    let Ok(me) = std::env::current_exe() else { return };
    let err = std::process::Command::new(me)
        .arg0(exe)
        .args(rest)
        .envs(options.iter().copied())
        .exec();
    // Only reached if exec failed: carry on with the defaults.
    eprintln!("note: could not re-execute with tuned allocator settings ({err}); continuing");
}

#[cfg(not(unix))]
fn tune_allocator() {}

/// User errors carry no backtrace even with `RUST_BACKTRACE=1` in the environment: candle
/// and anyhow capture one per error when it is set and print it with the message. Only
/// library backtraces are turned off (`RUST_LIB_BACKTRACE=0`, which takes precedence for
/// them); a panic, a bug, still prints its backtrace. An explicit `RUST_LIB_BACKTRACE` wins.
fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY (edition 2024 marks set_var unsafe): called first thing in main, before any
        // other thread exists.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// For the commands whose tensor work all starts on the main thread (training, evaluation,
/// decoding, benchmarks), with more than one thread the main thread becomes rayon's thread 0
/// instead of a client of a pool of RAYON_NUM_THREADS other threads, as OpenMP's master
/// thread is in PyTorch: a parallel kernel or product then runs one half on the calling
/// thread while the other thread steals the other half, instead of the caller handing the
/// whole job to the pool and sleeping until a pool thread wakes it (at 2 threads: 2 busy
/// threads instead of 3, one wake-up less per parallel op; seqlab's whole models gained
/// 0.98-1.51x from the second thread where PyTorch gained 1.21-1.71x, docs/BENCHMARKS.md).
/// Not for `serve` and `w2v`, whose own threads call rayon while the main thread waits
/// elsewhere (it would be a pool thread that never takes work). One thread keeps the
/// pool of one other thread: a pool of the main thread alone would run jobs only inside its
/// own parallel calls, and `bench/serial_share.sh` tells serial from parallel work by the
/// thread that runs it. Results do not depend on it (every split is fixed by the data and
/// the thread count, not by which thread runs a piece).
fn join_thread_pool(command: &Command) {
    let compute_on_main = matches!(
        command,
        Command::Train(_)
            | Command::Eval(_)
            | Command::Generate(_)
            | Command::Pretrain(_)
            | Command::Finetune(_)
            | Command::Bench(_)
            | Command::Translate(_)
    );
    // rayon's own rule for the default pool size.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if compute_on_main && threads > 1 {
        // An error means a pool already exists; the work then runs on that one.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global();
    }
}

fn main() {
    quiet_error_backtraces();
    tune_allocator();
    let cli = Cli::parse();
    join_thread_pool(&cli.command);
    // A misspelt SEQLAB_OPS (fused | composed, seqlab_nn::ops) stops here rather than
    // silently running the other path.
    if let Err(e) = seqlab_nn::ops::path_from_env() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    // Under mpirun/srun (feature `mpi`) this joins the job's ranks; MPI is finalized when
    // the guard drops at the end of main.
    let dist = match seqlab_train::dist::init() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Generate(a) => train::generate(a),
        Command::Predict(a) => predict::predict(a),
        Command::Plot(a) => train::plot(a),
        Command::Pretrain(a) => bert::pretrain(a),
        Command::Finetune(a) => bert::finetune(a),
        Command::Bench(a) => bench::run(a),
        Command::W2v(a) => w2v::run(a),
        Command::Translate(a) => mt::translate(a),
        Command::AverageCheckpoints(a) => mt::average(a),
        Command::PlotPe(a) => mt::plot_pe(a),
        Command::Bleu(a) => score::run_bleu(a),
        Command::Chrf(a) => score::run_chrf(a),
        Command::Serve(a) => serve_cmd::run(a),
        Command::Config(a) => config_cmd::run(a),
        Command::Export(a) => export::run(a),
    };
    if let Err(e) = result {
        let world = seqlab_train::dist::world();
        if world.size() > 1 {
            // The other ranks may wait in a collective for this one: end the whole job
            // (MPI_Abort) rather than let them hang, naming the rank that failed.
            eprintln!("error: rank {} of {}: {e:#}", world.rank(), world.size());
            world.abort(1);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    drop(dist);
}
