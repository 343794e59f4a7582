//! The training loop: short, and separate from the models.
//!
//! A [`TrainTask`] owns the model and the data and knows how to compute a loss for one
//! micro-batch and how to evaluate; the [`Trainer`] owns the optimizer, the schedule, the
//! step counter, checkpoints and logs. Batch `index` of `epoch` must be a pure function of
//! (seed, epoch, index) so that a resumed run sees exactly the batches the uninterrupted run
//! would have seen.

use crate::checkpoint;
use crate::metrics::MetricsLog;
use crate::schedule::Schedule;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use seqlab_nn::optim::{Optimizer, OptimizerState};
use seqlab_nn::{RngState, SeqRng, VarStore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Loop settings (the `[train]` table of a config file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimizer updates to run in total.
    pub max_steps: u64,
    /// Stop (with a checkpoint) after this much wall time.
    pub max_minutes: Option<f64>,
    /// Stop (with a checkpoint) after this much CPU time of the process, summed over all its
    /// threads and over resumed segments: a budget that other jobs on the machine cannot eat.
    pub max_cpu_minutes: Option<f64>,
    /// Micro-batches whose gradients are summed into one update.
    pub accum_steps: usize,
    /// Global gradient-norm clipping (`clip_grad_norm_`); `None` disables it.
    pub clip_norm: Option<f64>,
    /// Evaluate and checkpoint every this many updates.
    pub eval_every: u64,
    /// Log the mean training loss over this many updates (must divide `eval_every`).
    pub log_every: u64,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<u64>,
    /// `step-*` checkpoints to keep besides `best`.
    pub keep_checkpoints: usize,
    /// Seed of weights, dropout and data order.
    pub seed: u64,
    /// Show a progress bar (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_steps: 1000,
            max_minutes: None,
            max_cpu_minutes: None,
            accum_steps: 1,
            clip_norm: Some(1.0),
            eval_every: 200,
            log_every: 10,
            patience: None,
            keep_checkpoints: 2,
            seed: 42,
            progress: true,
        }
    }
}

impl LoopConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.max_steps > 0, "train.max_steps must be > 0");
        anyhow::ensure!(self.accum_steps > 0, "train.accum_steps must be > 0");
        anyhow::ensure!(
            self.eval_every > 0 && self.log_every > 0,
            "train.eval_every and train.log_every must be > 0"
        );
        anyhow::ensure!(
            self.eval_every % self.log_every == 0,
            "train.log_every ({}) must divide train.eval_every ({}) so that a resumed run logs the same windows",
            self.log_every,
            self.eval_every
        );
        if let Some(c) = self.clip_norm {
            anyhow::ensure!(c > 0.0, "train.clip_norm must be > 0, got {c}");
        }
        Ok(())
    }
}

