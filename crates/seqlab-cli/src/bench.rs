//! `seqlab bench`: the seqlab side of every row of `bench/run.py` (issue #12), which runs
//! these commands alternately with their PyTorch peers in `bench/peers.py` and prints the
//! table of docs/BENCHMARKS.md.
//!
//! - layer rows (`rnn`, `lstm`, `gru`, `lstm-proj`, `lstm-bidir`, `encoder`, `decoder`,
//!   `mamba`, or `layers` for all): one training step = forward, loss Σ out·probe (a fixed
//!   random probe), backward, AdamW (lr 1e-3; Mamba's `A_log` and `D` without weight decay);
//! - `model --config F`: optimizer updates of a whole run config through the run engine's
//!   step ([`seqlab_train::bench`]);
//! - `translate --config F`: decoding with an untrained model of an `mt` config
//!   ([`seqlab_mt::bench`]);
//! - `generate --config F`: greedy generation with an untrained model of an `lm` config,
//!   a batch of sequences one token at a time with the recurrent state
//!   ([`seqlab_tasks::lm::LmTask::greedy_batch`]; Mamba's step function);
//! - `sgemm`: candle's f32 matmul of two n×n matrices (the machine's practical peak);
//! - `fma`: independent FMA chains on every thread of the pool
//!   ([`seqlab_nn::kernels::peak`]): the hardware's f32 limit, which the sgemm peak reaches
//!   only in part.
//!
//! Every timed section excludes set-up and warm-up; `--json` prints one object per row with
//! `units` (tokens, or output tokens for decoding), `seconds` and `cpu_seconds` (this
//! process, all threads, over the timed section).

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use seqlab_mt::decode::DecodeStrategy;
use seqlab_mt::task::MtTask;
use seqlab_nn::optim::{AdamW, AdamWConfig, Optimizer};
use seqlab_nn::recurrent::{Gru, Lstm, RecurrentConfig, Rnn};
use seqlab_nn::transformer::{DecoderMasks, TransformerDecoderLayer, TransformerEncoderLayer, TransformerLayerConfig};
use seqlab_nn::{MambaBlock, MambaBlockConfig, MambaConfig, SeqRng, VarStore};
use seqlab_tasks::lm::LmTask;
use seqlab_train::bench::{time_units, BenchSpec, Timing};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The layer rows, in table order.
const LAYER_ROWS: &[&str] = &[
    "rnn",
    "lstm",
    "gru",
    "lstm-proj",
    "lstm-bidir",
    "encoder",
    "decoder",
    "mamba",
];

/// Decoding search of `seqlab bench translate`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchDecoder {
    /// Arg-max at each step.
    Greedy,
    /// Beam search (`--beam-size`, the config's `decode.length_penalty`).
    Beam,
}

/// Arguments of `seqlab bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to time: `layers` (every layer row), one layer row (rnn, lstm, gru, lstm-proj,
    /// lstm-bidir, encoder, decoder, mamba), `model` (a run config's training steps, needs
    /// --config), `translate` (decoding with an untrained model of an `mt` config, needs
    /// --config), `generate` (greedy generation with an untrained model of an `lm` config,
    /// needs --config), `sgemm` or `fma` (the CPU's f32 multiply-add limit, all threads).
    #[arg(default_value = "layers")]
    pub what: String,
    /// Timed steps (training updates; decoding passes over the sentences; sgemm products;
    /// `fma`: 20 M rounds of FMAs per thread).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// `layers`: only these rows (comma-separated names, e.g. `lstm,gru`). Default: all.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    pub json: bool,
    /// `model`, `translate`: the run config (TOML) whose model is timed.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `model`, `translate`: override a config key (repeatable), e.g.
    /// `--set data.train=data/sample/bible.en-es.train.tsv`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// `model`: write the task's tokenizer (and other checkpoint extras) and the resolved
    /// config (`config.json`) into this folder before timing, for the PyTorch peer.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// `translate`: the search.
    #[arg(long, value_enum, default_value_t = BenchDecoder::Greedy)]
    pub decoder: BenchDecoder,
    /// `translate`: beam size for `--decoder beam`.
    #[arg(long, default_value_t = 4)]
    pub beam_size: usize,
    /// `translate`, `generate`: sentences (sequences) decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// `generate`: tokens generated per sequence in one timed step (after a one-token prompt).
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// `translate`: the first this many sources of the config's `data.test` file.
    #[arg(long, default_value_t = 64)]
    pub sentences: usize,
    /// `sgemm`: matrix size n (n×n times n×n).
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    // Layer rows and `sgemm` build their tensors on `--device` (default cpu); `model`,
    // `translate` and `generate` take it as `train.device` of the config.
    #[command(flatten)]
    pub device: crate::train::DeviceArg,
}

