//! `seqlab bleu` and `seqlab chrf`: sacrebleu's CLI behaviour (`sacrebleu REF... -i HYP -m bleu`),
//! with the score printed as `BLEU = 25.32 58.3/...` (sacrebleu's text line without signature).

use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};

use crate::bleu::{corpus_bleu, BleuConfig, BleuScore, SmoothMethod};
use crate::chrf::{corpus_chrf, ChrfConfig, ChrfScore};
use crate::text::read_lines;
use crate::tokenizers::Tokenizer;

/// Arguments shared by `seqlab bleu` and `seqlab chrf`. Defaults are sacrebleu 2.x's.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Hypothesis file, one segment per line (UTF-8; lines are right-stripped as sacrebleu does).
    pub hyp: PathBuf,
    /// Reference file(s), line-aligned with the hypotheses.
    #[arg(required = true)]
    pub refs: Vec<PathBuf>,
    /// Print a JSON object (its `score` field is the metric, unrounded).
    #[arg(long)]
    pub json: bool,
    /// Decimals of the printed score (sacrebleu's API prints 2).
    #[arg(long, default_value_t = 2)]
    pub width: usize,
    /// Lowercase hypotheses and references before scoring.
    #[arg(long, visible_alias = "lc")]
    pub lowercase: bool,
    /// BLEU: tokenizer (13a, none, intl, char).
    #[arg(long, default_value = "13a")]
    pub tokenize: Tokenizer,
    /// BLEU: smoothing (exp, none, floor, add-k).
    #[arg(long, default_value = "exp")]
    pub smooth_method: SmoothMethod,
    /// BLEU: value for floor (default 0.1) and add-k (default 1) smoothing.
    #[arg(long)]
    pub smooth_value: Option<f64>,
    /// BLEU: maximum n-gram order.
    #[arg(long, default_value_t = 4)]
    pub max_ngram_order: usize,
    /// BLEU: average only over n-gram orders the hypothesis has (for sentence-level use).
    #[arg(long)]
    pub effective_order: bool,
    /// chrF: character n-gram order.
    #[arg(long, default_value_t = 6)]
    pub chrf_char_order: usize,
    /// chrF: word n-gram order (2 gives chrF++).
    #[arg(long, default_value_t = 0)]
    pub chrf_word_order: usize,
    /// chrF: beta (recall weighs beta times as much as precision).
    #[arg(long, default_value_t = 2)]
    pub chrf_beta: u32,
    /// chrF: keep whitespace in character n-grams.
    #[arg(long)]
    pub chrf_whitespace: bool,
    /// chrF: chrF++.py-style epsilon smoothing instead of effective-order averaging.
    #[arg(long)]
    pub chrf_eps_smoothing: bool,
}

impl ScoreArgs {
    pub fn bleu_config(&self) -> BleuConfig {
        BleuConfig {
            lowercase: self.lowercase,
            tokenizer: self.tokenize,
            smooth_method: self.smooth_method,
            smooth_value: self.smooth_value,
            max_ngram_order: self.max_ngram_order,
            effective_order: self.effective_order,
        }
    }

    pub fn chrf_config(&self) -> ChrfConfig {
        ChrfConfig {
            char_order: self.chrf_char_order,
            word_order: self.chrf_word_order,
            beta: self.chrf_beta,
            lowercase: self.lowercase,
            whitespace: self.chrf_whitespace,
            eps_smoothing: self.chrf_eps_smoothing,
        }
    }
}

/// Reads the hypothesis and reference files and checks they are line-aligned:
/// returns `(hyps, refs)` with `refs[k][i]` the line `i` of reference file `k`.
pub fn read_inputs(hyp: &Path, refs: &[PathBuf]) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let hyps = read_lines(hyp)?;
    if hyps.is_empty() {
        bail!("hypothesis file {} has no lines", hyp.display());
    }
    let mut ref_lines = Vec::with_capacity(refs.len());
    for r in refs {
        let lines = read_lines(r)?;
        if lines.len() != hyps.len() {
            bail!(
                "line counts differ: hypothesis file {} has {} lines, reference file {} has {}",
                hyp.display(),
                hyps.len(),
                r.display(),
                lines.len()
            );
        }
        ref_lines.push(lines);
    }
    Ok((hyps, ref_lines))
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

pub fn run_bleu(args: ScoreArgs) -> anyhow::Result<()> {
    let cfg = args.bleu_config();
    cfg.validate()?;
    let (hyps, refs) = read_inputs(&args.hyp, &args.refs)?;
    let b = corpus_bleu(&hyps, &refs, &cfg).context("computing BLEU")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&bleu_json(&b, &cfg, refs.len()))?);
    } else {
        println!("{}", b.format(args.width));
    }
    Ok(())
}

pub fn run_chrf(args: ScoreArgs) -> anyhow::Result<()> {
    let cfg = args.chrf_config();
    cfg.validate()?;
    let (hyps, refs) = read_inputs(&args.hyp, &args.refs)?;
    let c = corpus_chrf(&hyps, &refs, &cfg).context("computing chrF")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&chrf_json(&c, &cfg, refs.len()))?);
    } else {
        println!("{}", c.format(args.width));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_count_mismatch_names_both_files() {
        let dir = std::env::temp_dir().join(format!("seqlab-metrics-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (h, r) = (dir.join("hyp.txt"), dir.join("ref.txt"));
        std::fs::write(&h, "a\nb\n").unwrap();
        std::fs::write(&r, "a\n").unwrap();
        let e = read_inputs(&h, std::slice::from_ref(&r)).unwrap_err().to_string();
        assert!(
            e.contains("hyp.txt") && e.contains("ref.txt") && e.contains("2 lines"),
            "{e}"
        );
        std::fs::write(&h, "").unwrap();
        let e = read_inputs(&h, &[r]).unwrap_err().to_string();
        assert!(e.contains("hyp.txt") && e.contains("no lines"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
