//! What a task is to the engine ([`Task`]), and the [`Registry`] that finds a task by the
//! `task = "..."` key of a config.
//!
//! seqlab-train knows no task: task crates implement [`Task`] and add themselves to a
//! [`Registry`] (`seqlab_tasks::register`, `seqlab_mt::register`, `seqlab_bert::register`);
//! the `seqlab` binary builds the registry from those calls. See the crate docs for the
//! recipe to add a task.

use crate::bench::{BenchSpec, ModelBench};
use crate::config::{split_config, upgrade_legacy_keys, OptimConfig, RunConfig};
use crate::run::{self, RunOutcome};
use crate::schedule::Schedule;
use crate::trainer::TrainTask;
use anyhow::{bail, Context, Result};
use seqlab_nn::VarStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::any::Any;
use std::path::{Path, PathBuf};

/// Which data an evaluation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The validation data (what picks the best checkpoint during training).
    Valid,
    /// The test data.
    Test,
}

impl Split {
    /// `"valid"` or `"test"`, as in config keys and `test_report.json`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }

    /// The usual [`Task::final_split`] of a task with `data.test`/`data.valid` files: test
    /// when there is test data, else valid when there is validation data, else none.
    pub fn test_else_valid(has_test: bool, has_valid: bool) -> Option<Split> {
        match (has_test, has_valid) {
            (true, _) => Some(Split::Test),
            (false, true) => Some(Split::Valid),
            (false, false) => None,
        }
    }

    /// The file a report on this split reads: `given` (a `--data FILE`) if any, else the
    /// configured `data.test` / `data.valid`; the error names the missing key.
    pub fn file(self, given: Option<&Path>, test: Option<&Path>, valid: Option<&Path>) -> Result<PathBuf> {
        let configured = match self {
            Split::Test => test,
            Split::Valid => valid,
        };
        match given.or(configured) {
            Some(p) => Ok(p.to_path_buf()),
            None => bail!("no data.{} in the config; pass --data FILE", self.name()),
        }
    }
}

/// A finished evaluation: text for people, JSON for tools, and optional extra files (name,
/// contents) that the end-of-run report writes into the run folder (e.g. translations).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The report for people.
    pub text: String,
    /// The same results as JSON, for tools.
    pub json: Value,
    /// Extra files (name, contents) to write into the run folder.
    pub files: Vec<(String, String)>,
}

/// Why a task is being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// For training: read the training and validation data.
    Train,
    /// Only to evaluate or use a trained model: read as little data as possible (the
    /// checkpoint holds the tokenizer, labels, scaler...).
    Evaluate,
}

/// Where a task's model comes from when it is built.
#[derive(Clone, Copy, Debug)]
pub struct BuildFrom<'a> {
    /// A checkpoint folder whose extra files (tokenizer, labels...) the task reuses: the run
    /// being resumed, or the checkpoint being evaluated. `None` for a fresh run. The engine
    /// loads the weights afterwards; the task only needs its own files.
    pub checkpoint: Option<&'a Path>,
    /// Why the model is built (training, evaluation, ...).
    pub purpose: Purpose,
}

