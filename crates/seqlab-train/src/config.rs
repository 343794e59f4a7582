//! The run configuration every task shares, and how a TOML file becomes one.
//!
//! A run config is one TOML file. The engine owns five keys and the task owns the rest:
//!
//! | key          | owner  | what                                                        |
//! |--------------|--------|-------------------------------------------------------------|
//! | `task`       | engine | which [`crate::Task`] trains (`lm`, `mt`, `bert-pretrain`…)  |
//! | `run_dir`    | engine | folder for checkpoints, metrics, plots; default `runs/<task>` |
//! | `[optim]`    | engine | [`OptimConfig`]: AdamW, Adam or SGD for every task           |
//! | `[schedule]` | engine | [`Schedule`]; default chosen by the task                      |
//! | `[train]`    | engine | [`LoopConfig`]: steps, evaluation, checkpoints, seed          |
//! | anything else| task   | e.g. `[data]`, `[model]`, `[loss]`, `[decode]`, `pretrained` |
//!
//! Loading: the file is parsed, `--set key=value` overrides are applied to the TOML, keys of
//! older seqlab versions are translated ([`upgrade_legacy_keys`], with a note on stderr), the
//! engine's keys are split off into [`RunSettings`] (the task's `[optim]` defaults filled in
//! first) and the rest parsed as the task's own config. Unknown keys are errors on both
//! sides.

use crate::keys::{ConfigKeys, KeyDoc};
use crate::schedule::Schedule;
use crate::trainer::LoopConfig;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use seqlab_nn::optim::{AdamW, AdamWConfig, Optimizer, OptimizerState, Sgd, SgdConfig};
use seqlab_nn::VarStore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Which optimizer `[optim]` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimName {
    /// `torch.optim.AdamW`: decoupled weight decay (Loshchilov & Hutter 2019).
    Adamw,
    /// `torch.optim.Adam`: weight decay is an L2 term added to the gradient.
    Adam,
    /// `torch.optim.SGD` with momentum (dampening 0, no Nesterov).
    Sgd,
}

/// `[optim]`: one schema for every task. Each task may change the defaults (e.g. translation
/// uses the paper's β = (0.9, 0.98), ε = 1e-9, no weight decay; BERT uses ε = 1e-6); keys
/// not given in the file take the task's default. The learning rate actually used at each
/// step comes from `[schedule]`; `lr` is the rate of the default constant schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// adamw | adam | sgd. Default adamw.
    pub name: OptimName,
    /// Learning rate of the default constant schedule. Default 1e-3. Must be > 0.
    pub lr: f64,
    /// Adam(W) β1, β2, each in [0, 1). Default [0.9, 0.999].
    pub betas: [f64; 2],
    /// Adam(W) ε, >= 0. Default 1e-8.
    pub eps: f64,
    /// Weight decay, >= 0: decoupled for AdamW, an L2 gradient term for Adam and SGD.
    /// Default 0.01.
    pub weight_decay: f64,
    /// SGD momentum, >= 0 (ignored by Adam(W)). Default 0.9.
    pub momentum: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            name: OptimName::Adamw,
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            momentum: 0.9,
        }
    }
}

