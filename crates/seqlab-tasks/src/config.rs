//! The task keys of `lm`, `classify` and `forecast` runs: `[data]`, `[model]` and `[loss]`,
//! every key documented here with its default. The engine's keys (`task`, `run_dir`,
//! `[optim]`, `[schedule]`, `[train]`) are [`seqlab_train::config`]'s. Any key can be
//! overridden from the command line with `--set table.key=value`. Paths are relative to the
//! current directory.

use anyhow::Result;
use seqlab_data::{LengthPolicy, TokenizerKind};
use seqlab_train::keys::{ConfigKeys, KeyDoc, TableDoc};
use seqlab_train::LossConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The task keys shared by language modelling, classification and forecasting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Data files and tokenization.
    pub data: DataConfig,
    /// Model kind and sizes.
    #[serde(default)]
    pub model: ModelConfig,
    /// Cross-entropy settings (LM and classification; forecasting trains with MSE and
    /// rejects a label smoothing).
    #[serde(default)]
    pub loss: LossConfig,
}

/// A whole run config of these tasks: the engine's settings plus [`TaskConfig`].
pub type Config = seqlab_train::RunConfig<TaskConfig>;

/// The `[data]` section of a task config: files and tokenization.
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
    /// Mamba (selective state space, `seqlab_nn::mamba`): a stack of `num_layers` RMSNorm →
    /// Mamba residual blocks of width `d_model`; LM with tied embeddings, or a classifier
    /// over the mean of the real tokens. No dropout (`model.dropout` is ignored).
    Mamba,
}

/// The `[model]` section of a task config: architecture and sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// rnn | rnn_relu | lstm | gru | transformer | mamba. Default lstm.
    pub kind: ModelKind,
    /// Token embedding size (recurrent models). Default 128.
    pub embed_dim: usize,
    /// Recurrent hidden size. Default 256.
    pub hidden_size: usize,
    /// LSTM: project the hidden state to this size (PyTorch's `proj_size`; `weight_hr_l{k}`);
    /// 0 = off. Must be below `hidden_size`. Default 0.
    pub proj_size: usize,
    /// Stacked layers. Default 2.
    pub num_layers: usize,
    /// Dropout between layers / in the Transformer. Default 0.1.
    pub dropout: f64,
    /// Bidirectional recurrent classifier. Default false.
    pub bidirectional: bool,
    /// LM: share the input embedding with the output projection (needs embed_dim == the
    /// recurrent output size, hidden_size or proj_size; always on for the Transformer and
    /// Mamba LMs).
    /// Default false.
    pub tie_weights: bool,
    /// Transformer and Mamba width. Default 128.
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
    /// Mamba: SSM state size per channel. Default 16.
    pub d_state: usize,
    /// Mamba: width of the causal depthwise convolution. Default 4.
    pub d_conv: usize,
    /// Mamba: d_inner = expand · d_model. Default 2.
    pub expand: usize,
}

impl ModelConfig {
    /// The Mamba block stack these keys describe (reference defaults for everything else).
    pub fn mamba(&self, vocab_size: usize) -> seqlab_nn::MambaModelConfig {
        let mut m = seqlab_nn::MambaModelConfig::new(vocab_size, self.num_layers, self.d_model);
        m.block.mixer.d_state = self.d_state;
        m.block.mixer.d_conv = self.d_conv;
        m.block.mixer.expand = self.expand;
        m
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Lstm,
            embed_dim: 128,
            hidden_size: 256,
            proj_size: 0,
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
            d_state: 16,
            d_conv: 4,
            expand: 2,
        }
    }
}

/// The `[data]` keys at run time (`seqlab config keys`); defaults come from `Default`.
impl ConfigKeys for DataConfig {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::required(
            "train",
            "training file: plain text (lm), text<TAB>label (classify), CSV (forecast)",
        ),
        KeyDoc::new(
            "valid",
            "validation file, evaluated during training (lm, classify; forecast splits its one CSV instead)",
        ),
        KeyDoc::new(
            "test",
            "test file, evaluated with the best checkpoint when training ends and by seqlab eval",
        ),
        KeyDoc::new("tokenizer", "char | word | bpe"),
        KeyDoc::new(
            "vocab_size",
            "vocabulary size of word/BPE tokenizers, specials included",
        ),
        KeyDoc::new("min_frequency", "least count of a token to enter the vocabulary"),
        KeyDoc::new("max_len", "classify: longest sequence in tokens (see on_too_long)"),
        KeyDoc::new(
            "on_too_long",
            "classify: truncate (with a warning) | error, for sequences longer than max_len",
        ),
        KeyDoc::new("batch_size", "lm: rows per batch; forecast: windows per batch"),
        KeyDoc::new("bptt", "lm: tokens per row (truncated back-propagation length)"),
        KeyDoc::new("batch_tokens", "classify: most tokens per batch, padding included"),
        KeyDoc::new("column", "forecast: the CSV column to model (required for forecast)"),
        KeyDoc::new("input_len", "forecast: input window length, in time steps"),
        KeyDoc::new("horizon", "forecast: steps predicted at once"),
        KeyDoc::new(
            "valid_frac",
            "forecast: fraction of the series (at its end, before test) for validation",
        ),
        KeyDoc::new("test_frac", "forecast: fraction of the series at its end for test"),
        KeyDoc::new(
            "season",
            "forecast: season length of the seasonal-naive baseline (12 for monthly data)",
        ),
        KeyDoc::new(
            "max_eval_batches",
            "evaluate on at most this many batches during training; unset = all",
        ),
    ];
}

