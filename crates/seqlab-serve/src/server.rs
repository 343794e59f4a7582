//! The HTTP layer: routes, JSON errors, limits, metrics and graceful shutdown.

use crate::batcher::{BatchConfig, BatchError, BatchPredictor, Batcher};
use crate::metrics::Metrics;
use crate::{assets, BadInput};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// What a model answers, one kind per `POST /v1/<kind>` endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Translate,
    Generate,
    Classify,
    FillMask,
    Forecast,
    Similar,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Translate,
        Kind::Generate,
        Kind::Classify,
        Kind::FillMask,
        Kind::Forecast,
        Kind::Similar,
    ];

    /// The endpoint's last path segment and the kind's name in `/v1/models`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Translate => "translate",
            Kind::Generate => "generate",
            Kind::Classify => "classify",
            Kind::FillMask => "fill-mask",
            Kind::Forecast => "forecast",
            Kind::Similar => "similar",
        }
    }
}

/// An error answer: status and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull(_) | BatchError::Closed => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                retry_after: Some(1),
            },
            BatchError::Model(err) => {
                let status = match err.downcast_ref::<BadInput>() {
                    Some(_) => StatusCode::BAD_REQUEST,
                    None => StatusCode::INTERNAL_SERVER_ERROR,
                };
                Self::new(status, format!("{err:#}"))
            }
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One loaded model as the HTTP layer sees it: JSON in, JSON out.
pub trait Service: Send + Sync {
    /// Answers one request body (already parsed as JSON).
    fn call(&self, body: Value) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// Requests waiting for a batch.
    fn queued(&self) -> usize;
    /// Stops taking requests and finishes those queued.
    fn close(&self);
}

/// A [`BatchPredictor`] behind a [`Batcher`], with request/response types that map to JSON.
pub struct Batched<P: BatchPredictor> {
    batcher: Batcher<P>,
}

impl<P: BatchPredictor> Batched<P> {
    pub fn start(name: &str, predictor: P, cfg: BatchConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Ok(Self {
            batcher: Batcher::start(name, predictor, cfg, metrics)?,
        })
    }
}

impl<P> Service for Batched<P>
where
    P: BatchPredictor,
    P::In: DeserializeOwned,
    P::Out: Serialize,
{
    fn call(&self, body: Value) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let input: P::In = serde_json::from_value(body)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?;
            let out = self.batcher.call(input).await?;
            serde_json::to_value(out).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        })
    }

    fn queued(&self) -> usize {
        self.batcher.queued()
    }

    fn close(&self) {
        self.batcher.close()
    }
}

struct Entry {
    kind: Kind,
    info: Value,
    service: Arc<dyn Service>,
}

/// Everything the handlers share: the models by name, metrics and limits.
pub struct App {
    models: BTreeMap<String, Entry>,
    pub metrics: Arc<Metrics>,
    /// Largest accepted request body (bytes); larger ones get 413.
    pub max_body_bytes: usize,
}

impl App {
    pub fn new(metrics: Arc<Metrics>, max_body_bytes: usize) -> Self {
        Self {
            models: BTreeMap::new(),
            metrics,
            max_body_bytes,
        }
    }

    /// Adds a model under a unique name; `info` is shown by `GET /v1/models`.
    pub fn add(&mut self, name: &str, kind: Kind, info: Value, service: Arc<dyn Service>) -> anyhow::Result<()> {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "model name {name:?}: use letters, digits, '-', '_' and '.'"
        );
        anyhow::ensure!(!self.models.contains_key(name), "two models are named {name:?}");
        self.models.insert(name.to_string(), Entry { kind, info, service });
        Ok(())
    }

    /// Starts a batcher for `predictor` and adds it.
    pub fn add_batched<P>(
        &mut self,
        name: &str,
        kind: Kind,
        info: Value,
        predictor: P,
        cfg: BatchConfig,
    ) -> anyhow::Result<()>
    where
        P: BatchPredictor,
        P::In: DeserializeOwned,
        P::Out: Serialize,
    {
        let s = Batched::start(name, predictor, cfg, self.metrics.clone())?;
        self.add(name, kind, info, Arc::new(s))
    }

    /// Kinds with at least one model.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = self.models.values().map(|e| e.kind).collect();
        k.sort();
        k.dedup();
        k
    }

    /// The model a request to `kind`'s endpoint names, or the only one of that kind.
    fn pick(&self, kind: Kind, body: &Value) -> Result<(&str, &Entry), ApiError> {
        let endpoint = format!("/v1/{}", kind.name());
        let of_kind: Vec<&String> = self
            .models
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(n, _)| n)
            .collect();
        match body.get("model") {
            None | Some(Value::Null) => match of_kind.as_slice() {
                [one] => Ok((one.as_str(), &self.models[one.as_str()])),
                [] => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no {} model is loaded, so {endpoint} has nothing to answer with",
                        kind.name()
                    ),
                )),
                many => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "several {} models are loaded ({}): name one with \"model\"",
                        kind.name(),
                        many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            },
            Some(Value::String(name)) => match self.models.get_key_value(name) {
                Some((k, e)) if e.kind == kind => Ok((k.as_str(), e)),
                Some((_, e)) => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "model {name:?} is a {} model; {endpoint} needs a {} model",
                        e.kind.name(),
                        kind.name()
                    ),
                )),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no model named {name:?} (loaded: {})",
                        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
            },
            Some(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("\"model\" must be a string, got {other}"),
            )),
        }
    }

    /// Stops every model's batcher after its queue is answered.
    pub fn close(&self) {
        for e in self.models.values() {
            e.service.close();
        }
    }
}

async fn predict(app: Arc<App>, kind: Kind, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    // A body over the limit is a rejection with status 413 (from DefaultBodyLimit).
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        ));
    }
    let (name, entry) = app.pick(kind, &v)?;
    let name = name.to_string();
    let mut out = entry.service.call(v).await?;
    if let Value::Object(m) = &mut out {
        m.insert("model".into(), Value::String(name));
    }
    Ok(Json(out))
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let list: Vec<Value> = app
        .models
        .iter()
        .map(|(name, e)| json!({"name": name, "kind": e.kind.name(), "queued": e.service.queued(), "info": e.info}))
        .collect();
    Json(json!({ "models": list }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /v1/models and docs/SERVING.md",
    )
}

/// Counts every answer by route pattern and status, with its latency.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .observe_request(&endpoint, resp.status().as_u16(), t0.elapsed().as_secs_f64());
    resp
}

fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse + Clone {
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// The router: the web page at `/`, the API under `/v1`, `/health` and `/metrics`.
pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/", get(asset(assets::INDEX_HTML, "text/html; charset=utf-8")))
        .route("/app.js", get(asset(assets::APP_JS, "text/javascript; charset=utf-8")))
        .route("/style.css", get(asset(assets::STYLE_CSS, "text/css; charset=utf-8")))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models));
    for kind in Kind::ALL {
        r = r.route(
            &format!("/v1/{}", kind.name()),
            post(move |State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>| predict(app, kind, body)),
        );
    }
    r.fallback(not_found)
        .layer(DefaultBodyLimit::max(app.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// Serves until `shutdown` resolves; then stops accepting, answers every request already
/// accepted (in flight or queued), stops the model threads and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let r = axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    // Every connection is closed now, so no request is waiting; the batchers have drained.
    let a = app.clone();
    let _ = tokio::task::spawn_blocking(move || a.close()).await;
    r
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
