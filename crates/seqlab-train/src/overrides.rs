//! Run-config files with command-line overrides, shared by every `seqlab` training command:
//! `--set a.b=value` edits the TOML before it is parsed, so every option in a config file is
//! reachable from the command line and typos are caught by the config's `deny_unknown_fields`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Flags every training command takes; each one is a shorthand for a `--set`.
#[derive(Args, Debug, Clone, Default)]
pub struct RunFlags {
    /// Override a config key, e.g. `--set train.max_steps=500 --set model.kind=gru`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in the run folder from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Run folder (overrides `run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Optimizer updates in total (overrides `train.max_steps`).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many minutes of wall time, with a checkpoint (overrides `train.max_minutes`).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Stop after this many minutes of process CPU time (all threads, summed over resumed
    /// segments), with a checkpoint (overrides `train.max_cpu_minutes`).
    #[arg(long)]
    pub max_cpu_minutes: Option<f64>,
    /// Seed of weights, dropout and data order (overrides `train.seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl RunFlags {
    /// The flags as `key=value` overrides, `--set` ones first.
    pub fn overrides(&self) -> Vec<String> {
        let mut sets = self.set.clone();
        if let Some(d) = &self.run_dir {
            sets.push(format!("run_dir={:?}", d.display().to_string()));
        }
        if let Some(n) = self.max_steps {
            sets.push(format!("train.max_steps={n}"));
        }
        if let Some(m) = self.max_minutes {
            sets.push(format!("train.max_minutes={m:?}"));
        }
        if let Some(m) = self.max_cpu_minutes {
            sets.push(format!("train.max_cpu_minutes={m:?}"));
        }
        if let Some(s) = self.seed {
            sets.push(format!("train.seed={s}"));
        }
        if self.no_progress || !std::io::stderr().is_terminal() {
            sets.push("train.progress=false".into());
        }
        sets
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

/// Parses TOML `text` after applying `key=value` overrides.
pub fn from_toml_with<T: DeserializeOwned>(text: &str, overrides: &[String]) -> Result<T> {
    let mut table: toml::Table = toml::from_str(text)?;
    for o in overrides {
        let Some((k, v)) = o.split_once('=') else {
            bail!("--set expects key=value, got `{o}`");
        };
        set_path(&mut table, k.trim(), v.trim())?;
    }
    Ok(toml::Value::Table(table).try_into()?)
}

/// Reads a config file and applies overrides; errors name the file.
pub fn load_with<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
    from_toml_with(&text, overrides).with_context(|| format!("{}: invalid config", path.display()))
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
        let f = RunFlags {
            max_cpu_minutes: Some(30.0),
            run_dir: Some("r d".into()),
            no_progress: true,
            ..Default::default()
        };
        assert_eq!(
            f.overrides(),
            vec!["run_dir=\"r d\"", "train.max_cpu_minutes=30.0", "train.progress=false"]
        );
    }
}
