//! Runs EVERY PyTorch reference case in `$SEQLAB_TORCH_FIXTURES` (default: this crate's
//! `tests/golden`) and checks outputs to 1e-5 and gradients to 1e-4 relative error, on BOTH
//! op paths ([`Path::Fused`] CPU kernels and [`Path::Composed`] candle ops, the GPU's path),
//! on `$SEQLAB_TEST_DEVICE` (default cpu). A case whose `module` is unknown, a missing tensor,
//! or a case with nothing to check fails.

mod parity;

use seqlab_nn::ops::{with_path, Path};
use std::path::PathBuf;

#[test]
fn torch_parity_all_cases() {
    let dir = parity::fixture_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixture folder {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.safetensors cases in {}", dir.display());
    let mut failed = Vec::new();
    println!("device {:?}", parity::device().location());
    for (f, path) in files.iter().flat_map(|f| [(f, Path::Fused), (f, Path::Composed)]) {
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        let name = format!("{file} [{path:?}]");
        match with_path(path, || parity::check_file(f)) {
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
        "{} of {} case runs ({} files, both paths) failed: {}",
        failed.len(),
        2 * files.len(),
        files.len(),
        failed.join(", ")
    );
}

/// The harness itself can fail: an unknown `module` is an error, not a skip.
#[test]
fn unknown_module_is_a_failure() {
    let case = parity::Case {
        name: "made_up".into(),
        module: "no_such_layer".into(),
        config: serde_json::json!({}),
        loss_outputs: vec![],
        tensors: Default::default(),
    };
    let err = parity::run_case(&case).err().expect("an unknown module must fail");
    assert!(err.to_string().contains("unknown module `no_such_layer`"), "{err}");
}

/// A wrong result is caught: perturbing one expected output makes `compare` report it.
#[test]
fn a_perturbed_expected_output_fails() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/layer_norm.safetensors");
    let mut case = parity::Case::load(&path).unwrap();
    let computed = parity::run_case(&case).unwrap();
    assert!(parity::compare(&case, &computed).unwrap().failures.is_empty());
    let y = case.tensors["output.y"].clone();
    case.tensors.insert("output.y".into(), (y * 1.001).unwrap());
    let rep = parity::compare(&case, &computed).unwrap();
    assert!(
        rep.failures.iter().any(|f| f.starts_with("output.y")),
        "{:?}",
        rep.failures
    );
}