/// A model plus its data, as the loop sees it.
pub trait TrainTask {
    /// Micro-batches in one epoch (at least 1).
    fn batches_per_epoch(&self) -> usize;
    /// Mean loss of micro-batch `index` of `epoch` in training mode, and how many tokens (or
    /// examples) it covers, for throughput.
    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)>;
    /// Validation metrics in evaluation mode; must contain the selection metric.
    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>>;
    /// The validation metric that picks the best checkpoint, and whether lower is better.
    fn selection(&self) -> (String, bool) {
        ("loss".to_string(), true)
    }
    /// Extra files stored in every checkpoint (tokenizer, task description).
    fn write_extra(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Position of the run; stored in `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    pub step: u64,
    pub epoch: u64,
    pub index: usize,
    pub best: Option<f64>,
    pub evals_since_best: u64,
    /// The model's dropout RNG.
    pub rng: RngState,
    pub tokens: u64,
    /// CPU seconds spent by the run so far (all segments).
    #[serde(default)]
    pub cpu_seconds: f64,
}

/// CPU time of this process (user + system, all threads), where the OS tells it.
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a complete `rusage` into the pointer it is given.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
        if !ok {
            return None;
        }
        let ru = unsafe { ru.assume_init() };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Some(tv(ru.ru_utime) + tv(ru.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    MaxSteps,
    TimeLimit,
    EarlyStopping,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: u64,
    pub reason: StopReason,
    pub last_eval: BTreeMap<String, f64>,
    pub best: Option<f64>,
    pub train_losses: Vec<(u64, f64)>,
}

pub struct Trainer {
    pub cfg: LoopConfig,
    pub vs: VarStore,
    pub opt: Box<dyn Optimizer>,
    pub schedule: Schedule,
    pub run_dir: PathBuf,
    /// The full run configuration, stored with each checkpoint.
    pub run_config: Value,
    pub state: LoopState,
}

fn ctx<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Adds `b`'s gradients into `a` for the given variables.
fn accumulate(a: &mut GradStore, b: GradStore, vars: &[candle_core::Var]) -> Result<()> {
    for v in vars {
        if let Some(gb) = b.get(v) {
            let sum = match a.get(v) {
                Some(ga) => ctx(ga + gb)?,
                None => gb.clone(),
            };
            a.insert(v, sum);
        }
    }
    Ok(())
}

impl Trainer {
    pub fn new(
        cfg: LoopConfig,
        vs: VarStore,
        opt: Box<dyn Optimizer>,
        schedule: Schedule,
        run_dir: &Path,
        run_config: Value,
    ) -> Result<Self> {
        cfg.validate()?;
        schedule.validate()?;
        let rng = vs.rng().lock().unwrap().state();
        let state = LoopState {
            step: 0,
            epoch: 0,
            index: 0,
            best: None,
            evals_since_best: 0,
            rng,
            tokens: 0,
            cpu_seconds: 0.0,
        };
        Ok(Self {
            cfg,
            vs,
            opt,
            schedule,
            run_dir: run_dir.to_path_buf(),
            run_config,
            state,
        })
    }

    pub fn checkpoint_root(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.run_dir.join("metrics.jsonl")
    }

    /// Loads the newest checkpoint of the run folder, if there is one; returns its step.
    pub fn resume(&mut self) -> Result<Option<u64>> {
        let Some(dir) = checkpoint::latest(&self.checkpoint_root())? else {
            return Ok(None);
        };
        self.load_checkpoint(&dir)?;
        MetricsLog::truncate_after(&self.metrics_path(), self.state.step)?;
        Ok(Some(self.state.step))
    }

    /// Restores model, optimizer, RNG and loop position from a checkpoint folder.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        ctx(self.vs.load_safetensors(dir.join("model.safetensors"), true))?;
        let st = ctx(OptimizerState::load_safetensors(dir.join("optimizer.safetensors")))?;
        ctx(self.opt.load_state(&st))?;
        let f = dir.join("trainer.json");
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", f.display()))?;
        self.state =
            serde_json::from_value(v["state"].clone()).with_context(|| format!("{}: bad `state`", f.display()))?;
        *self.vs.rng().lock().unwrap() = ctx(SeqRng::from_state(&self.state.rng))?;
        Ok(())
    }

    fn save_checkpoint(&mut self, task: &dyn TrainTask, name: &str) -> Result<PathBuf> {
        self.state.rng = self.vs.rng().lock().unwrap().state();
        let st = ctx(self.opt.state_dict())?;
        let trainer_json =
            json!({ "state": self.state, "config": self.run_config, "seqlab_version": env!("CARGO_PKG_VERSION") });
        let vs = self.vs.clone();
        checkpoint::save_dir(&self.checkpoint_root(), name, |d| {
            ctx(vs.save_safetensors(d.join("model.safetensors")))?;
            ctx(st.save_safetensors(d.join("optimizer.safetensors")))?;
            std::fs::write(d.join("trainer.json"), serde_json::to_string_pretty(&trainer_json)?)?;
            task.write_extra(d)
        })
    }

    /// Evaluates, logs, writes the step checkpoint (and `best/` when the selection metric
    /// improved) and prunes old ones; returns the metrics.
    fn evaluate_and_save(
        &mut self,
        task: &mut dyn TrainTask,
        log: &mut MetricsLog,
        bar: &ProgressBar,
    ) -> Result<BTreeMap<String, f64>> {
        let (sel_key, lower_better) = task.selection();
        let metrics = task.evaluate()?;
        let Some(&value) = metrics.get(&sel_key) else {
            bail!("evaluation returned no `{sel_key}` metric");
        };
        let mut rec = json!({"step": self.state.step, "split": "valid", "cpu_minutes": self.state.cpu_seconds / 60.0});
        for (k, v) in &metrics {
            rec[k] = json!(v);
        }
        log.log(&rec)?;
        let line = format!(
            "step {:>7}  valid {}",
            self.state.step,
            metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        // A hidden bar drops its println: without a bar, report on stderr directly.
        if self.cfg.progress {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
        let improved = match self.state.best {
            None => true,
            Some(b) => (lower_better && value < b) || (!lower_better && value > b),
        };
        if improved {
            self.state.best = Some(value);
            self.state.evals_since_best = 0;
        } else {
            self.state.evals_since_best += 1;
        }
        let name = checkpoint::step_name(self.state.step);
        self.save_checkpoint(task, &name)?;
        if improved {
            self.save_checkpoint(task, "best")?;
        }
        checkpoint::set_latest(&self.checkpoint_root(), &name)?;
        checkpoint::prune(&self.checkpoint_root(), self.cfg.keep_checkpoints)?;
        Ok(metrics)
    }

    /// Runs until `max_steps`, the time limit or early stopping. Each evaluation writes a
    /// checkpoint (and `best/` when the selection metric improved). A non-finite loss stops
    /// the run with an error; the last good checkpoint stays as it was.
    pub fn run(&mut self, task: &mut dyn TrainTask) -> Result<RunSummary> {
        let per_epoch = task.batches_per_epoch();
        anyhow::ensure!(per_epoch > 0, "the training data gives no batches");
        let vars: Vec<candle_core::Var> = self.vs.trainable().into_iter().map(|(_, v)| v).collect();
        let mut log = MetricsLog::open(&self.metrics_path())?;
        let bar = if self.cfg.progress {
            let b = ProgressBar::new(self.cfg.max_steps);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap(),
            );
            b.set_position(self.state.step);
            b
        } else {
            ProgressBar::hidden()
        };
        let start = Instant::now();
        let (cpu_base, cpu_start) = (self.state.cpu_seconds, process_cpu_seconds());
        let cpu_now = |wall: f64| cpu_base + cpu_start.and_then(|s| Some(process_cpu_seconds()? - s)).unwrap_or(wall);
        let mut window_loss = 0.0;
        // A resumed run may start inside a logging window: average over the steps it ran.
        let mut window_steps = 0u64;
        let mut window_tokens = 0usize;
        let mut window_start = Instant::now();
        let mut train_losses = Vec::new();
        let mut last_eval = BTreeMap::new();
        let reason = loop {
            if self.state.step >= self.cfg.max_steps {
                break StopReason::MaxSteps;
            }
            self.state.cpu_seconds = cpu_now(start.elapsed().as_secs_f64());
            let wall_out = self
                .cfg
                .max_minutes
                .is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0);
            let cpu_out = self
                .cfg
                .max_cpu_minutes
                .is_some_and(|m| self.state.cpu_seconds > m * 60.0);
            if wall_out || cpu_out {
                // The steps since the last evaluation count too: evaluate them (which may
                // make them the best checkpoint) rather than only saving.
                let evaluated = self.state.step % self.cfg.eval_every == 0;
                if self.state.step > 0 && !evaluated {
                    last_eval = self.evaluate_and_save(task, &mut log, &bar)?;
                } else {
                    let name = checkpoint::step_name(self.state.step);
                    self.save_checkpoint(task, &name)?;
                    checkpoint::set_latest(&self.checkpoint_root(), &name)?;
                }
                break StopReason::TimeLimit;
            }
            let lr = self.schedule.lr(self.state.step + 1);
            self.opt.set_lr(lr);
            let mut grads: Option<GradStore> = None;
            let mut step_loss = 0.0;
            for _ in 0..self.cfg.accum_steps {
                let (loss, n) = task.train_loss(self.state.epoch, self.state.index)?;
                self.state.index += 1;
                if self.state.index >= per_epoch {
                    self.state.index = 0;
                    self.state.epoch += 1;
                }
                let lv = ctx(loss
                    .to_dtype(candle_core::DType::F64)
                    .and_then(|l| l.to_scalar::<f64>()))?;
                if !lv.is_finite() {
                    bar.abandon();
                    let last = checkpoint::latest(&self.checkpoint_root())?
                        .map(|p| format!("the last good checkpoint is {}", p.display()))
                        .unwrap_or_else(|| "no checkpoint was written yet".to_string());
                    bail!(
                        "training loss became {lv} at step {} (lr {lr:.3e}); stopped. {last}. Try a lower learning rate or gradient clipping.",
                        self.state.step + 1
                    );
                }
                step_loss += lv / self.cfg.accum_steps as f64;
                window_tokens += n;
                let g = ctx((loss / self.cfg.accum_steps as f64).and_then(|l| l.backward()))?;
                match grads.as_mut() {
                    None => grads = Some(g),
                    Some(acc) => accumulate(acc, g, &vars)?,
                }
            }
            let mut grads = grads.expect("accum_steps > 0");
            let grad_norm = match self.cfg.clip_norm {
                Some(c) => Some(ctx(seqlab_nn::clip::clip_grad_norm(&mut grads, vars.iter(), c))?),
                None => None,
            };
            ctx(self.opt.step(&grads))?;
            self.state.step += 1;
            self.state.tokens += window_tokens as u64;
            window_loss += step_loss;
            window_steps += 1;
            train_losses.push((self.state.step, step_loss));
            bar.set_position(self.state.step);
            if self.state.step % self.cfg.log_every == 0 {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let mean = window_loss / window_steps.max(1) as f64;
                let tps = window_tokens as f64 / secs;
                bar.set_message(format!("loss {mean:.4} lr {lr:.2e} {tps:.0} tok/s"));
                let cpu_min = cpu_now(start.elapsed().as_secs_f64()) / 60.0;
                let mut rec = json!({"step": self.state.step, "split": "train", "loss": mean, "lr": lr, "tokens_per_s": tps, "epoch": self.state.epoch, "cpu_minutes": cpu_min});
                if let Some(n) = grad_norm {
                    rec["grad_norm"] = json!(n);
                }
                log.log(&rec)?;
                window_loss = 0.0;
                window_steps = 0;
                window_tokens = 0;
                window_start = Instant::now();
            }
            if self.state.step % self.cfg.eval_every == 0 || self.state.step == self.cfg.max_steps {
                self.state.cpu_seconds = cpu_now(start.elapsed().as_secs_f64());
                last_eval = self.evaluate_and_save(task, &mut log, &bar)?;
                if let Some(p) = self.cfg.patience {
                    if self.state.evals_since_best >= p {
                        break StopReason::EarlyStopping;
                    }
                }
            }
        };
        bar.finish_and_clear();
        Ok(RunSummary {
            steps: self.state.step,
            reason,
            last_eval,
            best: self.state.best,
            train_losses,
        })
    }
}
