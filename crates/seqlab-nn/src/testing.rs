//! Helpers for tests: gradient reachability, exact comparisons, thread pools, scratch folders.

use crate::{SeqRng, VarStore};
use candle_core::{Result, Tensor};

/// A scalar loss `sum(y * probe)` with a fixed random probe, so that no gradient vanishes by
/// symmetry (a plain `sum` of a LayerNorm output has zero gradient, for one).
pub fn probe_loss(y: &Tensor) -> Result<Tensor> {
    let probe = SeqRng::new(12345).normal(y.shape(), 0.0, 1.0, y.device())?;
    (y * probe)?.sum_all()
}

/// Asserts that one backward pass from `probe_loss(y)` gives every trainable parameter in
/// `vs` a finite, non-zero gradient. Panics naming the parameters that did not get one.
pub fn assert_all_params_get_grad(vs: &VarStore, y: &Tensor) {
    let grads = probe_loss(y).unwrap().backward().unwrap();
    let mut bad = Vec::new();
    for (name, var) in vs.trainable() {
        match grads.get(&var) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                if v.iter().any(|x| !x.is_finite()) {
                    bad.push(format!("{name}: non-finite gradient"));
                } else if v.iter().all(|x| *x == 0.0) {
                    bad.push(format!("{name}: all-zero gradient"));
                }
            }
        }
    }
    assert!(!vs.trainable().is_empty(), "model has no trainable parameters");
    assert!(
        bad.is_empty(),
        "parameters without a usable gradient: {}",
        bad.join(", ")
    );
}

/// Largest absolute element-wise difference of two same-shaped tensors (panics on mismatch:
/// for tests).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A tensor of N(0, 1) draws from the project's seeded RNG (for tests).
pub fn randn(seed: u64, shape: &[usize]) -> Tensor {
    SeqRng::new(seed)
        // CPU by design: a test helper (tests run on the CPU).
        .normal(shape, 0.0, 1.0, &candle_core::Device::Cpu)
        .unwrap()
}

/// The bit patterns of `v`, for comparisons that must be exact (NaN included).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `f` run inside a fresh rayon pool of `threads` threads (for results that must not depend
/// on the thread count).
pub fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("building a rayon pool")
        .install(f)
}

/// A fresh, empty scratch folder for a test, unique to the tag and the process.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a scratch folder");
    d
}

/// Relative error ‖a−b‖/‖b‖ over all elements, in f64 (the absolute ‖a−b‖ when b is all
/// zeros). The measure the PyTorch-parity tolerances are stated in.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(candle_core::DType::F64)?.flatten_all()?;
    let b = b.to_dtype(candle_core::DType::F64)?.flatten_all()?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

/// A deterministic stream of choices for tests (Knuth's MMIX linear congruential generator,
/// its high bits), where the model's seeded RNG would tie a test to its draws.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize % n
    }
}
