//! Command-line entry points of the MT crate, wired into the `seqlab` binary by seqlab-cli.
//! Each is a clap `Args` struct plus a run function.

use crate::average::{average_checkpoints, last_checkpoints};
use crate::decode::DecodeStrategy;
use crate::task::{MtConfig, MtTask};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Trains a translation model from a config with `task = "mt"` (called by `seqlab train`).
pub fn train(config: &Path, run: &seqlab_train::RunFlags) -> Result<()> {
    let cfg: MtConfig = seqlab_train::overrides::load_with(config, &run.overrides())?;
    cfg.validate()
        .with_context(|| format!("{}: invalid config", config.display()))?;
    let t0 = std::time::Instant::now();
    let out = crate::task::train(&cfg, run.resume)?;
    let s = &out.summary;
    println!(
        "trained {} steps in {:.1} min ({:?}); run folder {}",
        s.steps,
        t0.elapsed().as_secs_f64() / 60.0,
        s.reason,
        cfg.run_dir.display()
    );
    if !s.last_eval.is_empty() {
        let m: Vec<String> = s.last_eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        println!("validation: {}", m.join("  "));
    }
    if let Some(t) = out.test {
        println!("{t}");
    }
    println!(
        "how to read this: BLEU (0-100) counts n-gram overlap with the reference translation, as sacrebleu does; chrF counts character n-grams. Translate new text with `seqlab translate --checkpoint {}`.",
        cfg.run_dir.display()
    );
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum DecoderArg {
    Greedy,
    Beam,
    Sampling,
}

/// `seqlab translate --checkpoint RUN [--input F] [--output F] ...`
#[derive(Args, Debug, Clone)]
pub struct TranslateArgs {
    /// A translation checkpoint folder, or its run folder (→ best checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
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
    /// Search: beam (default), greedy or sampling.
    #[arg(long, value_enum, default_value = "beam")]
    pub decoder: DecoderArg,
    /// Beam size (default: the run's `decode.beam_size`).
    #[arg(long)]
    pub beam_size: Option<usize>,
    /// Length penalty α: hypotheses rank by log-probability / length^α (default: the run's).
    #[arg(long)]
    pub length_penalty: Option<f64>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sampling: keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling: nucleus mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Re-run the decoder over the whole prefix at every step instead of using the key/value
    /// cache (same output, slower; for timing).
    #[arg(long)]
    pub no_cache: bool,
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

fn read_input(a: &TranslateArgs) -> Result<(Vec<String>, Option<Vec<String>>)> {
    let (name, lines): (String, Vec<String>) = match &a.input {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("{}: cannot read file", p.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                anyhow::anyhow!("{}:{line}: invalid UTF-8", p.display())
            })?;
            (p.display().to_string(), text.lines().map(str::to_string).collect())
        }
        None => {
            let mut v = Vec::new();
            for (i, l) in std::io::stdin().lock().lines().enumerate() {
                v.push(l.with_context(|| format!("<stdin>:{}: cannot read (invalid UTF-8?)", i + 1))?);
            }
            ("<stdin>".into(), v)
        }
    };
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
            size: a.beam_size.unwrap_or(task.cfg.decode.beam_size),
            length_penalty: a.length_penalty.unwrap_or(task.cfg.decode.length_penalty),
        },
        DecoderArg::Sampling => DecodeStrategy::Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
    }
}

