//! Files written atomically, so a run killed mid-write never leaves a torn file and two
//! processes writing the same file never share a temporary one.
//!
//! Every write goes to a temporary file in the destination's own folder (a rename is only
//! atomic within one file system), named `.NAME.PID.COUNTER.tmp` so that two processes, or two
//! threads of one process, never write the same temporary file; the data is synced, renamed
//! over the destination, and the folder is synced so that the rename itself survives a crash.

use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `tensors` (and optional string metadata) to `path` atomically (see [`write_atomic`]).
pub fn save_tensors_atomic(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let data: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| {
            Ok((
                (*n).clone(),
                // CPU by design: checkpoints stay device-independent (saving copies to the CPU).
                tensors[*n].to_device(&candle_core::Device::Cpu)?.contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    for (n, t) in &data {
        views.push((n.clone(), t));
    }
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// A fresh name beside `path` for a temporary file or folder: `.NAME.PID.COUNTER.tmp`, unique
/// among the processes of this machine (pid) and the calls of this process (counter). The
/// leading dot and the `.tmp` ending mark it as debris if the process dies before the rename.
pub fn unique_temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| OsString::from("file"));
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(tmp)
}

/// Syncs a folder, so that a rename inside it survives a power cut (best effort: some file
/// systems refuse to open folders for syncing).
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes bytes to `path` atomically: a unique temporary file in the same folder
/// ([`unique_temp_path`]), fsync, rename over `path`, fsync of the folder. Creates missing
/// parent folders. On failure the temporary file is removed and `path` is untouched. Errors
/// name `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_io(path, bytes).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

/// [`write_atomic`] with a plain `std::io::Error` (that does not name the path).
pub fn write_atomic_io(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new(""));
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = unique_temp_path(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique_and_hidden_beside_the_target() {
        let p = Path::new("/some/dir/config.toml");
        let (a, b) = (unique_temp_path(p), unique_temp_path(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".config.toml.") && name.ends_with(".tmp"), "{name}");
        assert!(name.contains(&std::process::id().to_string()), "{name}");
    }

    /// Many threads replacing one file at once: every write succeeds (no shared temporary
    /// file), the result is one whole write, and no temporary file is left behind.
    #[test]
    fn concurrent_writers_never_collide_or_tear() {
        let dir = std::env::temp_dir().join(format!("seqlab-io-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("config.toml");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, &vec![b'a' + t; 4096]).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(got.iter().all(|&b| b == got[0]), "a torn write");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.toml"], "temporary files left behind");
        // A failed write leaves the old file and no debris.
        let blocker = dir.join("sub");
        std::fs::write(&blocker, "file, not folder").unwrap();
        let e = write_atomic(&blocker.join("x"), b"1").unwrap_err().to_string();
        assert!(e.contains("sub/x"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
