//! One call of Mamba's fused selective scan, forward and backward, for instruction counting
//! (callgrind is deterministic; wall-clock on a shared machine is not):
//!
//! ```text
//! cargo build -p seqlab-nn --example scan_one_call
//! RAYON_NUM_THREADS=1 valgrind --tool=callgrind --toggle-collect='*SelectiveScanOp*forward*' \
//!     --toggle-collect='*SelectiveScanOp*backward*' target/debug/examples/scan_one_call [batch]
//! ```
//!
//! Shape: batch (default 4) × L 128, d_inner 512, d_state 16 — the Shakespeare preset's
//! mixer (d_model 256) at a smaller batch. Inputs are drawn as in the parity tests: u, delta,
//! B, C, z ~ N(0, 1), A = −exp(N(0, 1)), delta_bias ~ N(0, 0.25).

use candle_core::{Tensor, Var};
use seqlab_nn::mamba::{selective_scan, ScanInputs};
use seqlab_nn::SeqRng;

fn main() -> candle_core::Result<()> {
    let batch: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let (l, d, n) = (128, 512, 16);
    let dev = candle_core::Device::Cpu;
    let mut rng = SeqRng::new(7);
    let mut var = |shape: &[usize], scale: f64| -> candle_core::Result<Var> {
        Var::from_tensor(&(rng.normal(shape, 0.0, 1.0, &dev)? * scale)?)
    };
    let u = var(&[batch, l, d], 1.0)?;
    let delta = var(&[batch, l, d], 1.0)?;
    let a = Var::from_tensor(&var(&[d, n], 1.0)?.as_tensor().exp()?.neg()?)?;
    let b = var(&[batch, l, n], 1.0)?;
    let c = var(&[batch, l, n], 1.0)?;
    let dskip = var(&[d], 1.0)?;
    let z = var(&[batch, l, d], 1.0)?;
    let bias = var(&[d], 0.5)?;
    let probe = SeqRng::new(8).normal((batch, l, d), 0.0, 1.0, &dev)?;
    let out = selective_scan(
        ScanInputs {
            u: u.as_tensor(),
            delta: delta.as_tensor(),
            a: a.as_tensor(),
            b: b.as_tensor(),
            c: c.as_tensor(),
            d: dskip.as_tensor(),
            z: z.as_tensor(),
            delta_bias: bias.as_tensor(),
        },
        None,
    )?;
    let grads = (out.y * &probe)?.sum_all()?.backward()?;
    let gu: &Tensor = grads.get(&u).expect("u gets a gradient");
    // Printed so that the work cannot be optimised away, and as a check between builds.
    println!(
        "scan ({batch}, {l}, {d}, {n}): sum y·probe grad-u checksum {:.6e}",
        gu.sqr()?.sum_all()?.to_scalar::<f32>()?
    );
    Ok(())
}