fn c<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// One training step of a layer: loss = Σ out·probe, backward, AdamW.
fn train_step(opt: &mut AdamW, out: Tensor, probe: &Tensor) -> Result<()> {
    let g = c((out * probe).and_then(|l| l.sum_all()).and_then(|l| l.backward()))?;
    c(opt.step(&g))
}

/// A layer row: its shape in words and its tokens per step.
fn layer_shape(name: &str) -> (&'static str, usize) {
    match name {
        "rnn" | "lstm" | "gru" => ("2 layers, input 256, hidden 512, batch 32, seq 64", 32 * 64),
        "lstm-proj" => (
            "2 layers, input 256, hidden 512, proj_size 256, batch 32, seq 64",
            32 * 64,
        ),
        "lstm-bidir" => (
            "2 layers, bidirectional, input 256, hidden 512 per direction, batch 32, seq 64",
            32 * 64,
        ),
        "encoder" => (
            "d_model 512, 8 heads, FFN 2048, dropout 0.1, batch 32, seq 128",
            32 * 128,
        ),
        "mamba" => (
            "2 x [RMSNorm -> Mamba] residual blocks, d_model 256 (d_inner 512, d_state 16, d_conv 4, dt_rank 16), batch 32, seq 128",
            32 * 128,
        ),
        _ => (
            "d_model 512, 8 heads, FFN 2048, dropout 0.1, causal, batch 32, target 128, memory 128",
            32 * 128,
        ),
    }
}

fn recurrent(name: &str, dev: &Device, warmup: usize, steps: usize) -> Result<Timing> {
    let (b, t, i, h) = (32, 64, 256, 512);
    let vs = VarStore::new(0, dev);
    let cfg = RecurrentConfig {
        num_layers: 2,
        batch_first: true,
        proj_size: if name == "lstm-proj" { 256 } else { 0 },
        bidirectional: name == "lstm-bidir",
        ..RecurrentConfig::new(i, h)
    };
    let out_features = (if cfg.bidirectional { 2 } else { 1 }) * if cfg.proj_size > 0 { cfg.proj_size } else { h };
    let mut r = SeqRng::new(1);
    let x = c(r.normal((b, t, i), 0.0, 1.0, dev))?;
    let probe = c(r.normal((b, t, out_features), 0.0, 1.0, dev))?;
    let adamw = || c(AdamW::new(vs.trainable(), AdamWConfig::new(1e-3)));
    match name {
        "rnn" => {
            let net = c(Rnn::new(&cfg, &vs))?;
            let mut opt = adamw()?;
            time_units(warmup, steps, || {
                let (out, _) = c(net.forward(&x, None, None, true))?;
                train_step(&mut opt, out, &probe).map(|_| b * t)
            })
        }
        "gru" => {
            let net = c(Gru::new(&cfg, &vs))?;
            let mut opt = adamw()?;
            time_units(warmup, steps, || {
                let (out, _) = c(net.forward(&x, None, None, true))?;
                train_step(&mut opt, out, &probe).map(|_| b * t)
            })
        }
        _ => {
            let net = c(Lstm::new(&cfg, &vs))?;
            let mut opt = adamw()?;
            time_units(warmup, steps, || {
                let (out, _, _) = c(net.forward(&x, None, None, true))?;
                train_step(&mut opt, out, &probe).map(|_| b * t)
            })
        }
    }
}

