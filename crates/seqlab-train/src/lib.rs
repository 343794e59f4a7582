//! seqlab's training engine. A run is one thing, owned here: a [`Task`] (data + model, from
//! a task crate) trained by the one [`run`] path — prepare the run folder, build the task and
//! the optimizer (one `[optim]` schema, one `[schedule]`), resume, run the [`Trainer`] loop
//! (atomic checkpoints that resume exactly, JSON-lines metrics), draw `loss.png`, write
//! `test_report.json` from the best checkpoint — and loaded back by the one loader
//! ([`run::load`], or [`Registry::load`] for any task).
//!
//! seqlab-train depends on no task crate: the `seqlab` binary builds a [`Registry`] from each
//! task crate's `register` function and dispatches on the config's `task = "..."` key.
//!
//! # Adding a task
//!
//! 1. In your crate, define the task's own config (every key but the engine's `task`,
//!    `run_dir`, `[optim]`, `[schedule]`, `[train]`; `#[serde(deny_unknown_fields)]`, defaults
//!    documented), and a struct holding its data and model.
//! 2. Implement [`TrainTask`] for it (batches per epoch, the loss of batch `index` of `epoch`
//!    as a pure function of (seed, epoch, index), validation metrics, extra checkpoint files
//!    such as the tokenizer) and [`Task`] (`type Config`, `NAME` — the `task` key —, `ABOUT`,
//!    `build`, `final_split`, `report`, `config_keys` (a key table beside each config struct,
//!    see [`keys`]); optionally `default_optim`, `default_schedule`,
//!    `validate`, `guide`).
//! 3. Add one line to your crate's `register(r: &mut Registry)`: `r.add::<MyTask>();` (the
//!    `seqlab` binary already calls `register` of seqlab-tasks, seqlab-mt and seqlab-bert;
//!    a new crate adds its call in `seqlab-cli/src/main.rs`, `registry()`).
//! 4. Add a preset in `configs/` (the registry test loads every preset) and a tiny-run test.
//!
//! `seqlab train --config F`, `seqlab eval --checkpoint RUN`, `loss.png`, `test_report.json`
//! and resume then work for the new task with no other change.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod interrupt;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod parallel;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod task;
pub mod trainer;

pub use config::{LossConfig, OptimConfig, OptimName, RunConfig, RunSettings};
pub use lock::RunLock;
pub use run::{load, load_on, open_device, Loaded, RunOutcome};
pub use schedule::Schedule;
pub use seqlab_dist as dist;
pub use task::{AnyTask, BuildFrom, Purpose, Registry, Report, Split, Task, TrainRequest};
pub use trainer::{LoopConfig, LossTerm, RunSummary, Shard, ShardLoss, StopReason, TrainTask, Trainer};
