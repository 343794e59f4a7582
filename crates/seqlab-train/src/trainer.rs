//! The training loop: short, and separate from the models.
//!
//! A [`TrainTask`] owns the model and the data and knows how to compute a loss for one
//! micro-batch and how to evaluate; the [`Trainer`] owns the optimizer, the schedule, the
//! step counter, checkpoints and logs. Batch `index` of `epoch` must be a pure function of
//! (seed, epoch, index) so that a resumed run sees exactly the batches the uninterrupted run
//! would have seen.

use crate::checkpoint;
use crate::keys::{ConfigKeys, KeyDoc};
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
use std::sync::Arc;
use std::time::Instant;

pub use seqlab_dist::Collective;

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
    /// Where the model trains: `"cpu"`, `"cuda"` (= `cuda:0`; in an MPI job, the GPU of the
    /// process's local rank, [`crate::parallel::rank_device`]) or `"cuda:N"`
    /// ([`seqlab_nn::device`]); checkpoints are written as CPU tensors either way, and a
    /// resumed run may change it.
    pub device: String,
}

/// The `[train]` keys at run time (`seqlab config keys`).
impl ConfigKeys for LoopConfig {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new("max_steps", "optimizer updates to run in total; > 0"),
        KeyDoc::new("max_minutes", "stop (with a checkpoint) after this much wall time, minutes; unset = no limit"),
        KeyDoc::new(
            "max_cpu_minutes",
            "stop (with a checkpoint) after this much CPU time of the process (all threads, summed over resumed segments), minutes; unset = no limit",
        ),
        KeyDoc::new("accum_steps", "micro-batches whose gradients are summed into one update; > 0"),
        KeyDoc::new("clip_norm", "global gradient-norm clipping (clip_grad_norm_), > 0; unset = off"),
        KeyDoc::new("eval_every", "evaluate and checkpoint every this many updates; > 0"),
        KeyDoc::new("log_every", "log the mean training loss over this many updates; must divide eval_every"),
        KeyDoc::new("patience", "stop after this many evaluations without improvement; unset = never"),
        KeyDoc::new("keep_checkpoints", "step-* checkpoints kept besides best"),
        KeyDoc::new("seed", "seed of initial weights, dropout and data order"),
        KeyDoc::new("progress", "show a progress bar (only when stderr is a terminal)"),
        KeyDoc::new(
            "device",
            "where the model trains: cpu, cuda (= cuda:0; in an MPI job each rank's GPU = its local rank) or cuda:N (needs a build with --features cuda); checkpoints stay device-independent and a resumed run may change it",
        ),
    ];
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
            device: "cpu".into(),
        }
    }
}

impl LoopConfig {
    /// Checks the values, naming the bad key: max_steps, accum_steps, eval_every and
    /// log_every > 0, log_every divides eval_every, clip_norm > 0.
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
        for (key, v) in [
            ("max_minutes", self.max_minutes),
            ("max_cpu_minutes", self.max_cpu_minutes),
        ] {
            if let Some(m) = v {
                anyhow::ensure!(
                    m > 0.0 && m.is_finite(),
                    "train.{key} must be a positive number of minutes, got {m}"
                );
            }
        }
        if let Some(c) = self.clip_norm {
            anyhow::ensure!(c > 0.0, "train.clip_norm must be > 0, got {c}");
        }
        seqlab_nn::device::check_device_name(&self.device).map_err(|e| anyhow::anyhow!("train.device: {e}"))?;
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
    /// This rank's part of micro-batch `index` of `epoch` (data-parallel training, see
    /// [`Shard`]), as sums with the counts they are divided by: the engine sums each term's
    /// `sum` and `count` over ranks, and the loss of the whole micro-batch is Σ_terms
    /// Σ_ranks sum / Σ_ranks count — exactly the mean the task takes on one process.
    ///
    /// The default serves one process only (it wraps [`TrainTask::train_loss`]) and refuses
    /// a shard of a job of several ranks.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        anyhow::ensure!(
            shard.size == 1,
            "this task cannot train data-parallel: it does not implement TrainTask::train_loss_shard"
        );
        let (loss, items) = self.train_loss(epoch, index)?;
        Ok(ShardLoss {
            terms: vec![LossTerm { sum: loss, count: 1.0 }],
            items,
        })
    }
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

