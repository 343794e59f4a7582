//! Machine translation (`task = "mt"`) as a [`Task`]: parallel text → BPE (joint or separate) →
//! token-budget batches → label-smoothed cross-entropy, with validation BLEU picking the best
//! checkpoint and a test report (BLEU, chrF, translations) when training ends.
//!
//! Sources are `tokens + <eos>`; the decoder reads `<bos> + tokens` and predicts
//! `tokens + <eos>`, as in fairseq and the paper's tensor2tensor.

use crate::c;
use crate::decode::{decoder, DecodeStrategy, Seq2SeqModel, SpecialIds};
use crate::parallel::{filter_by_length, read_pairs, Pair};
use crate::rnn::{RnnSeq2Seq, RnnSeq2SeqConfig};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use seqlab_data::{pad_batch, token_budget_batches, BudgetConfig, Tokenizer, TokenizerConfig, TokenizerKind};
use seqlab_metrics::{bleu, chrf};
use seqlab_nn::loss::{cross_entropy, Reduction};
use seqlab_nn::transformer::{Activation, EmbeddingTying, Seq2SeqConfig, TransformerConfig};
use seqlab_nn::{Seq2SeqTransformer, VarStore};
use seqlab_train::keys::{ConfigKeys, KeyDoc, TableDoc};
use seqlab_train::trainer::{Shard, ShardLoss, TrainTask};
use seqlab_train::{BuildFrom, LossConfig, OptimConfig, Purpose, Report, RunConfig, Schedule, Split, Task};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One BPE vocabulary for both languages (needed for shared embeddings), or one per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabKind {
    Joint,
    Separate,
}

/// `[data]`: `src<TAB>tgt` files and how they become batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtData {
    /// Training `src<TAB>tgt` file.
    pub train: PathBuf,
    /// Validation file, evaluated during training.
    pub valid: Option<PathBuf>,
    /// Test file, scored with the best checkpoint when training ends.
    pub test: Option<PathBuf>,
    /// joint | separate. Default joint.
    pub vocab: VocabKind,
    /// BPE vocabulary size per tokenizer, specials included. Default 8000.
    pub vocab_size: usize,
    /// Default 2.
    pub min_frequency: u64,
    /// Training pairs with more tokens than this on either side are dropped. Default 128.
    pub max_len: usize,
    /// Training pairs whose token-count ratio exceeds this are dropped. Default 3.0.
    pub max_ratio: f64,
    /// Tokens per batch, padding included, counted on the longer side. Default 4096.
    pub batch_tokens: usize,
    /// Validation BLEU is computed on the first this many validation pairs (greedy); 0 = all.
    /// Default 300.
    pub valid_bleu_sentences: usize,
}

impl Default for MtData {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            valid: None,
            test: None,
            vocab: VocabKind::Joint,
            vocab_size: 8000,
            min_frequency: 2,
            max_len: 128,
            max_ratio: 3.0,
            batch_tokens: 4096,
            valid_bleu_sentences: 300,
        }
    }
}

/// Which translation model to train (config spelling: `transformer`, `rnn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtModelKind {
    /// The paper's encoder-decoder Transformer.
    Transformer,
    /// Bidirectional LSTM encoder + attention LSTM decoder ([`RnnSeq2Seq`]).
    Rnn,
}

/// The sinusoidal position table of a Transformer (config spelling: `paper`, `fairseq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionTable {
    /// The paper's interleaved sin/cos table, positions from 0. The default.
    #[default]
    Paper,
    /// fairseq's table as Hugging Face M2M100 and CTranslate2 use it (half sines, half
    /// cosines, other frequencies, positions from 2): needed for `seqlab export --format hf`
    /// (see [`crate::hf`]).
    Fairseq,
}

impl From<PositionTable> for seqlab_nn::SinusoidalLayout {
    fn from(p: PositionTable) -> Self {
        match p {
            PositionTable::Paper => seqlab_nn::SinusoidalLayout::Paper,
            PositionTable::Fairseq => seqlab_nn::SinusoidalLayout::Fairseq,
        }
    }
}

/// `[model]`. Defaults are the paper's base model (d_model 512, 8 heads, 6+6 layers, FFN
/// 2048, dropout 0.1, post-norm, ReLU, shared embeddings); the RNN keys only apply to `rnn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtModel {
    /// transformer | rnn. Default transformer.
    pub kind: MtModelKind,
    /// Transformer width. Default 512.
    pub d_model: usize,
    /// Attention heads. Default 8.
    pub nhead: usize,
    /// Encoder layers. Default 6.
    pub num_encoder_layers: usize,
    /// Decoder layers. Default 6.
    pub num_decoder_layers: usize,
    /// Feed-forward inner width. Default 2048.
    pub dim_feedforward: usize,
    /// Dropout. Default 0.1.
    pub dropout: f64,
    /// The paper's post-norm is `false`.
    pub norm_first: bool,
    /// relu | gelu.
    pub activation: String,
    /// Source, target and output embeddings are one matrix (needs `data.vocab = "joint"`).
    pub share_embeddings: bool,
    /// Transformer: the sinusoidal table, `paper` or `fairseq` (the latter makes a pre-norm
    /// model exportable to Hugging Face and CTranslate2). Default paper.
    #[serde(default)]
    pub positions: PositionTable,
    /// RNN: embedding size. Default 256.
    pub embed_dim: usize,
    /// RNN: decoder state size (the encoder's two directions get half each). Default 512.
    pub hidden_size: usize,
    /// RNN: layers of encoder and decoder. Default 2.
    pub num_layers: usize,
}

