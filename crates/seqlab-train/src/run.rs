//! The one run path every task goes through, as named steps:
//!
//! 1. checks that write nothing: the run folder's state ([`checkpoint::check_run_dir`]), the
//!    input files ([`check_input_files`]), a resumed config's changes ([`resume_changes`]);
//! 2. [`build_task`] — data and model (tokenizer etc. from the checkpoint when resuming);
//! 3. [`build_optimizer`] — from `[optim]` and the schedule (`[schedule]` or the task's);
//! 4. when resuming, model, optimizer, RNG and loop position from the newest checkpoint;
//!    then [`prepare_run_folder`]: lock the folder, write `config.toml`, and cut
//!    `metrics.jsonl` back to the checkpoint;
//! 5. [`Trainer::run`] — the loop (checkpoints, `metrics.jsonl`);
//! 6. [`draw_curves`] — `loss.png`;
//! 7. [`write_test_report`] — the best checkpoint evaluated on the test data (else the
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
    /// The checkpoint folder evaluated.
    pub checkpoint: PathBuf,
    /// The split it was evaluated on.
    pub split: Split,
    /// What the evaluation said.
    pub report: Report,
}

/// What a training run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The registry key of the task.
    pub task: &'static str,
    /// What the training loop did.
    pub summary: RunSummary,
    /// The run folder (checkpoints, metrics, reports).
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

/// Keys a resumed run may change (`--resume` with an edited config or `--set`): they end or
/// report the run, and change nothing of what it computes up to where it stopped, or (for
/// `train.device`) only where it computes: checkpoints hold CPU tensors (the optimizer state
/// is saved as host copies) and the RNG is a host value, so a run trained on one device
/// resumes on another (the new
/// device's arithmetic may differ from the old one's in the last bits). Any other difference
/// from the checkpoint's config (task, model shape, data files, tokenizer, seed, optimizer,
/// schedule ...) is refused, listing the keys.
pub const RESUME_MAY_CHANGE: &[&str] = &[
    "run_dir",
    "train.max_steps",
    "train.max_minutes",
    "train.max_cpu_minutes",
    "train.patience",
    "train.progress",
    "train.keep_checkpoints",
    "train.device",
];

/// What `resume: applied ...` adds to a device change (a run that moves from one device to
/// another may differ in the last bits from one that stayed).
pub const DEVICE_CHANGE_NOTE: &str =
    "model, optimizer state and RNG continue on the new device; results may differ in the last bits from a run that stayed on one device";

/// Flattens a JSON config into dotted keys (`train.max_steps`) → values.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// The changes of `new` over the config stored in checkpoint `dir`: Ok(the allowed ones, as
/// `key: old → new` lines), or an error listing the ones a resumed run cannot take.
pub fn resume_changes(dir: &Path, new: &serde_json::Value) -> Result<Vec<String>> {
    let old = serde_json::Value::Object(checkpoint::stored_config(dir)?);
    let (mut a, mut b) = (Default::default(), Default::default());
    flatten("", &old, &mut a);
    flatten("", new, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    let null = serde_json::Value::Null;
    for k in keys {
        let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
        if x == y {
            continue;
        }
        let mut line = format!("{k}: {x} → {y}");
        if k == "train.device" {
            line = format!("{line} ({DEVICE_CHANGE_NOTE})");
        }
        if RESUME_MAY_CHANGE.contains(&k.as_str()) {
            allowed.push(line);
        } else {
            refused.push(line);
        }
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "--resume: the config differs from the one of checkpoint {} in keys a resumed run cannot change:\n  {}\nresume with the run's own config (its config.toml), or start a new run; a resumed run may change only {}",
            dir.display(),
            refused.join("\n  "),
            RESUME_MAY_CHANGE.join(", ")
        );
    }
    Ok(allowed)
}

