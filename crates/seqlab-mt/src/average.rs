//! Checkpoint averaging: the paper's base models average the last 5 checkpoints, the big ones
//! the last 20 (Vaswani et al. 2017, §6.1).

use crate::c;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The newest `n` `step-*` checkpoint folders of a run folder (or of its `checkpoints/`),
/// oldest first.
pub fn last_checkpoints(run_dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    if n == 0 {
        bail!("average: -n must be at least 1");
    }
    let root = if run_dir.join("checkpoints").is_dir() {
        run_dir.join("checkpoints")
    } else {
        run_dir.to_path_buf()
    };
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("{}: cannot read the run folder", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join("model.safetensors").is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
        })
        .collect();
    // step-%08d names sort by step.
    steps.sort();
    if steps.len() < n {
        bail!(
            "{}: asked to average {n} checkpoints but only {} step-* checkpoints exist",
            root.display(),
            steps.len()
        );
    }
    Ok(steps.split_off(steps.len() - n))
}

/// What [`average_checkpoints`] does when its output folder exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    /// Fail, naming the folder (the default of `seqlab average-checkpoints`).
    Refuse,
    /// Replace the whole folder atomically (`--force`): no file of the old one stays.
    Replace,
}

/// Averages `model.safetensors` of `dirs` (same names and shapes) into `out/model.safetensors`
/// (f32 arithmetic, stored in each tensor's dtype); the newest folder's other files except the
/// optimizer state are copied so that `out` loads like any checkpoint. `out` is written as a
/// fresh folder and renamed into place ([`seqlab_train::checkpoint::save_dir`]), so it never
/// mixes files of an old checkpoint (such as its optimizer state) with the average. Rejects
/// an existing `out` under [`IfExists::Refuse`], and an `out` that is one of `dirs`. Returns
/// the tensor count.
pub fn average_checkpoints(dirs: &[PathBuf], out: &Path, if_exists: IfExists) -> Result<usize> {
    let Some(newest) = dirs.last() else {
        bail!("average: no checkpoints given")
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if out.exists() {
        if dirs.iter().any(|d| canon(d) == canon(out)) {
            bail!("{}: the output is one of the checkpoints being averaged", out.display());
        }
        if if_exists == IfExists::Refuse {
            bail!(
                "{} already exists: choose a new output folder, or pass --force to replace it (the whole folder, optimizer state included)",
                out.display()
            );
        }
    }
    let (Some(root), Some(name)) = (out.parent(), out.file_name().and_then(|n| n.to_str())) else {
        bail!("{}: not a usable output folder name", out.display());
    };
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    let mut sum: HashMap<String, Tensor> = HashMap::new();
    let mut dtypes: HashMap<String, DType> = HashMap::new();
    for (i, d) in dirs.iter().enumerate() {
        let f = d.join("model.safetensors");
        // CPU by design: averaging reads and writes files (checkpoints hold CPU tensors).
        let ts =
            c(candle_core::safetensors::load(&f, &Device::Cpu)).with_context(|| format!("reading {}", f.display()))?;
        if i > 0 && (ts.len() != sum.len() || ts.keys().any(|k| !sum.contains_key(k))) {
            bail!(
                "{}: parameter names differ from {}",
                f.display(),
                dirs[0].join("model.safetensors").display()
            );
        }
        for (k, t) in ts {
            let t32 = c(t.to_dtype(DType::F32))?;
            match sum.get(&k) {
                Some(s) => {
                    if s.dims() != t32.dims() {
                        bail!(
                            "{}: `{k}` has shape {:?}, expected {:?}",
                            f.display(),
                            t32.dims(),
                            s.dims()
                        );
                    }
                    let n = c(s + &t32)?;
                    sum.insert(k, n);
                }
                None => {
                    dtypes.insert(k.clone(), t.dtype());
                    sum.insert(k, t32);
                }
            }
        }
    }
    let n = dirs.len() as f64;
    let mut avg = HashMap::new();
    for (k, s) in sum {
        avg.insert(k.clone(), c(c(s / n)?.to_dtype(dtypes[&k]))?);
    }
    let count = avg.len();
    seqlab_train::checkpoint::save_dir(root, name, |tmp| {
        for e in std::fs::read_dir(newest)? {
            let p = e?.path();
            let file = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_file() && file != "model.safetensors" && file != "optimizer.safetensors" {
                std::fs::copy(&p, tmp.join(file)).with_context(|| format!("copying {}", p.display()))?;
            }
        }
        c(candle_core::safetensors::save(&avg, tmp.join("model.safetensors")))
    })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_ck(root: &Path, step: u64, val: f32) {
        let d = root.join(format!("step-{step:08}"));
        std::fs::create_dir_all(&d).unwrap();
        let m: HashMap<String, Tensor> = [
            ("a.weight".to_string(), Tensor::full(val, (2, 3), &Device::Cpu).unwrap()),
            ("b".to_string(), Tensor::new(&[val, 2.0 * val], &Device::Cpu).unwrap()),
        ]
        .into();
        candle_core::safetensors::save(&m, d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("trainer.json"), format!("{{\"step\":{step}}}")).unwrap();
        std::fs::write(d.join("optimizer.safetensors"), b"x").unwrap();
    }

    #[test]
    fn averages_the_last_n() {
        let tmp = std::env::temp_dir().join(format!("seqlab-mt-avg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let root = tmp.join("run/checkpoints");
        for (s, v) in [(100, 100.0), (200, 1.0), (300, 2.0), (400, 6.0)] {
            write_ck(&root, s, v);
        }
        std::fs::create_dir_all(root.join("best")).unwrap();
        let dirs = last_checkpoints(&tmp.join("run"), 3).unwrap();
        assert_eq!(
            dirs.iter()
                .map(|d| d.file_name().unwrap().to_str().unwrap().to_string())
                .collect::<Vec<_>>(),
            ["step-00000200", "step-00000300", "step-00000400"]
        );
        let out = tmp.join("avg");
        assert_eq!(average_checkpoints(&dirs, &out, IfExists::Refuse).unwrap(), 2);
        let m = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(m["a.weight"].to_vec2::<f32>().unwrap(), vec![vec![3.0f32; 3]; 2]);
        assert_eq!(m["b"].to_vec1::<f32>().unwrap(), vec![3.0, 6.0]);
        assert!(out.join("trainer.json").is_file());
        assert!(!out.join("optimizer.safetensors").exists());
        assert!(std::fs::read_to_string(out.join("trainer.json"))
            .unwrap()
            .contains("400"));
        // Errors, not panics.
        assert!(last_checkpoints(&tmp.join("run"), 9).is_err());
        assert!(last_checkpoints(&tmp.join("run"), 0).is_err());
        assert!(last_checkpoints(&tmp.join("nope"), 1).is_err());
        // An existing folder (`best` of the run) is refused unless replaced, and a replaced
        // one keeps none of its old files (its optimizer state would pair with other weights).
        let best = root.join("best");
        std::fs::write(best.join("optimizer.safetensors"), b"old").unwrap();
        let e = average_checkpoints(&dirs, &best, IfExists::Refuse)
            .unwrap_err()
            .to_string();
        assert!(e.contains("best") && e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(best.join("optimizer.safetensors")).unwrap(), b"old");
        average_checkpoints(&dirs, &best, IfExists::Replace).unwrap();
        assert!(!best.join("optimizer.safetensors").exists() && best.join("model.safetensors").exists());
        let e = average_checkpoints(&dirs, &dirs[2], IfExists::Replace)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of the checkpoints"), "{e}");
        std::fs::write(root.join("step-00000400/model.safetensors"), b"junk").unwrap();
        assert!(average_checkpoints(&dirs, &tmp.join("avg2"), IfExists::Refuse).is_err());
        assert!(!tmp.join("avg2").exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
