//! Predictors: every kind of trained seqlab model as a [`BatchPredictor`] that answers a
//! batch of requests. One layer shared by `seqlab predict` (seqlab-cli reads the input and
//! prints the answers) and `seqlab serve` (seqlab-serve batches HTTP requests into it).
//!
//! - [`models`]: the adapters from each kind of checkpoint (lm, classify, bert-finetune,
//!   forecast, mt) and from word vectors to predictors, and [`models::load`], which picks
//!   the adapter from the run's `task`.
//! - [`api`]: the requests and answers (the JSON bodies of `seqlab serve`'s `/v1/*`
//!   endpoints and the lines of `seqlab predict --format jsonl`).

pub mod api;
pub mod models;

/// A request the model cannot answer because of what it asks (empty text, unknown word,
/// too short a series, out-of-range option): HTTP 400 in the server, a message naming the
/// input line in `seqlab predict`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// A model that answers several requests at once.
pub trait BatchPredictor: Send + 'static {
    type In: Send + 'static;
    type Out: Send + 'static;
    /// One output per input, in input order. An error in one output fails only that request;
    /// a wrong number of outputs or a panic fails the whole batch.
    fn predict_batch(&self, inputs: Vec<Self::In>) -> Vec<anyhow::Result<Self::Out>>;
}
