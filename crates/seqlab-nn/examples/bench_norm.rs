//! Fused vs composed LayerNorm, forward + backward, on a (32·128, 512) batch (CPU).
//!
//! `cargo run --release -p seqlab-nn --example bench_norm [iterations]`

use seqlab_nn::{LayerNorm, LayerNormConfig, SeqRng, VarStore};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dev = candle_core::Device::Cpu;
    let (rows, c) = (32 * 128, 512);
    let vs = VarStore::new(0, &dev);
    let ln = LayerNorm::new(&LayerNormConfig::new(c), &vs)?;
    let x = candle_core::Var::from_tensor(&SeqRng::new(1).normal((rows, c), 0.0, 1.0, &dev)?)?;
    let probe = SeqRng::new(2).normal((rows, c), 0.0, 1.0, &dev)?;
    let run = |fused: bool| -> candle_core::Result<f64> {
        let t = Instant::now();
        let y = if fused {
            ln.forward(x.as_tensor())?
        } else {
            ln.forward_composed(x.as_tensor())?
        };
        let g = (y * &probe)?.sum_all()?.backward()?;
        assert!(g.get(&x).is_some());
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    for (name, fused) in [
        ("composed", false),
        ("fused", true),
        ("composed", false),
        ("fused", true),
    ] {
        run(fused)?; // warm-up
        let mut ms: Vec<f64> = (0..iters).map(|_| run(fused)).collect::<candle_core::Result<_>>()?;
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name:9} fwd+bwd ({rows}, {c}): median {:.2} ms, min {:.2} ms over {iters} runs",
            ms[iters / 2],
            ms[0]
        );
    }
    Ok(())
}
