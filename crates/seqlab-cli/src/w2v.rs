//! `seqlab w2v …`: argument parsing and printing for the word2vec library (`seqlab-w2v`).
//! Every command that writes a file checks its output before any work (folder exists and is
//! writable, not one of the inputs) and writes it atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::Result;
use clap::{Args, Subcommand};

use seqlab_w2v::eval::{eval_analogy, eval_similarity, Index};
use seqlab_w2v::format::{check_save_target, load_as, save, Format, WordVectors};
use seqlab_w2v::text::{prepare_file, TextOptions};
use seqlab_w2v::train::{train_file_distributed, Config, Model};

/// word2vec: train embeddings and query/evaluate them.
#[derive(Args, Debug)]
pub struct W2vArgs {
    #[command(subcommand)]
    pub command: W2vCommand,
}

/// Corpus preparation, shared by `train` and `prepare`. Words are always split on Unicode
/// whitespace (`char::is_whitespace`: also U+3000, U+00A0, …).
#[derive(Args, Debug, Clone, Copy)]
pub struct TextArgs {
    /// Lower-case the corpus (Unicode-aware) [default: off].
    #[arg(long)]
    pub lowercase: bool,
    /// Replace punctuation and symbols by spaces, keeping ' and - between letters/digits
    /// (don't, well-known) [default: off].
    #[arg(long)]
    pub strip_punct: bool,
}

impl From<TextArgs> for TextOptions {
    fn from(a: TextArgs) -> Self {
        TextOptions {
            lowercase: a.lowercase,
            strip_punct: a.strip_punct,
        }
    }
}

/// A count of at least 1.
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `seqlab w2v train`: every flag maps to a field of `seqlab_w2v::train::Config`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Corpus: words separated by Unicode whitespace, one sentence/paragraph per line;
    /// streamed, never loaded whole.
    #[arg(long)]
    pub input: PathBuf,
    /// Vector file to write (replaced atomically; must not be the input; its folder must
    /// exist). safetensors also writes NAME.vocab.txt beside it.
    #[arg(long)]
    pub output: PathBuf,
    /// Architecture: skipgram (context word predicts the centre word) or cbow (context
    /// mean predicts it).
    #[arg(long, default_value = "skipgram", value_parser = Model::from_str_arg)]
    pub model: Model,
    /// Vector size.
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub dim: usize,
    /// Maximum distance to a context word (each position draws its own in 1..=window).
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub window: usize,
    /// Negative samples per positive, from unigram^0.75 (0: none; then --hs is needed).
    #[arg(long, default_value_t = 5)]
    pub negative: usize,
    /// Also train hierarchical softmax (use --negative 0 for hierarchical softmax alone)
    /// [default: off].
    #[arg(long)]
    pub hs: bool,
    /// Subsampling threshold for frequent words (0: off).
    #[arg(long, default_value_t = 1e-3)]
    pub sample: f64,
    /// Leave out words seen fewer times.
    #[arg(long, default_value_t = 5)]
    pub min_count: u64,
    /// Keep at most this many words, the most frequent (at least 1) [default: no limit].
    #[arg(long, value_parser = positive)]
    pub max_vocab: Option<usize>,
    /// Passes over the corpus.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub epochs: usize,
    /// Initial learning rate, decayed linearly [default: 0.025 skipgram, 0.05 cbow].
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Final learning rate [default: alpha * 1e-4].
    #[arg(long)]
    pub min_alpha: Option<f32>,
    /// CBOW: sum the context vectors instead of averaging them [default: average].
    #[arg(long)]
    pub cbow_sum: bool,
    /// Worker threads; with 1 a run is reproducible bit for bit [default: all cores].
    #[arg(long, value_parser = positive)]
    pub threads: Option<usize>,
    /// Output format: text, binary (both word2vec.c/gensim compatible) or safetensors.
    #[arg(long, default_value = "text", value_parser = Format::from_str_arg)]
    pub format: Format,
    /// Seed of the initial vectors and of the sampling streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Under `mpirun -np N` (feature `mpi`): words each rank reads between two model
    /// synchronisations (all-reduce of the model deltas); ignored on one process.
    #[arg(long, default_value_t = 200_000, value_parser = positive)]
    pub sync_words: usize,
    #[command(flatten)]
    pub text: TextArgs,
    /// No progress bar [default: show one].
    #[arg(long, short)]
    pub quiet: bool,
}

