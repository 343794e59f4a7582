//! Metrics as JSON lines: one object per event, appended and flushed, so a killed run keeps
//! everything it logged and `seqlab plot` can read a run while it is still going.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Appends JSON objects to a `.jsonl` file.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending (creating it and its folder).
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Drops every record with `step > last_step`: on resume, events logged after the
    /// checkpoint being resumed from are about to happen again.
    pub fn truncate_after(path: &Path, last_step: u64) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        // A run killed mid-write can leave a torn last line: drop it, it is logged again.
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        if let Some(last) = text.lines().last() {
            if serde_json::from_str::<Value>(last).is_err() {
                let cut = text.len() - text.trim_end_matches('\n').len() + last.len();
                seqlab_nn::io::write_atomic(path, text[..text.len() - cut].as_bytes())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        let kept: Vec<Map<String, Value>> = read_jsonl(path)?
            .into_iter()
            .filter(|r| r.get("step").and_then(Value::as_u64).is_none_or(|s| s <= last_step))
            .collect();
        let mut text = String::new();
        for r in kept {
            text.push_str(&serde_json::to_string(&r)?);
            text.push('\n');
        }
        seqlab_nn::io::write_atomic(path, text.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub fn log(&mut self, record: &Value) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.file, "{line}").with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a `.jsonl` file; a malformed line is an error naming file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => out.push(m),
            Ok(_) => anyhow::bail!("{}:{}: expected a JSON object", path.display(), i + 1),
            Err(e) => anyhow::bail!("{}:{}: invalid JSON: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn append_read_truncate() {
        let dir = std::env::temp_dir().join(format!("seqlab-metrics-{}", std::process::id()));
        let p = dir.join("m.jsonl");
        let _ = std::fs::remove_file(&p);
        {
            let mut m = MetricsLog::open(&p).unwrap();
            for s in 1..=4u64 {
                m.log(&json!({"step": s, "split": "train", "loss": 1.0 / s as f64}))
                    .unwrap();
            }
        }
        assert_eq!(read_jsonl(&p).unwrap().len(), 4);
        MetricsLog::truncate_after(&p, 2).unwrap();
        let r = read_jsonl(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1]["step"], 2);
        // A torn last line (a kill mid-write) is dropped on resume.
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        MetricsLog::truncate_after(&p, 5).unwrap();
        assert_eq!(read_jsonl(&p).unwrap().len(), 2);
        std::fs::write(&p, "{\"step\":1}\nnot json\n").unwrap();
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:2: invalid JSON"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