/// Every data file the config names (`data.train`, `data.valid`, `data.test`, `data.corpus`,
/// `pretrained` ...: string values of keys under `data` or named like a file) must be
/// readable before a run starts: a missing validation file would otherwise surface only at
/// the first evaluation. Errors name the config key.
pub fn check_input_files(cfg: &serde_json::Value) -> Result<()> {
    let mut keys = Default::default();
    flatten("", cfg, &mut keys);
    for (k, v) in keys {
        let is_file_key = k.starts_with("data.")
            && ["train", "valid", "test", "corpus"]
                .iter()
                .any(|n| k.ends_with(&format!(".{n}")));
        let Some(p) = v.as_str().filter(|_| is_file_key) else {
            continue;
        };
        if p.is_empty() {
            anyhow::bail!("{k} is empty: give a file path, or leave the key out");
        }
        if let Err(e) = std::fs::File::open(p).and_then(|f| f.metadata()) {
            anyhow::bail!("{k} = {p:?}: cannot read the file: {e}");
        }
        if Path::new(p).is_dir() {
            anyhow::bail!("{k} = {p:?} is a folder, not a file");
        }
    }
    Ok(())
}

/// Trains a run of task `T`: the steps of the module docs, in order. With `resume`, continues
/// from the run folder's newest checkpoint.
///
/// Everything that can fail without writing runs before the run folder is touched: the
/// folder's state (checkpoints present unless resuming, absent when resuming), the input
/// files, the resumed config's changes, building the task and loading the checkpoint. Only
/// then is the folder locked and `config.toml` written. Ctrl-C / SIGTERM stop the run after
/// the current step with a checkpoint ([`crate::interrupt`]).
///
/// Data-parallel (the process is one of several ranks of [`seqlab_dist::world`], started by
/// `mpirun`/`srun`): rank 0 checks the run folder and tells the others which checkpoint to
/// resume from; every rank builds the task and loads that checkpoint; rank 0 alone locks the
/// folder and writes `config.toml`, checkpoints, metrics, `loss.png` and `test_report.json`
/// (the other ranks return an outcome without curves or report).
pub fn train<T: Task>(cfg: &RunConfig<T::Config>, resume_run: bool) -> Result<RunOutcome> {
    let comm = seqlab_dist::world();
    let writer = comm.rank() == 0;
    let run_dir = cfg.run_dir();
    let config_json = cfg.to_json()?;
    let latest = if writer {
        checkpoint::check_run_dir(&run_dir, resume_run)?
    } else {
        None
    };
    let latest = agree_on_latest(&*comm, latest)?;
    check_input_files(&config_json)?;
    let applied = match &latest {
        Some(dir) => resume_changes(dir, &config_json)?,
        None => Vec::new(),
    };
    let vs = VarStore::new(cfg.run.train.seed, &open_device(&cfg.run.train.device)?);
    let mut task = build_task::<T>(cfg, &vs, latest.as_deref())?;
    let schedule = schedule::<T>(cfg);
    let opt = build_optimizer(cfg, &vs, &schedule)?;
    let mut trainer = Trainer::new(cfg.run.train.clone(), vs.clone(), opt, schedule, &run_dir, config_json)?
        .with_collective(comm.clone());
    if let Some(dir) = &latest {
        trainer.load_checkpoint(dir)?;
    }
    if !writer {
        crate::interrupt::install()?;
        let summary = trainer.run(&mut task)?;
        return Ok(RunOutcome {
            task: T::NAME,
            summary,
            run_dir,
            resumed_from: latest.as_ref().map(|_| trainer.state.step),
            curves: None,
            test_report: None,
            guide: task.guide(),
        });
    }
    // Nothing was written so far; from here on the folder is this process's.
    let locked_latest = prepare_run_folder(cfg, resume_run)?;
    anyhow::ensure!(
        locked_latest == latest,
        "{}: another process wrote a checkpoint meanwhile; run again",
        run_dir.display()
    );
    for line in &applied {
        eprintln!("resume: applied {line}");
    }
    let resumed_from = match latest {
        Some(_) => {
            crate::metrics::MetricsLog::truncate_after(&trainer.metrics_path(), trainer.state.step)?;
            Some(trainer.state.step)
        }
        None => None,
    };
    crate::interrupt::install()?;
    let summary = trainer.run(&mut task)?;
    let curves = draw_curves(&run_dir, &trainer.metrics_path())?;
    let test_report = if summary.reason == crate::trainer::StopReason::Interrupted {
        let ck = checkpoint::latest(&trainer.checkpoint_root())?
            .map_or_else(|| "none".to_string(), |p| p.display().to_string());
        eprintln!(
            "interrupted at step {}; checkpoint {ck}; continue with the same command and --resume",
            summary.steps
        );
        None
    } else {
        write_test_report(&task, &vs, cfg)?
    };
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

/// Rank 0's answer to "which checkpoint do we resume from" on every rank (the others do not
/// look at the run folder, which rank 0 is about to lock and write).
fn agree_on_latest(comm: &dyn seqlab_dist::Collective, latest: Option<PathBuf>) -> Result<Option<PathBuf>> {
    if comm.size() == 1 {
        return Ok(latest);
    }
    let mine = latest.map(|p| p.display().to_string()).unwrap_or_default();
    let root = seqlab_dist::broadcast_string(comm, &mine, 0)?;
    Ok((!root.is_empty()).then(|| PathBuf::from(root)))
}

/// A trained model of task `T` loaded from a checkpoint.
pub struct Loaded<T: Task> {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// The run config stored with the checkpoint.
    pub cfg: RunConfig<T::Config>,
    /// The task, with the checkpoint's weights loaded.
    pub task: T,
}

/// Opens a device named as `train.device` / `--device` (`cpu`, `cuda`, `cuda:N`); the error
/// names the key and the flag. In a data-parallel job, `cuda` without an index is the GPU of
/// the process's local rank ([`crate::parallel::rank_device`]).
pub fn open_device(name: &str) -> Result<Device> {
    let name = crate::parallel::rank_device(name, seqlab_dist::local_rank());
    seqlab_nn::parse_device(&name).map_err(|e| anyhow::anyhow!("train.device (--device): {e}"))
}

/// The one checkpoint loader: `path` is a checkpoint folder or a run folder (→ its best
/// checkpoint, else its latest). Errors when the checkpoint belongs to another task. The
/// model is built on the CPU whatever device it trained on (checkpoints hold CPU tensors);
/// [`load_on`] picks the device.
pub fn load<T: Task>(path: &Path) -> Result<Loaded<T>> {
    // CPU by design: the CPU default; `load_on` takes the device.
    load_on(path, &Device::Cpu)
}

/// [`load`] onto `device` (`--device` of the commands that run a model).
pub fn load_on<T: Task>(path: &Path, device: &Device) -> Result<Loaded<T>> {
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
    load_from(&dir, cfg, device)
}

/// Builds task `T` for evaluation on `device` from checkpoint folder `dir` and its parsed
/// config, and loads its weights.
pub(crate) fn load_from<T: Task>(dir: &Path, mut cfg: RunConfig<T::Config>, device: &Device) -> Result<Loaded<T>> {
    // The stored config names the device it trained on; the loaded model lives on `device`.
    cfg.run.train.device = seqlab_nn::device::device_name(device);
    let vs = VarStore::new(cfg.run.train.seed, device);
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
    checkpoint::ensure_finite(&vs, dir)?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        cfg,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint folder whose trainer.json stores `config`.
    fn checkpoint_with(config: serde_json::Value) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("seqlab-resume-changes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("trainer.json"),
            serde_json::json!({ "config": config }).to_string(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn resume_accepts_a_device_change_with_a_note_and_refuses_a_seed_change() {
        let old = serde_json::json!({"task": "lm", "train": {"device": "cuda:1", "seed": 42, "max_steps": 4}});
        let dir = checkpoint_with(old.clone());
        assert!(resume_changes(&dir, &old).unwrap().is_empty());
        let mut moved = old.clone();
        moved["train"]["device"] = "cpu".into();
        moved["train"]["max_steps"] = 6.into();
        let lines = resume_changes(&dir, &moved).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("train.device: \"cuda:1\" → \"cpu\"") && l.contains(DEVICE_CHANGE_NOTE)),
            "{lines:?}"
        );
        moved["train"]["seed"] = 7.into();
        let e = resume_changes(&dir, &moved).unwrap_err().to_string();
        assert!(e.contains("train.seed") && !e.contains("train.device: "), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
