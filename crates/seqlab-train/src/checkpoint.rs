//! Checkpoint folders written atomically.
//!
//! A checkpoint is a folder (`step-00001200/`, `best/`) holding `model.safetensors` (PyTorch
//! state_dict names), `optimizer.safetensors`, `trainer.json` (step, RNG states, data
//! position, config) and the tokenizer. It is first written as `NAME.tmp/`, synced, and then
//! renamed, so a run killed at any moment leaves either the old checkpoint or the new one,
//! never a torn one. The file `latest` names the newest complete checkpoint; it too is
//! replaced by rename.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes a checkpoint folder `root/name` through `root/name.tmp` and a rename.
/// `write` fills the temporary folder.
pub fn save_dir(root: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!("{name}.tmp"));
    let fin = root.join(name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;
    write(&tmp)?;
    for e in std::fs::read_dir(&tmp)? {
        std::fs::File::open(e?.path())?.sync_all()?;
    }
    // A rename cannot replace a non-empty folder: move the old one aside first.
    let old = root.join(format!("{name}.old"));
    if fin.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&fin, &old)?;
    }
    std::fs::rename(&tmp, &fin).with_context(|| format!("renaming {} to {}", tmp.display(), fin.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(fin)
}

/// Records `name` as the newest complete checkpoint under `root`.
pub fn set_latest(root: &Path, name: &str) -> Result<()> {
    seqlab_nn::io::write_atomic(&root.join("latest"), format!("{name}\n").as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    let f = root.join("latest");
    if !f.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
    let dir = root.join(name.trim());
    anyhow::ensure!(
        dir.is_dir(),
        "{}: names checkpoint {} which does not exist",
        f.display(),
        dir.display()
    );
    Ok(Some(dir))
}

/// Name of the checkpoint folder for `step`.
pub fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Deletes all but the newest `keep` `step-*` folders (never `best`).
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
        })
        .collect();
    steps.sort();
    let n = steps.len();
    for p in steps.into_iter().take(n.saturating_sub(keep)) {
        std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// A checkpoint argument may name a run folder (→ its `best/`, else its latest) or a
/// checkpoint folder itself.
pub fn resolve(p: &Path) -> Result<PathBuf> {
    if p.join("trainer.json").exists() {
        return Ok(p.to_path_buf());
    }
    let root = p.join("checkpoints");
    if root.join("best").join("trainer.json").exists() {
        return Ok(root.join("best"));
    }
    match latest(&root)? {
        Some(d) => Ok(d),
        None => anyhow::bail!(
            "{}: no checkpoint here (expected trainer.json, or checkpoints/ of a run folder)",
            p.display()
        ),
    }
}

/// Readies a run folder: refuses one that already holds checkpoints unless `resume`, creates
/// it, writes `config.toml` atomically, and returns the newest checkpoint (to resume from).
pub fn prepare_run_dir(run_dir: &Path, resume: bool, config_toml: &str) -> Result<Option<PathBuf>> {
    let latest = latest(&run_dir.join("checkpoints"))?;
    if latest.is_some() && !resume {
        anyhow::bail!(
            "{} already holds checkpoints: pass --resume to continue that run, or choose another run folder (--run-dir)",
            run_dir.display()
        );
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    seqlab_nn::io::write_atomic(&run_dir.join("config.toml"), config_toml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}/config.toml", run_dir.display()))?;
    Ok(latest)
}

/// The whole run configuration stored in a checkpoint folder's `trainer.json`, as a JSON
/// object (engine and task keys side by side; see [`crate::config`]).
pub fn stored_config(dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let f = dir.join("trainer.json");
    let text = std::fs::read_to_string(&f)
        .with_context(|| format!("{}: not a seqlab checkpoint folder (no trainer.json)", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", f.display()))?;
    match v.get("config") {
        Some(serde_json::Value::Object(m)) => Ok(m.clone()),
        _ => anyhow::bail!("{}: no `config` table", f.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_replace_latest_and_prune() {
        let root = std::env::temp_dir().join(format!("seqlab-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for s in [10u64, 20, 30] {
            save_dir(&root, &step_name(s), |d| {
                Ok(std::fs::write(d.join("x"), s.to_string())?)
            })
            .unwrap();
            set_latest(&root, &step_name(s)).unwrap();
        }
        assert_eq!(latest(&root).unwrap().unwrap(), root.join("step-00000030"));
        save_dir(&root, "best", |d| Ok(std::fs::write(d.join("x"), "a")?)).unwrap();
        save_dir(&root, "best", |d| Ok(std::fs::write(d.join("x"), "b")?)).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("best/x")).unwrap(), "b");
        // A crash mid-write leaves a .tmp folder that is ignored and cleaned up next time.
        std::fs::create_dir_all(root.join("step-00000040.tmp")).unwrap();
        prune(&root, 2).unwrap();
        assert!(!root.join("step-00000010").exists());
        assert!(root.join("step-00000020").exists() && root.join("best").exists());
        std::fs::remove_dir_all(&root).ok();
    }
}
