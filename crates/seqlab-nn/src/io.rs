//! Safetensors files written atomically, so a run killed mid-write never leaves a torn file.

use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Writes `tensors` (and optional string metadata) to `path` via a temp file and a rename.
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

/// Writes bytes to `path` through `path.tmp` + fsync + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let ctx = |e: std::io::Error| candle_core::Error::Msg(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(ctx)?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(ctx)?;
    f.write_all(bytes).map_err(ctx)?;
    f.sync_all().map_err(ctx)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(ctx)
}