/// Which part of every micro-batch this process trains on in a data-parallel job: rank
/// `rank` of `size` takes the contiguous rows [`Shard::range`] of the batch the task would
/// build on one process, so the sequence of global batches is the same for any `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, 0-based.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
}

impl Shard {
    /// The whole batch (one process).
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };

    /// The rows of a batch of `n` rows this shard takes: `[rank·n/size, (rank+1)·n/size)`
    /// (empty for some ranks when `n < size`).
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        (self.rank * n / self.size)..((self.rank + 1) * n / self.size)
    }
}

/// One summed part of a loss (see [`TrainTask::train_loss_shard`]): e.g. the summed token
/// cross-entropy of a shard and its number of tokens.
pub struct LossTerm {
    /// Sum of the per-item losses of this shard (a scalar tensor on the autograd graph).
    pub sum: Tensor,
    /// How many items `sum` covers (tokens, examples, masked positions): the global mean
    /// divides by this count summed over ranks.
    pub count: f64,
}

/// A shard's loss: terms whose global means are added (one term for most tasks; BERT
/// pretraining has the masked-LM and next-sentence terms), and the items covered for
/// throughput.
pub struct ShardLoss {
    /// The summed terms.
    pub terms: Vec<LossTerm>,
    /// Tokens (or examples) this shard covers, for throughput.
    pub items: usize,
}

impl ShardLoss {
    /// A one-term loss: `sum` over `count` items (`items` for throughput).
    pub fn sum_over(sum: Tensor, count: usize, items: usize) -> Self {
        Self {
            terms: vec![LossTerm {
                sum,
                count: count as f64,
            }],
            items,
        }
    }

    /// The loss of a shard that got no rows (a batch smaller than the number of ranks):
    /// zero, counting nothing.
    pub fn empty(device: &candle_core::Device) -> Result<Self> {
        Ok(Self::sum_over(
            ctx(Tensor::zeros((), candle_core::DType::F32, device))?,
            0,
            0,
        ))
    }

    /// The mean loss on one process (Σ_terms sum / count) and the items: what
    /// [`TrainTask::train_loss`] returns for tasks that implement the shard form.
    pub fn into_mean(self) -> Result<(Tensor, usize)> {
        let mut total: Option<Tensor> = None;
        for t in self.terms {
            let m = ctx(t.sum / t.count.max(1.0))?;
            total = Some(match total {
                None => m,
                Some(a) => ctx(a + m)?,
            });
        }
        Ok((total.context("a loss with no terms")?, self.items))
    }
}

/// Position of the run; stored in `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// Optimizer updates done.
    pub step: u64,
    /// Epoch of the next micro-batch.
    pub epoch: u64,
    /// Index of the next micro-batch within its epoch.
    pub index: usize,
    /// Best value of the selection metric so far.
    pub best: Option<f64>,
    /// Evaluations since the selection metric last improved (for `patience`).
    pub evals_since_best: u64,
    /// The model's dropout RNG.
    pub rng: RngState,
    /// Tokens (or examples) trained on so far.
    pub tokens: u64,
    /// CPU seconds spent by the run so far (all segments).
    #[serde(default)]
    pub cpu_seconds: f64,
    /// The training-loss log window in progress (sum of step losses, steps, tokens), so that
    /// a run resumed from a checkpoint between two log lines (Ctrl-C) logs the same means as
    /// an uninterrupted one.
    #[serde(default)]
    pub window: (f64, u64, u64),
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
    /// `train.max_steps` reached.
    MaxSteps,
    /// `train.max_minutes` or `train.max_cpu_minutes` spent.
    TimeLimit,
    /// `train.patience` evaluations without improvement.
    EarlyStopping,
    /// A first Ctrl-C or SIGTERM ([`crate::interrupt`]): the current step was finished and
    /// checkpointed.
    Interrupted,
}

