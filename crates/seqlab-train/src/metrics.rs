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
    /// `None` for a [`MetricsLog::sink`].
    file: Option<File>,
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
            file: Some(file),
        })
    }

    /// A log that writes nothing: what the ranks other than rank 0 of a data-parallel run
    /// log into (rank 0 alone writes the run's files).
    pub fn sink() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
        }
    }

    /// Drops every record with `step > last_step`: on resume, events logged after the
    /// checkpoint being resumed from are about to happen again. Kept lines keep their original
    /// bytes (never parsed and written again, which could change a float's last digits), so a
    /// resumed run's file equals an uninterrupted run's. A torn last line (a kill in the middle
    /// of a write) is dropped; a malformed line elsewhere is an error naming file and line.
    /// Returns how many lines were dropped.
    pub fn truncate_after(path: &Path, last_step: u64) -> Result<usize> {
        if !path.exists() {
            return Ok(0);
        }
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let (kept, dropped) = lines_up_to(path, &bytes, last_step)?;
        if dropped > 0 || kept.len() != bytes.len() {
            seqlab_nn::io::write_atomic(path, &kept).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(dropped)
    }

    /// Moves an existing, non-empty metrics file aside to the first free
    /// `NAME.stale-N` beside it (a fresh run must not append to the lines of a run that never
    /// reached a checkpoint); returns where it went.
    pub fn set_aside(path: &Path) -> Result<Option<PathBuf>> {
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => {}
            _ => return Ok(None),
        }
        let mut n = 1;
        let to = loop {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".stale-{n}"));
            let p = PathBuf::from(name);
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        std::fs::rename(path, &to).with_context(|| format!("moving {} to {}", path.display(), to.display()))?;
        Ok(Some(to))
    }

    /// Appends `record` as one JSON line, written in one call so a kill tears at most the last line.
    pub fn log(&mut self, record: &Value) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::to_string(record)?;
        // One write per record: a kill leaves at most one torn last line.
        line.push('\n');
        file.write_all(line.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        file.flush()?;
        Ok(())
    }

    /// Path of the `.jsonl` file being written.
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

/// The bytes of the lines of `bytes` to keep on resume at `last_step` (each with its `\n`), and
/// how many complete lines were dropped. See [`MetricsLog::truncate_after`].
fn lines_up_to(path: &Path, bytes: &[u8], last_step: u64) -> Result<(Vec<u8>, usize)> {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = 0;
    let mut rest = bytes;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let (line, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true),
            None => (rest, false),
        };
        rest = &rest[(line.len() + terminated as usize).min(rest.len())..];
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let rec = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => m,
            // The last line without its newline is a write cut short by a kill.
            _ if !terminated => break,
            Ok(_) => anyhow::bail!("{}:{line_no}: expected a JSON object", path.display()),
            Err(e) => anyhow::bail!("{}:{line_no}: invalid JSON: {e}", path.display()),
        };
        if rec.get("step").and_then(Value::as_u64).is_none_or(|s| s <= last_step) {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        } else {
            dropped += 1;
        }
    }
    Ok((kept, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn append_read_truncate() {
        let dir = std::env::temp_dir().join(format!("seqlab-metrics-{}", std::process::id()));
        let p = dir.join("m.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
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
        // Kept lines keep their bytes (a parse + print round trip changed last digits), a
        // record without a step stays, and a complete last line without its newline stays.
        let body = "{\"step\":1,\"loss\":3.6566083908081053}\n{\"note\":\"x\"}\n{\"step\":3,  \"loss\":1.0000000000000002e-300}\n{\"step\":9}\n{\"step\":4}";
        std::fs::write(&p, body).unwrap();
        assert_eq!(MetricsLog::truncate_after(&p, 4).unwrap(), 1);
        let want = "{\"step\":1,\"loss\":3.6566083908081053}\n{\"note\":\"x\"}\n{\"step\":3,  \"loss\":1.0000000000000002e-300}\n{\"step\":4}\n";
        assert_eq!(std::fs::read_to_string(&p).unwrap(), want);
        // A malformed line before the end is not silently dropped.
        std::fs::write(&p, "{\"step\":1}\n{\"st\n{\"step\":2}\n").unwrap();
        let e = MetricsLog::truncate_after(&p, 5).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:2"), "{e}");
        // A fresh run moves old lines aside, to a name that is free.
        assert_eq!(MetricsLog::set_aside(&p).unwrap().unwrap(), dir.join("m.jsonl.stale-1"));
        assert!(!p.exists());
        std::fs::write(&p, "{}\n").unwrap();
        assert_eq!(MetricsLog::set_aside(&p).unwrap().unwrap(), dir.join("m.jsonl.stale-2"));
        assert_eq!(MetricsLog::set_aside(&p).unwrap(), None);
        std::fs::write(&p, "{\"step\":1}\nnot json\n").unwrap();
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:2: invalid JSON"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
