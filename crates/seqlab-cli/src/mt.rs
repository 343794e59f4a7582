//! `seqlab translate`, `seqlab average-checkpoints`, `seqlab plot-pe`: argument parsing,
//! reading input and printing; the work is seqlab-mt's.

use crate::train::SamplingArgs;
use anyhow::{bail, Result};
use clap::Args;
use seqlab_mt::average::{average_checkpoints, last_checkpoints, IfExists};
use seqlab_mt::decode::DecodeStrategy;
use seqlab_mt::plots::{plot_attention, AttentionPlot};
use seqlab_mt::task::MtTask;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The search `--decoder` picks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum DecoderArg {
    Greedy,
    Beam,
    Sampling,
}

/// `seqlab translate --checkpoint RUN [--input F] [--output F] ...`
#[derive(Args, Debug, Clone)]
pub struct TranslateArgs {
    /// A translation checkpoint folder, or its run folder (→ best checkpoint), or a Hugging
    /// Face M2M100 folder written by `seqlab export --format hf`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub device: crate::train::DeviceArg,
    /// Source sentences, one per line (default: standard input). With `--tsv`, `src<TAB>ref`
    /// lines whose references are scored.
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Where translations go (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Input lines are `source<TAB>reference`: translate the sources and print BLEU and chrF
    /// against the references on standard error.
    #[arg(long)]
    pub tsv: bool,
    /// Search: beam, greedy or sampling.
    #[arg(long, value_enum, default_value = "beam")]
    pub decoder: DecoderArg,
    /// Beam size (default: the run's `decode.beam_size`).
    #[arg(long)]
    pub beam_size: Option<usize>,
    /// Length penalty α: hypotheses rank by log-probability / length^α (default: the run's).
    #[arg(long)]
    pub length_penalty: Option<f64>,
    /// `--decoder sampling`: temperature, top-k, top-p and seed.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Re-run the decoder over the whole prefix at every step instead of using the key/value
    /// cache (same output, slower; for timing).
    #[arg(long)]
    pub no_cache: bool,
    /// For timing: first decode the first N input sentences (one batch at N = --batch-size)
    /// untimed and throw their outputs away, so the timed pass ("translated ... in S s")
    /// does not pay for a cold start (fresh memory pages, which some machines zero slowly;
    /// cold caches). The output is the same with any N.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup: usize,
    /// Draw the encoder-decoder attention of one sentence to this .png or .svg.
    #[arg(long)]
    pub attention: Option<PathBuf>,
    /// Which input sentence (0-based) `--attention` draws.
    #[arg(long, default_value_t = 0)]
    pub attention_index: usize,
    /// Decoder layer whose attention is drawn (default: the last).
    #[arg(long)]
    pub attention_layer: Option<usize>,
    /// One panel per head instead of the mean over heads.
    #[arg(long)]
    pub attention_heads: bool,
}

/// Refuses `--output` naming the input file (it would be replaced by its translation).
fn check_output(a: &TranslateArgs) -> Result<()> {
    let (Some(i), Some(o)) = (&a.input, &a.output) else {
        return Ok(());
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canon(i) == canon(o) {
        bail!("--output {} is the input file: choose another output file", o.display());
    }
    Ok(())
}

fn read_input(a: &TranslateArgs) -> Result<(Vec<String>, Option<Vec<String>>)> {
    let (name, text) = crate::predict::read_input(a.input.as_deref())?;
    let lines: Vec<&str> = text.lines().collect();
    if !a.tsv {
        return Ok((lines.iter().map(|l| l.trim().to_string()).collect(), None));
    }
    let (mut src, mut refs) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate() {
        let Some((s, r)) = l.split_once('\t') else {
            bail!("{name}:{}: --tsv expects source<TAB>reference", i + 1);
        };
        src.push(s.trim().to_string());
        refs.push(r.trim().to_string());
    }
    Ok((src, Some(refs)))
}

fn strategy(a: &TranslateArgs, task: &MtTask) -> DecodeStrategy {
    match a.decoder {
        DecoderArg::Greedy => DecodeStrategy::Greedy,
        DecoderArg::Beam => DecodeStrategy::Beam {
            size: a.beam_size.unwrap_or(task.cfg.task.decode.beam_size),
            length_penalty: a.length_penalty.unwrap_or(task.cfg.task.decode.length_penalty),
        },
        DecoderArg::Sampling => DecodeStrategy::Sampling {
            sampling: a.sampling.config(1.0),
            seed: a.sampling.seed,
        },
    }
}

/// `seqlab translate`: translates text with a trained model; empty lines stay empty.
pub fn translate(a: TranslateArgs) -> Result<()> {
    check_output(&a)?;
    let task = crate::export::load_translation_model(&a.checkpoint, &a.device.open()?)?;
    let (srcs, refs) = read_input(&a)?;
    let strat = strategy(&a, &task);
    let todo: Vec<usize> = (0..srcs.len()).filter(|&i| !srcs[i].is_empty()).collect();
    let texts: Vec<&str> = todo.iter().map(|&i| srcs[i].as_str()).collect();
    let name = a.input.as_ref().map_or("<stdin>".into(), |p| p.display().to_string());
    task.warn_overlong(&texts, &name, |k| todo[k] + 1)?;
    // Each `translate` call starts its decoder afresh (sampling from its seed too), so the
    // warm-up changes no output.
    let warm = &texts[..a.warmup.min(texts.len())];
    if !warm.is_empty() {
        task.translate(warm, &strat, a.batch_size, !a.no_cache)?;
    }
    let t0 = std::time::Instant::now();
    let outs = task.translate(&texts, &strat, a.batch_size, !a.no_cache)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut hyps = vec![String::new(); srcs.len()];
    for (&i, o) in todo.iter().zip(outs) {
        hyps[i] = o;
    }
    let mut body = hyps.join("\n");
    body.push('\n');
    match &a.output {
        Some(p) => seqlab_nn::io::write_atomic(p, body.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => std::io::stdout().write_all(body.as_bytes())?,
    }
    eprintln!(
        "translated {} sentences in {secs:.2} s ({:.1} sentences/s; {strat:?}, batch {}, cache {}, warm-up {} sentences)",
        texts.len(),
        texts.len() as f64 / secs.max(1e-9),
        a.batch_size,
        if a.no_cache { "off" } else { "on" },
        warm.len()
    );
    if let Some(refs) = refs {
        let r = vec![refs];
        let b = seqlab_metrics::bleu::corpus_bleu(&hyps, &r, &Default::default())?;
        let c = seqlab_metrics::chrf::corpus_chrf(&hyps, &r, &Default::default())?;
        eprintln!("{b}\n{c}");
    }
    if let Some(out) = &a.attention {
        let k = a.attention_index;
        if k >= srcs.len() || srcs[k].is_empty() {
            bail!(
                "--attention-index {k}: no such non-empty input sentence ({} lines)",
                srcs.len()
            );
        }
        let what = AttentionPlot {
            layer: a.attention_layer,
            per_head: a.attention_heads,
        };
        plot_attention(&task, &srcs[k], &hyps[k], out, what)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// `seqlab average-checkpoints RUN_DIR -n 5 -o DIR`
#[derive(Args, Debug, Clone)]
pub struct AverageArgs {
    /// Run folder (or its `checkpoints/` folder) holding `step-*` checkpoints.
    pub run_dir: PathBuf,
    /// How many of the newest checkpoints to average (the paper: 5 for base, 20 for big).
    #[arg(short = 'n', long = "num", default_value_t = 5)]
    pub n: usize,
    /// Output checkpoint folder; must not exist unless `--force`.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Replace an existing output folder (all of it: no file of the old checkpoint stays).
    #[arg(long)]
    pub force: bool,
}

/// `seqlab average-checkpoints`: averages the parameters of the last `n` checkpoints into a
/// new checkpoint folder.
pub fn average(a: AverageArgs) -> Result<()> {
    let dirs = last_checkpoints(&a.run_dir, a.n)?;
    let if_exists = if a.force { IfExists::Replace } else { IfExists::Refuse };
    let count = average_checkpoints(&dirs, &a.output, if_exists)?;
    let names: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    println!(
        "averaged {count} tensors over {} checkpoints ({}) into {}",
        dirs.len(),
        names.join(", "),
        a.output.display()
    );
    Ok(())
}

/// `seqlab plot-pe -o pe.png [--d-model 128 --max-len 100]` (the same picture as `seqlab plot
/// positional-encoding`).
#[derive(Args, Debug, Clone)]
pub struct PlotPeArgs {
    /// Output image, .png or .svg.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Model width: the number of encoding dimensions drawn (columns).
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Number of positions drawn (rows), from 0.
    #[arg(long, default_value_t = 100)]
    pub max_len: usize,
}

/// `seqlab plot-pe`: draws the sinusoidal positional-encoding table as a heat map.
pub fn plot_pe(a: PlotPeArgs) -> Result<()> {
    seqlab_mt::plots::plot_positional_encoding(&a.output, a.d_model, a.max_len)?;
    println!("wrote {}", a.output.display());
    Ok(())
}
