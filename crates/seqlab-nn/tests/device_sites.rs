//! Every `Device::Cpu` in the library code of the workspace is either gone (the device comes
//! from the model's `VarStore` or an input tensor, so the code runs on a GPU too) or marked
//! `// CPU by design: <why>` on its line or one of the three lines above (file I/O, pictures,
//! host-side optimizer state, the CPU default of a loader that has an `_on(device)` twin).
//!
//! Not scanned: test modules (from the first top-level `#[cfg(test)]`), `tests.rs` files,
//! `tests/`, `examples/`, doc comments, and `seqlab-nn/src/kernels/` (the fused CPU kernels,
//! which run only on CPU tensors: `ops::use_fused`). A new unmarked site fails this test with
//! its file and line.

use std::path::{Path, PathBuf};

const MARK: &str = "// CPU by design:";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `file:line: text` of every unmarked `Device::Cpu` in library code of the file's text.
fn unmarked(file: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("#[cfg(test)]"))
        .unwrap_or(lines.len());
    let mut bad = Vec::new();
    for (i, l) in lines[..end].iter().enumerate() {
        let code = l.trim_start();
        if !l.contains("Device::Cpu") || code.starts_with("//") {
            continue;
        }
        if !lines[i.saturating_sub(3)..=i].iter().any(|m| m.contains(MARK)) {
            bad.push(format!("{file}:{}: {}", i + 1, code));
        }
    }
    bad
}

#[test]
fn every_cpu_device_in_library_code_is_marked() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in std::fs::read_dir(&crates).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(
        files.len() > 50,
        "found only {} source files under {}",
        files.len(),
        crates.display()
    );
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&crates).unwrap().display().to_string();
        if rel.contains("seqlab-nn/src/kernels/") || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        bad.extend(unmarked(&rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(
        bad.is_empty(),
        "Device::Cpu in library code: take the device from the VarStore or an input tensor, or mark the line `{MARK} <why>`:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scan_sees_unmarked_sites_and_skips_tests_and_docs() {
    let text = "//! let x = Tensor::zeros(1, F32, &Device::Cpu);\n\
                fn f() { g(&Device::Cpu) }\n\
                // CPU by design: a file.\n\
                fn h() { g(&Device::Cpu) }\n\
                #[cfg(test)]\n\
                mod tests { fn t() { g(&Device::Cpu) } }\n";
    let bad = unmarked("x.rs", text);
    assert_eq!(bad, vec!["x.rs:2: fn f() { g(&Device::Cpu) }".to_string()]);
}