/// What [`Trainer::run`] did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer updates done in total (resumed segments included).
    pub steps: u64,
    /// Why training stopped.
    pub reason: StopReason,
    /// Validation metrics of the last evaluation of this segment (empty if none ran).
    pub last_eval: BTreeMap<String, f64>,
    /// Best value of the selection metric.
    pub best: Option<f64>,
    /// (step, mean training loss) of every update of this segment.
    pub train_losses: Vec<(u64, f64)>,
}

/// The training loop's owner: optimizer, schedule, step counter, checkpoints and logs of one
/// run folder. Build it with [`Trainer::new`], optionally [`Trainer::resume`], then
/// [`Trainer::run`] a [`TrainTask`].
pub struct Trainer {
    /// The loop settings (steps, evaluation, checkpoints, ...).
    pub cfg: LoopConfig,
    /// The model's parameters (shared with the task).
    pub vs: VarStore,
    /// The optimizer over `vs`.
    pub opt: Box<dyn Optimizer>,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Where `checkpoints/` and `metrics.jsonl` go.
    pub run_dir: PathBuf,
    /// The full run configuration, stored with each checkpoint.
    pub run_config: Value,
    /// Position of the run, checkpointed.
    pub state: LoopState,
    /// The ranks training together ([`seqlab_dist::SingleProcess`] unless
    /// [`Trainer::with_collective`]): each takes its [`Shard`] of every micro-batch; rank 0
    /// alone writes checkpoints and metrics.
    pub comm: Arc<dyn Collective>,
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
    /// A trainer at step 0; rejects an invalid loop config or schedule.
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
            window: (0.0, 0, 0),
        };
        Ok(Self {
            cfg,
            vs,
            opt,
            schedule,
            run_dir: run_dir.to_path_buf(),
            run_config,
            state,
            comm: Arc::new(seqlab_dist::SingleProcess),
        })
    }

    /// Trains data-parallel with the ranks of `comm` (see [`crate::parallel`]).
    pub fn with_collective(mut self, comm: Arc<dyn Collective>) -> Self {
        self.comm = comm;
        self
    }

    /// Whether this process writes the run's files (checkpoints, metrics): rank 0.
    pub fn is_writer(&self) -> bool {
        self.comm.rank() == 0
    }

    /// `run_dir/checkpoints`.
    pub fn checkpoint_root(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    /// `run_dir/metrics.jsonl`.
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
        let comm = self.comm.clone();
        // Rank 0 alone writes; the other ranks log into a sink.
        let mut log = if self.is_writer() {
            MetricsLog::open(&self.metrics_path())?
        } else {
            MetricsLog::sink()
        };
        crate::parallel::check_replicas(&*comm, &vars, self.state.step)?;
        let bar = self.progress_bar();
        let clock = Clock::start(self.state.cpu_seconds);
        let mut window = LogWindow::resumed(self.state.window);
        let mut train_losses = Vec::new();
        let mut last_eval = BTreeMap::new();
        let reason = loop {
            if self.state.step >= self.cfg.max_steps {
                break StopReason::MaxSteps;
            }
            self.state.cpu_seconds = clock.cpu_seconds();
            // Every decision to stop is agreed by all ranks (each would otherwise wait for
            // the others in the next step's all-reduce).
            if seqlab_dist::any(&*comm, self.out_of_time(&clock))? {
                if let Some(m) = self.stop_for_time(task, &mut log, &bar)? {
                    last_eval = m;
                }
                break StopReason::TimeLimit;
            }
            let step = self.train_step(task, &vars, per_epoch, &bar)?;
            window.add(&step);
            self.state.window = window.saved();
            train_losses.push((self.state.step, step.loss));
            bar.set_position(self.state.step);
            if self.state.step % self.cfg.log_every == 0 {
                self.log_window(&mut window, &step, &clock, &mut log, &bar)?;
                self.state.window = window.saved();
                crate::parallel::check_replicas(&*comm, &vars, self.state.step)?;
            }
            let interrupted = seqlab_dist::any(&*comm, crate::interrupt::stop_requested())?;
            if self.state.step % self.cfg.eval_every == 0 || self.state.step == self.cfg.max_steps {
                self.state.cpu_seconds = clock.cpu_seconds();
                let mut patience_out = false;
                if self.is_writer() {
                    last_eval = self.evaluate_and_save(task, &mut log, &bar)?;
                    patience_out = self.cfg.patience.is_some_and(|p| self.state.evals_since_best >= p);
                }
                if seqlab_dist::any(&*comm, patience_out)? {
                    break StopReason::EarlyStopping;
                }
            } else if interrupted {
                // Polled once per finished step: the step is whole, so the checkpoint is
                // exact (an evaluation step above has just written one).
                if self.is_writer() {
                    bar.suspend(|| eprintln!("interrupt: step {} finished, writing a checkpoint", self.state.step));
                    self.save_latest(task)?;
                }
            }
            if interrupted {
                break StopReason::Interrupted;
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

    /// The progress bar (hidden when `progress` is off), positioned at the current step.
    fn progress_bar(&self) -> ProgressBar {
        if !self.cfg.progress || !self.is_writer() {
            return ProgressBar::hidden();
        }
        let b = ProgressBar::new(self.cfg.max_steps);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} ETA {eta}",
            )
            .expect("a valid template"),
        );
        b.set_position(self.state.step);
        b
    }

    /// Whether `max_minutes` of wall time or `max_cpu_minutes` of CPU time are spent.
    fn out_of_time(&self, clock: &Clock) -> bool {
        let wall_out = self.cfg.max_minutes.is_some_and(|m| clock.wall_seconds() > m * 60.0);
        let cpu_out = self
            .cfg
            .max_cpu_minutes
            .is_some_and(|m| self.state.cpu_seconds > m * 60.0);
        wall_out || cpu_out
    }

    /// Ends a run at its time limit with a checkpoint. The steps since the last evaluation
    /// count too: they are evaluated (which may make them the best checkpoint) rather than
    /// only saved; returns that evaluation's metrics.
    fn stop_for_time(
        &mut self,
        task: &mut dyn TrainTask,
        log: &mut MetricsLog,
        bar: &ProgressBar,
    ) -> Result<Option<BTreeMap<String, f64>>> {
        if !self.is_writer() {
            return Ok(None);
        }
        let evaluated = self.state.step % self.cfg.eval_every == 0;
        if self.state.step > 0 && !evaluated {
            return Ok(Some(self.evaluate_and_save(task, log, bar)?));
        }
        self.save_latest(task)?;
        Ok(None)
    }

    /// Writes the checkpoint of the current step, without evaluating, as the run's latest.
    fn save_latest(&mut self, task: &dyn TrainTask) -> Result<PathBuf> {
        let name = checkpoint::step_name(self.state.step);
        let dir = self.save_checkpoint(task, &name)?;
        checkpoint::set_latest(&self.checkpoint_root(), &name)?;
        Ok(dir)
    }

    /// One optimizer update outside [`Trainer::run`] (for benchmarks, [`crate::bench`]): the
    /// loop's own step — `accum_steps` micro-batches, clipping, the optimizer at the
    /// schedule's rate — without logging, evaluation or checkpoints. `vars` are the trainable
    /// variables and `per_epoch` the task's batches per epoch, computed once by the caller as
    /// the loop does. Returns the tokens (or examples) the update covered.
    pub fn step(&mut self, task: &mut dyn TrainTask, vars: &[candle_core::Var], per_epoch: usize) -> Result<usize> {
        anyhow::ensure!(per_epoch > 0, "the training data gives no batches");
        Ok(self.train_step(task, vars, per_epoch, &ProgressBar::hidden())?.tokens)
    }

    /// One optimizer update: `accum_steps` micro-batches' gradients summed (over ranks too),
    /// clipped, applied at the schedule's rate. Advances the data position and the step
    /// counter.
    ///
    /// Data-parallel, each rank computes its [`Shard`] of every micro-batch; the loss terms'
    /// sums and counts are all-reduced first (a few numbers), each rank backpropagates its
    /// sums divided by the *global* counts, and the gradients are summed over ranks
    /// ([`crate::parallel::all_reduce_grads`]): the update is the one process's update on the
    /// whole micro-batches, token weighting included. Clipping and the optimizer step then
    /// run identically on every rank.
    fn train_step(
        &mut self,
        task: &mut dyn TrainTask,
        vars: &[candle_core::Var],
        per_epoch: usize,
        bar: &ProgressBar,
    ) -> Result<StepStats> {
        let started = Instant::now();
        let mut comm_seconds = 0.0;
        let lr = self.schedule.lr(self.state.step + 1);
        self.opt.set_lr(lr);
        let shard = Shard {
            rank: self.comm.rank(),
            size: self.comm.size(),
        };
        if shard.rank > 0 {
            // Rank 0 keeps the checkpointed stream (a 1-rank run is unchanged); the others
            // draw dropout from (seed, rank, step), which a resumed run finds again.
            *self.vs.rng().lock().unwrap() =
                SeqRng::new(crate::parallel::rank_seed(self.cfg.seed, shard.rank, self.state.step));
        }
        let accum = self.cfg.accum_steps as f64;
        let mut grads: Option<GradStore> = None;
        let (mut loss, mut tokens) = (0.0, 0usize);
        for _ in 0..self.cfg.accum_steps {
            let part = task.train_loss_shard(self.state.epoch, self.state.index, shard)?;
            self.advance_data_position(per_epoch);
            let k = part.terms.len();
            // [sums..., counts..., items] of every rank, in one small all-reduce.
            let mut totals = Vec::with_capacity(2 * k + 1);
            for t in &part.terms {
                totals.push(ctx(t
                    .sum
                    .to_dtype(candle_core::DType::F64)
                    .and_then(|l| l.to_scalar::<f64>()))?);
            }
            totals.extend(part.terms.iter().map(|t| t.count));
            totals.push(part.items as f64);
            let t0 = Instant::now();
            self.comm.all_reduce_sum_f64(&mut totals)?;
            comm_seconds += t0.elapsed().as_secs_f64();
            let (sums, counts) = totals.split_at(k);
            let lv: f64 = (0..k).filter(|&i| counts[i] > 0.0).map(|i| sums[i] / counts[i]).sum();
            if !lv.is_finite() {
                bar.abandon();
                return Err(self.non_finite_loss_error(lv, lr));
            }
            loss += lv / accum;
            tokens += counts[k] as usize;
            let mut objective: Option<Tensor> = None;
            for (i, t) in part.terms.into_iter().enumerate() {
                let w = if counts[i] > 0.0 {
                    1.0 / (counts[i] * accum)
                } else {
                    0.0
                };
                let term = ctx(t.sum * w)?;
                objective = Some(match objective {
                    None => term,
                    Some(o) => ctx(o + term)?,
                });
            }
            let g = ctx(objective.context("the task returned a loss with no terms")?.backward())?;
            match grads.as_mut() {
                None => grads = Some(g),
                Some(acc) => accumulate(acc, g, vars)?,
            }
        }
        let mut grads = grads.expect("accum_steps > 0");
        if shard.size > 1 {
            comm_seconds += crate::parallel::all_reduce_grads(&*self.comm, &mut grads, vars)?;
        }
        let grad_norm = match self.cfg.clip_norm {
            Some(c) => Some(ctx(seqlab_nn::clip::clip_grad_norm(&mut grads, vars.iter(), c))?),
            None => None,
        };
        ctx(self.opt.step(&grads))?;
        self.state.step += 1;
        self.state.tokens += tokens as u64;
        Ok(StepStats {
            loss,
            tokens,
            lr,
            grad_norm,
            seconds: started.elapsed().as_secs_f64(),
            comm_seconds,
        })
    }

    /// Moves to the next micro-batch, wrapping into the next epoch.
    fn advance_data_position(&mut self, per_epoch: usize) {
        self.state.index += 1;
        if self.state.index >= per_epoch {
            self.state.index = 0;
            self.state.epoch += 1;
        }
    }

    fn non_finite_loss_error(&self, loss: f64, lr: f64) -> anyhow::Error {
        let last = match checkpoint::latest(&self.checkpoint_root()) {
            Ok(Some(p)) => format!("the last good checkpoint is {}", p.display()),
            _ => "no checkpoint was written yet".to_string(),
        };
        anyhow::anyhow!(
            "training loss became {loss} at step {} (lr {lr:.3e}); stopped. {last}. Try a lower learning rate or gradient clipping.",
            self.state.step + 1
        )
    }

    /// Logs the mean training loss of the window that just ended (and throughput, the last
    /// step's rate and gradient norm), and starts a new window.
    fn log_window(
        &self,
        window: &mut LogWindow,
        last: &StepStats,
        clock: &Clock,
        log: &mut MetricsLog,
        bar: &ProgressBar,
    ) -> Result<()> {
        let secs = window.start.elapsed().as_secs_f64().max(1e-9);
        let mean = window.loss / window.steps.max(1) as f64;
        let tps = window.tokens as f64 / secs;
        let lr = last.lr;
        bar.set_message(format!("loss {mean:.4} lr {lr:.2e} {tps:.0} tok/s"));
        let cpu_min = clock.cpu_seconds() / 60.0;
        let mut rec = json!({"step": self.state.step, "split": "train", "loss": mean, "lr": lr, "tokens_per_s": tps, "epoch": self.state.epoch, "cpu_minutes": cpu_min});
        if let Some(n) = last.grad_norm {
            rec["grad_norm"] = json!(n);
        }
        if self.comm.size() > 1 {
            // Wall time of the window's steps spent in collectives (all-reduce of loss
            // totals and gradients, waiting for slower ranks included).
            rec["ranks"] = json!(self.comm.size());
            rec["comm_share"] = json!(window.comm_seconds / window.step_seconds.max(1e-12));
        }
        log.log(&rec)?;
        *window = LogWindow::new();
        Ok(())
    }
}