impl OptimConfig {
    /// Checks the values, naming the bad key: lr > 0, betas in [0, 1), eps, weight_decay and
    /// momentum finite and >= 0.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "optim.lr must be > 0, got {}",
            self.lr
        );
        anyhow::ensure!(
            self.betas.iter().all(|b| (0.0..1.0).contains(b)),
            "optim.betas must be in [0, 1), got {:?}",
            self.betas
        );
        for (k, v) in [
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("momentum", self.momentum),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "optim.{k} must be finite and >= 0, got {v}");
        }
        Ok(())
    }

    /// The optimizer over every trainable parameter of `vs`, starting at learning rate `lr`
    /// (the schedule's rate at step 1; the trainer sets it again before each step).
    pub fn build(&self, vs: &VarStore, lr: f64) -> Result<Box<dyn Optimizer>> {
        self.validate()?;
        let e = |e: candle_core::Error| anyhow::anyhow!("optim: {e}");
        let adam = |weight_decay: f64| AdamWConfig {
            lr,
            betas: (self.betas[0], self.betas[1]),
            eps: self.eps,
            weight_decay,
        };
        Ok(match self.name {
            // `for_store`: parameters the model marks no-decay (Mamba's A_log, D) keep out of
            // weight decay, as their reference trains them.
            OptimName::Adamw => Box::new(AdamW::for_store(vs, adam(self.weight_decay)).map_err(e)?),
            OptimName::Adam => Box::new(Adam {
                inner: AdamW::new(vs.trainable(), adam(0.0)).map_err(e)?,
                weight_decay: self.weight_decay,
                no_decay: vs.no_weight_decay().into_iter().collect(),
            }),
            OptimName::Sgd => {
                let sc = SgdConfig {
                    momentum: self.momentum,
                    weight_decay: self.weight_decay,
                    ..SgdConfig::new(lr)
                };
                Box::new(Sgd::for_store(vs, sc).map_err(e)?)
            }
        })
    }
}

/// The `[optim]` keys at run time (`seqlab config keys`); defaults come from the task.
impl ConfigKeys for OptimConfig {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new(
            "name",
            "optimizer: adamw (torch.optim.AdamW) | adam (torch.optim.Adam) | sgd (torch.optim.SGD with momentum)",
        ),
        KeyDoc::new(
            "lr",
            "learning rate of the default constant schedule (with a [schedule], schedule.lr is used); > 0",
        ),
        KeyDoc::new("betas", "Adam(W) [β1, β2], each in [0, 1)"),
        KeyDoc::new("eps", "Adam(W) ε, >= 0"),
        KeyDoc::new(
            "weight_decay",
            "weight decay, >= 0: decoupled for adamw, an L2 gradient term for adam and sgd",
        ),
        KeyDoc::new("momentum", "SGD momentum, >= 0 (ignored by adam/adamw)"),
    ];
}

/// `torch.optim.Adam`: AdamW without its decoupled decay, plus `weight_decay · param` added to
/// each gradient first (PyTorch's `grad = grad.add(param, alpha=weight_decay)`). With
/// weight_decay 0 it is exactly AdamW with weight_decay 0. Its state is AdamW's.
struct Adam {
    inner: AdamW,
    weight_decay: f64,
    /// Names of the parameters without the L2 term ([`VarStore::no_weight_decay`]).
    no_decay: std::collections::HashSet<String>,
}

impl Adam {
    fn with_l2(&self, pairs: Vec<(Var, Tensor)>) -> candle_core::Result<Vec<(Var, Tensor)>> {
        if self.weight_decay == 0.0 {
            return Ok(pairs);
        }
        let exempt: std::collections::HashSet<candle_core::TensorId> = self
            .inner
            .params()
            .into_iter()
            .filter(|(n, _)| self.no_decay.contains(n))
            .map(|(_, v)| v.id())
            .collect();
        pairs
            .into_iter()
            .map(|(v, g)| {
                if exempt.contains(&v.id()) {
                    return Ok((v, g));
                }
                let g = (g + (v.as_tensor().detach() * self.weight_decay)?)?;
                Ok((v, g))
            })
            .collect()
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let pairs: Vec<(Var, Tensor)> = self
            .inner
            .params()
            .into_iter()
            .filter_map(|(_, v)| grads.get(&v).map(|g| (v.clone(), g.clone())))
            .collect();
        let pairs = self.with_l2(pairs)?;
        self.inner.step_with(&pairs)
    }
    fn step_with(&mut self, grads: &[(Var, Tensor)]) -> candle_core::Result<()> {
        let pairs = self.with_l2(grads.to_vec())?;
        self.inner.step_with(&pairs)
    }
    fn lr(&self) -> f64 {
        self.inner.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.inner.set_lr(lr)
    }
    fn params(&self) -> Vec<(String, Var)> {
        self.inner.params()
    }
    fn state_dict(&self) -> candle_core::Result<OptimizerState> {
        self.inner.state_dict()
    }
    fn load_state(&mut self, state: &OptimizerState) -> candle_core::Result<()> {
        self.inner.load_state(state)
    }
}