impl Default for MtModel {
    fn default() -> Self {
        Self {
            kind: MtModelKind::Transformer,
            d_model: 512,
            nhead: 8,
            num_encoder_layers: 6,
            num_decoder_layers: 6,
            dim_feedforward: 2048,
            dropout: 0.1,
            norm_first: false,
            activation: "relu".into(),
            share_embeddings: true,
            positions: PositionTable::Paper,
            embed_dim: 256,
            hidden_size: 512,
            num_layers: 2,
        }
    }
}

/// `[decode]`: how the test set (and `seqlab translate` by default) is decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtDecode {
    /// 1 = greedy. Default 4 (the paper).
    pub beam_size: usize,
    /// Default 0.6 (the paper's α).
    pub length_penalty: f64,
    /// Sentences decoded together. Default 32.
    pub batch_size: usize,
}

impl Default for MtDecode {
    fn default() -> Self {
        Self {
            beam_size: 4,
            length_penalty: 0.6,
            batch_size: 32,
        }
    }
}

impl MtDecode {
    /// Greedy decoding when `beam_size <= 1`, else beam search with these settings.
    pub fn strategy(&self) -> DecodeStrategy {
        if self.beam_size <= 1 {
            DecodeStrategy::Greedy
        } else {
            DecodeStrategy::Beam {
                size: self.beam_size,
                length_penalty: self.length_penalty,
            }
        }
    }
}

/// The task keys of a translation run (`configs/mt-*.toml`); the engine's keys are
/// [`seqlab_train::config`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtTaskConfig {
    /// Parallel files, vocabulary and batching.
    pub data: MtData,
    /// Model kind and sizes.
    #[serde(default)]
    pub model: MtModel,
    /// Default label smoothing 0.1 (the paper's).
    #[serde(default = "paper_loss")]
    pub loss: LossConfig,
    /// Decoding (greedy or beam) for evaluation and translation.
    #[serde(default)]
    pub decode: MtDecode,
}

/// The `[data]` keys at run time (`seqlab config keys mt`); defaults come from `Default`.
impl ConfigKeys for MtData {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::required("train", "training file, one src<TAB>tgt pair per line"),
        KeyDoc::new(
            "valid",
            "validation file, evaluated during training (loss, perplexity, greedy BLEU)",
        ),
        KeyDoc::new(
            "test",
            "test file, scored (BLEU, chrF) with the best checkpoint when training ends",
        ),
        KeyDoc::new(
            "vocab",
            "joint (one BPE for both languages; needed by share_embeddings) | separate",
        ),
        KeyDoc::new("vocab_size", "BPE vocabulary size per tokenizer, specials included"),
        KeyDoc::new(
            "min_frequency",
            "least count of a token or merge to enter the vocabulary",
        ),
        KeyDoc::new(
            "max_len",
            "training pairs with more tokens than this on either side are dropped",
        ),
        KeyDoc::new(
            "max_ratio",
            "training pairs whose token-count ratio exceeds this are dropped",
        ),
        KeyDoc::new(
            "batch_tokens",
            "tokens per batch, padding included, counted on the longer side",
        ),
        KeyDoc::new(
            "valid_bleu_sentences",
            "validation BLEU on the first this many validation pairs (greedy); 0 = all",
        ),
    ];
}

/// The `[model]` keys at run time (`seqlab config keys mt`); defaults come from `Default`.
impl ConfigKeys for MtModel {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new(
            "kind",
            "transformer (Vaswani et al. 2017) | rnn (biLSTM encoder + attention LSTM decoder)",
        ),
        KeyDoc::new("d_model", "transformer: width"),
        KeyDoc::new("nhead", "transformer: attention heads (must divide d_model)"),
        KeyDoc::new("num_encoder_layers", "transformer: encoder layers"),
        KeyDoc::new("num_decoder_layers", "transformer: decoder layers"),
        KeyDoc::new("dim_feedforward", "transformer: feed-forward inner width"),
        KeyDoc::new("dropout", "dropout, in [0, 1)"),
        KeyDoc::new(
            "norm_first",
            "transformer: pre-norm (true) or the paper's post-norm (false)",
        ),
        KeyDoc::new("activation", "transformer feed-forward activation: relu | gelu"),
        KeyDoc::new(
            "share_embeddings",
            "source, target and output embeddings are one matrix (needs data.vocab = joint)",
        ),
        KeyDoc::new(
            "positions",
            "transformer: sinusoidal table layout: paper (interleaved, from 0) | fairseq (half sin/half cos, from 2; needed by `seqlab export --format hf`)",
        ),
        KeyDoc::new("embed_dim", "rnn: embedding size"),
        KeyDoc::new(
            "hidden_size",
            "rnn: decoder state size (each encoder direction gets half)",
        ),
        KeyDoc::new("num_layers", "rnn: layers of encoder and decoder"),
    ];
}

/// The `[decode]` keys at run time (`seqlab config keys mt`); defaults come from `Default`.
impl ConfigKeys for MtDecode {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new("beam_size", "beam width; 1 = greedy"),
        KeyDoc::new(
            "length_penalty",
            "beam search length penalty α (GNMT's ((5 + len) / 6)^α)",
        ),
        KeyDoc::new("batch_size", "sentences decoded together"),
    ];
}

