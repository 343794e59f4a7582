//! `seqlab w2v …` subcommands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::eval::{eval_analogy, eval_similarity, Index};
use crate::format::{load, save, Format, WordVectors};
use crate::text::{ChunkReader, TextOptions};
use crate::train::{train_file, Config, Model};

/// word2vec: train embeddings and query/evaluate them.
#[derive(Args, Debug)]
pub struct W2vArgs {
    #[command(subcommand)]
    pub command: W2vCommand,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct TextArgs {
    /// Lower-case the corpus.
    #[arg(long)]
    pub lowercase: bool,
    /// Replace punctuation by spaces (keeps ' and - inside words).
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

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Corpus: whitespace-separated words, one sentence/paragraph per line; streamed.
    #[arg(long)]
    pub input: PathBuf,
    /// Vector file to write.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "skipgram")]
    pub model: Model,
    #[arg(long, default_value_t = 100)]
    pub dim: usize,
    /// Maximum distance to a context word (each position draws its own in 1..=window).
    #[arg(long, default_value_t = 5)]
    pub window: usize,
    /// Negative samples per positive (0: none).
    #[arg(long, default_value_t = 5)]
    pub negative: usize,
    /// Also train hierarchical softmax (use --negative 0 for hierarchical softmax alone).
    #[arg(long)]
    pub hs: bool,
    /// Subsampling threshold for frequent words (0: off).
    #[arg(long, default_value_t = 1e-3)]
    pub sample: f64,
    #[arg(long, default_value_t = 5)]
    pub min_count: u64,
    /// Keep at most this many words (the most frequent).
    #[arg(long)]
    pub max_vocab: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Initial learning rate [default: 0.025 skip-gram, 0.05 CBOW].
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Final learning rate [default: alpha * 1e-4].
    #[arg(long)]
    pub min_alpha: Option<f32>,
    /// CBOW: sum the context vectors instead of averaging them.
    #[arg(long)]
    pub cbow_sum: bool,
    /// Worker threads [default: all cores]. With 1 thread a run is reproducible.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub text: TextArgs,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum W2vCommand {
    /// Train word vectors (skip-gram/CBOW, negative sampling/hierarchical softmax).
    Train(TrainArgs),
    /// Write a prepared (tokenized, optionally lower-cased / punctuation-stripped) copy of a
    /// raw corpus, one line per input line, words separated by one space.
    Prepare {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        text: TextArgs,
    },
    /// Nearest neighbours of a word by cosine similarity.
    Similar {
        vectors: PathBuf,
        word: String,
        #[arg(short, default_value_t = 10)]
        n: usize,
    },
    /// "A is to B as C is to ?" by 3CosAdd and 3CosMul.
    Analogy {
        vectors: PathBuf,
        a: String,
        b: String,
        c: String,
        #[arg(short, default_value_t = 10)]
        n: usize,
    },
    /// Accuracy on a questions-words.txt style analogy file (as gensim counts it).
    EvalAnalogy {
        vectors: PathBuf,
        questions: PathBuf,
        #[arg(long, default_value_t = 30000)]
        restrict_vocab: usize,
        #[arg(long)]
        json: bool,
    },
    /// Spearman/Pearson correlation with human word-pair similarity judgements.
    EvalSimilarity {
        vectors: PathBuf,
        pairs: PathBuf,
        #[arg(long, default_value_t = 300000)]
        restrict_vocab: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: W2vArgs) -> Result<()> {
    match args.command {
        W2vCommand::Train(a) => train(a),
        W2vCommand::Prepare { input, output, text } => prepare(&input, &output, text.into()),
        W2vCommand::Similar { vectors, word, n } => {
            let ix = Index::new(&load(&vectors)?);
            for (w, s) in ix.similar(&word, n)? {
                println!("{w}\t{s:.4}");
            }
            Ok(())
        }
        W2vCommand::Analogy { vectors, a, b, c, n } => {
            let ix = Index::new(&load(&vectors)?);
            let (add, mul) = ix.analogy(&a, &b, &c, n)?;
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
            let ix = Index::new(&load(&vectors)?);
            let r = eval_analogy(&ix, &questions, restrict_vocab)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for s in &r.sections {
                    println!(
                        "{:<32} {:>6.2}%  ({}/{})",
                        s.section,
                        100.0 * s.accuracy,
                        s.correct,
                        s.total
                    );
                }
                for s in [&r.semantic, &r.syntactic, &r.overall] {
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
            }
            Ok(())
        }
        W2vCommand::EvalSimilarity {
            vectors,
            pairs,
            restrict_vocab,
            json,
        } => {
            let ix = Index::new(&load(&vectors)?);
            let r = eval_similarity(&ix, &pairs, restrict_vocab)?;
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
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {wide_bar} {percent:>3}% {human_pos}/{human_len} words {per_sec} lr {msg} ETA {eta}",
        )
        .unwrap(),
    );
    let (emb, s) = train_file(&a.input, &cfg, |p| {
        bar.set_length(p.total);
        bar.set_position(p.words.load(Ordering::Relaxed));
        bar.set_message(format!("{:.6}", f32::from_bits(p.alpha_bits.load(Ordering::Relaxed))));
    })?;
    bar.finish_and_clear();
    if s.corpus.invalid_bytes > 0 {
        eprintln!(
            "warning: {}: skipped {} bytes of invalid UTF-8",
            a.input.display(),
            s.corpus.invalid_bytes
        );
    }
    let wv = WordVectors {
        words: emb.vocab.words().map(str::to_string).collect(),
        dim: emb.dim,
        vectors: emb.vectors,
        counts: Some(emb.vocab.counts.clone()),
    };
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
    let len = std::fs::metadata(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .len();
    let mut r = ChunkReader::open(input, 0, len, opts).with_context(|| format!("cannot open {}", input.display()))?;
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(output).with_context(|| format!("cannot write {}", output.display()))?,
    );
    let (mut lines, mut words) = (0u64, 0u64);
    let mut line = String::new();
    loop {
        line.clear();
        let more = r.next_line(|t| {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(t);
            words += 1;
        })?;
        if !more {
            break;
        }
        if !line.is_empty() {
            line.push('\n');
            w.write_all(line.as_bytes())?;
            lines += 1;
        }
    }
    w.flush()?;
    if r.invalid_bytes > 0 {
        eprintln!(
            "warning: {}: skipped {} bytes of invalid UTF-8",
            input.display(),
            r.invalid_bytes
        );
    }
    eprintln!("{}: {lines} lines, {words} words", output.display());
    Ok(())
}