/// `[loss]` of tasks trained with cross-entropy (language modelling, classification,
/// translation). It lives with the task, not in `[optim]`: it changes the objective, not how
/// it is minimised (older configs had it in `[optim]`; they are translated on load).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Label smoothing ε of the training cross-entropy (Szegedy et al. 2016), in [0, 1).
    /// Evaluation losses never smooth. Default 0 (translation: 0.1, the paper's).
    pub label_smoothing: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { label_smoothing: 0.0 }
    }
}

impl LossConfig {
    /// Rejects label_smoothing outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            (0.0..1.0).contains(&self.label_smoothing),
            "loss.label_smoothing must be in [0, 1), got {}",
            self.label_smoothing
        );
        Ok(())
    }
}

/// The `[loss]` keys at run time (`seqlab config keys`).
impl ConfigKeys for LossConfig {
    const KEYS: &'static [KeyDoc] = &[KeyDoc::new(
        "label_smoothing",
        "label smoothing ε of the training cross-entropy (Szegedy et al. 2016), in [0, 1); evaluation never smooths",
    )];
}

/// The keys of a run config that the engine owns (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// The registry key of the task.
    pub task: String,
    /// Folder for checkpoints, metrics and plots. Default `runs/<task>`.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// The optimizer; keys not given take the task's defaults.
    pub optim: OptimConfig,
    /// Learning-rate schedule; `None` = the task's default ([`crate::Task::default_schedule`]).
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// The training loop.
    #[serde(default)]
    pub train: LoopConfig,
}

/// Keys of a run config that belong to the engine; everything else is the task's.
pub const ENGINE_KEYS: [&str; 5] = ["task", "run_dir", "optim", "schedule", "train"];

/// A whole run config: the engine's settings plus the task's own config `C`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig<C> {
    /// The engine's settings (`[run]`, `[train]`, ...).
    pub run: RunSettings,
    /// The task's own config.
    pub task: C,
}

impl<C: Serialize> RunConfig<C> {
    /// The run folder: `run_dir`, or `runs/<task>`.
    pub fn run_dir(&self) -> PathBuf {
        self.run
            .run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&self.run.task))
    }

    /// The whole config as one JSON object (engine keys and task keys side by side), as
    /// stored in every checkpoint's `trainer.json`.
    pub fn to_json(&self) -> Result<Value> {
        let mut m = as_object(serde_json::to_value(&self.run)?, "run settings")?;
        for (k, v) in as_object(serde_json::to_value(&self.task)?, "task config")? {
            if ENGINE_KEYS.contains(&k.as_str()) {
                bail!("the task config has a key `{k}` that belongs to the engine");
            }
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }

    /// The whole config as TOML (unset optional keys left out), as written to
    /// `config.toml` in the run folder.
    pub fn to_toml(&self) -> Result<String> {
        let mut v = self.to_json()?;
        drop_nulls(&mut v);
        Ok(toml::to_string(&v)?)
    }
}

fn as_object(v: Value, what: &str) -> Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => bail!("{what} must serialize to a table, got {other}"),
    }
}

