//! Checkpoint folders written atomically.
//!
//! A checkpoint is a folder (`step-00001200/`, `best/`) holding `model.safetensors` (PyTorch
//! state_dict names), `optimizer.safetensors`, `trainer.json` (step, RNG states, data
//! position, config) and the tokenizer. It is first written to a uniquely named temporary
//! folder, synced, and then renamed, so a run killed at any moment leaves either the old checkpoint or the new one,
//! never a torn one. The file `latest` names the newest complete checkpoint; it too is
//! replaced by rename.

use crate::lock::RunLock;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes a checkpoint folder `root/name` atomically: `write` fills a fresh temporary folder
/// with a unique name ([`seqlab_nn::io::unique_temp_path`]: no two processes share one), its
/// files and the folder are synced, and it is renamed to `name`. An existing `name` is moved
/// aside first (a rename cannot replace a non-empty folder) and removed after, so the folder
/// is never a mix of old and new files. On failure the temporary folder is removed.
pub fn save_dir(root: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let fin = root.join(name);
    let tmp = seqlab_nn::io::unique_temp_path(&fin);
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let filled: Result<()> = (|| {
        write(&tmp)?;
        for e in std::fs::read_dir(&tmp)? {
            let p = e?.path();
            if p.is_file() {
                std::fs::File::open(&p)?.sync_all()?;
            }
        }
        seqlab_nn::io::sync_dir(&tmp);
        Ok(())
    })();
    if let Err(e) = filled {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("writing checkpoint {}", fin.display()));
    }
    let old = seqlab_nn::io::unique_temp_path(&root.join(format!("{name}.old")));
    if fin.exists() {
        std::fs::rename(&fin, &old).with_context(|| format!("moving {} aside", fin.display()))?;
    }
    std::fs::rename(&tmp, &fin).with_context(|| format!("renaming {} to {}", tmp.display(), fin.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    seqlab_nn::io::sync_dir(root);
    Ok(fin)
}

/// Whether `name` is a temporary file or folder that a process killed mid-write left
/// ([`seqlab_nn::io::unique_temp_path`] names, and the `NAME.tmp` of older versions).
fn is_debris(name: &str) -> bool {
    name.ends_with(".tmp") && (name.starts_with('.') || name.starts_with("step-") || name.starts_with("best"))
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

/// Deletes all but the newest `keep` `step-*` folders (never `best`), and temporary folders
/// that killed processes left (the run folder's lock guarantees no other process is writing).
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let own = format!(".{}.", std::process::id());
    for e in std::fs::read_dir(root)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_debris(&name) && !name.contains(&own) {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
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

/// Readies a run folder: locks it for this process ([`RunLock::hold_for_process`]: a second
/// process gets an error naming the folder and this pid), refuses one that already holds
/// checkpoints unless `resume`, refuses `resume` where there is no checkpoint to resume
/// from, moves aside the `metrics.jsonl` of an earlier run that never reached a checkpoint
/// (saying so on stderr), writes `config.toml` atomically, and returns the newest checkpoint.
///
/// Call it only after everything that can fail without writing (config validation, the
/// resume checkpoint's compatibility) has passed: nothing in the folder changes before it.
pub fn prepare_run_dir(run_dir: &Path, resume: bool, config_toml: &str) -> Result<Option<PathBuf>> {
    // Checked before the lock (which creates the folder: `--resume` on a missing folder
    // must not) and again under it (another process may have written in between).
    check_run_dir(run_dir, resume)?;
    RunLock::hold_for_process(run_dir)?;
    let latest = check_run_dir(run_dir, resume)?;
    if latest.is_none() {
        let metrics = run_dir.join("metrics.jsonl");
        if let Some(to) = crate::metrics::MetricsLog::set_aside(&metrics)? {
            eprintln!(
                "note: {} held the log of an earlier run that never wrote a checkpoint; moved it to {}",
                metrics.display(),
                to.display()
            );
        }
    }
    seqlab_nn::io::write_atomic(&run_dir.join("config.toml"), config_toml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}/config.toml", run_dir.display()))?;
    Ok(latest)
}

/// What [`prepare_run_dir`] would do, without writing anything: the checkpoint to resume
/// from, or an error for a run folder with checkpoints and no `resume`, or `resume` without
/// a checkpoint (missing folder, or a run that never reached one).
pub fn check_run_dir(run_dir: &Path, resume: bool) -> Result<Option<PathBuf>> {
    let latest = latest(&run_dir.join("checkpoints"))?;
    match (&latest, resume) {
        (Some(_), false) => anyhow::bail!(
            "{} already holds checkpoints: pass --resume to continue that run, or choose another run folder (--run-dir)",
            run_dir.display()
        ),
        (None, true) if !run_dir.is_dir() => anyhow::bail!(
            "--resume: run folder {} does not exist (drop --resume to start a new run)",
            run_dir.display()
        ),
        (None, true) => anyhow::bail!(
            "--resume: {} holds no checkpoint to resume from (the run stopped before its first one); drop --resume to start it afresh",
            run_dir.display()
        ),
        _ => Ok(latest),
    }
}

/// Fails, naming the parameters (up to 10) and the checkpoint, when a loaded model holds NaN
/// or infinite values: every number it would report is then NaN, which must not pass as a
/// result.
pub fn ensure_finite(vs: &seqlab_nn::VarStore, dir: &Path) -> Result<()> {
    let mut bad = Vec::new();
    for (name, t) in vs.state_dict() {
        let v = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let n = v.iter().filter(|x| !x.is_finite()).count();
        if n > 0 {
            bad.push(format!("{name} ({n} of {})", v.len()));
        }
    }
    if !bad.is_empty() {
        let more = bad.len().saturating_sub(10);
        bad.truncate(10);
        anyhow::bail!(
            "{}: the model holds non-finite (NaN or infinite) values in {}{}; this checkpoint cannot give meaningful results (an earlier one may)",
            dir.display(),
            bad.join(", "),
            if more > 0 { format!(" and {more} more parameters") } else { String::new() }
        );
    }
    Ok(())
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
    fn non_finite_parameters_are_named() {
        use seqlab_nn::varstore::Init;
        let vs = seqlab_nn::VarStore::new(0, &candle_core::Device::Cpu);
        vs.param("ok", 3, Init::Ones).unwrap();
        let w = vs.param("layer.weight", (2, 2), Init::Ones).unwrap();
        ensure_finite(&vs, Path::new("ck")).unwrap();
        let nan =
            candle_core::Tensor::new(&[[1f32, f32::NAN], [f32::INFINITY, 0.0]], &candle_core::Device::Cpu).unwrap();
        vs.get("layer.weight").unwrap().set(&nan).unwrap();
        drop(w);
        let e = ensure_finite(&vs, Path::new("ck")).unwrap_err().to_string();
        assert!(
            e.contains("ck:") && e.contains("layer.weight (2 of 4)") && !e.contains("ok ("),
            "{e}"
        );
    }

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
        // A crash mid-write leaves a temporary folder that is ignored and removed by prune.
        for debris in [
            "step-00000040.tmp",
            ".step-00000050.999999999.0.tmp",
            ".best.old.999999999.3.tmp",
        ] {
            std::fs::create_dir_all(root.join(debris)).unwrap();
        }
        // A failing writer leaves nothing behind and the old checkpoint as it was.
        assert!(save_dir(&root, "best", |_| anyhow::bail!("disk full")).is_err());
        assert_eq!(std::fs::read_to_string(root.join("best/x")).unwrap(), "b");
        prune(&root, 2).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["best", "latest", "step-00000020", "step-00000030"]);
        assert!(!root.join("step-00000010").exists());
        assert!(root.join("step-00000020").exists() && root.join("best").exists());
        std::fs::remove_dir_all(&root).ok();
    }
}