fn paper_loss() -> LossConfig {
    LossConfig { label_smoothing: 0.1 }
}

/// A whole translation run config: the engine's settings plus [`MtTaskConfig`].
pub type MtConfig = RunConfig<MtTaskConfig>;

/// Checks the task keys, naming the bad one.
fn validate(cfg: &MtConfig) -> Result<()> {
    let (d, m) = (&cfg.task.data, &cfg.task.model);
    if d.train.as_os_str().is_empty() {
        bail!("data.train is required");
    }
    if d.max_len < 2 || d.batch_tokens < d.max_len || d.max_ratio < 1.0 {
        bail!("data: need max_len >= 2, batch_tokens >= max_len and max_ratio >= 1");
    }
    if !(0.0..1.0).contains(&m.dropout) {
        bail!("model.dropout must be in [0, 1)");
    }
    if m.share_embeddings && d.vocab != VocabKind::Joint {
        bail!("model.share_embeddings needs data.vocab = \"joint\"");
    }
    if m.kind == MtModelKind::Transformer && (m.nhead == 0 || m.d_model % m.nhead != 0) {
        bail!(
            "model.d_model ({}) must be divisible by model.nhead ({})",
            m.d_model,
            m.nhead
        );
    }
    cfg.task.loss.validate()
}

/// The two model families behind one interface.
pub enum MtNet {
    Transformer(Seq2SeqTransformer),
    Rnn(RnnSeq2Seq),
}

impl MtNet {
    /// The model of `[model]` for the given vocabulary sizes.
    pub fn new(cfg: &MtConfig, src_vocab: usize, tgt_vocab: usize, vs: &VarStore) -> Result<Self> {
        let m = &cfg.task.model;
        Ok(match m.kind {
            MtModelKind::Transformer => {
                let tc = TransformerConfig {
                    d_model: m.d_model,
                    nhead: m.nhead,
                    num_encoder_layers: m.num_encoder_layers,
                    num_decoder_layers: m.num_decoder_layers,
                    dim_feedforward: m.dim_feedforward,
                    dropout: m.dropout,
                    activation: c(Activation::parse(&m.activation))?,
                    layer_norm_eps: 1e-5,
                    norm_first: m.norm_first,
                };
                let sc = Seq2SeqConfig {
                    src_vocab_size: src_vocab,
                    tgt_vocab_size: tgt_vocab,
                    tying: if m.share_embeddings {
                        EmbeddingTying::Shared
                    } else {
                        EmbeddingTying::Separate
                    },
                    positions: m.positions.into(),
                    ..Seq2SeqConfig::new(src_vocab, tc)
                };
                MtNet::Transformer(c(Seq2SeqTransformer::new(&sc, vs))?)
            }
            MtModelKind::Rnn => {
                let rc = RnnSeq2SeqConfig {
                    embed_dim: m.embed_dim,
                    hidden_size: m.hidden_size,
                    num_layers: m.num_layers,
                    dropout: m.dropout,
                    share_embeddings: m.share_embeddings,
                    ..RnnSeq2SeqConfig::new(src_vocab, tgt_vocab)
                };
                MtNet::Rnn(RnnSeq2Seq::new(&rc, vs)?)
            }
        })
    }

    /// src (B, S), decoder input (B, T) → logits (B, T, V).
    pub fn forward(&self, src: &Tensor, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            MtNet::Transformer(m) => c(m.forward(src, tgt_in, train)),
            MtNet::Rnn(m) => m.forward(src, tgt_in, train),
        }
    }

    /// The network as a [`Seq2SeqModel`], for decoding independent of the kind.
    pub fn as_model(&self) -> &dyn Seq2SeqModel {
        match self {
            MtNet::Transformer(m) => m,
            MtNet::Rnn(m) => m,
        }
    }

    /// Encoder-decoder attention per layer, (B, H, T, S) each.
    pub fn cross_attention(&self, src: &Tensor, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            MtNet::Transformer(m) => c(m.cross_attention(src, tgt_in)),
            MtNet::Rnn(m) => m.cross_attention(src, tgt_in),
        }
    }

    /// Longest source the model takes (the Transformer's position table).
    pub fn max_source_len(&self) -> usize {
        match self {
            MtNet::Transformer(m) => m.pe.table.dims()[0],
            MtNet::Rnn(_) => usize::MAX,
        }
    }
}

/// Token ids of one pair: source `x + <eos>`, target `y` (without specials).
#[derive(Clone, Debug)]
struct Encoded {
    src: Vec<u32>,
    tgt: Vec<u32>,
}

/// A translation model with its tokenizers and (when training) its data.
pub struct MtTask {
    /// The whole run config (engine settings plus task keys).
    pub cfg: MtConfig,
    /// Source tokenizer (the same as `tgt_tok` with a joint vocabulary).
    pub src_tok: Tokenizer,
    /// Target tokenizer.
    pub tgt_tok: Tokenizer,
    /// The translation model.
    pub net: MtNet,
    /// The model's parameters.
    pub vs: VarStore,
    train: Vec<Encoded>,
    valid: Vec<(Pair, Encoded)>,
    epoch_batches: Option<(u64, Vec<Vec<usize>>)>,
}

const EOS: u32 = seqlab_data::tokenizer::EOS_ID;
const BOS: u32 = seqlab_data::tokenizer::BOS_ID;
const PAD: u32 = seqlab_data::tokenizer::PAD_ID;

