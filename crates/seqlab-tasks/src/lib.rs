//! seqlab's tasks, end to end: language modelling, sequence classification and time-series
//! forecasting, trained by the engine in `seqlab-train` from one TOML config.

pub mod classify;
pub mod common;
pub mod config;
pub mod forecast;
pub mod lm;
pub mod models;

use anyhow::Result;
use candle_core::Device;
use common::c;
pub use common::{Report, Split};
use config::{OptimName, RunConfig, TaskKind};
use seqlab_nn::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use seqlab_nn::VarStore;
use seqlab_train::trainer::{RunSummary, TrainTask, Trainer};
use std::path::{Path, PathBuf};

/// One of the tasks, chosen by the config's `task`.
pub enum AnyTask {
    Lm(lm::LmTask),
    Classify(classify::ClsTask),
    Forecast(forecast::ForecastTask),
}

impl AnyTask {
    /// Builds data and model. `saved` is a checkpoint folder whose tokenizer/labels are
    /// reused; without `with_train_data` only what evaluation needs is read.
    pub fn build(cfg: &RunConfig, vs: &VarStore, saved: Option<&Path>, with_train_data: bool) -> Result<Self> {
        Ok(match cfg.task {
            TaskKind::Lm => AnyTask::Lm(lm::LmTask::build(cfg, vs, saved, with_train_data)?),
            TaskKind::Classify => AnyTask::Classify(classify::ClsTask::build(cfg, vs, saved, with_train_data)?),
            TaskKind::Forecast => AnyTask::Forecast(forecast::ForecastTask::build(cfg, vs)?),
        })
    }

    pub fn as_train(&mut self) -> &mut dyn TrainTask {
        match self {
            AnyTask::Lm(t) => t,
            AnyTask::Classify(t) => t,
            AnyTask::Forecast(t) => t,
        }
    }

    pub fn report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        match self {
            AnyTask::Lm(t) => t.report(split, path),
            AnyTask::Classify(t) => t.report(split, path),
            AnyTask::Forecast(t) => t.report(split, path),
        }
    }
}

/// The optimizer named by `[optim]` over every trainable parameter.
pub fn optimizer(cfg: &RunConfig, vs: &VarStore) -> Result<Box<dyn Optimizer>> {
    let o = &cfg.optim;
    let lr = cfg.schedule().lr(1);
    Ok(match o.name {
        OptimName::Adamw => {
            let ac = AdamWConfig {
                lr,
                betas: (o.betas[0], o.betas[1]),
                eps: o.eps,
                weight_decay: o.weight_decay,
            };
            Box::new(c(AdamW::new(vs.trainable(), ac))?)
        }
        OptimName::Sgd => {
            let sc = SgdConfig {
                momentum: o.momentum,
                weight_decay: o.weight_decay,
                ..SgdConfig::new(lr)
            };
            Box::new(c(Sgd::new(vs.trainable(), sc))?)
        }
    })
}

/// How `train` should treat an existing run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to touch a run folder that has checkpoints (no lost work).
    Refuse,
    /// Continue from its newest checkpoint.
    Resume,
}

pub struct TrainOutcome {
    pub summary: RunSummary,
    pub run_dir: PathBuf,
    pub resumed_from: Option<u64>,
}

/// Trains per `cfg`, writing checkpoints, `metrics.jsonl` and `loss.png` under its run folder.
pub fn train(cfg: &RunConfig, existing: Existing) -> Result<TrainOutcome> {
    let run_dir = cfg.run_dir();
    let latest =
        seqlab_train::checkpoint::prepare_run_dir(&run_dir, existing == Existing::Resume, &toml::to_string(cfg)?)?;
    let vs = VarStore::new(cfg.train.seed, &Device::Cpu);
    let mut task = AnyTask::build(cfg, &vs, latest.as_deref(), true)?;
    let opt = optimizer(cfg, &vs)?;
    let mut trainer = Trainer::new(
        cfg.train.clone(),
        vs,
        opt,
        cfg.schedule(),
        &run_dir,
        serde_json::to_value(cfg)?,
    )?;
    let resumed_from = if existing == Existing::Resume {
        trainer.resume()?
    } else {
        None
    };
    let summary = trainer.run(task.as_train())?;
    let metrics = trainer.metrics_path();
    if let Ok(series) = seqlab_train::plot::series_from_logs(&[metrics.as_path()], "loss") {
        seqlab_train::plot::line_chart(
            &run_dir.join("loss.png"),
            &format!("{} loss", run_dir.display()),
            "step",
            "loss",
            &series,
            true,
        )?;
    }
    Ok(TrainOutcome {
        summary,
        run_dir,
        resumed_from,
    })
}

/// A trained model loaded from a checkpoint folder, ready to evaluate or generate.
pub fn load(dir: &Path) -> Result<(RunConfig, AnyTask)> {
    let cfg: RunConfig = seqlab_train::checkpoint::run_config(dir)?;
    let vs = VarStore::new(cfg.train.seed, &Device::Cpu);
    let task = AnyTask::build(&cfg, &vs, Some(dir), false)?;
    c(vs.load_safetensors(dir.join("model.safetensors"), true))?;
    Ok((cfg, task))
}

pub use seqlab_train::checkpoint::resolve as resolve_checkpoint;