/// The `[model]` keys at run time (`seqlab config keys`); defaults come from `Default`.
impl ConfigKeys for ModelConfig {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new("kind", "rnn | rnn_relu | lstm | gru | transformer | mamba (forecast: the recurrent ones)"),
        KeyDoc::new("embed_dim", "token embedding size (recurrent models)"),
        KeyDoc::new("hidden_size", "recurrent hidden size"),
        KeyDoc::new(
            "proj_size",
            "lstm: project h to this size, below hidden_size (PyTorch's proj_size); 0 = off",
        ),
        KeyDoc::new("num_layers", "stacked layers (recurrent, Transformer, Mamba blocks)"),
        KeyDoc::new("dropout", "dropout between layers / in the Transformer, in [0, 1) (Mamba: ignored)"),
        KeyDoc::new("bidirectional", "classify: bidirectional recurrent encoder"),
        KeyDoc::new(
            "tie_weights",
            "lm: input embedding shared with the output projection (recurrent: needs embed_dim == hidden_size, or proj_size if set; always on for transformer and mamba)",
        ),
        KeyDoc::new("d_model", "Transformer and Mamba width"),
        KeyDoc::new("nhead", "attention heads (must divide d_model)"),
        KeyDoc::new("dim_feedforward", "Transformer feed-forward inner width"),
        KeyDoc::new("max_positions", "longest sequence the Transformer's position table covers"),
        KeyDoc::new("norm_first", "Transformer: pre-norm (true) or the paper's post-norm (false)"),
        KeyDoc::new("activation", "Transformer feed-forward activation: relu | gelu"),
        KeyDoc::new("d_state", "Mamba: SSM state size per channel"),
        KeyDoc::new("d_conv", "Mamba: width of the causal depthwise convolution"),
        KeyDoc::new("expand", "Mamba: d_inner = expand · d_model"),
    ];
}

/// The task keys of `lm`, `classify` and `forecast` with their defaults, table by table
/// (their `Task::config_keys`).
pub fn config_keys() -> Result<Vec<TableDoc>> {
    Ok(vec![
        TableDoc::of("data", "data files and tokenization", &DataConfig::default())?,
        TableDoc::of("model", "network kind and sizes", &ModelConfig::default())?,
        TableDoc::of(
            "loss",
            "cross-entropy settings (lm, classify; forecast trains with MSE and rejects label smoothing)",
            &LossConfig::default(),
        )?,
    ])
}