/// TOML has no null: unset options are left out.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Sets `path` (dotted) in a TOML table to `raw` parsed as a TOML value (or else a string).
fn set_path(root: &mut toml::Table, path: &str, raw: &str) -> Result<()> {
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {path}={raw}: bad key");
    }
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {path}={raw}: `{p}` is not a table"),
        };
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Parses TOML `text` and applies `key=value` overrides (`--set`): the result as a JSON object.
pub fn table_with_overrides(text: &str, overrides: &[String]) -> Result<Map<String, Value>> {
    let mut table: toml::Table = toml::from_str(text)?;
    for o in overrides {
        let Some((k, v)) = o.split_once('=') else {
            bail!("--set expects key=value, got `{o}`");
        };
        set_path(&mut table, k.trim(), v.trim())?;
        // With a [schedule], the rate comes from schedule.lr and optim.lr is not read: an
        // override of it would be silently ignored (issue 13).
        let has_schedule_lr = table
            .get("schedule")
            .and_then(|s| s.as_table())
            .is_some_and(|s| s.contains_key("lr"));
        if k.trim() == "optim.lr" && has_schedule_lr {
            bail!(
                "--set optim.lr={}: this config's learning rate comes from its [schedule] table (schedule.lr); set schedule.lr instead",
                v.trim()
            );
        }
    }
    as_object(serde_json::to_value(table)?, "a TOML document")
}

/// Parses TOML `text` into `T` after applying `key=value` overrides.
pub fn from_toml_with<T: DeserializeOwned>(text: &str, overrides: &[String]) -> Result<T> {
    Ok(serde_json::from_value(Value::Object(table_with_overrides(
        text, overrides,
    )?))?)
}

/// Reads a config file and applies overrides; errors name the file.
pub fn load_with<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    from_toml_with(&read_config_text(path)?, overrides).with_context(|| format!("{}: invalid config", path.display()))
}

/// The text of a config file; the error names it.
pub fn read_config_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))
}

/// Translates keys of older seqlab configs (and of the configs stored in older checkpoints)
/// into today's schema, returning one note per translated key:
/// - `optim.label_smoothing` → `loss.label_smoothing`;
/// - BERT's `optim.warmup_steps` → `[schedule] kind = "warmup_cosine"` with `lr = optim.lr`,
///   that warm-up, `total = train.max_steps`, `min_lr = 0` (what it meant), unless
///   `[schedule]` is given, in which case it is an error naming `schedule.warmup`.
pub fn upgrade_legacy_keys(cfg: &mut Map<String, Value>) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let Some(Value::Object(optim)) = cfg.get_mut("optim") else {
        return Ok(notes);
    };
    let smoothing = optim.remove("label_smoothing");
    let warmup = optim.remove("warmup_steps");
    let lr = optim.get("lr").cloned();
    if let Some(ls) = smoothing {
        let loss = cfg.entry("loss").or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(loss) = loss else {
            bail!("`loss` must be a table");
        };
        if loss.contains_key("label_smoothing") {
            bail!("optim.label_smoothing and loss.label_smoothing are both set; keep loss.label_smoothing");
        }
        loss.insert("label_smoothing".into(), ls);
        notes.push("optim.label_smoothing is now loss.label_smoothing (read as such)".into());
    }
    if let Some(w) = warmup {
        if cfg.get("schedule").is_some_and(|s| !s.is_null()) {
            bail!("optim.warmup_steps is no longer a key: with a [schedule] table, set schedule.warmup instead");
        }
        let total = cfg
            .get("train")
            .and_then(|t| t.get("max_steps"))
            .and_then(Value::as_u64)
            .unwrap_or(LoopConfig::default().max_steps);
        let w = w.as_u64().context("optim.warmup_steps must be a whole number")?;
        let lr = lr.and_then(|v| v.as_f64()).context(
            "optim.warmup_steps without optim.lr: give [schedule] kind = \"warmup_cosine\" with lr, warmup and total",
        )?;
        cfg.insert(
            "schedule".into(),
            serde_json::json!({"kind": "warmup_cosine", "lr": lr, "warmup": w.min(total.saturating_sub(1)), "total": total, "min_lr": 0.0}),
        );
        notes.push(format!(
            "optim.warmup_steps is now [schedule] kind = \"warmup_cosine\", warmup = {w}, total = train.max_steps (read as such)"
        ));
    }
    Ok(notes)
}

