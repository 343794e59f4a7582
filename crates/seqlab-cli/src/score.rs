//! `seqlab bleu` and `seqlab chrf`: sacrebleu's CLI behaviour (`sacrebleu REF... -i HYP -m bleu`),
//! with the score printed as `BLEU = 25.32 58.3/...` (sacrebleu's text line without signature).
//! Each command has its own flags; the files and output options are shared.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use seqlab_metrics::bleu::{corpus_bleu, BleuConfig, BleuScore, SmoothMethod};
use seqlab_metrics::chrf::{corpus_chrf, ChrfConfig, ChrfScore};
use seqlab_metrics::text::read_aligned;
use seqlab_metrics::tokenizers::Tokenizer;

/// Files and output options of `seqlab bleu` and `seqlab chrf`.
#[derive(Args, Debug)]
pub struct ScoreFiles {
    /// Hypothesis file, one segment per line (UTF-8; lines are right-stripped as sacrebleu does).
    pub hyp: PathBuf,
    /// Reference file(s), line-aligned with the hypotheses.
    #[arg(required = true)]
    pub refs: Vec<PathBuf>,
    /// Print a JSON object (its `score` field is the metric, unrounded) [default: one line].
    #[arg(long)]
    pub json: bool,
    /// Decimals of the printed score (sacrebleu's API prints 2).
    #[arg(long, default_value_t = 2)]
    pub width: usize,
    /// Lowercase hypotheses and references before scoring [default: case-sensitive].
    #[arg(long, visible_alias = "lc")]
    pub lowercase: bool,
}

/// `seqlab bleu`. Defaults are sacrebleu 2.x's.
#[derive(Args, Debug)]
pub struct BleuArgs {
    #[command(flatten)]
    pub files: ScoreFiles,
    /// Tokenizer: 13a, none, intl or char.
    #[arg(long, default_value = "13a")]
    pub tokenize: Tokenizer,
    /// Smoothing of zero n-gram precisions: exp, none, floor or add-k.
    #[arg(long, default_value = "exp")]
    pub smooth_method: SmoothMethod,
    /// Value for floor and add-k smoothing [default: 0.1 for floor, 1 for add-k].
    #[arg(long)]
    pub smooth_value: Option<f64>,
    /// Maximum n-gram order.
    #[arg(long, default_value_t = 4)]
    pub max_ngram_order: usize,
    /// Average only over n-gram orders the hypothesis has (for sentence-level use)
    /// [default: off].
    #[arg(long)]
    pub effective_order: bool,
}

/// `seqlab chrf`. Defaults are sacrebleu 2.x's (chrF2; `--chrf-word-order 2` gives chrF++).
#[derive(Args, Debug)]
pub struct ChrfArgs {
    #[command(flatten)]
    pub files: ScoreFiles,
    /// Character n-gram order.
    #[arg(long, default_value_t = 6)]
    pub chrf_char_order: usize,
    /// Word n-gram order (2 gives chrF++).
    #[arg(long, default_value_t = 0)]
    pub chrf_word_order: usize,
    /// Beta: recall weighs beta times as much as precision.
    #[arg(long, default_value_t = 2)]
    pub chrf_beta: u32,
    /// Keep whitespace in character n-grams [default: off].
    #[arg(long)]
    pub chrf_whitespace: bool,
    /// chrF++.py-style epsilon smoothing instead of effective-order averaging [default: off].
    #[arg(long)]
    pub chrf_eps_smoothing: bool,
}

impl BleuArgs {
    fn config(&self) -> BleuConfig {
        BleuConfig {
            lowercase: self.files.lowercase,
            tokenizer: self.tokenize,
            smooth_method: self.smooth_method,
            smooth_value: self.smooth_value,
            max_ngram_order: self.max_ngram_order,
            effective_order: self.effective_order,
        }
    }
}

impl ChrfArgs {
    fn config(&self) -> ChrfConfig {
        ChrfConfig {
            char_order: self.chrf_char_order,
            word_order: self.chrf_word_order,
            beta: self.chrf_beta,
            lowercase: self.files.lowercase,
            whitespace: self.chrf_whitespace,
            eps_smoothing: self.chrf_eps_smoothing,
        }
    }
}

fn bleu_json(b: &BleuScore, cfg: &BleuConfig, nrefs: usize) -> serde_json::Value {
    serde_json::json!({
        "name": "BLEU",
        "score": b.score,
        "precisions": b.precisions,
        "bp": b.bp,
        "ratio": b.ratio,
        "sys_len": b.sys_len,
        "ref_len": b.ref_len,
        "counts": b.counts,
        "totals": b.totals,
        "verbose_score": b.verbose(),
        "signature": format!("nrefs:{nrefs}|{}", cfg.signature()),
    })
}

fn chrf_json(c: &ChrfScore, cfg: &ChrfConfig, nrefs: usize) -> serde_json::Value {
    serde_json::json!({
        "name": c.name(),
        "score": c.score,
        "char_order": c.char_order,
        "word_order": c.word_order,
        "beta": c.beta,
        "signature": format!("nrefs:{nrefs}|{}", cfg.signature()),
    })
}

/// Runs `seqlab bleu`.
pub fn run_bleu(args: BleuArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let (hyps, refs) = read_aligned(&args.files.hyp, &args.files.refs)?;
    let b = corpus_bleu(&hyps, &refs, &cfg).context("computing BLEU")?;
    if args.files.json {
        println!("{}", serde_json::to_string_pretty(&bleu_json(&b, &cfg, refs.len()))?);
    } else {
        println!("{}", b.format(args.files.width));
    }
    Ok(())
}

/// Runs `seqlab chrf`.
pub fn run_chrf(args: ChrfArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let (hyps, refs) = read_aligned(&args.files.hyp, &args.files.refs)?;
    let c = corpus_chrf(&hyps, &refs, &cfg).context("computing chrF")?;
    if args.files.json {
        println!("{}", serde_json::to_string_pretty(&chrf_json(&c, &cfg, refs.len()))?);
    } else {
        println!("{}", c.format(args.files.width));
    }
    Ok(())
}