fn encode_side(tok: &Tokenizer, texts: &[&str], what: &str) -> Result<Vec<Vec<u32>>> {
    tok.encode_batch(texts)
        .with_context(|| format!("tokenizing the {what} side"))
}

/// Tokenizer files inside a checkpoint folder.
fn tokenizer_files(vocab: VocabKind) -> (&'static str, &'static str) {
    match vocab {
        VocabKind::Joint => ("tokenizer.json", "tokenizer.json"),
        VocabKind::Separate => ("src_tokenizer.json", "tgt_tokenizer.json"),
    }
}

impl MtTask {
    /// Reads the data (training and validation pairs only for [`Purpose::Train`]), trains
    /// the tokenizers or takes them from `from.checkpoint`, and builds the model.
    fn new(cfg: &MtConfig, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        let (saved, with_train) = (from.checkpoint, from.purpose == Purpose::Train);
        let d = &cfg.task.data;
        let train_pairs = if with_train { read_pairs(&d.train)? } else { Vec::new() };
        let (sf, tf) = tokenizer_files(d.vocab);
        let (src_tok, tgt_tok) = match saved {
            Some(dir) => (Tokenizer::load(dir.join(sf))?, Tokenizer::load(dir.join(tf))?),
            None => {
                if train_pairs.is_empty() {
                    bail!("no tokenizer: give a checkpoint folder or the training data");
                }
                let tc = TokenizerConfig {
                    kind: TokenizerKind::Bpe,
                    vocab_size: d.vocab_size,
                    min_frequency: d.min_frequency,
                };
                let srcs = train_pairs.iter().map(|p| p.src.as_str());
                let tgts = train_pairs.iter().map(|p| p.tgt.as_str());
                match d.vocab {
                    VocabKind::Joint => {
                        let t = Tokenizer::train(&tc, srcs.chain(tgts))?;
                        (t.clone(), t)
                    }
                    VocabKind::Separate => (Tokenizer::train(&tc, srcs)?, Tokenizer::train(&tc, tgts)?),
                }
            }
        };
        let train = if with_train {
            let s: Vec<&str> = train_pairs.iter().map(|p| p.src.as_str()).collect();
            let t: Vec<&str> = train_pairs.iter().map(|p| p.tgt.as_str()).collect();
            let (s, t) = (
                encode_side(&src_tok, &s, "source")?,
                encode_side(&tgt_tok, &t, "target")?,
            );
            let all: Vec<((), Vec<u32>, Vec<u32>)> = s.into_iter().zip(t).map(|(a, b)| ((), a, b)).collect();
            let (kept, dropped) = filter_by_length(all, d.max_len - 1, d.max_ratio);
            if dropped > 0 {
                eprintln!(
                    "warning: {}: {dropped} of {} training pairs dropped (longer than data.max_len = {} tokens or length ratio above data.max_ratio = {})",
                    d.train.display(),
                    kept.len() + dropped,
                    d.max_len,
                    d.max_ratio
                );
            }
            if kept.is_empty() {
                bail!("{}: no training pair survives the length filter", d.train.display());
            }
            kept.into_iter()
                .map(|(_, mut src, tgt)| {
                    src.push(EOS);
                    Encoded { src, tgt }
                })
                .collect()
        } else {
            Vec::new()
        };
        let net = MtNet::new(cfg, src_tok.vocab_size(), tgt_tok.vocab_size(), vs)?;
        let mut task = Self {
            cfg: cfg.clone(),
            src_tok,
            tgt_tok,
            net,
            vs: vs.clone(),
            train,
            valid: Vec::new(),
            epoch_batches: None,
        };
        if let (Some(p), true) = (&d.valid, with_train) {
            task.valid = task.encode_pairs(read_pairs(p)?)?;
        }
        Ok(task)
    }

    /// A task for translation only (no data read) from its parts: the config, the (joint)
    /// tokenizer and a store holding the model's weights under seqlab's names. Used by the
    /// Hugging Face import ([`crate::hf::load`]).
    pub fn from_parts(
        cfg: &MtConfig,
        tok: Tokenizer,
        weights: &std::collections::HashMap<String, Tensor>,
        vs: &VarStore,
    ) -> Result<Self> {
        let net = MtNet::new(cfg, tok.vocab_size(), tok.vocab_size(), vs)?;
        c(vs.load_state_dict(weights, true))?;
        Ok(Self {
            cfg: cfg.clone(),
            src_tok: tok.clone(),
            tgt_tok: tok,
            net,
            vs: vs.clone(),
            train: Vec::new(),
            valid: Vec::new(),
            epoch_batches: None,
        })
    }

    fn encode_pairs(&self, pairs: Vec<Pair>) -> Result<Vec<(Pair, Encoded)>> {
        let s: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
        let t: Vec<&str> = pairs.iter().map(|p| p.tgt.as_str()).collect();
        let (s, t) = (
            encode_side(&self.src_tok, &s, "source")?,
            encode_side(&self.tgt_tok, &t, "target")?,
        );
        Ok(pairs
            .into_iter()
            .zip(s.into_iter().zip(t))
            .map(|(p, (src, tgt))| {
                (
                    p,
                    Encoded {
                        src: self.source_ids(src),
                        tgt,
                    },
                )
            })
            .collect())
    }

    /// Appends `<eos>`, cutting what the model cannot take (see [`Self::overlong_sources`]).
    fn source_ids(&self, mut ids: Vec<u32>) -> Vec<u32> {
        ids.truncate(self.max_source_tokens());
        ids.push(EOS);
        ids
    }