/// What one optimizer update did.
struct StepStats {
    /// Mean loss over the update's micro-batches.
    loss: f64,
    /// Tokens (or examples) the update covered.
    tokens: usize,
    lr: f64,
    /// Gradient norm before clipping, when clipping is on.
    grad_norm: Option<f64>,
    /// Wall seconds of the whole update.
    seconds: f64,
    /// Wall seconds of it spent in collectives.
    comm_seconds: f64,
}

/// The updates since the last training-loss log line. A resumed run may start inside a
/// window: the mean is over the steps it ran.
struct LogWindow {
    loss: f64,
    steps: u64,
    tokens: usize,
    start: Instant,
    step_seconds: f64,
    comm_seconds: f64,
}

impl LogWindow {
    fn new() -> Self {
        Self::resumed((0.0, 0, 0))
    }

    /// A window continuing a checkpointed one ([`LoopState::window`]).
    fn resumed((loss, steps, tokens): (f64, u64, u64)) -> Self {
        Self {
            loss,
            steps,
            tokens: tokens as usize,
            start: Instant::now(),
            step_seconds: 0.0,
            comm_seconds: 0.0,
        }
    }

    /// What [`LoopState::window`] stores.
    fn saved(&self) -> (f64, u64, u64) {
        (self.loss, self.steps, self.tokens as u64)
    }

    fn add(&mut self, s: &StepStats) {
        self.loss += s.loss;
        self.steps += 1;
        self.tokens += s.tokens;
        self.step_seconds += s.seconds;
        self.comm_seconds += s.comm_seconds;
    }
}

/// Wall and CPU time of this run segment; CPU time continues the checkpointed total.
struct Clock {
    start: Instant,
    cpu_base: f64,
    cpu_start: Option<f64>,
}

impl Clock {
    fn start(cpu_base: f64) -> Self {
        Self {
            start: Instant::now(),
            cpu_base,
            cpu_start: process_cpu_seconds(),
        }
    }

    fn wall_seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// CPU seconds of the whole run (all segments); wall time where the OS does not tell.
    fn cpu_seconds(&self) -> f64 {
        let wall = self.wall_seconds();
        self.cpu_base
            + self
                .cpu_start
                .and_then(|s| Some(process_cpu_seconds()? - s))
                .unwrap_or(wall)
    }
}
