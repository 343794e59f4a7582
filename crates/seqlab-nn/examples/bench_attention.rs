//! Training-step throughput of ONE Transformer encoder layer (forward + backward + plain SGD).
//!
//! `cargo run --release -p seqlab-nn --example bench_attention -- [steps] [dropout] [batch] [seq]`
//! Defaults: 5 timed steps after 1 warm-up, dropout 0.1, batch 32, seq 128; d_model 512,
//! 8 heads, FFN 2048, post-norm ReLU (PyTorch's defaults). The comparison with
//! PyTorch is `bench/run.py --rows encoder` (docs/BENCHMARKS.md).

use seqlab_nn::attention::sdpa_reference;
use seqlab_nn::{
    scaled_dot_product_attention, SdpaOptions, SeqRng, TransformerEncoderLayer, TransformerLayerConfig, VarStore,
};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let steps = arg(1, 5.0) as usize;
    let dropout = arg(2, 0.1);
    let (batch, seq) = (arg(3, 32.0) as usize, arg(4, 128.0) as usize);
    let dev = candle_core::Device::Cpu;
    let vs = VarStore::new(0, &dev);
    let cfg = TransformerLayerConfig {
        dropout,
        ..TransformerLayerConfig::new(512, 8)
    };
    let layer = TransformerEncoderLayer::new(&cfg, &vs)?;
    let x = SeqRng::new(1).normal((batch, seq, 512), 0.0, 1.0, &dev)?;
    let probe = SeqRng::new(2).normal((batch, seq, 512), 0.0, 1.0, &dev)?;
    let params = vs.trainable();
    let lr = 1e-4;
    let mut times = Vec::new();
    let mut parts = [0f64; 3];
    for step in 0..steps + 1 {
        let t0 = Instant::now();
        let y = layer.forward(&x, None, None, false, true)?;
        let loss = (y * &probe)?.sum_all()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        for (_, var) in &params {
            if let Some(g) = grads.get(var) {
                var.set(&(var.as_tensor() - (g * lr)?)?)?;
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        if step > 0 {
            times.push(dt);
            parts[0] += (t1 - t0).as_secs_f64();
            parts[1] += (t2 - t1).as_secs_f64();
            parts[2] += t2.elapsed().as_secs_f64();
        }
    }
    let n = steps as f64;
    println!(
        "mean forward {:.1} ms, backward {:.1} ms, update {:.1} ms",
        parts[0] / n * 1e3,
        parts[1] / n * 1e3,
        parts[2] / n * 1e3
    );
    attention_only(batch, seq, steps)?;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let tokens = (batch * seq) as f64;
    println!(
        "seqlab encoder layer d=512 h=8 ff=2048 B={batch} L={seq} dropout={dropout}: median step {:.1} ms, {:.0} tokens/s (best {:.0})",
        median * 1e3,
        tokens / median,
        tokens / times[0]
    );
    Ok(())
}

/// Attention alone (B, 8, L, 64), forward + backward: the fused op against plain candle ops.
fn attention_only(batch: usize, seq: usize, steps: usize) -> candle_core::Result<()> {
    let dev = candle_core::Device::Cpu;
    let mk = |s: u64| -> candle_core::Result<candle_core::Var> {
        candle_core::Var::from_tensor(&SeqRng::new(s).normal((batch, 8, seq, 64), 0.0, 1.0, &dev)?)
    };
    let (q, k, v) = (mk(1)?, mk(2)?, mk(3)?);
    let probe = SeqRng::new(4).normal((batch, 8, seq, 64), 0.0, 1.0, &dev)?;
    for fused in [true, false] {
        let mut best = f64::MAX;
        for _ in 0..steps.max(2) {
            let t0 = Instant::now();
            let y = if fused {
                scaled_dot_product_attention(&q, &k, &v, &SdpaOptions::default())?
            } else {
                sdpa_reference(&q, &k, &v, None, 0.125)?
            };
            (y * &probe)?.sum_all()?.backward()?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!(
            "attention only fwd+bwd ({}): best {:.1} ms",
            if fused { "fused op" } else { "candle ops" },
            best * 1e3
        );
    }
    Ok(())
}
