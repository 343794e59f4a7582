//! Every config key at run time, with its meaning and default (`seqlab config keys TASK`).
//!
//! Doc comments cannot be read at run time, so each config struct carries a key table
//! ([`ConfigKeys::KEYS`]) beside its definition. Defaults are never copied into the tables:
//! they are read from the struct's own `Default` (serialized), so they cannot drift. That the
//! tables name exactly the keys serde accepts is checked twice: [`TableDoc::of`] refuses a
//! table whose keys differ from the serialized struct's, and [`check_documented`] (called by
//! each task crate's tests) compares a task's documented keys with every key of a parsed config
//! of that task, engine keys included.

use crate::config::OptimConfig;
use crate::schedule::Schedule;
use crate::task::{parse_config, Task};
use crate::trainer::LoopConfig;
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write;

/// One key of a config table: its name, what it means (with allowed values and units), and
/// whether the file must give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key as written in the TOML file.
    pub key: &'static str,
    /// Meaning, units and allowed values.
    pub about: &'static str,
    /// The file must give it (no usable default).
    pub required: bool,
}

impl KeyDoc {
    /// A key with a default.
    pub const fn new(key: &'static str, about: &'static str) -> Self {
        Self {
            key,
            about,
            required: false,
        }
    }
    /// A key the file must give.
    pub const fn required(key: &'static str, about: &'static str) -> Self {
        Self {
            key,
            about,
            required: true,
        }
    }
}

/// A config struct (one TOML table) whose keys are documented at run time.
pub trait ConfigKeys: Serialize {
    /// One entry per field, in the order they are printed.
    const KEYS: &'static [KeyDoc];
}

/// One printed row: a key, its meaning and its default (`None`: required).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRow {
    /// The key and its meaning.
    pub doc: KeyDoc,
    /// The default as a JSON value (`null`: unset); `None` when the key is required.
    pub default: Option<Value>,
}

/// The documented keys of one table (`""` = the top level of the file).
#[derive(Clone, Debug, PartialEq)]
pub struct TableDoc {
    /// Table name: `data`, `model`, ... or `""` for top-level keys.
    pub table: String,
    /// What the table is for, one line.
    pub about: &'static str,
    /// Its keys.
    pub rows: Vec<KeyRow>,
}

/// The keys of a serialized struct (it must serialize to a table).
fn object_keys(v: &Value, what: &str) -> Result<BTreeSet<String>> {
    match v {
        Value::Object(m) => Ok(m.keys().cloned().collect()),
        other => bail!("{what} must serialize to a table, got {other}"),
    }
}

impl TableDoc {
    /// Table `table` documented by `T::KEYS`, with the defaults taken from `default` (the
    /// struct as a file that leaves the table out gets it). Errors when the documented keys
    /// and the struct's serialized keys differ, naming the missing and the extra ones.
    pub fn of<T: ConfigKeys>(table: &str, about: &'static str, default: &T) -> Result<Self> {
        let v = serde_json::to_value(default)?;
        let got = object_keys(&v, table)?;
        let documented: BTreeSet<String> = T::KEYS.iter().map(|k| k.key.to_string()).collect();
        if got != documented {
            bail!(
                "[{table}]: the key table is stale: undocumented keys {:?}, documented but unknown keys {:?}",
                got.difference(&documented).collect::<Vec<_>>(),
                documented.difference(&got).collect::<Vec<_>>()
            );
        }
        let rows = T::KEYS
            .iter()
            .map(|&doc| KeyRow {
                doc,
                default: (!doc.required).then(|| v[doc.key].clone()),
            })
            .collect();
        Ok(Self {
            table: table.to_string(),
            about,
            rows,
        })
    }

    /// The keys as written in `--set`: `table.key`, or `key` at the top level.
    pub fn dotted_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.rows.iter().map(move |r| {
            if self.table.is_empty() {
                r.doc.key.to_string()
            } else {
                format!("{}.{}", self.table, r.doc.key)
            }
        })
    }
}

