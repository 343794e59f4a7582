//! `seqlab train`, `seqlab eval`, `seqlab generate`, `seqlab plot`.

use anyhow::{Context, Result};
use clap::Args;
use seqlab_tasks::config::RunConfig;
use seqlab_tasks::lm::SampleConfig;
use seqlab_tasks::{AnyTask, Existing, Split};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML run configuration (presets in `configs/`).
    #[arg(long, short)]
    pub config: PathBuf,
    #[command(flatten)]
    pub run: seqlab_train::RunFlags,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder, or a run folder (its best checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which configured split to evaluate.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Evaluate this file instead of the configured split.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SplitArg {
    Valid,
    Test,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A language-model checkpoint folder, or its run folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 300)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p (nucleus).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// `metrics.jsonl` files (or run folders); one line per file and split. The single word
    /// `positional-encoding` draws the sinusoidal table as a heat map instead.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output picture (.png or .svg).
    #[arg(long, short, default_value = "loss.png")]
    pub output: PathBuf,
    /// Metric to draw against the step.
    #[arg(long, default_value = "loss")]
    pub key: String,
    /// Linear instead of logarithmic y axis.
    #[arg(long)]
    pub linear: bool,
    /// `seqlab plot positional-encoding`: model width of the sinusoidal table.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// `seqlab plot positional-encoding`: positions drawn.
    #[arg(long, default_value_t = 100)]
    pub max_len: usize,
}

/// The config's `task` key, read before the task-specific parsing.
fn task_of(config: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(config).with_context(|| format!("{}: cannot read config", config.display()))?;
    let t: toml::Table = toml::from_str(&text).with_context(|| format!("{}: invalid TOML", config.display()))?;
    Ok(t.get("task").and_then(|v| v.as_str()).unwrap_or_default().to_string())
}

pub fn train(a: TrainArgs) -> Result<()> {
    if task_of(&a.config)? == "mt" {
        return seqlab_mt::cli::train(&a.config, &a.run);
    }
    let cfg = RunConfig::load(&a.config, &a.run.overrides())?;
    let t0 = std::time::Instant::now();
    let out = seqlab_tasks::train(
        &cfg,
        if a.run.resume {
            Existing::Resume
        } else {
            Existing::Refuse
        },
    )?;
    if let Some(s) = out.resumed_from {
        eprintln!("resumed from step {s}");
    }
    let s = &out.summary;
    println!(
        "trained {} steps in {:.1} min ({:?}); run folder {}",
        s.steps,
        t0.elapsed().as_secs_f64() / 60.0,
        s.reason,
        out.run_dir.display()
    );
    if let (Some(first), Some(last)) = (s.train_losses.first(), s.train_losses.last()) {
        println!(
            "training loss {:.4} at step {} → {:.4} at step {}",
            first.1, first.0, last.1, last.0
        );
    }
    if !s.last_eval.is_empty() {
        println!(
            "validation: {}",
            s.last_eval
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
    }
    let best = seqlab_tasks::resolve_checkpoint(&out.run_dir)?;
    let (cfg, task) = seqlab_tasks::load(&best)?;
    let split = if cfg.data.test.is_some() || cfg.task == seqlab_tasks::config::TaskKind::Forecast {
        Split::Test
    } else {
        Split::Valid
    };
    if cfg.data.test.is_some() || cfg.data.valid.is_some() || cfg.task == seqlab_tasks::config::TaskKind::Forecast {
        let r = task.report(split, None)?;
        println!(
            "best checkpoint {} on the {:?} data:\n{}",
            best.display(),
            split,
            r.text
        );
    }
    explain(&task);
    println!("curves: {}", out.run_dir.join("loss.png").display());
    Ok(())
}

/// One line on how to read the numbers, for people new to the task.
fn explain(task: &AnyTask) {
    let s = match task {
        AnyTask::Lm(_) => "perplexity is e^loss: the model is as unsure as a uniform choice among that many tokens (uniform over the vocabulary is the untrained value); bits/char below ~2.5 means it has learned spelling and common words.",
        AnyTask::Classify(_) => "accuracy is the share of passages whose class was predicted right; chance is 1/number-of-classes.",
        AnyTask::Forecast(_) => "RMSE is in the series' units; a model worth using beats the seasonal-naive and last-value baselines.",
    };
    println!("how to read this: {s}");
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let dir = seqlab_tasks::resolve_checkpoint(&a.checkpoint)?;
    let (_, task) = seqlab_tasks::load(&dir)?;
    let split = match a.split {
        SplitArg::Valid => Split::Valid,
        SplitArg::Test => Split::Test,
    };
    let r = task.report(split, a.data.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.json)?);
    } else {
        println!("{}", r.text);
    }
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let dir = seqlab_tasks::resolve_checkpoint(&a.checkpoint)?;
    let (_, task) = seqlab_tasks::load(&dir)?;
    let AnyTask::Lm(lm) = task else {
        anyhow::bail!(
            "{}: not a language model; `seqlab generate` needs a checkpoint of task = \"lm\"",
            dir.display()
        );
    };
    if let Some(p) = a.top_p {
        anyhow::ensure!(p > 0.0 && p <= 1.0, "--top-p must be in (0, 1], got {p}");
    }
    anyhow::ensure!(a.temperature >= 0.0, "--temperature must be >= 0");
    let s = SampleConfig {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    println!("{}", lm.generate(&a.prompt, &s)?);
    Ok(())
}

pub fn plot(a: PlotArgs) -> Result<()> {
    if a.inputs.len() == 1 && a.inputs[0].as_os_str() == "positional-encoding" && !a.inputs[0].exists() {
        return seqlab_mt::cli::plot_pe(seqlab_mt::cli::PlotPeArgs {
            output: a.output,
            d_model: a.d_model,
            max_len: a.max_len,
        });
    }
    let files: Vec<PathBuf> = a
        .inputs
        .iter()
        .map(|p| if p.is_dir() { p.join("metrics.jsonl") } else { p.clone() })
        .collect();
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let series = seqlab_train::plot::series_from_logs(&refs, &a.key)?;
    seqlab_train::plot::line_chart(&a.output, &a.key, "step", &a.key, &series, !a.linear)
        .with_context(|| format!("drawing {}", a.output.display()))?;
    println!("wrote {}", a.output.display());
    Ok(())
}