    /// Most source tokens a sentence may have (the position table, less one for `<eos>`);
    /// longer ones are cut to their first this-many tokens when translated.
    pub fn max_source_tokens(&self) -> usize {
        self.net.max_source_len().saturating_sub(1)
    }

    /// The sentences of `sources` that are longer than [`Self::max_source_tokens`]: (index in
    /// `sources`, token count). Callers warn about them; translation cuts them and carries on
    /// with the others.
    pub fn overlong_sources(&self, sources: &[&str]) -> Result<Vec<(usize, usize)>> {
        let max = self.max_source_tokens();
        Ok(encode_side(&self.src_tok, sources, "source")?
            .iter()
            .enumerate()
            .filter(|(_, ids)| ids.len() > max)
            .map(|(i, ids)| (i, ids.len()))
            .collect())
    }

    /// Warns on stderr about each of [`Self::overlong_sources`], naming `file` and the line
    /// `line_of(index)`.
    pub fn warn_overlong(&self, sources: &[&str], file: &str, line_of: impl Fn(usize) -> usize) -> Result<()> {
        let max = self.max_source_tokens();
        for (k, n) in self.overlong_sources(sources)? {
            eprintln!(
                "warning: {file}:{}: the source has {n} tokens, the model takes {max}; translating its first {max}",
                line_of(k)
            );
        }
        Ok(())
    }

    fn budget(&self) -> BudgetConfig {
        BudgetConfig::new(self.cfg.task.data.batch_tokens)
    }

    /// Padded source, decoder input and decoder target tensors of `idx`, and the number of
    /// target tokens.
    fn tensors(&self, pairs: &[&Encoded]) -> Result<(Tensor, Tensor, Tensor, usize)> {
        let dev = self.vs.device();
        let srcs: Vec<Vec<u32>> = pairs.iter().map(|e| e.src.clone()).collect();
        let ins: Vec<Vec<u32>> = pairs
            .iter()
            .map(|e| std::iter::once(BOS).chain(e.tgt.iter().copied()).collect())
            .collect();
        let outs: Vec<Vec<u32>> = pairs
            .iter()
            .map(|e| e.tgt.iter().copied().chain(std::iter::once(EOS)).collect())
            .collect();
        let all: Vec<usize> = (0..pairs.len()).collect();
        let (s, i, o) = (
            pad_batch(&srcs, &all, PAD),
            pad_batch(&ins, &all, PAD),
            pad_batch(&outs, &all, PAD),
        );
        let n = o.lengths.iter().sum();
        Ok((
            c(Tensor::from_vec(s.ids, (s.batch, s.max_len), dev))?,
            c(Tensor::from_vec(i.ids, (i.batch, i.max_len), dev))?,
            c(Tensor::from_vec(o.ids, (o.batch, o.max_len), dev))?,
            n,
        ))
    }

    /// Cross-entropy over the target tokens of a batch (padding ignored), reduced by
    /// `reduction` (mean or sum over the tokens), and the number of target tokens.
    fn loss(&self, pairs: &[&Encoded], smoothing: f64, train: bool, reduction: Reduction) -> Result<(Tensor, usize)> {
        let (src, tin, tout, n) = self.tensors(pairs)?;
        let logits = self.net.forward(&src, &tin, train)?;
        let (b, t, v) = c(logits.dims3())?;
        let loss = c(cross_entropy(
            &c(logits.reshape((b * t, v)))?,
            &c(tout.reshape(b * t))?,
            Some(PAD as i64),
            smoothing,
            reduction,
        ))?;
        Ok((loss, n))
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.src.len().max(e.tgt.len() + 1)).collect()
    }

    fn batches(&mut self, epoch: u64) -> Result<&Vec<Vec<usize>>> {
        if self.epoch_batches.as_ref().map(|e| e.0) != Some(epoch) {
            let b = token_budget_batches(&self.lengths(), &self.budget(), Some((self.cfg.run.train.seed, epoch)))?;
            self.epoch_batches = Some((epoch, b));
        }
        Ok(&self.epoch_batches.as_ref().expect("just set").1)
    }

    /// Translates sentences (any order, any lengths) → detokenized text, batched by length.
    pub fn translate(
        &self,
        sources: &[&str],
        strategy: &DecodeStrategy,
        batch_size: usize,
        use_cache: bool,
    ) -> Result<Vec<String>> {
        let ids: Vec<Vec<u32>> = encode_side(&self.src_tok, sources, "source")?
            .into_iter()
            .map(|s| self.source_ids(s))
            .collect();
        Ok(self
            .translate_ids(&ids, strategy, batch_size, use_cache)?
            .iter()
            .map(|o| self.detokenize(o))
            .collect::<Result<_>>()?)
    }

    /// Decodes source id lists (with `<eos>`) → output ids (without specials), in input order.
    pub fn translate_ids(
        &self,
        ids: &[Vec<u32>],
        strategy: &DecodeStrategy,
        batch_size: usize,
        use_cache: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut dec = decoder(strategy, use_cache)?;
        let mut out = vec![Vec::new(); ids.len()];
        let special = SpecialIds {
            pad: PAD,
            bos: BOS,
            eos: EOS,
        };
        for chunk in order.chunks(batch_size.max(1)) {
            let p = pad_batch(ids, chunk, PAD);
            let src = c(Tensor::from_vec(p.ids, (p.batch, p.max_len), self.vs.device()))?;
            for (&i, o) in chunk.iter().zip(dec.decode(self.net.as_model(), &src, special)?) {
                out[i] = o;
            }
        }
        Ok(out)
    }

    /// Target ids back to text, special tokens skipped and whitespace trimmed.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        Ok(self.tgt_tok.decode(ids, true)?.trim().to_string())
    }

    /// Source ids (with `<eos>`) of one sentence.
    pub fn encode_source(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.source_ids(self.src_tok.encode(text)?))
    }

    /// Translates the pairs of a `src<TAB>tgt` file and scores them against its targets:
    /// (report text, JSON, hypotheses).
    pub fn score_file(
        &self,
        path: &Path,
        strategy: &DecodeStrategy,
        batch_size: usize,
    ) -> Result<(String, serde_json::Value, Vec<String>)> {
        let pairs = read_pairs(path)?;
        let srcs: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
        self.warn_overlong(&srcs, &path.display().to_string(), |k| pairs[k].line)?;
        let t0 = std::time::Instant::now();
        let hyps = self.translate(&srcs, strategy, batch_size, true)?;
        let secs = t0.elapsed().as_secs_f64();
        let refs = vec![pairs.iter().map(|p| p.tgt.clone()).collect::<Vec<String>>()];
        let b = bleu::corpus_bleu(&hyps, &refs, &bleu::BleuConfig::default())?;
        let ch = chrf::corpus_chrf(&hyps, &refs, &chrf::ChrfConfig::default())?;
        let text = format!(
            "{}: {} sentences, {strategy:?}, {:.1} sentences/s\n{}\n{}",
            path.display(),
            hyps.len(),
            hyps.len() as f64 / secs.max(1e-9),
            b,
            ch
        );
        let json = json!({"file": path.display().to_string(), "sentences": hyps.len(), "bleu": b.score, "chrf": ch.score, "bleu_line": b.to_string(), "sentences_per_s": hyps.len() as f64 / secs.max(1e-9)});
        Ok((text, json, hyps))
    }
}

