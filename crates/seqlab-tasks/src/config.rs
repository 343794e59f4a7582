//! The run configuration: one TOML file with `[data]`, `[model]`, `[optim]`, `[schedule]` and
//! `[train]` tables, every key documented here with its default. Any key can be overridden
//! from the command line with `--set table.key=value`. Paths are relative to the current
//! directory.

use anyhow::{Context, Result};
use seqlab_data::{LengthPolicy, TokenizerKind};
use seqlab_train::trainer::LoopConfig;
use seqlab_train::Schedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which task a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Language modelling on plain text.
    Lm,
    /// `text<TAB>label` sequence classification.
    Classify,
    /// Time-series forecasting from a CSV column.
    Forecast,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub task: TaskKind,
    /// Folder for checkpoints, metrics and plots. Default `runs/<task>`.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    /// Default: constant `optim.lr`.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub train: LoopConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training file (required).
    pub train: PathBuf,
    /// Validation file: evaluation during training (LM, classify). Forecasting splits the
    /// one CSV chronologically instead.
    pub valid: Option<PathBuf>,
    /// Test file, for `seqlab eval`.
    pub test: Option<PathBuf>,
    /// char | word | bpe. Default char.
    pub tokenizer: TokenizerKind,
    /// Vocabulary size for word/BPE tokenizers. Default 8000.
    pub vocab_size: usize,
    /// Minimum count of a token to enter the vocabulary. Default 1.
    pub min_frequency: u64,
    /// Longest sequence (tokens) for classification. Default 256.
    pub max_len: usize,
    /// truncate (with a warning) | error, for sequences longer than `max_len`.
    pub on_too_long: LengthPolicy,
    /// LM: rows per batch; forecasting: windows per batch. Default 32.
    pub batch_size: usize,
    /// LM: tokens per row (truncated back-propagation length). Default 128.
    pub bptt: usize,
    /// Classification: most tokens per batch, padding included. Default 4096.
    pub batch_tokens: usize,
    /// Forecasting: the CSV column to model (required for forecasting).
    pub column: Option<String>,
    /// Forecasting: input window length. Default 24.
    pub input_len: usize,
    /// Forecasting: steps predicted at once. Default 1.
    pub horizon: usize,
    /// Forecasting: fraction of the series (at its end, before test) for validation. Default 0.1.
    pub valid_frac: f64,
    /// Forecasting: fraction of the series at its end for test. Default 0.2.
    pub test_frac: f64,
    /// Forecasting: season length of the seasonal-naive baseline (e.g. 12 for monthly). Default 12.
    pub season: usize,
    /// Evaluate on at most this many batches during training (all when unset).
    pub max_eval_batches: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            valid: None,
            test: None,
            tokenizer: TokenizerKind::Char,
            vocab_size: 8000,
            min_frequency: 1,
            max_len: 256,
            on_too_long: LengthPolicy::Truncate,
            batch_size: 32,
            bptt: 128,
            batch_tokens: 4096,
            column: None,
            input_len: 24,
            horizon: 1,
            valid_frac: 0.1,
            test_frac: 0.2,
            season: 12,
            max_eval_batches: None,
        }
    }
}

