//! `seqlab bench layers`: tokens/s of one training step (forward, backward, AdamW update) of
//! the models in issue #2's table. `bench/torch_layers.py` runs the same steps in PyTorch in
//! the same script run and prints the seqlab/PyTorch ratios.

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use seqlab_nn::optim::{AdamW, AdamWConfig, Optimizer};
use seqlab_nn::recurrent::{Gru, Lstm, RecurrentConfig};
use seqlab_nn::transformer::{TransformerEncoderLayer, TransformerLayerConfig};
use seqlab_nn::{SeqRng, VarStore};
use std::time::Instant;

/// Arguments of `seqlab bench`: what to time and how many steps.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to time: `layers` (2-layer LSTM, 2-layer GRU, one Transformer encoder layer).
    #[arg(default_value = "layers")]
    pub what: String,
    /// Timed steps per model (after the warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Warm-up steps per model, not timed.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Only models whose name contains this string (lstm, gru, encoder).
    #[arg(long)]
    pub filter: Option<String>,
    /// Print one JSON object per model instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Times `step` and returns tokens/s.
fn time_steps(
    tokens_per_step: usize,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok((tokens_per_step * steps) as f64 / t.elapsed().as_secs_f64())
}

fn c<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// One training step: loss = Σ out·probe (a fixed random probe), backward, AdamW.
fn train_step(vs: &VarStore, opt: &mut AdamW, out: Tensor, probe: &Tensor) -> Result<()> {
    let _ = vs;
    let g = c((out * probe).and_then(|l| l.sum_all()).and_then(|l| l.backward()))?;
    c(opt.step(&g))
}

struct Case {
    name: &'static str,
    shape: String,
    tokens: usize,
}

fn recurrent(name: &str, steps: usize, warmup: usize) -> Result<f64> {
    let (b, t, i, h) = (32, 64, 256, 512);
    let vs = VarStore::new(0, &Device::Cpu);
    let cfg = RecurrentConfig {
        num_layers: 2,
        batch_first: true,
        ..RecurrentConfig::new(i, h)
    };
    let mut r = SeqRng::new(1);
    let x = c(r.normal((b, t, i), 0.0, 1.0, &Device::Cpu))?;
    let probe = c(r.normal((b, t, h), 0.0, 1.0, &Device::Cpu))?;
    if name == "lstm" {
        let net = c(Lstm::new(&cfg, &vs))?;
        let mut opt = c(AdamW::new(vs.trainable(), AdamWConfig::new(1e-3)))?;
        time_steps(b * t, warmup, steps, || {
            let (out, _, _) = c(net.forward(&x, None, None, true))?;
            train_step(&vs, &mut opt, out, &probe)
        })
    } else {
        let net = c(Gru::new(&cfg, &vs))?;
        let mut opt = c(AdamW::new(vs.trainable(), AdamWConfig::new(1e-3)))?;
        time_steps(b * t, warmup, steps, || {
            let (out, _) = c(net.forward(&x, None, None, true))?;
            train_step(&vs, &mut opt, out, &probe)
        })
    }
}

fn encoder(steps: usize, warmup: usize) -> Result<f64> {
    let (b, t, d) = (32, 128, 512);
    let vs = VarStore::new(0, &Device::Cpu);
    let mut cfg = TransformerLayerConfig::new(d, 8);
    cfg.dim_feedforward = 2048;
    cfg.dropout = 0.1;
    let layer = c(TransformerEncoderLayer::new(&cfg, &vs))?;
    let mut r = SeqRng::new(1);
    let x = c(r.normal((b, t, d), 0.0, 1.0, &Device::Cpu))?;
    let probe = c(r.normal((b, t, d), 0.0, 1.0, &Device::Cpu))?;
    let mut opt = c(AdamW::new(vs.trainable(), AdamWConfig::new(1e-3)))?;
    time_steps(b * t, warmup, steps, || {
        let out = c(layer.forward(&x, None, None, false, true))?;
        train_step(&vs, &mut opt, out, &probe)
    })
}

/// Runs `seqlab bench`: times forward+backward steps per model and prints the results.
/// Rejects an unknown benchmark name and `--steps 0`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.what != "layers" {
        anyhow::bail!("unknown benchmark `{}` (known: layers)", args.what);
    }
    anyhow::ensure!(args.steps > 0, "--steps must be > 0");
    let cases = [
        Case {
            name: "lstm",
            shape: "2 layers, input 256, hidden 512, batch 32, seq 64".into(),
            tokens: 32 * 64,
        },
        Case {
            name: "gru",
            shape: "2 layers, input 256, hidden 512, batch 32, seq 64".into(),
            tokens: 32 * 64,
        },
        Case {
            name: "encoder",
            shape: "d_model 512, 8 heads, FFN 2048, batch 32, seq 128".into(),
            tokens: 32 * 128,
        },
    ];
    if !args.json {
        println!(
            "training step (forward + backward + AdamW), {} threads, {} timed steps",
            rayon_threads(),
            args.steps
        );
        println!("{:8} {:>12}  shape", "model", "tokens/s");
    }
    for case in &cases {
        if args.filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let tps = match case.name {
            "encoder" => encoder(args.steps, args.warmup)?,
            n => recurrent(n, args.steps, args.warmup)?,
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({"model": case.name, "tokens_per_s": tps, "tokens_per_step": case.tokens, "shape": case.shape})
            );
        } else {
            println!("{:8} {:>12.0}  {}", case.name, tps, case.shape);
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