/// Checks the keys every one of these tasks uses, naming the bad one.
pub fn validate_common(cfg: &Config) -> Result<()> {
    let t = &cfg.task;
    anyhow::ensure!(!t.data.train.as_os_str().is_empty(), "data.train is required");
    anyhow::ensure!((0.0..1.0).contains(&t.model.dropout), "model.dropout must be in [0, 1)");
    t.loss.validate()?;
    anyhow::ensure!(
        t.data.batch_size > 0 && t.data.bptt > 0,
        "data.batch_size and data.bptt must be > 0"
    );
    if t.model.proj_size > 0 {
        anyhow::ensure!(
            t.model.kind == ModelKind::Lstm,
            "model.proj_size is for kind = \"lstm\" only (kind is {})",
            serde_json::to_string(&t.model.kind).unwrap_or_default()
        );
        anyhow::ensure!(
            t.model.proj_size < t.model.hidden_size,
            "model.proj_size ({}) must be smaller than model.hidden_size ({})",
            t.model.proj_size,
            t.model.hidden_size
        );
    }
    if t.model.kind == ModelKind::Mamba {
        anyhow::ensure!(t.model.num_layers > 0, "model.num_layers must be > 0");
        // The checks name the key (`d_state`, ...): all of them are `model.*` here.
        t.model.mamba(1).validate().map_err(|e| anyhow::anyhow!("model: {e}"))?;
    }
    if t.model.kind == ModelKind::Transformer {
        anyhow::ensure!(
            t.model.nhead > 0 && t.model.d_model % t.model.nhead == 0,
            "model.d_model ({}) must be divisible by model.nhead ({})",
            t.model.d_model,
            t.model.nhead
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::LmTask;
    use seqlab_train::task::parse_config;
    use seqlab_train::Task;

    const BASE: &str =
        "task = \"lm\"\n[data]\ntrain = \"a.txt\"\n[train]\nmax_steps = 10\neval_every = 5\nlog_every = 5\n";

    fn parse(text: &str, sets: &[&str]) -> Result<Config> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse_config::<LmTask>(seqlab_train::config::table_with_overrides(text, &sets)?, "test.toml")
    }

    /// `model.proj_size` is for LSTM only and below hidden_size; errors name the keys, and
    /// tie_weights is checked against the projected size.
    #[test]
    fn proj_size_is_checked_naming_the_keys() {
        // Parsing validates (LmTask::validate calls validate_common).
        let check = |sets: &[&str]| parse(BASE, sets).map_err(|e| format!("{e:#}"));
        assert!(check(&["model.proj_size=64"]).is_ok());
        let e = check(&["model.kind=gru", "model.proj_size=64"]).err().unwrap();
        assert!(
            e.contains("model.proj_size is for kind = \"lstm\" only (kind is \"gru\")"),
            "{e}"
        );
        let e = check(&["model.proj_size=256"]).err().unwrap();
        assert!(
            e.contains("model.proj_size (256)") && e.contains("model.hidden_size (256)"),
            "{e}"
        );
        let m = ModelConfig {
            embed_dim: 128,
            proj_size: 64,
            tie_weights: true,
            ..ModelConfig::default()
        };
        let vs = seqlab_nn::VarStore::new(0, &candle_core::Device::Cpu);
        let e = crate::models::LmNet::new(&m, 10, &vs).err().unwrap().to_string();
        assert!(e.contains("model.embed_dim (128) == model.proj_size (64)"), "{e}");
    }

    #[test]
    fn defaults_overrides_and_unknown_keys() {
        let c = parse(BASE, &[]).unwrap();
        assert_eq!(c.task.model.kind, ModelKind::Lstm);
        assert_eq!(c.run.train.max_steps, 10);
        assert_eq!(
            LmTask::default_schedule(&c),
            seqlab_train::Schedule::Constant { lr: 1e-3 }
        );
        let c = parse(BASE, &["model.kind=gru", "train.max_steps=3", "optim.lr=0.5"]).unwrap();
        assert_eq!(
            (c.task.model.kind, c.run.train.max_steps, c.run.optim.lr),
            (ModelKind::Gru, 3, 0.5)
        );
        let e = parse(&format!("{BASE}[model]\nhiden_size = 3\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("hiden_size"), "{e:#}");
        let e = parse(BASE, &["model.dropout=1.5"]).unwrap_err();
        assert!(format!("{e:#}").contains("model.dropout"), "{e:#}");
        let e = parse(BASE, &["loss.label_smoothing=1.0"]).unwrap_err();
        assert!(format!("{e:#}").contains("loss.label_smoothing"), "{e:#}");
        assert!(parse(BASE, &["nokey"]).is_err());
    }

    #[test]
    fn every_key_is_documented_for_each_task() {
        use seqlab_train::keys::check_documented;
        check_documented::<LmTask>(BASE).unwrap();
        check_documented::<crate::classify::ClsTask>(&BASE.replace("\"lm\"", "\"classify\"")).unwrap();
        let forecast = BASE
            .replace("\"lm\"", "\"forecast\"")
            .replace("[data]\n", "[data]\ncolumn = \"x\"\n");
        check_documented::<crate::forecast::ForecastTask>(&forecast).unwrap();
        let text = seqlab_train::keys::render("lm", "", &seqlab_train::keys::task_tables::<LmTask>().unwrap());
        for k in ["[data]", "[model]", "[loss]", "[optim]", "[train]", "train "] {
            assert!(text.contains(k), "{k} missing:\n{text}");
        }
        // Keys are padded to one column per table: `bptt             = 128 ...`; the task's
        // tables come after the engine's (whose [schedule] also has a `kind`).
        let task_part = &text[text.find("[data]").unwrap()..];
        let line = |key: &str| {
            task_part
                .lines()
                .find(|l| l.split(' ').next() == Some(key))
                .unwrap_or_default()
        };
        assert!(line("bptt").contains("= 128 "), "{text}");
        assert!(line("kind").contains("= \"lstm\" "), "{text}");
    }

    #[test]
    fn mamba_keys_parse_and_are_checked() {
        let c = parse(BASE, &["model.kind=mamba", "model.d_state=8"]).unwrap();
        assert_eq!(
            (c.task.model.kind, c.task.model.d_state, c.task.model.expand),
            (ModelKind::Mamba, 8, 2)
        );
        let e = parse(BASE, &["model.kind=mamba", "model.d_conv=0"]).unwrap_err();
        assert!(format!("{e:#}").contains("d_conv"), "{e:#}");
        let e = parse(BASE, &["model.kind=mamba", "model.num_layers=0"]).unwrap_err();
        assert!(format!("{e:#}").contains("model.num_layers"), "{e:#}");
    }
}
