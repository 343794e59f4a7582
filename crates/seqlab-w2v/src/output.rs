//! Writing output files safely, for every command that writes one: the target is checked
//! before any work starts (folder exists and is writable, target is not a folder and not one
//! of the inputs), and the file is written under a unique temporary name in the same folder,
//! synced, then renamed over the target, so a crash or kill mid-write leaves the previous
//! file intact and no half-written one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The folder a path lives in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Where `path` resolves to once it exists: the canonical folder joined with the file name.
/// `None` when the folder cannot be resolved (it is then reported as missing).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    Some(folder_of(path).canonicalize().ok()?.join(path.file_name()?))
}

/// Whether two paths name the same file: same resolved path, or (Unix, both existing) the
/// same device and inode, which also catches hard links.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if x.dev() == y.dev() && x.ino() == y.ino() {
                return true;
            }
        }
    }
    matches!((resolved(a), resolved(b)), (Some(x), Some(y)) if x == y)
}

/// Checks that `output` can be written and is none of `inputs`, before any work is done.
/// Rejects: an empty path; a path ending in a separator or naming an existing folder; a
/// missing folder; a folder where a file cannot be created; a path that names the same file
/// as one of `inputs` (compared after resolving links and `..`, and by inode on Unix).
pub fn check_output(output: &Path, inputs: &[&Path]) -> Result<()> {
    if output.as_os_str().is_empty() {
        bail!("the output path is empty");
    }
    if output.is_dir() || output.file_name().is_none() {
        bail!("output {} is a folder; give a file name", output.display());
    }
    let folder = folder_of(output);
    if !folder.is_dir() {
        bail!(
            "cannot write {}: the folder {} does not exist",
            output.display(),
            folder.display()
        );
    }
    for input in inputs {
        if same_file(input, output) {
            bail!(
                "output {} is the input file {}: writing it would destroy the input; choose another output",
                output.display(),
                input.display()
            );
        }
    }
    // Creating (and at once removing) a file is the only sure test of write permission.
    tempfile::Builder::new()
        .prefix(".seqlab-write-check-")
        .tempfile_in(folder)
        .with_context(|| {
            format!(
                "cannot write {}: cannot create a file in {}",
                output.display(),
                folder.display()
            )
        })?;
    Ok(())
}

/// Writes `path` atomically: `write` fills a buffered temporary file with a unique name
/// (`.NAME.XXXXXX.tmp`, created in `path`'s folder so the rename cannot cross file systems),
/// which is synced and renamed over `path`. On any error the temporary file is removed and
/// an existing `path` is left as it was. The file gets the usual permissions (0666 less the
/// umask on Unix).
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> Result<()>) -> Result<()> {
    let ctx = || format!("cannot write {}", path.display());
    let folder = folder_of(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = b.tempfile_in(folder).with_context(ctx)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut w).with_context(ctx)?;
        w.flush().with_context(ctx)?;
    }
    tmp.as_file().sync_all().with_context(ctx)?;
    tmp.persist(path).map_err(|e| e.error).with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("w2v-out-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn files_in(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn check_output_refuses_input_missing_folder_and_folders() {
        let d = dir("check");
        let input = d.join("c.txt");
        std::fs::write(&input, "a b\n").unwrap();
        // The same file under other spellings.
        for same in [input.clone(), d.join(".").join("c.txt"), d.join("sub/../c.txt")] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            let e = check_output(&same, &[&input]).unwrap_err().to_string();
            assert!(e.contains("is the input file"), "{}: {e}", same.display());
        }
        #[cfg(unix)]
        {
            let link = d.join("hard.txt");
            std::fs::hard_link(&input, &link).unwrap();
            assert!(check_output(&link, &[&input]).is_err());
        }
        let e = check_output(&d.join("no/such/folder/v.txt"), &[&input])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist") && e.contains("folder"), "{e}");
        let e = check_output(&d, &[&input]).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert!(check_output(Path::new(""), &[]).is_err());
        check_output(&d.join("v.txt"), &[&input]).unwrap();
        // The write check leaves nothing behind.
        assert_eq!(files_in(&d), ["c.txt", "hard.txt", "sub"]);
    }

    #[cfg(unix)]
    #[test]
    fn check_output_detects_a_read_only_folder() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("ro");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = tempfile::tempfile_in(&d).is_ok(); // root ignores the mode
        let r = check_output(&d.join("v.txt"), &[]);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !writable {
            let e = format!("{:#}", r.unwrap_err());
            assert!(e.contains("cannot create a file"), "{e}");
        } else {
            assert!(r.is_ok(), "a writable folder passes");
        }
    }

    #[test]
    fn a_failed_write_keeps_the_previous_file_and_leaves_no_temp() {
        let d = dir("atomic");
        let p = d.join("v.txt");
        write_atomic(&p, |w| Ok(w.write_all(b"old vectors\n")?)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"old vectors\n");
        // A writer that fails halfway (as a full disk or a kill would stop it).
        let e = write_atomic(&p, |w| {
            w.write_all(&[b'x'; 3 << 20])?;
            bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("v.txt"), "{e:#}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old vectors\n");
        assert_eq!(files_in(&d), ["v.txt"]);
        write_atomic(&p, |w| Ok(w.write_all(b"new\n")?)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
        assert_eq!(files_in(&d), ["v.txt"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let plain = d.join("plain");
            File::create(&plain).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&p), mode(&plain), "the same permissions as File::create gives");
        }
    }
}
