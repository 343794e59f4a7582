//! The one run path every task goes through, as named steps:
//!
//! 1. [`prepare_run_folder`]: refuse a folder with checkpoints unless resuming; write
//!    `config.toml`;
//! 2. [`build_task`]: data and model (tokenizer etc. from the checkpoint when resuming);
//! 3. [`build_optimizer`]: from `[optim]` and the schedule (`[schedule]` or the task's);
//! 4. [`resume`]: model, optimizer, RNG and loop position from the newest checkpoint;
//! 5. [`Trainer::run`]: the loop (checkpoints, `metrics.jsonl`);
//! 6. [`draw_curves`]: `loss.png`;
//! 7. [`write_test_report`]: the best checkpoint evaluated on the test data (else the
//!    validation data) into `test_report.json` (plus any files the task's report adds).
//!
//! [`load`] is the one checkpoint loader: config from `trainer.json`, the task built for
//! evaluation, weights from `model.safetensors`.

use crate::checkpoint;
use crate::config::RunConfig;
use crate::schedule::Schedule;
use crate::task::{parse_config, BuildFrom, Purpose, Report, Split, Task};
use crate::trainer::{RunSummary, Trainer};
use anyhow::{Context, Result};
use candle_core::Device;
use seqlab_nn::optim::Optimizer;
use seqlab_nn::VarStore;
use std::path::{Path, PathBuf};

/// The end-of-run report: which checkpoint, which split, what it said.
#[derive(Clone, Debug)]
pub struct FinalReport {
    pub checkpoint: PathBuf,
    pub split: Split,
    pub report: Report,
}

/// What a training run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The registry key of the task.
    pub task: &'static str,
    pub summary: RunSummary,
    pub run_dir: PathBuf,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// `loss.png`, when the metrics had a loss to draw.
    pub curves: Option<PathBuf>,
    /// The best checkpoint on the test (else validation) data, also in `test_report.json`.
    pub test_report: Option<FinalReport>,
    /// [`Task::guide`].
    pub guide: String,
}

/// The schedule of a run: `[schedule]`, else the task's default.
pub fn schedule<T: Task>(cfg: &RunConfig<T::Config>) -> Schedule {
    cfg.run.schedule.clone().unwrap_or_else(|| T::default_schedule(cfg))
}

/// Step 1: refuses a run folder that holds checkpoints unless `resume`, creates it, writes
/// `config.toml`; returns the newest checkpoint (to resume from).
pub fn prepare_run_folder<C: serde::Serialize>(cfg: &RunConfig<C>, resume: bool) -> Result<Option<PathBuf>> {
    checkpoint::prepare_run_dir(&cfg.run_dir(), resume, &cfg.to_toml()?)
}

/// Step 2: the task, built for training; `latest` (when resuming) supplies its saved files.
pub fn build_task<T: Task>(cfg: &RunConfig<T::Config>, vs: &VarStore, latest: Option<&Path>) -> Result<T> {
    T::build(
        cfg,
        vs,
        BuildFrom {
            checkpoint: latest,
            purpose: Purpose::Train,
        },
    )
}

/// Step 3: the optimizer of `[optim]` over every trainable parameter, at the schedule's
/// step-1 rate.
pub fn build_optimizer<C>(cfg: &RunConfig<C>, vs: &VarStore, schedule: &Schedule) -> Result<Box<dyn Optimizer>> {
    cfg.run.optim.build(vs, schedule.lr(1))
}

/// Step 4: with `resume`, restores the newest checkpoint of the run folder (if any) and
/// returns its step.
pub fn resume(trainer: &mut Trainer, resume: bool) -> Result<Option<u64>> {
    if resume {
        trainer.resume()
    } else {
        Ok(None)
    }
}

/// Step 6: draws the training and validation loss of `metrics.jsonl` into `loss.png`;
/// `None` when the log has no loss yet.
pub fn draw_curves(run_dir: &Path, metrics: &Path) -> Result<Option<PathBuf>> {
    let Ok(series) = crate::plot::series_from_logs(&[metrics], "loss") else {
        return Ok(None);
    };
    let out = run_dir.join("loss.png");
    crate::plot::line_chart(
        &out,
        &format!("{} loss", run_dir.display()),
        "step",
        "loss",
        &series,
        true,
    )?;
    Ok(Some(out))
}