fn transformer_layer(name: &str, dev: &Device, warmup: usize, steps: usize) -> Result<Timing> {
    let (b, t, d) = (32, 128, 512);
    let vs = VarStore::new(0, dev);
    let mut cfg = TransformerLayerConfig::new(d, 8);
    cfg.dim_feedforward = 2048;
    cfg.dropout = 0.1;
    let mut r = SeqRng::new(1);
    let x = c(r.normal((b, t, d), 0.0, 1.0, dev))?;
    let probe = c(r.normal((b, t, d), 0.0, 1.0, dev))?;
    if name == "encoder" {
        let layer = c(TransformerEncoderLayer::new(&cfg, &vs))?;
        let mut opt = c(AdamW::new(vs.trainable(), AdamWConfig::new(1e-3)))?;
        time_units(warmup, steps, || {
            let out = c(layer.forward(&x, None, None, false, true))?;
            train_step(&mut opt, out, &probe).map(|_| b * t)
        })
    } else {
        let layer = c(TransformerDecoderLayer::new(&cfg, &vs))?;
        let memory = c(r.normal((b, t, d), 0.0, 1.0, dev))?;
        let masks = DecoderMasks {
            tgt_is_causal: true,
            ..Default::default()
        };
        let mut opt = c(AdamW::new(vs.trainable(), AdamWConfig::new(1e-3)))?;
        time_units(warmup, steps, || {
            let out = c(layer.forward(&x, &memory, &masks, true))?;
            train_step(&mut opt, out, &probe).map(|_| b * t)
        })
    }
}

/// The `mamba` row: two pre-norm Mamba blocks at the Shakespeare preset's width, the
/// reference's defaults otherwise (`configs/shakespeare-char-mamba.toml` stacks 8).
fn mamba_layers(dev: &Device, warmup: usize, steps: usize) -> Result<Timing> {
    let (b, t, d) = (32, 128, 256);
    let vs = VarStore::new(0, dev);
    let cfg = MambaBlockConfig::new(MambaConfig::new(d));
    let blocks = (0..2)
        .map(|i| c(MambaBlock::new(&cfg, &vs.pp("layers").pp(i))))
        .collect::<Result<Vec<_>>>()?;
    let mut r = SeqRng::new(1);
    let x = c(r.normal((b, t, d), 0.0, 1.0, dev))?;
    let probe = c(r.normal((b, t, d), 0.0, 1.0, dev))?;
    let mut opt = c(AdamW::for_store(&vs, AdamWConfig::new(1e-3)))?;
    time_units(warmup, steps, || {
        let mut h = x.clone();
        for blk in &blocks {
            h = c(blk.forward(&h, None))?;
        }
        train_step(&mut opt, h, &probe).map(|_| b * t)
    })
}

/// candle's f32 matmul of two n×n matrices; units are floating-point operations (2n³ each).
fn sgemm(n: usize, dev: &Device, warmup: usize, steps: usize) -> Result<Timing> {
    let mut r = SeqRng::new(1);
    let a = c(r.normal((n, n), 0.0, 1.0, dev))?;
    let b = c(r.normal((n, n), 0.0, 1.0, dev))?;
    time_units(warmup, steps, || {
        let p = c(a.matmul(&b))?;
        // A GPU runs the product asynchronously: wait for it (a no-op on the CPU).
        c(dev.synchronize())?;
        // Keep the product alive until here so that it is really computed.
        anyhow::ensure!(p.dims() == [n, n], "sgemm: unexpected shape {:?}", p.dims());
        Ok(2 * n * n * n)
    })
}

