//! Throughput measurement for `seqlab bench` (and `bench/run.py`, which runs it against the
//! PyTorch peers in `bench/`): the one timing helper ([`time_units`]), and whole-model
//! training steps timed through the run engine's own step ([`Trainer::step`]) on a task
//! built exactly as `seqlab train` builds it ([`bench_task`]).
//!
//! What is timed is only the steps: building the task (reading data, training a tokenizer)
//! and the warm-up steps are outside the timed section. CPU time is the process's (all
//! threads, user + system, `getrusage(RUSAGE_SELF)`) over the same section, so a caller can
//! report CPU-seconds per token as well as tokens/s.

use crate::config::RunConfig;
use crate::run::{build_optimizer, build_task, check_input_files, schedule};
use crate::task::Task;
use crate::trainer::{process_cpu_seconds, Trainer};
use anyhow::Result;
use seqlab_nn::VarStore;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The timed section of a benchmark: how many calls, how many units (tokens, sentences...)
/// they processed, and the wall and CPU seconds they took.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// Timed calls (after the warm-up ones).
    pub steps: usize,
    /// Units the timed calls reported (tokens for training steps).
    pub units: u64,
    /// Wall seconds of the timed calls.
    pub seconds: f64,
    /// CPU seconds of this process (all threads) during the timed calls; the wall seconds
    /// where the OS does not tell.
    pub cpu_seconds: f64,
}

impl Timing {
    /// Units per wall second.
    pub fn units_per_s(&self) -> f64 {
        self.units as f64 / self.seconds.max(1e-12)
    }
}

/// Calls `f` `warmup` times untimed, then `steps` times timed; `f` returns the units (tokens)
/// it processed. Rejects `steps = 0`.
pub fn time_units(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<usize>) -> Result<Timing> {
    anyhow::ensure!(steps > 0, "the number of timed steps must be > 0");
    for _ in 0..warmup {
        f()?;
    }
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    let mut units = 0u64;
    for _ in 0..steps {
        units += f()? as u64;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = match (cpu0, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => seconds,
    };
    Ok(Timing {
        steps,
        units,
        seconds,
        cpu_seconds,
    })
}

/// What [`bench_task`] times.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Timed optimizer updates (> 0).
    pub steps: usize,
    /// Untimed updates before them (the first ones allocate and warm caches).
    pub warmup: usize,
    /// When set, the task's checkpoint extras (`tokenizer.json`, labels ...) and the whole
    /// resolved run config (`config.json`, defaults filled in) are written into this folder
    /// before timing, for a peer implementation to use the same tokenizer and settings.
    pub export: Option<PathBuf>,
}

/// The result of [`bench_task`].
#[derive(Clone, Debug, Serialize)]
pub struct ModelBench {
    /// The registry key of the task.
    pub task: &'static str,
    /// Trainable parameters.
    pub params: usize,
    /// Micro-batches per epoch of the training data.
    pub batches_per_epoch: usize,
    /// The timed steps; units are the tokens (or examples) the task reports per batch
    /// ([`crate::TrainTask::train_loss`]).
    pub timing: Timing,
}

/// Builds task `T` for training as [`crate::run::train`] does (same data, tokenizer, model,
/// optimizer and schedule; nothing is written to the run folder) and times `spec.steps`
/// optimizer updates through [`Trainer::step`]: forward, backward, clipping, optimizer, with
/// the config's `accum_steps`.
pub fn bench_task<T: Task>(cfg: &RunConfig<T::Config>, spec: &BenchSpec) -> Result<ModelBench> {
    let config_json = cfg.to_json()?;
    check_input_files(&config_json)?;
    let vs = VarStore::new(cfg.run.train.seed, &crate::run::open_device(&cfg.run.train.device)?);
    let mut task = build_task::<T>(cfg, &vs, None)?;
    let schedule = schedule::<T>(cfg);
    let opt = build_optimizer(cfg, &vs, &schedule)?;
    let mut loop_cfg = cfg.run.train.clone();
    loop_cfg.progress = false;
    if let Some(dir) = &spec.export {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        task.write_extra(dir)?;
        seqlab_nn::io::write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&config_json)?.as_bytes(),
        )
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", dir.join("config.json").display()))?;
    }
    let params = vs.trainable().iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let batches_per_epoch = task.batches_per_epoch();
    let vars: Vec<candle_core::Var> = vs.trainable().into_iter().map(|(_, v)| v).collect();
    let mut trainer = Trainer::new(loop_cfg, vs, opt, schedule, &cfg.run_dir(), config_json)?;
    let timing = time_units(spec.warmup, spec.steps, || {
        trainer.step(&mut task, &vars, batches_per_epoch)
    })?;
    Ok(ModelBench {
        task: T::NAME,
        params,
        batches_per_epoch,
        timing,
    })
}

/// Builds task `T` for training from a parsed config without timing anything: an untrained
/// model (for decoding benchmarks) with its data and tokenizer, and its parameters.
pub fn build_untrained<T: Task>(cfg: &RunConfig<T::Config>) -> Result<(T, VarStore)> {
    check_input_files(&cfg.to_json()?)?;
    let vs = VarStore::new(cfg.run.train.seed, &crate::run::open_device(&cfg.run.train.device)?);
    let task = build_task::<T>(cfg, &vs, None)?;
    Ok((task, vs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_units_counts_units_and_skips_warmup() {
        let mut calls = 0;
        let t = time_units(2, 3, || {
            calls += 1;
            Ok(10)
        })
        .unwrap();
        assert_eq!(calls, 5);
        assert_eq!(t.steps, 3);
        assert_eq!(t.units, 30);
        assert!(t.seconds >= 0.0 && t.cpu_seconds >= 0.0);
        assert!(time_units(0, 0, || Ok(1)).is_err());
    }
}
