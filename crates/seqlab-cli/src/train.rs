//! `seqlab train`, `seqlab eval`, `seqlab generate`, `seqlab plot`: argument parsing and
//! printing; the work is seqlab-train's run path and registry.

use crate::registry;
use anyhow::{Context, Result};
use clap::Args;
use seqlab_nn::sampling::SamplingConfig;
use seqlab_tasks::lm::{GenerateConfig, LmTask};
use seqlab_train::{RunOutcome, Split, TrainRequest};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Flags every training command takes (`train`, `pretrain`, `finetune`); each shorthand is a
/// `--set` of the config key it names.
#[derive(Args, Debug, Clone, Default)]
pub struct RunFlags {
    /// Override a config key, e.g. `--set train.max_steps=500 --set model.kind=gru`
    /// (repeatable; any key of the config file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in the run folder from its newest checkpoint (default: refuse a run
    /// folder that already holds checkpoints).
    #[arg(long)]
    pub resume: bool,
    /// Run folder (overrides `run_dir`; default: the config's, else `runs/<task>`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Optimizer updates in total (overrides `train.max_steps`; default: the config's).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many minutes of wall time, with a checkpoint (overrides
    /// `train.max_minutes`; default: no limit unless the config sets one).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Stop after this many minutes of process CPU time (all threads, summed over resumed
    /// segments), with a checkpoint (overrides `train.max_cpu_minutes`; default: the config's).
    #[arg(long)]
    pub max_cpu_minutes: Option<f64>,
    /// Seed of weights, dropout and data order (overrides `train.seed`; default: the config's,
    /// else 42).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Hide the progress bar (default: shown when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Only parse and validate the config (with the overrides), then exit: no data is read
    /// and nothing is written.
    #[arg(long)]
    pub check: bool,
}

/// `--device`: the one device flag of every command that runs a model (training commands,
/// `eval`, `generate`, `predict`, `translate`, `serve`, `bench`).
#[derive(Args, Debug, Clone, Default)]
pub struct DeviceArg {
    /// Device to run the model on: cpu, cuda (= cuda:0) or cuda:N. Default: the run config's
    /// `train.device` (which this overrides) for commands that read a config (train, pretrain,
    /// finetune, bench model/translate/generate), else cpu. Checkpoints load onto any device,
    /// whatever they trained on. CUDA needs a build with `--features cuda`; a build without it
    /// refuses cuda before reading or writing anything.
    #[arg(long = "device", value_name = "DEVICE", value_parser = device_name)]
    pub name: Option<String>,
}

/// Checks `--device`'s value at parsing time (without opening the device).
fn device_name(s: &str) -> Result<String, String> {
    seqlab_nn::device::check_device_name(s)
        .map(|_| s.trim().to_string())
        .map_err(|e| e.to_string())
}

impl DeviceArg {
    /// Opens the device (cpu when the flag is absent); the error names `--device`.
    pub fn open(&self) -> Result<candle_core::Device> {
        seqlab_nn::parse_device(self.name.as_deref().unwrap_or("cpu")).map_err(|e| anyhow::anyhow!("--device: {e}"))
    }

    /// Refuses a device this build cannot open (cuda without the `cuda` feature) without
    /// opening one: the commands that read a run config call this before anything else, so
    /// the error names `--device` and nothing was read or written.
    pub fn check_available(&self) -> Result<()> {
        if let Some(n) = self.name.as_deref() {
            seqlab_nn::device::check_available(n).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
        }
        Ok(())
    }

    /// The flag as a `train.device=...` override of a run config (none when absent).
    pub fn override_key(&self) -> Option<String> {
        self.name.as_ref().map(|d| format!("train.device={d:?}"))
    }
}