/// A task the engine can train, evaluate and report on: its config type, how to build it
/// (data and model), how to report on a split or a file. The loop itself talks to it through
/// [`TrainTask`] (batches, loss, validation metrics, checkpoint extras).
pub trait Task: TrainTask + Sized + 'static {
    /// The task's own config: every key of the run config except the engine's (`task`,
    /// `run_dir`, `[optim]`, `[schedule]`, `[train]`). Use `deny_unknown_fields`.
    type Config: Serialize + DeserializeOwned + Clone + 'static;
    /// The registry key: the config's `task = "..."`.
    const NAME: &'static str;
    /// One line on what the task trains, for help and error messages.
    const ABOUT: &'static str;

    /// `[optim]` keys the config leaves out take these values. Default: [`OptimConfig::default`].
    fn default_optim() -> OptimConfig {
        OptimConfig::default()
    }

    /// The schedule when the config has no `[schedule]`. Default: constant `optim.lr`.
    fn default_schedule(cfg: &RunConfig<Self::Config>) -> Schedule {
        Schedule::Constant { lr: cfg.run.optim.lr }
    }

    /// Checks the task's config, naming the bad key (after the engine checked its own keys).
    fn validate(_cfg: &RunConfig<Self::Config>) -> Result<()> {
        Ok(())
    }

    /// True when a config without a `task` key (written by an older seqlab) is this task's.
    fn claims_untagged(_cfg: &Map<String, Value>) -> bool {
        false
    }

    /// Reads the data and builds the model with its parameters in `vs`.
    fn build(cfg: &RunConfig<Self::Config>, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self>;

    /// The split the end-of-run report (`test_report.json`) evaluates: the test data when
    /// the config has some, else the validation data; `None` when there is neither.
    fn final_split(cfg: &RunConfig<Self::Config>) -> Option<Split>;

    /// Evaluates the current weights on `split`, or on the file `path` when given.
    fn report(&self, split: Split, path: Option<&Path>) -> Result<Report>;

    /// The task's own config keys, table by table, with meaning and default
    /// (`seqlab config keys TASK`; build them with [`crate::keys::TableDoc::of`]). The engine's
    /// keys are added by [`crate::keys::task_tables`]; a test of the task crate should call
    /// [`crate::keys::check_documented`] so that the list cannot go stale.
    fn config_keys() -> Result<Vec<crate::keys::TableDoc>>;

    /// One paragraph on how to read this task's numbers, for people new to it.
    fn guide(&self) -> String {
        String::new()
    }
}