/// The common fields of every row's JSON object.
fn row_json(row: &str, unit: &str, t: &Timing) -> Value {
    json!({
        "row": row, "side": "seqlab", "unit": unit, "threads": rayon_threads(),
        "steps": t.steps, "units": t.units, "seconds": t.seconds, "cpu_seconds": t.cpu_seconds,
        "units_per_s": t.units_per_s(),
    })
}

/// The plural ending for a count of `n`.
fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_row(json_out: bool, v: &Value) {
    if json_out {
        println!("{v}");
    } else {
        // Floating-point rates in GFLOP/s, the rest in units/s.
        let (rate, unit) = match (v["unit"].as_str().unwrap_or(""), v["units_per_s"].as_f64()) {
            ("flop", Some(r)) => (r / 1e9, "GFLOP".to_string()),
            (u, r) => (r.unwrap_or(f64::NAN), u.to_string()),
        };
        println!(
            "{:12} {:>14.1} {}/s  ({} step{}, {:.2} s, {:.2} CPU-s)  {}",
            v["row"].as_str().unwrap_or(""),
            rate,
            unit,
            v["steps"],
            plural(v["steps"].as_u64().unwrap_or(0)),
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            v["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
            v["shape"].as_str().unwrap_or("")
        );
    }
}

fn need_config(a: &BenchArgs) -> Result<&PathBuf> {
    a.config
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("seqlab bench {} needs --config FILE (a run config)", a.what))
}