/// Options of the commands that read a vector file.
#[derive(Args, Debug, Clone)]
pub struct VectorsArg {
    /// Vector file: word2vec text or binary, or .safetensors (+ NAME.vocab.txt).
    pub vectors: PathBuf,
    /// Read the vector file in this format: text, binary or safetensors [default: recognised
    /// from the name (.safetensors) or the header and first row].
    #[arg(long, value_parser = Format::from_str_arg)]
    pub format: Option<Format>,
}

impl VectorsArg {
    fn index(&self) -> Result<Index> {
        Index::new(&load_as(&self.vectors, self.format)?)
    }
}

/// Subcommands of `seqlab w2v` (word2vec training, corpus preparation and queries).
#[derive(Subcommand, Debug)]
pub enum W2vCommand {
    /// Train word vectors (skip-gram/CBOW, negative sampling/hierarchical softmax).
    Train(TrainArgs),
    /// Write a prepared copy of a raw corpus: one line per non-empty input line, words
    /// (split on Unicode whitespace, optionally lower-cased / punctuation-stripped) separated
    /// by one space.
    Prepare {
        /// Raw corpus to read.
        #[arg(long)]
        input: PathBuf,
        /// Prepared corpus to write (replaced atomically; must not be the input).
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        text: TextArgs,
    },
    /// Nearest neighbours of a word by cosine similarity.
    Similar {
        #[command(flatten)]
        vectors: VectorsArg,
        /// The query word (exact spelling).
        word: String,
        /// How many neighbours to print (at least 1).
        #[arg(short, default_value_t = 10, value_parser = positive)]
        n: usize,
    },
    /// "A is to B as C is to ?" by 3CosAdd and 3CosMul.
    Analogy {
        #[command(flatten)]
        vectors: VectorsArg,
        /// A (exact spelling).
        a: String,
        /// B (exact spelling).
        b: String,
        /// C (exact spelling).
        c: String,
        /// How many answers to print per method (at least 1).
        #[arg(short, default_value_t = 10, value_parser = positive)]
        n: usize,
    },
    /// Accuracy on a questions-words.txt style analogy file (as gensim counts it).
    EvalAnalogy {
        #[command(flatten)]
        vectors: VectorsArg,
        /// Analogy file: `: section` lines, then `a b c d` questions.
        questions: PathBuf,
        /// Search only the first (most frequent) words of the vector file; questions with
        /// other words are skipped and counted (gensim's default, at least 1).
        #[arg(long, default_value_t = 30000, value_parser = positive)]
        restrict_vocab: usize,
        /// Print a JSON report instead of a table [default: table].
        #[arg(long)]
        json: bool,
    },
    /// Spearman/Pearson correlation with human word-pair similarity judgements.
    EvalSimilarity {
        #[command(flatten)]
        vectors: VectorsArg,
        /// Pair file: `word word score` per line (tab or space separated, `#` comments).
        pairs: PathBuf,
        /// Search only the first (most frequent) words of the vector file; pairs with other
        /// words are skipped and counted (gensim's default, at least 1).
        #[arg(long, default_value_t = 300000, value_parser = positive)]
        restrict_vocab: usize,
        /// Print a JSON report instead of a line [default: line].
        #[arg(long)]
        json: bool,
    },
}

/// clap value parsers from the library's `FromStr` (clap wants a `String` error).
trait FromStrArg: Sized {
    fn from_str_arg(s: &str) -> Result<Self, String>;
}

impl<T: std::str::FromStr<Err = anyhow::Error>> FromStrArg for T {
    fn from_str_arg(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e: anyhow::Error| e.to_string())
    }
}

