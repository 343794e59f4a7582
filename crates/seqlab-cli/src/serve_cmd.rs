//! `seqlab serve`: the command-line face of seqlab-serve.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// `seqlab serve --checkpoint NAME=RUN_DIR [--vectors NAME=FILE] [--port 8080] ...`
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A model to serve, as NAME=RUN_DIR (a run folder → its best checkpoint, or a checkpoint
    /// folder): translation (mt), language model (lm), classifier (classify, bert-finetune) or
    /// forecaster. Repeatable; requests choose one with "model": NAME.
    #[arg(long = "checkpoint", value_name = "NAME=RUN_DIR", value_parser = named_path)]
    pub checkpoints: Vec<(String, PathBuf)>,
    /// Word vectors for /v1/similar, as NAME=FILE (word2vec text or binary, or safetensors).
    /// Repeatable.
    #[arg(long = "vectors", value_name = "NAME=FILE", value_parser = named_path)]
    pub vectors: Vec<(String, PathBuf)>,
    /// Address to listen on. The default answers this machine only; 0.0.0.0 opens the
    /// server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// TCP port (0 = any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most requests in one model call; 1 turns dynamic batching off.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest time (milliseconds) the first request of a batch waits for more.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Most requests waiting per model; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 65536)]
    pub max_body_bytes: usize,
    /// Threads for model computation (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    // The checkpoints' models run on `--device` (word vectors and Hugging Face folders stay
    // on the CPU; a Hugging Face folder with a GPU device is refused).
    #[command(flatten)]
    pub device: crate::train::DeviceArg,
}

fn named_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    if let Some(n) = a.threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        // candle's CPU kernels size their thread pools from these variables when they first
        // run; nothing has run yet and no other thread exists, so setting them is safe.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
    let device = a.device.open()?;
    let cfg = seqlab_serve::ServeConfig {
        checkpoints: a.checkpoints,
        vectors: a.vectors,
        addr: std::net::SocketAddr::new(a.host, a.port),
        batch: seqlab_serve::batcher::BatchConfig::new(
            a.max_batch,
            std::time::Duration::from_millis(a.max_wait_ms),
            a.queue,
        )?,
        max_body_bytes: a.max_body_bytes,
        device,
    };
    seqlab_serve::run(&cfg)
}