impl Task for MtTask {
    type Config = MtTaskConfig;
    const NAME: &'static str = "mt";
    const ABOUT: &'static str = "machine translation of src<TAB>tgt text (BLEU, chrF)";

    /// Adam as in the paper: β = (0.9, 0.98), ε = 1e-9, no weight decay.
    fn default_optim() -> OptimConfig {
        OptimConfig {
            betas: [0.9, 0.98],
            eps: 1e-9,
            weight_decay: 0.0,
            ..OptimConfig::default()
        }
    }

    fn config_keys() -> Result<Vec<TableDoc>> {
        Ok(vec![
            TableDoc::of("data", "parallel files, vocabulary and batching", &MtData::default())?,
            TableDoc::of(
                "model",
                "model kind and sizes (defaults: the paper's base model)",
                &MtModel::default(),
            )?,
            TableDoc::of(
                "loss",
                "training cross-entropy (default: the paper's label smoothing 0.1)",
                &paper_loss(),
            )?,
            TableDoc::of(
                "decode",
                "decoding of the test set and of seqlab translate",
                &MtDecode::default(),
            )?,
        ])
    }

    /// The paper's `noam` with the model width and warm-up 4000.
    fn default_schedule(cfg: &MtConfig) -> Schedule {
        let m = &cfg.task.model;
        Schedule::Noam {
            d_model: match m.kind {
                MtModelKind::Transformer => m.d_model,
                MtModelKind::Rnn => m.hidden_size,
            },
            warmup: 4000,
            factor: 1.0,
        }
    }

    fn validate(cfg: &MtConfig) -> Result<()> {
        validate(cfg)
    }

    fn build(cfg: &MtConfig, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        Self::new(cfg, vs, from)
    }

    /// `data.test` when given, else `data.valid` (required for training).
    fn final_split(cfg: &MtConfig) -> Option<Split> {
        let d = &cfg.task.data;
        Split::test_else_valid(d.test.is_some(), d.valid.is_some())
    }

    /// BLEU and chrF of `[decode]`'s search on the split's `src<TAB>tgt` file (or `path`);
    /// the translations come as the extra file `<split>_translations.txt`.
    fn report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        let d = &self.cfg.task.data;
        let file = split.file(path, d.test.as_deref(), d.valid.as_deref())?;
        let dec = &self.cfg.task.decode;
        let (text, json, hyps) = self.score_file(&file, &dec.strategy(), dec.batch_size)?;
        let mut body = hyps.join("\n");
        body.push('\n');
        Ok(Report {
            text,
            json,
            files: vec![(format!("{}_translations.txt", split.name()), body)],
        })
    }

    fn guide(&self) -> String {
        format!(
            "BLEU (0-100) counts n-gram overlap with the reference translation, as sacrebleu does; chrF counts character n-grams. Translate new text with `seqlab translate --checkpoint {}`.",
            self.cfg.run_dir().display()
        )
    }
}

impl TrainTask for MtTask {
    fn batches_per_epoch(&self) -> usize {
        token_budget_batches(&self.lengths(), &self.budget(), Some((self.cfg.run.train.seed, 0))).map_or(0, |b| b.len())
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.train_loss_shard(epoch, index, Shard::WHOLE)?.into_mean()
    }

