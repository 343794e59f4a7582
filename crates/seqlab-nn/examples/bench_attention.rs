//! Training-step throughput of ONE Transformer encoder layer (forward + backward + plain SGD).
//!
//! `cargo run --release -p seqlab-nn --example bench_attention -- [steps] [dropout] [batch] [seq]`
//! Defaults: 5 timed steps after 1 warm-up, dropout 0.1, batch 32, seq 128; d_model 512,
//! 8 heads, FFN 2048, post-norm ReLU (PyTorch's defaults). Compare with
//! `bench/torch_encoder.py` (same shapes, `torch.set_num_threads(2)`).

use seqlab_nn::{SeqRng, TransformerEncoderLayer, TransformerLayerConfig, VarStore};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let steps = arg(1, 5.0) as usize;
    let dropout = arg(2, 0.1);
    let (batch, seq) = (arg(3, 32.0) as usize, arg(4, 128.0) as usize);
    let dev = candle_core::Device::Cpu;
    let vs = VarStore::new(0, &dev);
    let cfg = TransformerLayerConfig { dropout, ..TransformerLayerConfig::new(512, 8) };
    let layer = TransformerEncoderLayer::new(&cfg, &vs)?;
    let x = SeqRng::new(1).normal((batch, seq, 512), 0.0, 1.0, &dev)?;
    let probe = SeqRng::new(2).normal((batch, seq, 512), 0.0, 1.0, &dev)?;
    let params = vs.trainable();
    let lr = 1e-4;
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let t0 = Instant::now();
        let y = layer.forward(&x, None, None, false, true)?;
        let loss = (y * &probe)?.sum_all()?;
        let grads = loss.backward()?;
        for (_, var) in &params {
            if let Some(g) = grads.get(var) {
                var.set(&(var.as_tensor() - (g * lr)?)?)?;
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        if step > 0 {
            times.push(dt);
        }
    }
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