/// A built task of any kind, as `seqlab eval` sees it; downcast with [`AnyTask::as_any`] for
/// task-specific use (generation, translation).
pub trait AnyTask {
    /// The registry key of the task.
    fn task_name(&self) -> &'static str;
    /// [`Task::report`].
    fn report_on(&self, split: Split, path: Option<&Path>) -> Result<Report>;
    /// [`Task::guide`].
    fn how_to_read(&self) -> String;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Task> AnyTask for T {
    fn task_name(&self) -> &'static str {
        T::NAME
    }
    fn report_on(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        Task::report(self, split, path)
    }
    fn how_to_read(&self) -> String {
        Task::guide(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A trained model loaded from a checkpoint through the registry.
pub struct LoadedAny {
    /// The checkpoint folder that was loaded.
    pub dir: PathBuf,
    /// The split `seqlab eval` uses by default ([`Task::final_split`]).
    pub default_split: Option<Split>,
    /// The loaded task, behind the object-safe [`AnyTask`].
    pub task: Box<dyn AnyTask>,
}

/// How to parse, train and load one task, with its type erased; made by [`TaskEntry::of`].
pub struct TaskEntry {
    /// The `task = "..."` key.
    pub name: &'static str,
    /// [`Task::ABOUT`].
    pub about: &'static str,
    claims_untagged: fn(&Map<String, Value>) -> bool,
    check: fn(Map<String, Value>, &str) -> Result<()>,
    train: fn(Map<String, Value>, &str, bool) -> Result<RunOutcome>,
    load: fn(&Path, Map<String, Value>, &candle_core::Device) -> Result<LoadedAny>,
    keys: fn() -> Result<Vec<crate::keys::TableDoc>>,
    bench: fn(Map<String, Value>, &str, &BenchSpec) -> Result<ModelBench>,
}

impl TaskEntry {
    /// Every config key of this task, engine keys first ([`crate::keys::task_tables`]).
    pub fn config_keys(&self) -> Result<Vec<crate::keys::TableDoc>> {
        (self.keys)()
    }

    /// The entry of task `T`.
    pub fn of<T: Task>() -> Self {
        Self {
            name: T::NAME,
            about: T::ABOUT,
            claims_untagged: T::claims_untagged,
            keys: crate::keys::task_tables::<T>,
            check: |m, source| parse_config::<T>(m, source).map(|_| ()),
            train: |m, source, resume| run::train::<T>(&parse_config::<T>(m, source)?, resume),
            load: |dir, m, device| {
                let cfg = parse_config::<T>(m, &dir.join("trainer.json").display().to_string())?;
                let loaded = run::load_from::<T>(dir, cfg, device)?;
                Ok(LoadedAny {
                    dir: loaded.dir,
                    default_split: T::final_split(&loaded.cfg),
                    task: Box::new(loaded.task),
                })
            },
            bench: |m, source, spec| crate::bench::bench_task::<T>(&parse_config::<T>(m, source)?, spec),
        }
    }
}

/// Translates old keys, splits engine and task keys, and validates both: a whole config (a
/// file after `--set`, or a checkpoint's stored config) as task `T` sees it. `source` names
/// where it came from in errors.
pub fn parse_config<T: Task>(mut m: Map<String, Value>, source: &str) -> Result<RunConfig<T::Config>> {
    let parse = |m: &mut Map<String, Value>| -> Result<RunConfig<T::Config>> {
        m.insert("task".into(), Value::String(T::NAME.into()));
        for note in upgrade_legacy_keys(m)? {
            eprintln!("note: {source}: {note}");
        }
        let cfg = split_config::<T::Config>(std::mem::take(m), &T::default_optim())?;
        if cfg.run.schedule.is_none() {
            T::default_schedule(&cfg)
                .validate()
                .context("the task's default schedule (set [schedule] explicitly)")?;
        }
        T::validate(&cfg)?;
        Ok(cfg)
    };
    parse(&mut m).with_context(|| format!("{source}: invalid config"))
}

/// The tasks `seqlab` knows, keyed by the config's `task`.
#[derive(Default)]
pub struct Registry {
    entries: Vec<TaskEntry>,
}

impl Registry {
    /// An empty registry; task crates add themselves with their `register` function.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds task `T`. Panics if a task of that name is already registered (a programming
    /// error: two crates claiming one key).
    pub fn add<T: Task>(&mut self) -> &mut Self {
        assert!(
            self.entries.iter().all(|e| e.name != T::NAME),
            "task {:?} registered twice",
            T::NAME
        );
        self.entries.push(TaskEntry::of::<T>());
        self
    }

    /// The registered task names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// The registered entries.
    pub fn entries(&self) -> &[TaskEntry] {
        &self.entries
    }

    /// The entry named `name`; the error lists the known ones.
    pub fn get(&self, name: &str) -> Result<&TaskEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .with_context(|| format!("unknown task {name:?}; known tasks: {}", self.names().join(", ")))
    }

    /// The entry for a whole config: its `task` key; without one, `expect` (a command that
    /// trains one task, like `seqlab pretrain`) or the one task that claims untagged configs
    /// of older seqlab versions. With `expect`, a config of another task is an error.
    fn entry_for(&self, m: &mut Map<String, Value>, expect: Option<&str>, source: &str) -> Result<&TaskEntry> {
        let name = match (m.get("task"), expect) {
            (Some(Value::String(t)), Some(e)) if t != e => {
                bail!("{source}: task = {t:?}, but this command trains task {e:?}; use `seqlab train --config` for other tasks")
            }
            (Some(Value::String(t)), _) => t.clone(),
            (Some(other), _) => bail!("{source}: `task` must be a string, got {other}"),
            (None, Some(e)) => e.to_string(),
            (None, None) => {
                let claims: Vec<&TaskEntry> = self.entries.iter().filter(|e| (e.claims_untagged)(m)).collect();
                match claims.as_slice() {
                    [one] => {
                        eprintln!(
                            "note: {source}: no `task` key; read as task = {:?} (add that line)",
                            one.name
                        );
                        one.name.to_string()
                    }
                    _ => bail!(
                        "{source}: no `task` key; add task = \"...\", one of: {}",
                        self.names().join(", ")
                    ),
                }
            }
        };
        self.get(&name).with_context(|| format!("{source}: bad `task`"))
    }

    /// Parses and validates a config file (after `overrides`) without reading any data;
    /// returns its task name.
    pub fn check_file(&self, path: &Path, overrides: &[String], expect: Option<&str>) -> Result<&'static str> {
        let (m, source) = read_file_config(path, overrides)?;
        let mut m = m;
        let e = self.entry_for(&mut m, expect, &source)?;
        (e.check)(m, &source)?;
        Ok(e.name)
    }

    /// Trains the run described by `req`: one path for every task (see [`run::train`]).
    pub fn train(&self, req: &TrainRequest) -> Result<RunOutcome> {
        let (mut m, source) = read_file_config(&req.config, &req.overrides)?;
        let e = self.entry_for(&mut m, req.expect_task.as_deref(), &source)?;
        (e.train)(m, &source, req.resume)
    }

    /// Times training steps of the run a config file describes (after `overrides`), built as
    /// [`Registry::train`] builds it but writing nothing to the run folder
    /// ([`crate::bench::bench_task`]).
    pub fn bench(&self, config: &Path, overrides: &[String], spec: &BenchSpec) -> Result<ModelBench> {
        let (mut m, source) = read_file_config(config, overrides)?;
        let e = self.entry_for(&mut m, None, &source)?;
        (e.bench)(m, &source, spec)
    }

    /// Loads a trained model from a checkpoint folder or a run folder (→ its best
    /// checkpoint), whatever its task, on the CPU.
    pub fn load(&self, path: &Path) -> Result<LoadedAny> {
        // CPU by design: the CPU default; `load_on` takes the device.
        self.load_on(path, &candle_core::Device::Cpu)
    }

    /// [`Registry::load`] with the model on `device` (whatever device it trained on).
    pub fn load_on(&self, path: &Path, device: &candle_core::Device) -> Result<LoadedAny> {
        let dir = crate::checkpoint::resolve(path)?;
        let mut m = crate::checkpoint::stored_config(&dir)?;
        let source = dir.join("trainer.json").display().to_string();
        let e = self.entry_for(&mut m, None, &source)?;
        (e.load)(&dir, m, device)
    }
}

/// Reads a config file (after `overrides`) as task `T`'s run config; a config of another
/// task is an error.
pub fn read_config<T: Task>(path: &Path, overrides: &[String]) -> Result<RunConfig<T::Config>> {
    let (m, source) = read_file_config(path, overrides)?;
    if let Some(t) = m.get("task").and_then(|t| t.as_str()).filter(|t| *t != T::NAME) {
        bail!(
            "{source}: task = {t:?}, but this needs task {:?} ({})",
            T::NAME,
            T::ABOUT
        );
    }
    parse_config::<T>(m, &source)
}

fn read_file_config(path: &Path, overrides: &[String]) -> Result<(Map<String, Value>, String)> {
    let text = crate::config::read_config_text(path)?;
    let m = crate::config::table_with_overrides(&text, overrides)
        .with_context(|| format!("{}: invalid config", path.display()))?;
    Ok((m, path.display().to_string()))
}

/// What `seqlab train` asks for.
#[derive(Clone, Debug, Default)]
pub struct TrainRequest {
    /// The TOML run config.
    pub config: PathBuf,
    /// `key=value` overrides applied to the TOML before parsing (`--set` and its shorthands).
    pub overrides: Vec<String>,
    /// Continue the run folder's newest checkpoint instead of refusing a folder that has one.
    pub resume: bool,
    /// The task a single-task command trains (`bert-pretrain` for `seqlab pretrain`): used
    /// when the config has no `task` key, and an error when it names another.
    pub expect_task: Option<String>,
}