/// Runs a `seqlab w2v` subcommand.
pub fn run(args: W2vArgs) -> Result<()> {
    match args.command {
        W2vCommand::Train(a) => train(a),
        W2vCommand::Prepare { input, output, text } => prepare(&input, &output, text.into()),
        W2vCommand::Similar { vectors, word, n } => {
            for (w, s) in vectors.index()?.similar(&word, n)? {
                println!("{w}\t{s:.4}");
            }
            Ok(())
        }
        W2vCommand::Analogy { vectors, a, b, c, n } => {
            let (add, mul) = vectors.index()?.analogy(&a, &b, &c, n)?;
            println!("{a} : {b} :: {c} : ?");
            println!("{:<24}3CosMul", "3CosAdd");
            for i in 0..add.len().max(mul.len()) {
                let f = |v: &[(String, f32)]| v.get(i).map_or(String::new(), |(w, s)| format!("{w} {s:.4}"));
                println!("{:<24}{}", f(&add), f(&mul));
            }
            Ok(())
        }
        W2vCommand::EvalAnalogy {
            vectors,
            questions,
            restrict_vocab,
            json,
        } => {
            let r = eval_analogy(&vectors.index()?, &questions, restrict_vocab)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            for s in r.sections.iter().chain([&r.semantic, &r.syntactic, &r.overall]) {
                println!(
                    "{:<32} {:>6.2}%  ({}/{})",
                    s.section,
                    100.0 * s.accuracy,
                    s.correct,
                    s.total
                );
            }
            println!(
                "{} questions, {} skipped (out of vocabulary, restrict {}: {:.1}%)",
                r.questions,
                r.oov_questions,
                r.restrict_vocab,
                100.0 * r.oov_ratio
            );
            Ok(())
        }
        W2vCommand::EvalSimilarity {
            vectors,
            pairs,
            restrict_vocab,
            json,
        } => {
            let r = eval_similarity(&vectors.index()?, &pairs, restrict_vocab)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "spearman {:.4}  pearson {:.4}  ({} pairs, {} out of vocabulary: {:.1}%)",
                    r.spearman,
                    r.pearson,
                    r.pairs,
                    r.oov_pairs,
                    100.0 * r.oov_ratio
                );
            }
            Ok(())
        }
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cfg = Config {
        model: a.model,
        dim: a.dim,
        window: a.window,
        negative: a.negative,
        hs: a.hs,
        sample: a.sample,
        min_count: a.min_count,
        max_vocab: a.max_vocab,
        epochs: a.epochs,
        alpha: a.alpha,
        min_alpha: a.min_alpha,
        cbow_mean: !a.cbow_sum,
        threads,
        seed: a.seed,
        text: a.text.into(),
    };
    // Everything that can be known before training is checked before training.
    cfg.validate()?;
    check_save_target(&a.output, a.format, &[&a.input])?;
    // Under mpirun: rank 0 shows progress and writes the vectors; all ranks report words/s.
    let world = seqlab_train::dist::world();
    let bar = if a.quiet || world.rank() != 0 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {wide_bar} {percent:>3}% {human_pos}/{human_len} words {per_sec} lr {msg} ETA {eta}",
        )
        .expect("the template is valid"),
    );
    let (emb, s) = train_file_distributed(&a.input, &cfg, &*world, a.sync_words as u64, |p| {
        bar.set_length(p.total);
        bar.set_position(p.words.load(Ordering::Relaxed));
        bar.set_message(format!("{:.6}", f32::from_bits(p.alpha_bits.load(Ordering::Relaxed))));
    })?;
    bar.finish_and_clear();
    if s.ranks > 1 {
        eprintln!(
            "rank {} of {}: trained {} words, {:.0} words/s; {} model synchronisations took {:.2}s",
            world.rank(),
            s.ranks,
            s.words_trained,
            s.words_per_second,
            s.sync_rounds,
            s.sync_seconds
        );
        if world.rank() != 0 {
            return Ok(());
        }
    }
    if s.corpus.invalid_bytes > 0 {
        eprintln!(
            "warning: {}: skipped {} bytes of invalid UTF-8",
            a.input.display(),
            s.corpus.invalid_bytes
        );
    }
    let wv = WordVectors::new(
        emb.vocab.words().map(str::to_string).collect(),
        emb.dim,
        emb.vectors,
        Some(emb.vocab.counts.clone()),
    )?;
    save(&wv, &a.output, a.format)?;
    eprintln!(
        "vocabulary {} words (of {} distinct, {} tokens, {} lines); trained {} words in {} epochs with {} threads; {:.0} words/s; train {:.2}s, vocabulary {:.2}s, wall {:.2}s",
        s.vocab_size,
        s.corpus.distinct,
        s.corpus.tokens,
        s.corpus.lines,
        s.words_trained,
        cfg.epochs,
        threads,
        s.words_per_second,
        s.train_seconds,
        s.vocab_seconds,
        s.train_seconds + s.vocab_seconds
    );
    Ok(())
}

fn prepare(input: &Path, output: &Path, opts: TextOptions) -> Result<()> {
    let s = prepare_file(input, output, opts)?;
    if s.invalid_bytes > 0 {
        eprintln!(
            "warning: {}: skipped {} bytes of invalid UTF-8",
            input.display(),
            s.invalid_bytes
        );
    }
    eprintln!("{}: {} lines, {} words", output.display(), s.lines, s.words);
    Ok(())
}
