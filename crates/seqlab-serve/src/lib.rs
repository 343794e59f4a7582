//! `seqlab serve`: trained seqlab models over HTTP/JSON (axum + tokio), with dynamic
//! batching, a bounded queue, Prometheus metrics and a web page showing translations with
//! their attention (docs/SERVING.md describes the API).
//!
//! - [`batcher`]: the generic dynamic batcher over a [`batcher::BatchPredictor`], running
//!   model work on its own thread, never on the async runtime.
//! - [`models`] (re-exported from seqlab-predict, shared with `seqlab predict`): the
//!   adapters from each kind of checkpoint to a `BatchPredictor`; the server has no
//!   model-specific code of its own.
//! - [`server`]: routes, JSON errors, body limit, metrics middleware, graceful shutdown.
//! - [`metrics`]: Prometheus text format.
//! - [`api`] (from seqlab-predict): request and response bodies.
//! - [`assets`]: the web page, embedded in the binary.

pub mod assets;
pub mod batcher;
pub mod metrics;
pub mod server;

/// The predictors and their requests live in seqlab-predict (shared with `seqlab predict`).
pub use seqlab_predict::{api, models, BadInput};

use anyhow::{Context, Result};
use batcher::BatchConfig;
use models::Loaded;
use server::{App, Kind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What `seqlab serve` loads and how it listens.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// (name, checkpoint or run folder) of translation, LM, classification (including
    /// fine-tuned BERT) and forecasting checkpoints.
    pub checkpoints: Vec<(String, PathBuf)>,
    /// (name, word-vector file).
    pub vectors: Vec<(String, PathBuf)>,
    pub addr: SocketAddr,
    pub batch: BatchConfig,
    /// Largest request body in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Device the checkpoints' models run on (`--device`); word vectors stay on the CPU, and
    /// Hugging Face folders load on the CPU only.
    pub device: candle_core::Device,
}

/// Loads every model into a new [`App`], each behind its own batcher.
pub fn load_app(cfg: &ServeConfig) -> Result<App> {
    anyhow::ensure!(
        !cfg.checkpoints.is_empty() || !cfg.vectors.is_empty(),
        "nothing to serve: give at least one --checkpoint NAME=RUN_DIR or --vectors NAME=FILE"
    );
    anyhow::ensure!(cfg.max_body_bytes > 0, "--max-body-bytes must be positive");
    let mut app = App::new(Arc::new(metrics::Metrics::default()), cfg.max_body_bytes);
    for (name, path) in &cfg.checkpoints {
        let loaded = models::load_checkpoint_on(path, &cfg.device)
            .with_context(|| format!("--checkpoint {name}={}", path.display()))?;
        add_model(&mut app, name, loaded, cfg.batch)?;
    }
    for (name, path) in &cfg.vectors {
        let m = models::Similar::load(path).with_context(|| format!("--vectors {name}={}", path.display()))?;
        add_model(&mut app, name, Loaded::Similar(m), cfg.batch)?;
    }
    Ok(app)
}

/// Adds a loaded model behind its own batcher, at the endpoint of what it answers.
fn add_model(app: &mut App, name: &str, loaded: Loaded, b: BatchConfig) -> Result<()> {
    match loaded {
        Loaded::Translate(m) => app.add_batched(name, Kind::Translate, m.info(), m, b),
        Loaded::Lm(m) => app.add_batched(name, Kind::Generate, m.info(), m, b),
        Loaded::Classify(m) => app.add_batched(name, Kind::Classify, m.info(), m, b),
        Loaded::FillMask(m) => app.add_batched(name, Kind::FillMask, m.info(), m, b),
        Loaded::Forecast(m) => app.add_batched(name, Kind::Forecast, m.info(), m, b),
        Loaded::Similar(m) => app.add_batched(name, Kind::Similar, m.info(), m, b),
    }
}

/// Loads the models, listens, and serves until SIGINT/SIGTERM; returns after every accepted
/// request is answered.
pub fn run(cfg: &ServeConfig) -> Result<()> {
    let app = Arc::new(load_app(cfg)?);
    // The runtime only moves bytes; models run on their batchers' threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.addr))?;
        let kinds: Vec<&str> = app.kinds().iter().map(|k| k.name()).collect();
        eprintln!(
            "serving {} on http://{} (web page at /, API under /v1: {}); Ctrl-C or SIGTERM stops",
            kinds.join(", "),
            listener.local_addr()?,
            kinds.iter().map(|k| format!("/v1/{k}")).collect::<Vec<_>>().join(" ")
        );
        server::serve(listener, app, server::shutdown_signal()).await?;
        eprintln!("stopped: every accepted request was answered");
        Ok(())
    })
}