/// Runs `seqlab bench`. Rejects an unknown benchmark or row name, `--steps 0`, and
/// `model`/`translate` without `--config`.
pub fn run(a: BenchArgs) -> Result<()> {
    anyhow::ensure!(a.steps > 0, "--steps must be > 0");
    a.device.check_available()?;
    // The config rows take `--device` as the config's `train.device` (after the `--set`s).
    let sets: Vec<String> = a.set.iter().cloned().chain(a.device.override_key()).collect();
    match a.what.as_str() {
        "model" => {
            let spec = BenchSpec {
                steps: a.steps,
                warmup: a.warmup,
                export: a.export.clone(),
            };
            let config = need_config(&a)?;
            let m = crate::registry().bench(config, &sets, &spec)?;
            let mut v = row_json("model", "tokens", &m.timing);
            v["shape"] = json!(format!("{} ({} parameters)", config.display(), m.params));
            v["task"] = json!(m.task);
            v["params"] = json!(m.params);
            v["batches_per_epoch"] = json!(m.batches_per_epoch);
            print_row(a.json, &v);
        }
        "translate" => {
            let config = need_config(&a)?;
            let cfg = seqlab_train::task::read_config::<MtTask>(config, &sets)?;
            let test = cfg
                .task
                .data
                .test
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{}: no data.test to take sentences from", config.display()))?;
            let (task, _vs) = seqlab_train::bench::build_untrained::<MtTask>(&cfg)?;
            let pairs = seqlab_mt::parallel::read_pairs(&test)?;
            let sources: Vec<&str> = pairs.iter().take(a.sentences).map(|p| p.src.as_str()).collect();
            let strategy = match a.decoder {
                BenchDecoder::Greedy => DecodeStrategy::Greedy,
                BenchDecoder::Beam => DecodeStrategy::Beam {
                    size: a.beam_size,
                    length_penalty: cfg.task.decode.length_penalty,
                },
            };
            let d = seqlab_mt::bench::bench_decode(&task, &sources, &strategy, a.batch_size, a.warmup, a.steps)?;
            let mut v = row_json("translate", "tokens", &d.timing);
            v["sentences"] = json!(d.sentences * d.timing.steps);
            v["sentences_per_s"] = json!((d.sentences * d.timing.steps) as f64 / d.timing.seconds.max(1e-12));
            v["output_tokens_per_pass"] = json!(d.output_tokens);
            v["source_tokens_per_pass"] = json!(d.source_tokens);
            v["shape"] = json!(format!(
                "{} untrained, {strategy:?}, batch {}, {} sentences of {}",
                config.display(),
                a.batch_size,
                d.sentences,
                test.display()
            ));
            print_row(a.json, &v);
        }
        "generate" => {
            let config = need_config(&a)?;
            let cfg = seqlab_train::task::read_config::<LmTask>(config, &sets)?;
            let (task, _vs) = seqlab_train::bench::build_untrained::<LmTask>(&cfg)?;
            anyhow::ensure!(
                a.batch_size > 0 && a.tokens > 0,
                "--batch-size and --tokens must be > 0"
            );
            let t = time_units(a.warmup, a.steps, || {
                Ok(task.greedy_batch(a.batch_size, a.tokens)?.iter().map(Vec::len).sum())
            })?;
            let mut v = row_json("generate", "tokens", &t);
            v["model"] = json!(format!("{:?}", cfg.task.model.kind).to_lowercase());
            v["params"] = json!(task
                .vs
                .trainable()
                .iter()
                .map(|(_, p)| p.as_tensor().elem_count())
                .sum::<usize>());
            v["shape"] = json!(format!(
                "{} untrained, greedy, batch {}, {} tokens per sequence after a 1-token prompt",
                config.display(),
                a.batch_size,
                a.tokens
            ));
            print_row(a.json, &v);
        }
        "fma" => {
            // 20 M rounds per thread and step: 0.06 s at 4 GHz with AVX-512 (12 cycles a round).
            let t = time_units(a.warmup, a.steps, || {
                let flops = rayon::broadcast(|_| seqlab_nn::kernels::peak::fma_flops(20_000_000));
                flops
                    .into_iter()
                    .sum::<Option<u64>>()
                    .map(|f| f as usize)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "bench fma: measured on x86-64 with AVX-512F or AVX2 + FMA only; this CPU has neither"
                        )
                    })
            })?;
            let mut v = row_json("fma", "flop", &t);
            v["gflops"] = json!(t.units_per_s() / 1e9);
            let isa = seqlab_nn::kernels::peak::fma_unit().unwrap_or("none");
            v["isa"] = json!(isa);
            v["shape"] = json!(format!("independent f32 FMA chains on every thread, {isa}"));
            print_row(a.json, &v);
        }
        "sgemm" => {
            let t = sgemm(a.size, &a.device.open()?, a.warmup, a.steps)?;
            let mut v = row_json("sgemm", "flop", &t);
            v["gflops"] = json!(t.units_per_s() / 1e9);
            v["shape"] = json!(format!("{0}x{0} times {0}x{0}, f32", a.size));
            print_row(a.json, &v);
        }
        what => {
            let rows: Vec<&str> = match (what, a.filter.as_deref()) {
                ("layers", None) => LAYER_ROWS.to_vec(),
                ("layers", Some(f)) => f.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
                (one, _) => vec![one],
            };
            for r in &rows {
                anyhow::ensure!(
                    LAYER_ROWS.contains(r),
                    "unknown benchmark `{r}` (known: layers, {}, model, translate, generate, sgemm, fma)",
                    LAYER_ROWS.join(", ")
                );
            }
            if !a.json {
                let (threads, steps) = (rayon_threads(), a.steps);
                println!(
                    "training step (forward + backward + AdamW), {threads} thread{}, {steps} timed step{}",
                    plural(threads as u64),
                    plural(steps as u64)
                );
            }
            let dev = a.device.open()?;
            for r in rows {
                let t = match r {
                    "encoder" | "decoder" => transformer_layer(r, &dev, a.warmup, a.steps)?,
                    "mamba" => mamba_layers(&dev, a.warmup, a.steps)?,
                    _ => recurrent(r, &dev, a.warmup, a.steps)?,
                };
                let mut v = row_json(r, "tokens", &t);
                let (shape, tokens) = layer_shape(r);
                v["shape"] = json!(shape);
                v["tokens_per_step"] = json!(tokens);
                print_row(a.json, &v);
            }
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