/// `[schedule]` keys; which ones apply depends on `kind` (an enum, so it has no one default
/// struct: [`schedule_table`] checks every variant against this list).
const SCHEDULE_KEYS: &[KeyDoc] = &[
    KeyDoc::new(
        "kind",
        "constant | warmup_cosine | noam; without a [schedule] table the task's default applies",
    ),
    KeyDoc::new(
        "lr",
        "constant, warmup_cosine: the (peak) learning rate; required for these kinds",
    ),
    KeyDoc::new(
        "warmup",
        "warmup_cosine, noam: warm-up steps (linear from 0); required for these kinds",
    ),
    KeyDoc::new(
        "total",
        "warmup_cosine: the step at which the cosine reaches min_lr; required",
    ),
    KeyDoc::new("min_lr", "warmup_cosine: the final learning rate; default 0"),
    KeyDoc::new(
        "d_model",
        "noam: lr = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) (Vaswani et al. 2017 §5.3); required",
    ),
    KeyDoc::new("factor", "noam: the factor above; default 1"),
];

/// The `[schedule]` table: every variant's keys must be documented, and every documented key
/// must belong to some variant. Its rows carry no default (they depend on `kind`, and each
/// row's text says it).
fn schedule_table() -> Result<TableDoc> {
    let variants = [
        Schedule::Constant { lr: 1.0 },
        Schedule::WarmupCosine {
            lr: 1.0,
            warmup: 1,
            total: 2,
            min_lr: 0.0,
        },
        Schedule::Noam {
            d_model: 1,
            warmup: 1,
            factor: 1.0,
        },
    ];
    let documented: BTreeSet<String> = SCHEDULE_KEYS.iter().map(|k| k.key.to_string()).collect();
    let mut seen = BTreeSet::new();
    for v in &variants {
        seen.extend(object_keys(&serde_json::to_value(v)?, "schedule")?);
    }
    if seen != documented {
        bail!(
            "[schedule]: the key table is stale: undocumented {:?}, unknown {:?}",
            seen.difference(&documented).collect::<Vec<_>>(),
            documented.difference(&seen).collect::<Vec<_>>()
        );
    }
    Ok(TableDoc {
        table: "schedule".into(),
        about: "learning-rate schedule, a pure function of the step (engine)",
        rows: SCHEDULE_KEYS
            .iter()
            .map(|&doc| KeyRow {
                doc,
                default: Some(Value::String("(depends on kind)".into())),
            })
            .collect(),
    })
}

/// The engine's keys (`task`, `run_dir`, `[optim]` with the task's defaults `optim`,
/// `[schedule]`, `[train]`), as [`crate::config::RunSettings`] reads them.
pub fn engine_tables(task: &str, optim: &OptimConfig) -> Result<Vec<TableDoc>> {
    // RunSettings' own fields: the top-level keys, then one table per nested struct.
    let top = TableDoc {
        table: String::new(),
        about: "top-level keys (engine)",
        rows: vec![
            KeyRow {
                doc: KeyDoc::required(
                    "task",
                    "which task trains: lm | classify | forecast | mt | bert-pretrain | bert-finetune",
                ),
                default: None,
            },
            KeyRow {
                doc: KeyDoc::new(
                    "run_dir",
                    "folder for checkpoints, metrics and plots (relative to the current directory)",
                ),
                default: Some(Value::String(format!("runs/{task}"))),
            },
        ],
    };
    Ok(vec![
        top,
        TableDoc::of("optim", "the optimizer (engine; defaults are this task's)", optim)?,
        schedule_table()?,
        TableDoc::of("train", "the training loop (engine)", &LoopConfig::default())?,
    ])
}

/// Every key of task `T`: the engine's tables, then the task's own ([`Task::config_keys`]).
pub fn task_tables<T: Task>() -> Result<Vec<TableDoc>> {
    let mut t = engine_tables(T::NAME, &T::default_optim())?;
    t.extend(T::config_keys()?);
    Ok(t)
}

/// A default value as it would be written in TOML (`unset` for an unset option).
fn show(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::String(s) if s.starts_with('(') => s.clone(),
        other => other.to_string(),
    }
}