/// Splits a whole config (JSON object) into the engine's settings and the task's config `C`;
/// `default_optim` fills the `[optim]` keys the file leaves out. Errors name the bad key.
pub fn split_config<C: DeserializeOwned>(
    mut cfg: Map<String, Value>,
    default_optim: &OptimConfig,
) -> Result<RunConfig<C>> {
    let mut engine = Map::new();
    for k in ENGINE_KEYS {
        if let Some(v) = cfg.remove(k) {
            engine.insert(k.to_string(), v);
        }
    }
    let mut optim = as_object(serde_json::to_value(default_optim)?, "optim defaults")?;
    match engine.remove("optim") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => optim.extend(given),
        Some(other) => bail!("`optim` must be a table, got {other}"),
    }
    engine.insert("optim".into(), Value::Object(optim));
    let run: RunSettings = serde_json::from_value(Value::Object(engine))?;
    run.optim.validate()?;
    if let Some(s) = &run.schedule {
        s.validate()?;
    }
    run.train.validate()?;
    let task: C = serde_json::from_value(Value::Object(cfg))?;
    Ok(RunConfig { run, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        a: Inner,
        name: String,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        x: f64,
        #[serde(default)]
        y: Option<u64>,
    }

    #[test]
    fn overrides_parse_values_create_tables_and_reject_bad_keys() {
        let base = "name = \"n\"\n[a]\nx = 1.0\n";
        let c: Cfg = from_toml_with(base, &["a.x=2.5".into(), "a.y=7".into(), "name=plain words".into()]).unwrap();
        assert_eq!((c.a.x, c.a.y, c.name.as_str()), (2.5, Some(7), "plain words"));
        assert!(from_toml_with::<Cfg>(base, &["a.z=1".into()]).is_err());
        assert!(from_toml_with::<Cfg>(base, &["nokey".into()]).is_err());
        assert!(from_toml_with::<Cfg>(base, &["name.q=1".into()]).is_err());
        // An integer where a float is expected is accepted (TOML `lr = 1`).
        let c: Cfg = from_toml_with(base, &["a.x=3".into()]).unwrap();
        assert_eq!(c.a.x, 3.0);
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(deny_unknown_fields)]
    struct TaskPart {
        data: String,
        #[serde(default)]
        loss: LossConfig,
    }

    fn split(text: &str, defaults: &OptimConfig) -> Result<RunConfig<TaskPart>> {
        let mut m = table_with_overrides(text, &[])?;
        upgrade_legacy_keys(&mut m)?;
        split_config(m, defaults)
    }

    #[test]
    fn split_fills_task_optim_defaults_and_round_trips() {
        let mt_like = OptimConfig {
            betas: [0.9, 0.98],
            eps: 1e-9,
            weight_decay: 0.0,
            ..OptimConfig::default()
        };
        let c = split(
            "task = \"t\"\ndata = \"d\"\n[optim]\nname = \"adam\"\nlr = 0.5\n",
            &mt_like,
        )
        .unwrap();
        assert_eq!(c.run.optim.name, OptimName::Adam);
        assert_eq!(
            (c.run.optim.lr, c.run.optim.betas, c.run.optim.eps),
            (0.5, [0.9, 0.98], 1e-9)
        );
        assert_eq!(c.run_dir(), PathBuf::from("runs/t"));
        // What is stored in checkpoints parses back to the same config.
        let back: RunConfig<TaskPart> =
            split_config(as_object(c.to_json().unwrap(), "x").unwrap(), &OptimConfig::default()).unwrap();
        assert_eq!(back, c);
        let toml_text = c.to_toml().unwrap();
        assert_eq!(split(&toml_text, &OptimConfig::default()).unwrap(), c);
        // Unknown keys on either side are errors naming the key.
        let e = split("task = \"t\"\ndata = \"d\"\n[optim]\nbeta = 1\n", &mt_like).unwrap_err();
        assert!(format!("{e:#}").contains("beta"), "{e:#}");
        let e = split("task = \"t\"\ndata = \"d\"\ndatta = 1\n", &mt_like).unwrap_err();
        assert!(format!("{e:#}").contains("datta"), "{e:#}");
        let e = split("task = \"t\"\ndata = \"d\"\n[optim]\nname = \"rmsprop\"\n", &mt_like).unwrap_err();
        assert!(format!("{e:#}").contains("rmsprop"), "{e:#}");
        let e = split("task = \"t\"\ndata = \"d\"\n[optim]\nlr = -1.0\n", &mt_like).unwrap_err();
        assert!(format!("{e:#}").contains("optim.lr"), "{e:#}");
    }

    #[test]
    fn legacy_keys_are_translated_or_named() {
        // MT's old [optim] with label_smoothing.
        let c = split(
            "task = \"t\"\ndata = \"d\"\n[optim]\nbetas = [0.9, 0.98]\neps = 1e-9\nlabel_smoothing = 0.1\n",
            &OptimConfig::default(),
        )
        .unwrap();
        assert_eq!(c.task.loss.label_smoothing, 0.1);
        assert_eq!(c.run.optim.betas, [0.9, 0.98]);
        // BERT's old warmup_steps becomes the warm-up cosine schedule it meant.
        let c = split(
            "task = \"t\"\ndata = \"d\"\n[optim]\nlr = 1e-4\nwarmup_steps = 100\n[train]\nmax_steps = 500\n",
            &OptimConfig::default(),
        )
        .unwrap();
        assert_eq!(
            c.run.schedule,
            Some(Schedule::WarmupCosine {
                lr: 1e-4,
                warmup: 100,
                total: 500,
                min_lr: 0.0
            })
        );
        // With a [schedule] too, the error names the new key.
        let e = split(
            "task = \"t\"\ndata = \"d\"\n[optim]\nlr = 1e-4\nwarmup_steps = 100\n[schedule]\nkind = \"constant\"\nlr = 1.0\n",
            &OptimConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("schedule.warmup"), "{e}");
    }

    #[test]
    fn every_optimizer_builds_and_adam_adds_l2_to_the_gradient() {
        use candle_core::Device;
        for name in [OptimName::Adamw, OptimName::Adam, OptimName::Sgd] {
            let vs = VarStore::new(0, &Device::Cpu);
            vs.param("w", 2, seqlab_nn::Init::Const(1.0)).unwrap();
            // A parameter the model marks no-decay (like Mamba's A_log) stays put.
            vs.param_no_weight_decay("a", 2, seqlab_nn::Init::Const(1.0)).unwrap();
            let w = vs.get("w").unwrap();
            let a = vs.get("a").unwrap();
            let cfg = OptimConfig {
                name,
                weight_decay: 0.5,
                ..OptimConfig::default()
            };
            let mut opt = cfg.build(&vs, 0.1).unwrap();
            // A zero gradient: only weight decay moves the weight, and it must move it down.
            let zero = w.as_tensor().zeros_like().unwrap();
            opt.step_with(&[(w.clone(), zero.clone()), (a.clone(), zero)]).unwrap();
            assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 1.0], "{name:?}");
            let after = w.as_tensor().to_vec1::<f32>().unwrap();
            assert!(after.iter().all(|&x| x < 1.0 && x > 0.0), "{name:?}: {after:?}");
            if name == OptimName::Adam {
                // L2 through Adam's normalisation: the first step is -lr * sign(g) = -0.1.
                assert!((after[0] - 0.9).abs() < 1e-4, "{after:?}");
            }
            if name == OptimName::Adamw {
                // Decoupled: p · (1 - lr · wd) = 0.95, and the zero gradient adds nothing.
                assert!((after[0] - 0.95).abs() < 1e-6, "{after:?}");
            }
        }
    }
}