/// The network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Elman RNN with tanh.
    Rnn,
    /// Elman RNN with ReLU.
    RnnRelu,
    Lstm,
    Gru,
    /// Transformer: a causal decoder-only LM, or an encoder for classification.
    Transformer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// rnn | rnn_relu | lstm | gru | transformer. Default lstm.
    pub kind: ModelKind,
    /// Token embedding size (recurrent models). Default 128.
    pub embed_dim: usize,
    /// Recurrent hidden size. Default 256.
    pub hidden_size: usize,
    /// Stacked layers. Default 2.
    pub num_layers: usize,
    /// Dropout between layers / in the Transformer. Default 0.1.
    pub dropout: f64,
    /// Bidirectional recurrent classifier. Default false.
    pub bidirectional: bool,
    /// LM: share the input embedding with the output projection (needs embed_dim ==
    /// hidden_size for recurrent models; always on for the Transformer LM). Default false.
    pub tie_weights: bool,
    /// Transformer width. Default 128.
    pub d_model: usize,
    /// Attention heads. Default 4.
    pub nhead: usize,
    /// Transformer FFN width. Default 512.
    pub dim_feedforward: usize,
    /// Longest sequence the Transformer's position table covers. Default 512.
    pub max_positions: usize,
    /// Pre-norm (true) or the paper's post-norm (false). Default true.
    pub norm_first: bool,
    /// relu | gelu. Default gelu.
    pub activation: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Lstm,
            embed_dim: 128,
            hidden_size: 256,
            num_layers: 2,
            dropout: 0.1,
            bidirectional: false,
            tie_weights: false,
            d_model: 128,
            nhead: 4,
            dim_feedforward: 512,
            max_positions: 512,
            norm_first: true,
            activation: "gelu".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimName {
    Adamw,
    Sgd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// adamw | sgd. Default adamw.
    pub name: OptimName,
    /// Peak learning rate (used by the default constant schedule). Default 1e-3.
    pub lr: f64,
    /// AdamW betas. Default [0.9, 0.999]; the paper's Transformer uses [0.9, 0.98].
    pub betas: [f64; 2],
    /// AdamW epsilon. Default 1e-8; the paper uses 1e-9.
    pub eps: f64,
    /// Decoupled weight decay. Default 0.01.
    pub weight_decay: f64,
    /// SGD momentum. Default 0.9.
    pub momentum: f64,
    /// Label smoothing of the cross-entropy. Default 0.
    pub label_smoothing: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            name: OptimName::Adamw,
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            momentum: 0.9,
            label_smoothing: 0.0,
        }
    }
}

impl RunConfig {
    /// Reads a config file and applies `key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let cfg: RunConfig = seqlab_train::overrides::load_with(path, overrides)?;
        cfg.validate()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let cfg: RunConfig = seqlab_train::overrides::from_toml_with(text, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(!self.data.train.as_os_str().is_empty(), "data.train is required");
        anyhow::ensure!(self.optim.lr > 0.0, "optim.lr must be > 0");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.model.dropout),
            "model.dropout must be in [0, 1)"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.optim.label_smoothing),
            "optim.label_smoothing must be in [0, 1]"
        );
        anyhow::ensure!(
            self.data.batch_size > 0 && self.data.bptt > 0,
            "data.batch_size and data.bptt must be > 0"
        );
        if self.task == TaskKind::Forecast {
            anyhow::ensure!(
                self.data.column.is_some(),
                "forecasting needs data.column (the CSV column to model)"
            );
            anyhow::ensure!(
                self.model.kind != ModelKind::Transformer,
                "forecasting supports rnn, rnn_relu, lstm and gru models"
            );
        }
        if self.model.kind == ModelKind::Transformer {
            anyhow::ensure!(
                self.model.nhead > 0 && self.model.d_model % self.model.nhead == 0,
                "model.d_model ({}) must be divisible by model.nhead ({})",
                self.model.d_model,
                self.model.nhead
            );
        }
        self.train.validate()?;
        Ok(())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(|| {
            PathBuf::from("runs").join(match self.task {
                TaskKind::Lm => "lm",
                TaskKind::Classify => "classify",
                TaskKind::Forecast => "forecast",
            })
        })
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
            .clone()
            .unwrap_or(Schedule::Constant { lr: self.optim.lr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "task = \"lm\"\n[data]\ntrain = \"a.txt\"\n[train]\nmax_steps = 10\neval_every = 5\nlog_every = 5\n";

    #[test]
    fn defaults_overrides_and_unknown_keys() {
        let c = RunConfig::from_toml(BASE, &[]).unwrap();
        assert_eq!(c.model.kind, ModelKind::Lstm);
        assert_eq!(c.train.max_steps, 10);
        let c = RunConfig::from_toml(
            BASE,
            &[
                "model.kind=gru".into(),
                "train.max_steps=3".into(),
                "optim.lr=0.5".into(),
            ],
        )
        .unwrap();
        assert_eq!((c.model.kind, c.train.max_steps, c.optim.lr), (ModelKind::Gru, 3, 0.5));
        let e = RunConfig::from_toml(&format!("{BASE}[model]\nhiden_size = 3\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("hiden_size"), "{e:#}");
        assert!(RunConfig::from_toml(BASE, &["model.dropout=1.5".into()]).is_err());
        assert!(RunConfig::from_toml(BASE, &["nokey".into()]).is_err());
    }
}