/// Translates text with a trained model; empty lines stay empty.
pub fn translate(a: TranslateArgs) -> Result<()> {
    let task = crate::task::load(&a.checkpoint)?;
    let (srcs, refs) = read_input(&a)?;
    let strat = strategy(&a, &task);
    let todo: Vec<usize> = (0..srcs.len()).filter(|&i| !srcs[i].is_empty()).collect();
    let texts: Vec<&str> = todo.iter().map(|&i| srcs[i].as_str()).collect();
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
        Some(p) => std::fs::write(p, &body).with_context(|| format!("writing {}", p.display()))?,
        None => std::io::stdout().write_all(body.as_bytes())?,
    }
    eprintln!(
        "translated {} sentences in {secs:.2} s ({:.1} sentences/s; {strat:?}, batch {}, cache {})",
        texts.len(),
        texts.len() as f64 / secs.max(1e-9),
        a.batch_size,
        if a.no_cache { "off" } else { "on" }
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
        plot_attention(&task, &srcs[k], &hyps[k], out, a.attention_layer, a.attention_heads)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// A token as text for an axis label, leading space shown as `▁`. Byte-level BPE stores
/// bytes as stand-in characters: decode them, unless the token is a partial UTF-8 sequence.
pub fn piece(tok: &seqlab_data::Tokenizer, id: u32) -> String {
    match tok.decode(&[id], false) {
        Ok(t) if !t.is_empty() && !t.contains('\u{FFFD}') => match t.strip_prefix(' ') {
            Some(rest) => format!("▁{rest}"),
            None => t,
        },
        _ => match tok.id_to_token(id) {
            Some(t) => t.replace('Ġ', "▁"),
            None => format!("#{id}"),
        },
    }
}

/// Draws the cross-attention of one translation: rows are output tokens (and `<eos>`),
/// columns source tokens (and `<eos>`).
fn plot_attention(task: &MtTask, src: &str, hyp: &str, out: &Path, layer: Option<usize>, heads: bool) -> Result<()> {
    let c = |e: candle_core::Error| anyhow::anyhow!("{e}");
    let s_ids = task.encode_source(src)?;
    let mut t_ids = vec![seqlab_data::tokenizer::BOS_ID];
    t_ids.extend(task.tgt_tok.encode(hyp)?);
    let dev = task.vs.device();
    let s = Tensor::from_slice(&s_ids, (1, s_ids.len()), dev).map_err(c)?;
    let t = Tensor::from_slice(&t_ids, (1, t_ids.len()), dev).map_err(c)?;
    let layers = task.net.cross_attention(&s, &t)?;
    let l = layer.unwrap_or(layers.len() - 1);
    let Some(w) = layers.get(l) else {
        bail!("--attention-layer {l}: the decoder has {} layers", layers.len());
    };
    let w = w.squeeze(0).map_err(c)?; // (H, T, S)
    let cols: Vec<String> = s_ids.iter().map(|&i| piece(&task.src_tok, i)).collect();
    let mut rows: Vec<String> = t_ids[1..].iter().map(|&i| piece(&task.tgt_tok, i)).collect();
    rows.push("<eos>".into());
    let panels: Vec<(String, Vec<Vec<f32>>)> = if heads {
        (0..w.dim(0).map_err(c)?)
            .map(|h| {
                Ok((
                    format!("layer {l} head {h}"),
                    w.get(h).and_then(|x| x.to_vec2::<f32>()).map_err(c)?,
                ))
            })
            .collect::<Result<_>>()?
    } else {
        vec![(
            format!("layer {l}, mean over heads"),
            w.mean(0).and_then(|x| x.to_vec2::<f32>()).map_err(c)?,
        )]
    };
    let n = panels.len();
    seqlab_train::plot::heatmaps(out, &panels, &rows, &cols, if n >= 4 { n.div_ceil(2) } else { n })
}

/// `seqlab average-checkpoints RUN_DIR -n 5 -o DIR`
#[derive(Args, Debug, Clone)]
pub struct AverageArgs {
    /// Run folder (or its `checkpoints/` folder) holding `step-*` checkpoints.
    pub run_dir: PathBuf,
    /// How many of the newest checkpoints to average (the paper: 5 for base, 20 for big).
    #[arg(short = 'n', long = "num", default_value_t = 5)]
    pub n: usize,
    /// Output checkpoint folder.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// Averages the parameters of the last `n` checkpoints into a new checkpoint folder.
pub fn average(a: AverageArgs) -> Result<()> {
    let dirs = last_checkpoints(&a.run_dir, a.n)?;
    let count = average_checkpoints(&dirs, &a.output)?;
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

/// `seqlab plot-pe -o pe.png [--d-model 128 --max-len 100]`
#[derive(Args, Debug, Clone)]
pub struct PlotPeArgs {
    /// Output image, .png or .svg.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 100)]
    pub max_len: usize,
}

/// Draws the sinusoidal positional-encoding table (positions × dimensions) as a heat map.
pub fn plot_pe(a: PlotPeArgs) -> Result<()> {
    if a.d_model == 0 || a.max_len == 0 {
        bail!("plot-pe: --d-model and --max-len must be positive");
    }
    let t = seqlab_nn::sinusoidal_table(a.max_len, a.d_model, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = t.reshape((a.max_len, a.d_model)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = t.to_vec2::<f32>().map_err(|e| anyhow::anyhow!("{e}"))?;
    let rl: Vec<String> = (0..a.max_len).map(|i| i.to_string()).collect();
    let cl: Vec<String> = (0..a.d_model).map(|i| i.to_string()).collect();
    let title = format!(
        "sinusoidal positional encoding (d_model {}, positions 0..{})",
        a.d_model, a.max_len
    );
    seqlab_train::plot::heatmap(&a.output, &title, &rows, &rl, &cl)?;
    println!("wrote {}", a.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_pe_writes_an_image_and_rejects_zero() {
        let out = std::env::temp_dir().join(format!("seqlab-mt-pe-{}.svg", std::process::id()));
        plot_pe(PlotPeArgs {
            output: out.clone(),
            d_model: 16,
            max_len: 10,
        })
        .unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 100);
        let _ = std::fs::remove_file(&out);
        assert!(plot_pe(PlotPeArgs {
            output: out,
            d_model: 0,
            max_len: 10
        })
        .is_err());
    }
}
