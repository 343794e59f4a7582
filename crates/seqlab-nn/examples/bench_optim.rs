//! One AdamW step over ~3.1M parameters: seqlab's fused in-place update vs the same update
//! written as candle tensor ops (what a naive port would do).
//!
//! `cargo run --release -p seqlab-nn --example bench_optim [iterations]`

use candle_core::{Tensor, Var};
use seqlab_nn::{AdamW, AdamWConfig, Init, Optimizer, VarStore};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dev = candle_core::Device::Cpu;
    let vs = VarStore::new(0, &dev);
    let shapes = [(4096usize, 512usize), (512, 1024), (1024, 512), (512, 1)];
    for (i, s) in shapes.iter().enumerate() {
        vs.param(&format!("p{i}"), *s, Init::Normal { mean: 0.0, std: 0.02 })?;
    }
    let params = vs.trainable();
    let grads: Vec<(Var, Tensor)> = params
        .iter()
        .map(|(_, v)| Ok((v.clone(), (v.as_tensor() * 0.5)?.cos()?)))
        .collect::<candle_core::Result<_>>()?;
    let n: usize = params.iter().map(|(_, v)| v.elem_count()).sum();

    let mut opt = AdamW::new(params.clone(), AdamWConfig::default())?;
    let mut t = vec![];
    for _ in 0..iters {
        let s = Instant::now();
        opt.step_with(&grads)?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    report("fused", n, &mut t);

    // Same arithmetic with tensor ops.
    let cfg = AdamWConfig::default();
    let (b1, b2) = cfg.betas;
    let mut state: Vec<(Tensor, Tensor)> = params
        .iter()
        .map(|(_, v)| Ok((v.zeros_like()?, v.zeros_like()?)))
        .collect::<candle_core::Result<_>>()?;
    let mut t = vec![];
    for step in 1..=iters {
        let s = Instant::now();
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = (1.0 - b2.powi(step as i32)).sqrt();
        for ((v, g), (m, vv)) in grads.iter().zip(state.iter_mut()) {
            let p = (v.as_tensor() * (1.0 - cfg.lr * cfg.weight_decay))?;
            *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
            *vv = ((&*vv * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((vv.sqrt()? / bc2)? + cfg.eps)?;
            let p = (p - ((&*m / denom)? * (cfg.lr / bc1))?)?;
            v.set(&p)?;
        }
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    report("tensor-op", n, &mut t);
    Ok(())
}

fn report(name: &str, n: usize, t: &mut [f64]) {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:10} AdamW step over {n} params: median {:.2} ms, min {:.2} ms",
        t[t.len() / 2],
        t[0]
    );
}