/// Step 7: loads the best checkpoint's weights into `vs` (the task's parameters) and writes
/// the task's report on [`Task::final_split`] to `test_report.json` (with `split` and
/// `checkpoint` added), plus the report's extra files; `None` when the task has no split to
/// report on.
pub fn write_test_report<T: Task>(task: &T, vs: &VarStore, cfg: &RunConfig<T::Config>) -> Result<Option<FinalReport>> {
    let Some(split) = T::final_split(cfg) else {
        return Ok(None);
    };
    let run_dir = cfg.run_dir();
    let best = checkpoint::resolve(&run_dir)?;
    vs.load_safetensors(best.join("model.safetensors"), true)
        .map_err(|e| anyhow::anyhow!("{}: {e}", best.display()))?;
    let mut report = task.report(split, None)?;
    report.json["split"] = serde_json::json!(split.name());
    report.json["checkpoint"] = serde_json::json!(best.display().to_string());
    let write = |name: &str, body: &[u8]| {
        seqlab_nn::io::write_atomic(&run_dir.join(name), body)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", run_dir.join(name).display()))
    };
    write(
        "test_report.json",
        serde_json::to_string_pretty(&report.json)?.as_bytes(),
    )?;
    for (name, body) in &report.files {
        write(name, body.as_bytes())?;
    }
    Ok(Some(FinalReport {
        checkpoint: best,
        split,
        report,
    }))
}

/// Trains a run of task `T`: the steps of the module docs, in order. With `resume`, continues
/// from the run folder's newest checkpoint.
pub fn train<T: Task>(cfg: &RunConfig<T::Config>, resume_run: bool) -> Result<RunOutcome> {
    let run_dir = cfg.run_dir();
    let latest = prepare_run_folder(cfg, resume_run)?;
    let vs = VarStore::new(cfg.run.train.seed, &Device::Cpu);
    let mut task = build_task::<T>(cfg, &vs, latest.as_deref())?;
    let schedule = schedule::<T>(cfg);
    let opt = build_optimizer(cfg, &vs, &schedule)?;
    let mut trainer = Trainer::new(
        cfg.run.train.clone(),
        vs.clone(),
        opt,
        schedule,
        &run_dir,
        cfg.to_json()?,
    )?;
    let resumed_from = resume(&mut trainer, resume_run)?;
    let summary = trainer.run(&mut task)?;
    let curves = draw_curves(&run_dir, &trainer.metrics_path())?;
    let test_report = write_test_report(&task, &vs, cfg)?;
    Ok(RunOutcome {
        task: T::NAME,
        summary,
        run_dir,
        resumed_from,
        curves,
        test_report,
        guide: task.guide(),
    })
}

/// A trained model of task `T` loaded from a checkpoint.
pub struct Loaded<T: Task> {
    /// The checkpoint folder.
    pub dir: PathBuf,
    pub cfg: RunConfig<T::Config>,
    pub task: T,
}

/// The one checkpoint loader: `path` is a checkpoint folder or a run folder (→ its best
/// checkpoint, else its latest). Errors when the checkpoint belongs to another task.
pub fn load<T: Task>(path: &Path) -> Result<Loaded<T>> {
    let dir = checkpoint::resolve(path)?;
    let m = checkpoint::stored_config(&dir)?;
    let source = dir.join("trainer.json").display().to_string();
    match m.get("task").and_then(|t| t.as_str()) {
        Some(t) if t != T::NAME => anyhow::bail!(
            "{}: a checkpoint of task {t:?}, but this needs task {:?} ({})",
            dir.display(),
            T::NAME,
            T::ABOUT
        ),
        None if !T::claims_untagged(&m) => anyhow::bail!(
            "{}: not a checkpoint of task {:?} ({})",
            dir.display(),
            T::NAME,
            T::ABOUT
        ),
        _ => {}
    }
    let cfg = parse_config::<T>(m, &source)?;
    load_from(&dir, cfg)
}

/// Builds task `T` for evaluation from checkpoint folder `dir` and its parsed config, and
/// loads its weights.
pub(crate) fn load_from<T: Task>(dir: &Path, cfg: RunConfig<T::Config>) -> Result<Loaded<T>> {
    let vs = VarStore::new(cfg.run.train.seed, &Device::Cpu);
    let task = T::build(
        &cfg,
        &vs,
        BuildFrom {
            checkpoint: Some(dir),
            purpose: Purpose::Evaluate,
        },
    )?;
    vs.load_safetensors(dir.join("model.safetensors"), true)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
        .context("loading the model weights")?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        cfg,
        task,
    })
}
