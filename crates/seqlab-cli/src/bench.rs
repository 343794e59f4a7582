//! `seqlab bench layers`: tokens/s of one training step (forward, backward, AdamW) per model.
//! `bench/torch_layers.py` runs the same steps in PyTorch and prints the ratios.

use clap::Args;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to time: `layers` (2-layer LSTM, 2-layer GRU, one Transformer encoder layer).
    #[arg(default_value = "layers")]
    pub what: String,
    /// Timed steps per model (after warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Warm-up steps per model, not timed.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Only models whose name contains this string.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print one JSON object per model instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Times `step` and returns tokens/s.
#[allow(dead_code)]
pub fn time_steps(tokens_per_step: usize, warmup: usize, steps: usize, mut step: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok((tokens_per_step * steps) as f64 / t.elapsed().as_secs_f64())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.what != "layers" {
        anyhow::bail!("unknown benchmark `{}` (known: layers)", args.what);
    }
    anyhow::bail!("no layer benchmarks are registered yet")
}