/// The tables as text: one block per table, one line per key (`key  default  meaning`).
pub fn render(task: &str, about: &str, tables: &[TableDoc]) -> String {
    let mut out = format!("# task = \"{task}\": {about}\n# key = default   meaning\n");
    for t in tables {
        let _ = writeln!(out);
        if t.table.is_empty() {
            let _ = writeln!(out, "# {}", t.about);
        } else {
            let _ = writeln!(out, "[{}]   # {}", t.table, t.about);
        }
        let width = t.rows.iter().map(|r| r.doc.key.len()).max().unwrap_or(0);
        for r in &t.rows {
            let default = r.default.as_ref().map_or("(required)".to_string(), show);
            let _ = writeln!(out, "{:width$} = {default:<14} {}", r.doc.key, r.doc.about);
        }
    }
    out
}

/// The keys of `v` as `table.key` (one level of nesting, as config files use), leaving out
/// `skip` tables.
fn flat_keys(v: &Value, skip: &[&str]) -> Result<BTreeSet<String>> {
    let Value::Object(m) = v else {
        bail!("a config must serialize to a table");
    };
    let mut out = BTreeSet::new();
    for (k, v) in m {
        if skip.contains(&k.as_str()) {
            continue;
        }
        match v {
            Value::Object(inner) => out.extend(inner.keys().map(|i| format!("{k}.{i}"))),
            _ => {
                out.insert(k.clone());
            }
        }
    }
    Ok(out)
}

/// For tests of task crates: parses `minimal_toml` (a small valid config of task `T`) and
/// checks that its keys — every engine and task key, as stored in checkpoints — are exactly
/// the documented ones ([`task_tables`]). `[schedule]` is checked by [`schedule_table`].
pub fn check_documented<T: Task>(minimal_toml: &str) -> Result<()> {
    let m = crate::config::table_with_overrides(minimal_toml, &[])?;
    let cfg = parse_config::<T>(m, "minimal config")?;
    let stored = flat_keys(&cfg.to_json()?, &["schedule"])?;
    let mut documented = BTreeSet::new();
    for t in task_tables::<T>()? {
        if t.table != "schedule" {
            documented.extend(t.dotted_keys());
        }
    }
    if stored != documented {
        bail!(
            "task {}: keys not documented: {:?}; documented keys the config does not have: {:?}",
            T::NAME,
            stored.difference(&documented).collect::<Vec<_>>(),
            documented.difference(&stored).collect::<Vec<_>>()
        );
    }
    // The top-level keys documented by hand are exactly RunSettings' own.
    let run = object_keys(&serde_json::to_value(&cfg.run)?, "run settings")?;
    let engine: BTreeSet<String> = crate::config::ENGINE_KEYS.iter().map(|k| k.to_string()).collect();
    if run != engine {
        bail!("RunSettings has keys {run:?}, ENGINE_KEYS lists {engine:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Two {
        a: u32,
        b: Option<String>,
    }
    impl ConfigKeys for Two {
        const KEYS: &'static [KeyDoc] = &[KeyDoc::new("a", "first"), KeyDoc::required("b", "second")];
    }
    #[derive(Serialize, Default)]
    struct Stale {
        a: u32,
        c: u32,
    }
    impl ConfigKeys for Stale {
        const KEYS: &'static [KeyDoc] = &[KeyDoc::new("a", "first"), KeyDoc::new("b", "gone")];
    }

    #[test]
    fn tables_take_defaults_from_the_struct_and_refuse_stale_key_lists() {
        let t = TableDoc::of("x", "test", &Two { a: 7, b: None }).unwrap();
        assert_eq!(t.rows[0].default, Some(Value::from(7)));
        assert_eq!(t.rows[1].default, None);
        assert_eq!(t.dotted_keys().collect::<Vec<_>>(), ["x.a", "x.b"]);
        let text = render("t", "about", &[t]);
        assert!(text.contains("a = 7") && text.contains("(required)"), "{text}");
        let e = TableDoc::of("y", "test", &Stale::default()).unwrap_err().to_string();
        assert!(e.contains("[y]") && e.contains("\"c\"") && e.contains("\"b\""), "{e}");
    }

    #[test]
    fn engine_tables_cover_optim_train_and_every_schedule_kind() {
        let t = engine_tables("lm", &OptimConfig::default()).unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["", "optim", "schedule", "train"]);
        let text = render("lm", "about", &t);
        for k in [
            "run_dir = \"runs/lm\"",
            "weight_decay = 0.01",
            "max_steps",
            "factor",
            "min_lr",
        ] {
            assert!(text.contains(k), "{k} missing from\n{text}");
        }
    }
}
