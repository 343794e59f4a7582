//! Runs EVERY PyTorch reference case in `$SEQLAB_TORCH_FIXTURES` (default: this crate's
//! `tests/golden`, a copy of `shared/golden/torch`) and checks outputs to 1e-5 and gradients
//! to 1e-4 relative error. A case whose `module` is unknown, or a missing tensor, fails.

use std::path::PathBuf;

#[test]
fn torch_parity_all_cases() {
    let dir = std::env::var_os("SEQLAB_TORCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixture folder {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.safetensors cases in {}", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match seqlab_nn::golden::check_file(f) {
            Ok(r) if r.failures.is_empty() => {
                println!(
                    "ok   {name:40} {} tensors, worst rel err {:.2e} ({})",
                    r.checked, r.worst, r.worst_key
                )
            }
            Ok(r) => {
                println!(
                    "FAIL {name:40} worst rel err {:.2e}: {}",
                    r.worst,
                    r.failures.join("; ")
                );
                failed.push(name);
            }
            Err(e) => {
                println!("FAIL {name:40} {e}");
                failed.push(name);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed: {}",
        failed.len(),
        files.len(),
        failed.join(", ")
    );
}
