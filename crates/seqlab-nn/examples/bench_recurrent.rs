//! Training-step throughput of a 2-layer LSTM/GRU/RNN (input 256, hidden 512, batch 32, seq
//! 64 unless given): forward + backward of `sum(out * probe)` + a plain SGD update
//! `w - lr * g`. The comparison with PyTorch is `bench/run.py --rows lstm,gru`
//! (docs/BENCHMARKS.md).
//!
//!     cargo run -p seqlab-nn --example bench_recurrent -- [lstm|gru|rnn|both] [steps] [seq]
//!
//! For instruction counts, `steps` 0 runs the warm-up step only, and a short `seq` keeps
//! valgrind's run short (per-step costs are per time step, so the shares barely change):
//!
//!     RAYON_NUM_THREADS=1 valgrind --tool=callgrind target/debug/examples/bench_recurrent lstm 0 16

use candle_core::{Device, Result};
use seqlab_nn::{Gru, Lstm, RecurrentConfig, Rnn, SeqRng, VarStore};
use std::time::Instant;

const INPUT: usize = 256;
const HIDDEN: usize = 512;
const LAYERS: usize = 2;
const BATCH: usize = 32;

fn bench(cell: &str, steps: usize, seq: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let vs = VarStore::new(0, &dev);
    let cfg = RecurrentConfig {
        num_layers: LAYERS,
        ..RecurrentConfig::new(INPUT, HIDDEN)
    };
    let lstm = if cell == "lstm" {
        Some(Lstm::new(&cfg, &vs)?)
    } else {
        None
    };
    let gru = if cell == "gru" {
        Some(Gru::new(&cfg, &vs)?)
    } else {
        None
    };
    let rnn = if cell == "rnn" {
        Some(Rnn::new(&cfg, &vs)?)
    } else {
        None
    };
    let mut rng = SeqRng::new(1);
    let x = rng.normal((seq, BATCH, INPUT), 0.0, 1.0, &dev)?;
    let probe = rng.normal((seq, BATCH, HIDDEN), 0.0, 1.0, &dev)?;
    let lr = 1e-3;
    let step = || -> Result<()> {
        let out = match (&lstm, &gru, &rnn) {
            (Some(m), _, _) => m.forward(&x, None, None, true)?.0,
            (_, Some(m), _) => m.forward(&x, None, None, true)?.0,
            (_, _, Some(m)) => m.forward(&x, None, None, true)?.0,
            _ => unreachable!(),
        };
        let grads = (out * &probe)?.sum_all()?.backward()?;
        for (_, var) in vs.trainable() {
            if let Some(g) = grads.get(&var) {
                var.set(&(var.as_tensor() - (g * lr)?)?)?;
            }
        }
        Ok(())
    };
    step()?; // warm-up: allocations, thread pool
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    for _ in 0..steps {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c0;
    let tps = (steps * BATCH * seq) as f64 / secs;
    println!(
        "seqlab {cell}: {steps} steps in {secs:.2}s, {:.1} ms/step, {tps:.0} tokens/s (wall); {:.0} tokens per CPU-second",
        1e3 * secs / steps as f64,
        (steps * BATCH * seq) as f64 / cpu
    );
    Ok(tps)
}

/// Process CPU time (user + system) from /proc/self/stat: on a shared machine, tokens per
/// CPU-second is far less sensitive to other load than wall-clock throughput.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("both");
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let seq: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    println!("threads: {}", rayon::current_num_threads());
    if which == "lstm" || which == "both" {
        bench("lstm", steps, seq)?;
    }
    if which == "gru" || which == "both" {
        bench("gru", steps, seq)?;
    }
    if which == "rnn" {
        bench("rnn", steps, seq)?;
    }
    Ok(())
}