impl RunFlags {
    /// The flags as `key=value` overrides, `--set` ones first.
    pub fn overrides(&self) -> Vec<String> {
        let mut sets = self.set.clone();
        if let Some(d) = &self.run_dir {
            sets.push(format!("run_dir={:?}", d.display().to_string()));
        }
        if let Some(n) = self.max_steps {
            sets.push(format!("train.max_steps={n}"));
        }
        if let Some(m) = self.max_minutes {
            sets.push(format!("train.max_minutes={m:?}"));
        }
        if let Some(m) = self.max_cpu_minutes {
            sets.push(format!("train.max_cpu_minutes={m:?}"));
        }
        if let Some(s) = self.seed {
            sets.push(format!("train.seed={s}"));
        }
        sets.extend(self.device.override_key());
        if self.no_progress || !std::io::stderr().is_terminal() {
            sets.push("train.progress=false".into());
        }
        sets
    }
}

/// `seqlab train --config F`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML run configuration (presets in `configs/`); its `task` key picks the task.
    #[arg(long, short)]
    pub config: PathBuf,
    #[command(flatten)]
    pub run: RunFlags,
}

/// `seqlab eval --checkpoint RUN`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder, or a run folder (its best checkpoint, else its latest).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Which configured split to evaluate (default: test when the run's config has test
    /// data, else valid).
    #[arg(long, value_enum)]
    pub split: Option<SplitArg>,
    /// Evaluate this file instead of the configured split (default: none).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A split on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SplitArg {
    Valid,
    Test,
}

/// Temperature, top-k and top-p, with one meaning in every command that samples
/// ([`seqlab_nn::sampling`]).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 = greedy (default: 0.8 for `generate`, 1.0 for `translate`).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample among the k most likely tokens only; 0 = no top-k filter (default: no filter).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p (nucleus), in
    /// (0, 1]; 1 = no nucleus filter.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler settings, with this command's default temperature.
    pub fn config(&self, default_temperature: f64) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature.unwrap_or(default_temperature),
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

/// `seqlab generate --checkpoint RUN`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A language-model checkpoint folder, or its run folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Text to continue (default: a newline).
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    /// Most tokens to generate (stops earlier at end of text).
    #[arg(long, default_value_t = 300)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `seqlab plot RUN...` or `seqlab plot positional-encoding`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// `metrics.jsonl` files (or run folders); one line per file and split. The single word
    /// `positional-encoding` draws the sinusoidal table as a heat map instead.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output picture (.png or .svg).
    #[arg(long, short, default_value = "loss.png")]
    pub output: PathBuf,
    /// Metric to draw (the y axis), e.g. `loss`, `bpc`, `ppl`.
    #[arg(long, default_value = "loss")]
    pub key: String,
    /// Record field for the x axis, e.g. `step` or `cpu_minutes` (to compare runs of
    /// different speed by CPU time spent). Default `step`.
    #[arg(long = "x", default_value = "step")]
    pub x_key: String,
    /// Linear instead of logarithmic y axis (default: logarithmic).
    #[arg(long)]
    pub linear: bool,
    /// `seqlab plot positional-encoding`: model width of the sinusoidal table.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// `seqlab plot positional-encoding`: positions drawn.
    #[arg(long, default_value_t = 100)]
    pub max_len: usize,
}

/// Trains (or with `--check` only validates) the run of `config`; `expect_task` is set by the
/// single-task aliases (`pretrain`, `finetune`), `extra_sets` are their own overrides.
pub fn run_training(config: &Path, run: &RunFlags, expect_task: Option<&str>, extra_sets: Vec<String>) -> Result<()> {
    run.device.check_available()?;
    let mut overrides = run.overrides();
    overrides.extend(extra_sets);
    let reg = registry();
    if run.check {
        let name = reg.check_file(config, &overrides, expect_task)?;
        println!("{}: a valid `{name}` config", config.display());
        return Ok(());
    }
    let req = TrainRequest {
        config: config.to_path_buf(),
        overrides,
        resume: run.resume,
        expect_task: expect_task.map(str::to_string),
    };
    let t0 = std::time::Instant::now();
    let out = reg.train(&req)?;
    // In a data-parallel job (mpirun), rank 0 speaks for the run.
    if seqlab_train::dist::world().rank() == 0 {
        print_outcome(&out, t0.elapsed().as_secs_f64());
    }
    if out.summary.reason == seqlab_train::StopReason::Interrupted {
        // As a shell reports a Ctrl-C death, though the run ended cleanly with a checkpoint.
        std::process::exit(130);
    }
    Ok(())
}