    /// The shard's sentence pairs of the batch; the summed loss over their target tokens.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        let batches = self.batches(epoch)?;
        // The number of batches varies a little between epochs; the loop counts epoch 0's.
        let idx = batches[index % batches.len()].clone();
        let idx = &idx[shard.range(idx.len())];
        if idx.is_empty() {
            return ShardLoss::empty(self.vs.device());
        }
        let pairs: Vec<&Encoded> = idx.iter().map(|&i| &self.train[i]).collect();
        let (sum, n) = self.loss(&pairs, self.cfg.task.loss.label_smoothing, true, Reduction::Sum)?;
        Ok(ShardLoss::sum_over(sum, n, n))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        if self.valid.is_empty() {
            bail!("translation training needs data.valid (validation BLEU picks the best checkpoint)");
        }
        let lengths: Vec<usize> = self
            .valid
            .iter()
            .map(|(_, e)| e.src.len().max(e.tgt.len() + 1))
            .collect();
        let (mut sum, mut n) = (0.0, 0usize);
        for b in token_budget_batches(&lengths, &self.budget(), None)? {
            let pairs: Vec<&Encoded> = b.iter().map(|&i| &self.valid[i].1).collect();
            let (l, k) = self.loss(&pairs, 0.0, false, Reduction::Mean)?;
            sum += c(l.to_scalar::<f32>())? as f64 * k as f64;
            n += k;
        }
        let nll = sum / n.max(1) as f64;
        let m = match self.cfg.task.data.valid_bleu_sentences {
            0 => self.valid.len(),
            m => m.min(self.valid.len()),
        };
        let ids: Vec<Vec<u32>> = self.valid[..m].iter().map(|(_, e)| e.src.clone()).collect();
        let outs = self.translate_ids(&ids, &DecodeStrategy::Greedy, self.cfg.task.decode.batch_size, true)?;
        let hyps: Vec<String> = outs.iter().map(|o| self.detokenize(o)).collect::<Result<_>>()?;
        let refs = vec![self.valid[..m].iter().map(|(p, _)| p.tgt.clone()).collect::<Vec<_>>()];
        let b = bleu::corpus_bleu(&hyps, &refs, &bleu::BleuConfig::default())?;
        Ok(BTreeMap::from([
            ("loss".into(), nll),
            ("ppl".into(), nll.exp()),
            ("bleu".into(), b.score),
        ]))
    }

    fn selection(&self) -> (String, bool) {
        ("bleu".into(), false)
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        let (sf, tf) = tokenizer_files(self.cfg.task.data.vocab);
        self.src_tok.save(dir.join(sf))?;
        if sf != tf {
            self.tgt_tok.save(dir.join(tf))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqlab_train::{LoopConfig, OptimName, RunSettings};

    fn tmp(tag: &str) -> PathBuf {
        seqlab_nn::testing::scratch_dir(&format!("mt-task-{tag}"))
    }

    /// `src<TAB>tgt` lines: a few words and the same words reversed, upper-cased.
    fn reversal_file(path: &Path, n: usize, seed: u64) {
        let words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"];
        let mut rng = seqlab_nn::SeqRng::new(seed);
        let mut out = String::new();
        for _ in 0..n {
            let len = 2 + (rng.unit_f32() * 3.0) as usize;
            let w: Vec<&str> = (0..len).map(|_| words[(rng.unit_f32() * 8.0) as usize % 8]).collect();
            let r: Vec<String> = w.iter().rev().map(|s| s.to_uppercase()).collect();
            out.push_str(&format!("{}\t{}\n", w.join(" "), r.join(" ")));
        }
        std::fs::write(path, out).unwrap();
    }

    fn tiny_cfg(dir: &Path, kind: MtModelKind) -> MtConfig {
        let (train, valid) = (dir.join("train.tsv"), dir.join("valid.tsv"));
        reversal_file(&train, 400, 1);
        reversal_file(&valid, 30, 2);
        RunConfig {
            run: RunSettings {
                task: "mt".into(),
                run_dir: Some(dir.join(format!("run-{kind:?}"))),
                optim: MtTask::default_optim(),
                schedule: Some(Schedule::Constant { lr: 3e-3 }),
                train: LoopConfig {
                    max_steps: 80,
                    eval_every: 40,
                    log_every: 20,
                    progress: false,
                    seed: 5,
                    ..LoopConfig::default()
                },
            },
            task: MtTaskConfig {
                data: MtData {
                    train,
                    valid: Some(valid.clone()),
                    test: Some(valid),
                    vocab: VocabKind::Joint,
                    vocab_size: 60,
                    batch_tokens: 256,
                    valid_bleu_sentences: 0,
                    ..MtData::default()
                },
                model: MtModel {
                    kind,
                    d_model: 32,
                    nhead: 2,
                    num_encoder_layers: 1,
                    num_decoder_layers: 1,
                    dim_feedforward: 64,
                    dropout: 0.0,
                    embed_dim: 16,
                    hidden_size: 32,
                    num_layers: 1,
                    ..MtModel::default()
                },
                loss: paper_loss(),
                decode: MtDecode {
                    beam_size: 2,
                    ..MtDecode::default()
                },
            },
        }
    }

    fn fresh(cfg: &MtConfig, vs: &VarStore) -> MtTask {
        let from = BuildFrom {
            checkpoint: None,
            purpose: Purpose::Train,
        };
        MtTask::build(cfg, vs, from).unwrap()
    }

    #[test]
    fn every_key_is_documented() {
        seqlab_train::keys::check_documented::<MtTask>("task = \"mt\"\n[data]\ntrain = \"a.tsv\"\n").unwrap();
        let text = seqlab_train::keys::render("mt", "", &seqlab_train::keys::task_tables::<MtTask>().unwrap());
        // The task's own defaults are shown: the paper's label smoothing and Adam betas.
        for k in ["label_smoothing = 0.1", "betas", "[0.9,0.98]", "[decode]"] {
            assert!(text.contains(k), "{k} missing:\n{text}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("beam_size ") && l.contains("= 4 ")),
            "{text}"
        );
    }

    /// Both model families train through the engine's run path, write a test report,
    /// translations and curves, and reload from the run folder to translate the same way.
    #[test]
    fn tiny_runs_learn_and_reload_for_both_models() {
        let dir = tmp("tiny");
        for kind in [MtModelKind::Transformer, MtModelKind::Rnn] {
            let cfg = tiny_cfg(&dir, kind);
            let run_dir = cfg.run_dir();
            let vs = VarStore::new(cfg.run.train.seed, &candle_core::Device::Cpu);
            let before = fresh(&cfg, &vs).evaluate().unwrap();
            let out = seqlab_train::run::train::<MtTask>(&cfg, false).unwrap();
            let after = &out.summary.last_eval;
            assert!(
                after["loss"] < before["loss"] - 1.0,
                "{kind:?}: valid loss {} -> {}",
                before["loss"],
                after["loss"]
            );
            let fin = out.test_report.expect("data.test was given");
            assert_eq!(fin.split, Split::Test);
            assert!(fin.report.text.contains("BLEU"), "{kind:?}");
            assert!(run_dir.join("loss.png").exists());
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run_dir.join("test_report.json")).unwrap()).unwrap();
            assert_eq!(report["split"], "test");
            let hyps = std::fs::read_to_string(run_dir.join("test_translations.txt")).unwrap();
            assert_eq!(hyps.lines().count(), 30);
            let task = seqlab_train::load::<MtTask>(&run_dir).unwrap().task;
            assert!(task.valid.is_empty(), "loading for evaluation reads no validation data");
            let again = task
                .translate(&["red cat"], &cfg.task.decode.strategy(), 8, true)
                .unwrap();
            assert_eq!(again.len(), 1);
            let (_, json, hyps2) = task
                .score_file(&dir.join("valid.tsv"), &cfg.task.decode.strategy(), 8)
                .unwrap();
            assert_eq!(
                hyps2.join("\n") + "\n",
                hyps,
                "{kind:?}: reloaded model translates differently"
            );
            assert_eq!(json["bleu"], report["bleu"]);
            // Attention rows are distributions over the source.
            let dev = candle_core::Device::Cpu;
            let s = Tensor::new(&[[5u32, 6, 2]], &dev).unwrap();
            let t = Tensor::new(&[[1u32, 7, 8]], &dev).unwrap();
            let w = task.net.cross_attention(&s, &t).unwrap();
            let sums = w[0]
                .sum(candle_core::D::Minus1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(sums.iter().all(|x| (x - 1.0).abs() < 1e-4), "{sums:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `[optim]` is one schema: AdamW, Adam and SGD all train a translation model (the loss
    /// falls within a few steps) through the same run path.
    #[test]
    fn every_optimizer_trains_translation() {
        let dir = tmp("optim");
        for name in [OptimName::Adamw, OptimName::Adam, OptimName::Sgd] {
            let mut cfg = tiny_cfg(&dir, MtModelKind::Transformer);
            cfg.run.run_dir = Some(dir.join(format!("run-{name:?}")));
            cfg.run.optim.name = name;
            cfg.run.optim.lr = if name == OptimName::Sgd { 0.3 } else { 3e-3 };
            cfg.run.schedule = None;
            cfg.task.model.kind = MtModelKind::Transformer;
            // The default schedule (noam, warm-up 4000) would barely move in 12 steps.
            cfg.run.schedule = Some(Schedule::Constant { lr: cfg.run.optim.lr });
            cfg.run.train.max_steps = 12;
            cfg.run.train.eval_every = 12;
            cfg.run.train.log_every = 4;
            cfg.task.data.valid_bleu_sentences = 4;
            let out = seqlab_train::run::train::<MtTask>(&cfg, false).unwrap();
            let l = &out.summary.train_losses;
            assert_eq!(l.len(), 12, "{name:?}");
            let (first, last) = (
                l[..3].iter().map(|x| x.1).sum::<f64>(),
                l[9..].iter().map(|x| x.1).sum::<f64>(),
            );
            assert!(
                last < first,
                "{name:?}: training loss {first} -> {last} (sums of 3 steps)"
            );
            assert!(cfg.run_dir().join("test_report.json").exists(), "{name:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn config_errors_are_named() {
        let dir = tmp("cfg");
        let mut cfg = tiny_cfg(&dir, MtModelKind::Transformer);
        cfg.task.data.vocab = VocabKind::Separate;
        assert!(validate(&cfg).unwrap_err().to_string().contains("share_embeddings"));
        cfg.task.model.share_embeddings = false;
        validate(&cfg).unwrap();
        cfg.task.model.nhead = 3;
        assert!(validate(&cfg).unwrap_err().to_string().contains("divisible"));
        cfg.task.model.nhead = 2;
        cfg.task.loss.label_smoothing = 1.0;
        assert!(validate(&cfg).unwrap_err().to_string().contains("loss.label_smoothing"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
