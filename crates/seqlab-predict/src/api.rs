//! Requests and answers of the predictors: the JSON bodies of `seqlab serve`'s `/v1/*`
//! endpoints (documented in docs/SERVING.md) and the lines of `seqlab predict --format
//! jsonl`. Requests reject unknown fields, so a misspelt option is a 400 rather than silently
//! ignored. Every request may name its `model` (the server's choice among its models;
//! `seqlab predict` leaves it out).

use serde::{Deserialize, Serialize};

fn default_max_tokens() -> usize {
    200
}
fn default_temperature() -> f64 {
    seqlab_tasks::lm::DEFAULT_TEMPERATURE
}
fn default_neighbours() -> usize {
    10
}
fn default_fill_candidates() -> usize {
    5
}

/// `POST /v1/translate`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    pub model: Option<String>,
    /// One source sentence (not empty).
    pub text: String,
    /// Also return the encoder-decoder attention of the translation. Default false.
    #[serde(default)]
    pub attention: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TranslateResponse {
    pub translation: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attention: Option<AttentionMaps>,
}

/// Encoder-decoder attention of one translation, computed by teacher-forcing the decoded
/// tokens (the weights the decoder used for them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttentionMaps {
    /// Source tokens (columns), `<eos>` last; a leading space is shown as `▁`.
    pub source: Vec<String>,
    /// Output tokens (rows), `<eos>` last.
    pub target: Vec<String>,
    /// `weights[layer][head][target][source]`; each row sums to 1.
    pub weights: Vec<Vec<Vec<Vec<f32>>>>,
}

/// `POST /v1/generate`: continue a prompt by sampling from a language model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub model: Option<String>,
    /// Text to continue (may be empty).
    #[serde(default)]
    pub prompt: String,
    /// Most new tokens, 1..=2000. Default 200.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Softmax temperature; 0 = greedy. Default 0.8, as `seqlab generate`
    /// ([`seqlab_tasks::lm::DEFAULT_TEMPERATURE`]).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Keep only the k most likely tokens; absent or 0 = no top-k filter (as `--top-k`).
    pub top_k: Option<usize>,
    /// Nucleus mass in (0, 1]; absent or 1 = no nucleus filter (as `--top-p`).
    pub top_p: Option<f64>,
    /// Sampling seed; the same request with the same seed gives the same text. Default 0.
    #[serde(default)]
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GenerateResponse {
    /// The prompt followed by the sampled continuation.
    pub text: String,
}

/// How well a language model predicts a text (`seqlab predict` on an `lm` checkpoint; the
/// numbers `seqlab eval --data FILE` reports for the same text).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScoreResponse {
    /// Targets scored (inside the vocabulary).
    pub tokens: usize,
    /// Targets outside the vocabulary, left out of the loss.
    pub oov_tokens: usize,
    /// `oov_tokens / (tokens + oov_tokens)`.
    pub oov_rate: f64,
    /// Mean next-token cross-entropy, nats per token.
    pub loss: f64,
    /// e^loss.
    pub perplexity: f64,
    /// loss / ln 2.
    pub bits_per_token: f64,
    /// Bits per character: the same number, for character tokenizers only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bits_per_char: Option<f64>,
}

/// `POST /v1/classify`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub model: Option<String>,
    pub text: String,
    /// Return only the k most probable labels. Default: all.
    pub top_k: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LabelProbability {
    pub label: String,
    pub probability: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassifyResponse {
    /// The most probable label.
    pub label: String,
    /// Labels by decreasing probability.
    pub probabilities: Vec<LabelProbability>,
}

/// `POST /v1/fill-mask`: the most probable vocabulary pieces at each `[MASK]` of a text (a
/// Hugging Face BERT folder with its MLM head), as HF's fill-mask pipeline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillMaskRequest {
    pub model: Option<String>,
    /// A text holding at least one `[MASK]`.
    pub text: String,
    /// Candidates per mask, 1..=100. Default 5.
    #[serde(default = "default_fill_candidates")]
    pub top_k: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenProbability {
    /// A vocabulary piece (`##` marks the continuation of a word).
    pub token: String,
    pub probability: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FillMaskResponse {
    /// Per `[MASK]`, in text order: the candidates, most probable first.
    pub masks: Vec<Vec<TokenProbability>>,
}

/// `POST /v1/forecast`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastRequest {
    pub model: Option<String>,
    /// The series so far, oldest first, in its own units; at least the model's `input_len`
    /// values (only the last `input_len` feed the model).
    pub series: Vec<f64>,
    /// How many values to forecast, 1..=10000. Default: the model's `data.horizon`. Past it,
    /// the model runs again on its own forecasts (recursive multi-step forecasting).
    pub horizon: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ForecastResponse {
    /// The next `horizon` values.
    pub forecast: Vec<f64>,
    /// Baseline: the last value repeated.
    pub last_value: Vec<f64>,
    /// Baseline: the value one season earlier (`data.season` of the run).
    pub seasonal_naive: Vec<f64>,
}

/// `POST /v1/similar`: nearest words by cosine similarity to one word, or to the unit mean of
/// the `positive` words and the negated `negative` ones (gensim's `most_similar`, 3CosAdd;
/// the query words are left out): `{"positive": ["king", "woman"], "negative": ["man"]}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarRequest {
    pub model: Option<String>,
    /// One word: the same as `positive: [word]`. Give `word` or `positive`/`negative`.
    pub word: Option<String>,
    /// Words whose vectors are added.
    #[serde(default)]
    pub positive: Vec<String>,
    /// Words whose vectors are subtracted.
    #[serde(default)]
    pub negative: Vec<String>,
    /// How many neighbours, 1..=1000. Default 10.
    #[serde(default = "default_neighbours")]
    pub n: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Neighbour {
    pub word: String,
    pub similarity: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SimilarResponse {
    pub similar: Vec<Neighbour>,
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// The `model` field of a request, whatever its kind.
pub trait Named {
    fn model(&self) -> Option<&str>;
}

macro_rules! named {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn model(&self) -> Option<&str> {
                self.model.as_deref()
            }
        }
    )*};
}
named!(
    TranslateRequest,
    GenerateRequest,
    ClassifyRequest,
    FillMaskRequest,
    ForecastRequest,
    SimilarRequest
);