fn print_outcome(out: &RunOutcome, secs: f64) {
    if let Some(s) = out.resumed_from {
        eprintln!("resumed from step {s}");
    }
    let s = &out.summary;
    println!(
        "trained {} steps in {:.1} min ({:?}); run folder {}",
        s.steps,
        secs / 60.0,
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
        let m: Vec<String> = s.last_eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        println!("validation: {}", m.join("  "));
    }
    if let Some(r) = &out.test_report {
        println!(
            "best checkpoint {} on the {} data (also in {}):\n{}",
            r.checkpoint.display(),
            r.split.name(),
            out.run_dir.join("test_report.json").display(),
            r.report.text
        );
    }
    if !out.guide.is_empty() {
        println!("how to read this: {}", out.guide);
    }
    if let Some(c) = &out.curves {
        println!("curves: {}", c.display());
    }
}

/// `seqlab train`.
pub fn train(a: TrainArgs) -> Result<()> {
    run_training(&a.config, &a.run, None, Vec::new())
}

/// `seqlab eval`: any task's checkpoint, through the registry.
pub fn eval(a: EvalArgs) -> Result<()> {
    let loaded = registry().load_on(&a.checkpoint, &a.device.open()?)?;
    let split = match a.split {
        Some(SplitArg::Valid) => Split::Valid,
        Some(SplitArg::Test) => Split::Test,
        None => loaded.default_split.unwrap_or(Split::Test),
    };
    let r = loaded.task.report_on(split, a.data.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.json)?);
    } else {
        println!("{}", r.text);
    }
    Ok(())
}

/// `seqlab generate`.
pub fn generate(a: GenerateArgs) -> Result<()> {
    let loaded = seqlab_train::load_on::<LmTask>(&a.checkpoint, &a.device.open()?)?;
    let g = GenerateConfig {
        max_tokens: a.max_tokens,
        sampling: a.sampling.config(seqlab_tasks::lm::DEFAULT_TEMPERATURE),
        seed: a.sampling.seed,
    };
    println!("{}", loaded.task.generate(&a.prompt, &g)?);
    Ok(())
}

/// Axis description of a record field, spelled out for the trainer's CPU time.
fn axis_label(key: &str) -> String {
    match key {
        "cpu_minutes" => "CPU minutes (cpu_minutes)".into(),
        k => k.into(),
    }
}

/// `seqlab plot`.
pub fn plot(a: PlotArgs) -> Result<()> {
    if a.inputs.len() == 1 && a.inputs[0].as_os_str() == "positional-encoding" && !a.inputs[0].exists() {
        seqlab_mt::plots::plot_positional_encoding(&a.output, a.d_model, a.max_len)?;
        println!("wrote {}", a.output.display());
        return Ok(());
    }
    let files: Vec<PathBuf> = a
        .inputs
        .iter()
        .map(|p| if p.is_dir() { p.join("metrics.jsonl") } else { p.clone() })
        .collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let series = seqlab_train::plot::series_from_logs_against(&refs, &a.x_key, &a.key)?;
    let title = match a.x_key.as_str() {
        "step" => a.key.clone(),
        x => format!("{} vs {x}", a.key),
    };
    seqlab_train::plot::line_chart(&a.output, &title, &axis_label(&a.x_key), &a.key, &series, !a.linear)
        .with_context(|| format!("drawing {}", a.output.display()))?;
    println!("wrote {}", a.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_become_overrides() {
        let f = RunFlags {
            max_cpu_minutes: Some(30.0),
            run_dir: Some("r d".into()),
            no_progress: true,
            ..Default::default()
        };
        assert_eq!(
            f.overrides(),
            vec!["run_dir=\"r d\"", "train.max_cpu_minutes=30.0", "train.progress=false"]
        );
    }
}
