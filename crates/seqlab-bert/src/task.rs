//! Pretraining (MLM + NSP, `task = "bert-pretrain"`) and classification fine-tuning
//! (`task = "bert-finetune"`) as [`Task`]s, so both get seqlab-train's run path: checkpoints,
//! exact resume, metrics, `loss.png` and `test_report.json`.

use crate::c;
use crate::data::{pretrain_batch, BertTokenizer, MaskConfig, PairCorpus};
use crate::model::{BertClassifier, BertConfig, BertForPreTraining, BertInput};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use seqlab_data::{shuffled_indices, ClsData, LabelSet, TokenizerConfig, TokenizerKind};
use seqlab_metrics::classification::class_report;
use seqlab_nn::loss::{cross_entropy, Reduction};
use seqlab_nn::VarStore;
use seqlab_train::checkpoint::resolve as resolve_checkpoint;
use seqlab_train::keys::{ConfigKeys, KeyDoc, KeyRow, TableDoc};
use seqlab_train::trainer::{LossTerm, Shard, ShardLoss, TrainTask};
use seqlab_train::{BuildFrom, OptimConfig, Purpose, Report, RunConfig, Schedule, Split, Task};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// BERT's optimizer defaults (AdamW, the paper's weight decay 0.01 and β = (0.9, 0.999), ε
/// 1e-6 as in its code) at learning rate `lr`.
fn bert_optim(lr: f64) -> OptimConfig {
    OptimConfig {
        lr,
        weight_decay: 0.01,
        eps: 1e-6,
        ..OptimConfig::default()
    }
}

/// BERT's default schedule: linear warm-up over `warmup` steps (at most `max_steps - 1`),
/// then cosine decay to 0 at `train.max_steps`.
fn bert_schedule(lr: f64, warmup: u64, max_steps: u64) -> Schedule {
    Schedule::WarmupCosine {
        lr,
        warmup: warmup.min(max_steps.saturating_sub(1)),
        total: max_steps,
        min_lr: 0.0,
    }
}

/// `[data]` of a pretraining run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainData {
    /// One paragraph per line; sentences end in `.`, `!` or `?`.
    pub corpus: PathBuf,
    /// Default bpe.
    pub tokenizer: TokenizerKind,
    /// Counts seqlab's four specials, not `[CLS]`/`[SEP]`/`[MASK]`. Default 8000.
    pub vocab_size: usize,
    /// Least count for a token or merge to enter the vocabulary.
    pub min_frequency: u64,
    /// Read only the first this many paragraphs (lines). Default all.
    pub max_paragraphs: Option<usize>,
    /// The last this many paragraphs are held out for evaluation. Default 500.
    pub valid_paragraphs: usize,
    /// Longest pair, specials included. Default 128.
    pub max_len: usize,
    /// Pairs per micro-batch. Default 32.
    pub batch_size: usize,
    /// Evaluate on at most this many batches. Default 20.
    pub max_eval_batches: Option<usize>,
    /// Fraction of tokens selected for the MLM. Default 0.15.
    pub mask_prob: f64,
}

impl Default for PretrainData {
    fn default() -> Self {
        Self {
            corpus: PathBuf::from("../shared/data/w2v/corpus.en.txt"),
            tokenizer: TokenizerKind::Bpe,
            vocab_size: 8000,
            min_frequency: 2,
            max_paragraphs: None,
            valid_paragraphs: 500,
            max_len: 128,
            batch_size: 32,
            max_eval_batches: Some(20),
            mask_prob: 0.15,
        }
    }
}

/// The `[data]` keys of pretraining at run time (`seqlab config keys bert-pretrain`).
impl ConfigKeys for PretrainData {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new(
            "corpus",
            "text file, one paragraph per line (consecutive lines are next-sentence pairs)",
        ),
        KeyDoc::new("tokenizer", "char | word | bpe"),
        KeyDoc::new(
            "vocab_size",
            "vocabulary size, seqlab's four specials counted, not [CLS]/[SEP]/[MASK]",
        ),
        KeyDoc::new(
            "min_frequency",
            "least count of a token or merge to enter the vocabulary",
        ),
        KeyDoc::new(
            "max_paragraphs",
            "read only the first this many paragraphs (lines); unset = all",
        ),
        KeyDoc::new(
            "valid_paragraphs",
            "the last this many paragraphs are held out for evaluation",
        ),
        KeyDoc::new("max_len", "longest pair in tokens, specials included"),
        KeyDoc::new("batch_size", "pairs per micro-batch"),
        KeyDoc::new("max_eval_batches", "evaluate on at most this many batches; unset = all"),
        KeyDoc::new(
            "mask_prob",
            "fraction of tokens selected for the masked LM (80 % [MASK], 10 % random, 10 % kept)",
        ),
    ];
}

/// The task keys of a pretraining run (`configs/bert-*.toml`); the engine's keys are
/// [`seqlab_train::config`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainTaskConfig {
    /// Encoder size; `vocab_size` comes from the tokenizer.
    #[serde(default)]
    pub model: BertConfig,
    /// Corpus, tokenizer and batching.
    #[serde(default)]
    pub data: PretrainData,
}

/// A whole pretraining run config.
pub type PretrainConfig = RunConfig<PretrainTaskConfig>;

fn u32_tensor(v: &[u32], dev: &Device) -> Result<Tensor> {
    c(Tensor::from_slice(v, v.len(), dev))
}

fn correct(logits: &Tensor, labels: &[u32]) -> Result<usize> {
    let p = c(logits
        .argmax(D::Minus1)
        .and_then(|a| a.to_dtype(DType::U32))
        .and_then(|a| a.to_vec1::<u32>()))?;
    Ok(p.iter().zip(labels).filter(|(a, b)| a == b).count())
}

/// MLM + NSP pretraining.
pub struct PretrainTask {
    /// The whole run config (engine settings plus task keys).
    pub cfg: PretrainConfig,
    /// Tokenizer with the BERT special tokens.
    pub tok: BertTokenizer,
    /// Encoder with MLM and NSP heads.
    pub net: BertForPreTraining,
    /// The model's parameters.
    pub vs: VarStore,
    /// Training sentences and NSP anchors.
    pub train: PairCorpus,
    /// Validation sentences and NSP anchors.
    pub valid: PairCorpus,
}

impl PretrainTask {
    /// Reads the corpus (its held-out part is the evaluation data, so evaluation reads it
    /// too), trains the tokenizer (or takes the checkpoint's `tokenizer.json`) and builds the
    /// model; sets `model.vocab_size` from the tokenizer.
    fn new(cfg: &PretrainConfig, vs: &VarStore, saved: Option<&Path>) -> Result<Self> {
        let d = &cfg.task.data;
        if d.max_len < 5 || d.batch_size == 0 || !(0.0..1.0).contains(&d.mask_prob) || d.mask_prob == 0.0 {
            bail!("data: need max_len >= 5, batch_size > 0 and 0 < mask_prob < 1");
        }
        let text = std::fs::read_to_string(&d.corpus).with_context(|| format!("reading {}", d.corpus.display()))?;
        let mut lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if let Some(m) = d.max_paragraphs {
            lines.truncate(m);
        }
        if lines.len() <= d.valid_paragraphs + 1 {
            bail!(
                "{}: {} paragraphs, but data.valid_paragraphs = {} are held out",
                d.corpus.display(),
                lines.len(),
                d.valid_paragraphs
            );
        }
        let (tr, va) = lines.split_at(lines.len() - d.valid_paragraphs);
        let tok = match saved.map(|s| s.join("tokenizer.json")).filter(|p| p.exists()) {
            Some(p) => BertTokenizer::load(&p)?,
            None => {
                let tc = TokenizerConfig {
                    kind: d.tokenizer,
                    vocab_size: d.vocab_size,
                    min_frequency: d.min_frequency,
                };
                BertTokenizer::train(&tc, tr.iter().copied())?
            }
        };
        let train = PairCorpus::from_lines(&tok, tr.iter().copied())
            .with_context(|| format!("{}: training part", d.corpus.display()))?;
        let valid = PairCorpus::from_lines(&tok, va.iter().copied())
            .with_context(|| format!("{}: held-out part", d.corpus.display()))?;
        let mut cfg = cfg.clone();
        cfg.task.model.vocab_size = tok.vocab_size();
        if d.max_len > cfg.task.model.max_position_embeddings {
            bail!(
                "data.max_len ({}) exceeds model.max_position_embeddings ({})",
                d.max_len,
                cfg.task.model.max_position_embeddings
            );
        }
        let net = BertForPreTraining::new(&cfg.task.model, vs)?;
        Ok(Self {
            cfg,
            tok,
            net,
            vs: vs.clone(),
            train,
            valid,
        })
    }

    /// MLM and NSP loss and accuracy on a held-out corpus (masks drawn from a fixed epoch),
    /// over at most `max_batches` batches.
    fn held_out_metrics(&self, corpus: &PairCorpus, max_batches: Option<usize>) -> Result<BTreeMap<String, f64>> {
        let bs = self.cfg.task.data.batch_size;
        let all: Vec<usize> = (0..corpus.len()).collect();
        let (mut ml, mut nl, mut mc, mut mn, mut nc, mut nn) = (0.0, 0.0, 0, 0, 0, 0);
        for (batches, idx) in all.chunks(bs).enumerate() {
            if max_batches.is_some_and(|m| batches >= m) {
                break;
            }
            let (m, n, a, k, b) = self.batch(corpus, idx, EVAL_EPOCH, false, Reduction::Mean)?;
            ml += c(m.to_scalar::<f32>())? as f64 * k as f64;
            nl += c(n.to_scalar::<f32>())? as f64 * idx.len() as f64;
            (mc, mn, nc, nn) = (mc + a, mn + k, nc + b, nn + idx.len());
        }
        let (mlm_loss, nsp_loss) = (ml / mn.max(1) as f64, nl / nn.max(1) as f64);
        Ok(BTreeMap::from([
            ("loss".into(), mlm_loss + nsp_loss),
            ("mlm_loss".into(), mlm_loss),
            ("nsp_loss".into(), nsp_loss),
            ("mlm_accuracy".into(), mc as f64 / mn.max(1) as f64),
            ("nsp_accuracy".into(), nc as f64 / nn.max(1) as f64),
            ("pairs".into(), nn as f64),
        ]))
    }

    fn mask_cfg(&self) -> MaskConfig {
        MaskConfig {
            select: self.cfg.task.data.mask_prob,
            ..MaskConfig::default()
        }
    }

    /// (MLM loss, NSP loss, MLM correct, MLM count, NSP correct) of one batch.
    fn batch(
        &self,
        corpus: &PairCorpus,
        anchors: &[usize],
        epoch: u64,
        train: bool,
        reduction: Reduction,
    ) -> Result<(Tensor, Tensor, usize, usize, usize)> {
        let dev = self.vs.device();
        let b = pretrain_batch(
            corpus,
            &self.tok,
            anchors,
            self.cfg.run.train.seed,
            epoch,
            self.cfg.task.data.max_len,
            &self.mask_cfg(),
        );
        let ids = c(Tensor::from_slice(&b.ids, (b.batch, b.len), dev))?;
        let segs = c(Tensor::from_slice(&b.segments, (b.batch, b.len), dev))?;
        let pad = c(Tensor::from_slice(&b.padding, (b.batch, b.len), dev))?;
        let (mlm, nsp) = self.net.forward(
            &BertInput {
                ids: &ids,
                segments: &segs,
                padding: &pad,
            },
            &u32_tensor(&b.masked, dev)?,
            train,
        )?;
        let mlm_loss = if b.masked.is_empty() && reduction == Reduction::Sum {
            // A shard whose rows drew no mask: nothing to add (a mean would be 0/0).
            c(Tensor::zeros((), DType::F32, dev))?
        } else {
            c(cross_entropy(
                &mlm,
                &u32_tensor(&b.mlm_labels, dev)?,
                None,
                0.0,
                reduction,
            ))?
        };
        let nsp_loss = c(cross_entropy(
            &nsp,
            &u32_tensor(&b.nsp_labels, dev)?,
            None,
            0.0,
            reduction,
        ))?;
        Ok((
            mlm_loss,
            nsp_loss,
            correct(&mlm, &b.mlm_labels)?,
            b.masked.len(),
            correct(&nsp, &b.nsp_labels)?,
        ))
    }
}

/// Masks of the held-out part are drawn once, from this epoch number.
const EVAL_EPOCH: u64 = u64::MAX;

impl Task for PretrainTask {
    type Config = PretrainTaskConfig;
    const NAME: &'static str = "bert-pretrain";
    const ABOUT: &'static str = "BERT masked-LM + next-sentence pretraining on a text corpus";

    /// AdamW, lr 1e-4, weight decay 0.01, ε 1e-6 (the BERT paper and code).
    fn default_optim() -> OptimConfig {
        bert_optim(1e-4)
    }

    fn config_keys() -> Result<Vec<TableDoc>> {
        Ok(vec![
            TableDoc::of(
                "model",
                "encoder size (defaults: BERT-tiny, 2 layers x 128)",
                &BertConfig::default(),
            )?,
            TableDoc::of(
                "data",
                "corpus, tokenizer, masking and batching",
                &PretrainData::default(),
            )?,
        ])
    }

    /// Warm-up over 1000 steps, then cosine decay to 0 at `train.max_steps`.
    fn default_schedule(cfg: &PretrainConfig) -> Schedule {
        bert_schedule(cfg.run.optim.lr, 1000, cfg.run.train.max_steps)
    }

    /// Configs of older seqlab versions had no `task` key: a pretraining config is one with
    /// `data.corpus` or a BERT `[model]` and no `pretrained`.
    fn claims_untagged(cfg: &Map<String, Value>) -> bool {
        let corpus = cfg.get("data").and_then(|d| d.get("corpus")).is_some();
        let bert_model = cfg.get("model").and_then(|m| m.get("num_hidden_layers")).is_some();
        !cfg.contains_key("pretrained") && (corpus || bert_model)
    }

    fn build(cfg: &PretrainConfig, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        Self::new(cfg, vs, from.checkpoint)
    }

    /// Pretraining has no test split: the held-out paragraphs.
    fn final_split(_cfg: &PretrainConfig) -> Option<Split> {
        Some(Split::Valid)
    }

    /// MLM/NSP loss and accuracy on all held-out paragraphs (either split), or on every
    /// paragraph of the corpus file `path`.
    fn report(&self, _split: Split, path: Option<&Path>) -> Result<Report> {
        let (what, m) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                let corpus = PairCorpus::from_lines(&self.tok, lines).with_context(|| format!("{}", p.display()))?;
                (p.display().to_string(), self.held_out_metrics(&corpus, None)?)
            }
            None => (
                format!(
                    "{} (the last {} paragraphs, held out)",
                    self.cfg.task.data.corpus.display(),
                    self.cfg.task.data.valid_paragraphs
                ),
                self.held_out_metrics(&self.valid, None)?,
            ),
        };
        let text = format!(
            "{what}: {} sentence pairs\n  masked LM: loss {:.4}  accuracy {:.4}\n  next sentence: loss {:.4}  accuracy {:.4}",
            m["pairs"], m["mlm_loss"], m["mlm_accuracy"], m["nsp_loss"], m["nsp_accuracy"]
        );
        let mut j = json!({"file": what});
        for (k, v) in &m {
            j[k] = json!(v);
        }
        Ok(Report {
            text,
            json: j,
            files: Vec::new(),
        })
    }

    fn guide(&self) -> String {
        "masked-LM accuracy is the share of hidden tokens guessed right (chance is 1/vocabulary); next-sentence accuracy starts at 0.5 (coin flip).".into()
    }
}

impl TrainTask for PretrainTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.cfg.task.data.batch_size)
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.train_loss_shard(epoch, index, Shard::WHOLE)?.into_mean()
    }

    /// The shard's examples of the batch (each example's pair and masks come from its own
    /// seeded stream, so a shard sees what the whole batch would). The paper's objective,
    /// the mean MLM loss plus the mean NSP loss, as two terms: MLM summed over the masked
    /// tokens, NSP over the examples.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        let order = shuffled_indices(self.train.len(), self.cfg.run.train.seed, epoch);
        let bs = self.cfg.task.data.batch_size;
        let lo = (index * bs).min(order.len().saturating_sub(1));
        let idx = &order[lo..(lo + bs).min(order.len())];
        let idx = &idx[shard.range(idx.len())];
        if idx.is_empty() {
            return ShardLoss::empty(self.vs.device());
        }
        let (mlm, nsp, _, n, _) = self.batch(&self.train, idx, epoch, true, Reduction::Sum)?;
        Ok(ShardLoss {
            terms: vec![
                LossTerm {
                    sum: mlm,
                    count: n as f64,
                },
                LossTerm {
                    sum: nsp,
                    count: idx.len() as f64,
                },
            ],
            items: n,
        })
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        self.held_out_metrics(&self.valid, self.cfg.task.data.max_eval_batches)
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        self.tok.save(&dir.join("tokenizer.json"))?;
        std::fs::write(
            dir.join("bert_config.json"),
            serde_json::to_string_pretty(&self.cfg.task.model)?,
        )?;
        Ok(())
    }
}

/// `[data]` of a fine-tuning run: `text<TAB>label` files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneData {
    /// Training `text<TAB>label` file.
    pub train: PathBuf,
    /// Validation file, evaluated during training.
    pub valid: Option<PathBuf>,
    /// Scored with the best checkpoint when training ends.
    pub test: Option<PathBuf>,
    /// Longest input, `[CLS]`/`[SEP]` included; longer texts are cut. Default 128.
    pub max_len: usize,
    /// Default 32.
    pub batch_size: usize,
    /// Evaluate at most this many validation batches. Default all.
    pub max_eval_batches: Option<usize>,
}

impl Default for FinetuneData {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            valid: None,
            test: None,
            max_len: 128,
            batch_size: 32,
            max_eval_batches: None,
        }
    }
}

/// The `[data]` keys of fine-tuning at run time (`seqlab config keys bert-finetune`).
impl ConfigKeys for FinetuneData {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::required("train", "training file, text<TAB>label per line"),
        KeyDoc::new("valid", "validation file, evaluated during training"),
        KeyDoc::new("test", "test file, scored with the best checkpoint when training ends"),
        KeyDoc::new("max_len", "longest input, [CLS]/[SEP] included; longer texts are cut"),
        KeyDoc::new("batch_size", "texts per batch"),
        KeyDoc::new(
            "max_eval_batches",
            "evaluate at most this many validation batches; unset = all",
        ),
    ];
}

/// The task keys of a fine-tuning run: a pretrained checkpoint plus classification data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneTaskConfig {
    /// A seqlab pretraining checkpoint folder, or a pretraining run folder (→ `best`, else
    /// latest). Give this or `init_from`.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub pretrained: PathBuf,
    /// A Hugging Face BERT folder (`config.json`, `model.safetensors`, `tokenizer.json` or
    /// `vocab.txt`; see [`crate::hf`]) to start from instead of `pretrained`.
    // Serialized even when unset (as null in JSON; TOML leaves it out) so that the key table
    // check sees it.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Keep the random initial weights instead of loading the pretrained encoder (the
    /// checkpoint still gives the tokenizer and model shape): the no-pretraining baseline.
    #[serde(default)]
    pub from_scratch: bool,
    /// Classification files and batching.
    pub data: FinetuneData,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// A whole fine-tuning run config.
pub type FinetuneConfig = RunConfig<FinetuneTaskConfig>;

/// Copies every `bert.*` weight of `vs` from the safetensors file; an error names each one
/// that is missing or has the wrong shape. Other entries of the file (`cls.*`) are ignored.
/// Returns how many tensors were loaded.
pub fn load_encoder(vs: &VarStore, file: &Path) -> Result<usize> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(file, vs.device()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    load_encoder_tensors(vs, &tensors).with_context(|| file.display().to_string())
}

/// [`load_encoder`] from tensors already read (seqlab names).
pub fn load_encoder_tensors(vs: &VarStore, tensors: &HashMap<String, Tensor>) -> Result<usize> {
    let mut problems = Vec::new();
    let mut n = 0;
    for (name, var) in vs.trainable() {
        if !name.starts_with("bert.") {
            continue;
        }
        match tensors.get(&name) {
            None => problems.push(format!("missing {name}")),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "{name}: shape {:?} in file, {:?} in model",
                t.dims(),
                var.dims()
            )),
            Some(t) => {
                c(var.set(&c(t.to_dtype(var.dtype()))?))?;
                n += 1;
            }
        }
    }
    if !problems.is_empty() {
        bail!("pretrained encoder does not fit: {}", problems.join("; "));
    }
    Ok(n)
}

/// Where a fine-tuning run's tokenizer, model shape and encoder weights come from.
enum Source {
    /// A seqlab checkpoint folder (`tokenizer.json`, `bert_config.json`, `model.safetensors`).
    Seqlab(PathBuf),
    /// A Hugging Face BERT folder.
    Hf(PathBuf),
}

struct ClsSet {
    seqs: Vec<Vec<u32>>,
    labels: Vec<u32>,
}

/// `[CLS] text [SEP]`, the text cut to fit `max_len`.
fn encode_cls(tok: &BertTokenizer, data: &ClsData, max_len: usize) -> Result<ClsSet> {
    let mut seqs = Vec::with_capacity(data.examples.len());
    for e in &data.examples {
        let mut ids = vec![tok.cls];
        let body = tok.encode(&e.text)?;
        ids.extend_from_slice(&body[..body.len().min(max_len - 2)]);
        ids.push(tok.sep);
        seqs.push(ids);
    }
    Ok(ClsSet {
        seqs,
        labels: data.examples.iter().map(|e| e.label as u32).collect(),
    })
}

/// Classification fine-tuning from a pretrained encoder.
pub struct FinetuneTask {
    /// The whole run config (engine settings plus task keys).
    pub cfg: FinetuneConfig,
    /// The pretrained checkpoint's tokenizer.
    pub tok: BertTokenizer,
    /// The label names and their ids.
    pub labels: LabelSet,
    /// The pretrained encoder's configuration.
    pub bert_cfg: BertConfig,
    /// Encoder plus classification head.
    pub net: BertClassifier,
    /// The model's parameters.
    pub vs: VarStore,
    train: ClsSet,
    valid: Option<ClsSet>,
}

impl FinetuneTask {
    /// For training: reads the data, the pretrained checkpoint's tokenizer and model config,
    /// builds the classifier and loads every encoder weight from it (unless `from_scratch`).
    /// For evaluation: tokenizer, model config and labels come from `from.checkpoint` and no
    /// training data is read.
    fn new(cfg: &FinetuneConfig, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        let evaluate_only = from.purpose == Purpose::Evaluate;
        let t = &cfg.task;
        let source = match (from.checkpoint, evaluate_only, &t.init_from) {
            (Some(dir), true, _) => Source::Seqlab(dir.to_path_buf()),
            (_, _, Some(_)) if !is_empty_path(&t.pretrained) => {
                bail!(
                    "give one of `pretrained` (a seqlab checkpoint) and `init_from` (a Hugging Face folder), not both"
                )
            }
            (_, _, Some(hf)) => Source::Hf(hf.clone()),
            _ if is_empty_path(&t.pretrained) => {
                bail!(
                    "fine-tuning needs `pretrained` (a seqlab checkpoint) or `init_from` (a Hugging Face BERT folder)"
                )
            }
            _ => Source::Seqlab(resolve_checkpoint(&t.pretrained)?),
        };
        let (tok, bert_cfg, mut hf_weights) = match &source {
            Source::Seqlab(ck) => {
                let bc = ck.join("bert_config.json");
                let bert_cfg: BertConfig = serde_json::from_str(
                    &std::fs::read_to_string(&bc).with_context(|| format!("reading {}", bc.display()))?,
                )
                .with_context(|| format!("{}: bad model config", bc.display()))?;
                (BertTokenizer::load(&ck.join("tokenizer.json"))?, bert_cfg, None)
            }
            Source::Hf(dir) => {
                let h = crate::hf::HfBert::load(dir, vs.device())?;
                (h.tok, h.cfg, Some(h.weights))
            }
        };
        let d = &cfg.task.data;
        if d.max_len < 3 || d.max_len > bert_cfg.max_position_embeddings || d.batch_size == 0 {
            bail!(
                "data: need 3 <= max_len <= {} (the model's positions) and batch_size > 0",
                bert_cfg.max_position_embeddings
            );
        }
        let encode = |data: &ClsData| encode_cls(&tok, data, d.max_len);
        let (labels, train, valid) = if evaluate_only {
            let (Source::Seqlab(ck) | Source::Hf(ck)) = &source;
            let f = ck.join("labels.json");
            let names: Vec<String> =
                serde_json::from_str(&std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?)
                    .with_context(|| format!("{}: bad label list", f.display()))?;
            let empty = ClsSet {
                seqs: Vec::new(),
                labels: Vec::new(),
            };
            (LabelSet::from_names(names), empty, None)
        } else {
            let tr = ClsData::read_train(&d.train)?;
            let labels = tr.labels.clone();
            let valid = match &d.valid {
                Some(p) => Some(encode(&ClsData::read_eval(p, &labels)?)?),
                None => None,
            };
            (labels, encode(&tr)?, valid)
        };
        let net = BertClassifier::new(&bert_cfg, labels.len(), vs)?;
        if !evaluate_only && !cfg.task.from_scratch {
            match (&source, hf_weights.as_mut()) {
                (Source::Hf(dir), Some(w)) => {
                    // A checkpoint without pooler: the classifier starts from a fresh one,
                    // as HF's BertForSequenceClassification does.
                    for (name, var) in vs.trainable() {
                        if name.starts_with("bert.pooler.") && !w.parts.pooler {
                            // A copy: a variable cannot be set from its own storage.
                            w.tensors.insert(name, c(var.as_tensor().copy())?);
                        }
                    }
                    load_encoder_tensors(vs, &w.tensors).with_context(|| dir.display().to_string())?;
                }
                (Source::Seqlab(ck), _) | (Source::Hf(ck), None) => {
                    load_encoder(vs, &ck.join("model.safetensors"))?;
                }
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            tok,
            labels,
            bert_cfg,
            net,
            vs: vs.clone(),
            train,
            valid,
        })
    }

    fn logits(&self, set: &ClsSet, idx: &[usize], train: bool) -> Result<(Tensor, Vec<u32>)> {
        let dev = self.vs.device();
        let len = idx.iter().map(|&i| set.seqs[i].len()).max().unwrap_or(1);
        let b = idx.len();
        let (mut ids, mut pad) = (vec![self.tok.pad; b * len], vec![1u8; b * len]);
        for (r, &i) in idx.iter().enumerate() {
            let s = &set.seqs[i];
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            pad[r * len..r * len + s.len()].iter_mut().for_each(|p| *p = 0);
        }
        let ids = c(Tensor::from_vec(ids, (b, len), dev))?;
        let segs = c(ids.zeros_like())?;
        let pad = c(Tensor::from_vec(pad, (b, len), dev))?;
        let y = idx.iter().map(|&i| set.labels[i]).collect();
        Ok((
            self.net.forward(
                &BertInput {
                    ids: &ids,
                    segments: &segs,
                    padding: &pad,
                },
                train,
            )?,
            y,
        ))
    }
}

impl FinetuneTask {
    /// Truth, predictions and summed loss over the first `max_batches` batches of `set`.
    fn predict(&self, set: &ClsSet, max_batches: Option<usize>) -> Result<(Vec<usize>, Vec<usize>, f64)> {
        let all: Vec<usize> = (0..set.seqs.len()).collect();
        let (mut truth, mut pred, mut loss) = (Vec::new(), Vec::new(), 0.0);
        for (k, idx) in all.chunks(self.cfg.task.data.batch_size).enumerate() {
            if max_batches.is_some_and(|m| k >= m) {
                break;
            }
            let (logits, y) = self.logits(set, idx, false)?;
            loss += c(
                cross_entropy(&logits, &u32_tensor(&y, self.vs.device())?, None, 0.0, Reduction::Sum)
                    .and_then(|l| l.to_scalar::<f32>()),
            )? as f64;
            let p = c(logits
                .argmax(D::Minus1)
                .and_then(|a| a.to_dtype(DType::U32))
                .and_then(|a| a.to_vec1::<u32>()))?;
            pred.extend(p.into_iter().map(|v| v as usize));
            truth.extend(y.into_iter().map(|v| v as usize));
        }
        Ok((truth, pred, loss))
    }

    /// Class probabilities (softmax of the logits, in [`FinetuneTask::labels`] order) of
    /// each text, in the order of `texts`, from one padded forward pass; texts are encoded
    /// as in evaluation (`[CLS] text [SEP]`, cut to `data.max_len` tokens).
    pub fn probabilities(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let data = ClsData::unlabelled(texts, &self.labels);
        let set = encode_cls(&self.tok, &data, self.cfg.task.data.max_len)?;
        let all: Vec<usize> = (0..set.seqs.len()).collect();
        let (logits, _) = self.logits(&set, &all, false)?;
        c(seqlab_nn::ops::softmax(&logits, D::Minus1).and_then(|p| p.to_vec2::<f32>()))
    }

    /// Accuracy, per-class P/R/F1 and confusion matrix of the current weights on a
    /// `text<TAB>label` file (labels must be ones seen in training).
    fn file_report(&self, path: &Path) -> Result<Report> {
        let set = encode_cls(
            &self.tok,
            &ClsData::read_eval(path, &self.labels)?,
            self.cfg.task.data.max_len,
        )?;
        let (truth, pred, loss) = self.predict(&set, None)?;
        let r = class_report(&truth, &pred, self.labels.len());
        let head = format!("{}: {} examples", path.display(), truth.len());
        let (text, mut json) = r.render(&head, self.labels.names(), loss / truth.len().max(1) as f64);
        json["file"] = serde_json::json!(path.display().to_string());
        Ok(Report {
            text,
            json,
            files: Vec::new(),
        })
    }
}

impl Task for FinetuneTask {
    type Config = FinetuneTaskConfig;
    const NAME: &'static str = "bert-finetune";
    const ABOUT: &'static str = "fine-tuning a pretrained BERT for text<TAB>label classification";

    /// BERT's AdamW at lr 3e-5, in the paper's fine-tuning range (2e-5..5e-5).
    fn default_optim() -> OptimConfig {
        bert_optim(3e-5)
    }

    fn config_keys() -> Result<Vec<TableDoc>> {
        let top = TableDoc {
            table: String::new(),
            about: "the pretrained model (task keys)",
            rows: vec![
                KeyRow {
                    doc: KeyDoc::new(
                        "pretrained",
                        "a pretraining checkpoint folder, or its run folder (then best, else the latest); give this or `init_from`",
                    ),
                    default: None,
                },
                KeyRow {
                    doc: KeyDoc::new(
                        "init_from",
                        "a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt or tokenizer.json); give this or `pretrained`",
                    ),
                    default: None,
                },
                KeyRow {
                    doc: KeyDoc::new(
                        "from_scratch",
                        "keep the random initial weights (tokenizer and shape still from `pretrained`): the no-pretraining baseline",
                    ),
                    default: Some(Value::Bool(false)),
                },
            ],
        };
        Ok(vec![
            top,
            TableDoc::of("data", "text<TAB>label files and batching", &FinetuneData::default())?,
        ])
    }

    /// Warm-up over 100 steps, then cosine decay to 0 at `train.max_steps`.
    fn default_schedule(cfg: &FinetuneConfig) -> Schedule {
        bert_schedule(cfg.run.optim.lr, 100, cfg.run.train.max_steps)
    }

    /// Configs of older seqlab versions had no `task` key: one with `pretrained` is this.
    fn claims_untagged(cfg: &Map<String, Value>) -> bool {
        cfg.contains_key("pretrained") || cfg.contains_key("init_from")
    }

    fn build(cfg: &FinetuneConfig, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        Self::new(cfg, vs, from)
    }

    fn final_split(cfg: &FinetuneConfig) -> Option<Split> {
        let d = &cfg.task.data;
        Split::test_else_valid(d.test.is_some(), d.valid.is_some())
    }

    /// Accuracy, per-class P/R/F1 and the confusion matrix on the split's `text<TAB>label`
    /// file, or `path` (labels must be ones seen in training).
    fn report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        let d = &self.cfg.task.data;
        self.file_report(&split.file(path, d.test.as_deref(), d.valid.as_deref())?)
    }

    fn guide(&self) -> String {
        "accuracy is the share of texts whose class was predicted right; compare with a --from-scratch run to see what pretraining buys.".into()
    }
}

impl TrainTask for FinetuneTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.seqs.len().div_ceil(self.cfg.task.data.batch_size)
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.train_loss_shard(epoch, index, Shard::WHOLE)?.into_mean()
    }

    /// The shard's texts of the batch; the summed loss over its texts.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        let order = shuffled_indices(self.train.seqs.len(), self.cfg.run.train.seed, epoch);
        let bs = self.cfg.task.data.batch_size;
        let lo = (index * bs).min(order.len().saturating_sub(1));
        let idx = &order[lo..(lo + bs).min(order.len())];
        let idx = &idx[shard.range(idx.len())];
        if idx.is_empty() {
            return ShardLoss::empty(self.vs.device());
        }
        let (logits, y) = self.logits(&self.train, idx, true)?;
        let loss = c(cross_entropy(
            &logits,
            &u32_tensor(&y, self.vs.device())?,
            None,
            0.0,
            Reduction::Sum,
        ))?;
        Ok(ShardLoss::sum_over(
            loss,
            idx.len(),
            idx.iter().map(|&i| self.train.seqs[i].len()).sum(),
        ))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let Some(v) = &self.valid else {
            bail!("fine-tuning needs data.valid for evaluation during training");
        };
        let (truth, pred, loss) = self.predict(v, self.cfg.task.data.max_eval_batches)?;
        let right = truth.iter().zip(&pred).filter(|(a, b)| a == b).count();
        let n = truth.len().max(1) as f64;
        Ok(BTreeMap::from([
            ("loss".into(), loss / n),
            ("accuracy".into(), right as f64 / n),
        ]))
    }

    fn selection(&self) -> (String, bool) {
        ("accuracy".into(), false)
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        self.tok.save(&dir.join("tokenizer.json"))?;
        std::fs::write(
            dir.join("bert_config.json"),
            serde_json::to_string_pretty(&self.bert_cfg)?,
        )?;
        std::fs::write(
            dir.join("labels.json"),
            serde_json::to_string_pretty(self.labels.names())?,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::corpus_lines;
    use seqlab_train::task::parse_config;
    use seqlab_train::{LoopConfig, OptimName, RunSettings};

    #[test]
    fn every_key_is_documented() {
        use seqlab_train::keys::check_documented;
        check_documented::<PretrainTask>("task = \"bert-pretrain\"\n").unwrap();
        check_documented::<FinetuneTask>("task = \"bert-finetune\"\npretrained = \"p\"\n[data]\ntrain = \"a.tsv\"\n")
            .unwrap();
    }

    fn tmp(tag: &str) -> PathBuf {
        seqlab_nn::testing::scratch_dir(&format!("bert-{tag}"))
    }

    fn tiny_cfg(dir: &Path) -> PretrainConfig {
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, corpus_lines().join("\n")).unwrap();
        RunConfig {
            run: RunSettings {
                task: PretrainTask::NAME.into(),
                run_dir: Some(dir.join("run")),
                optim: OptimConfig {
                    lr: 3e-3,
                    weight_decay: 0.0,
                    ..PretrainTask::default_optim()
                },
                schedule: Some(bert_schedule(3e-3, 5, 60)),
                train: LoopConfig {
                    max_steps: 60,
                    eval_every: 60,
                    log_every: 10,
                    progress: false,
                    seed: 3,
                    ..LoopConfig::default()
                },
            },
            task: PretrainTaskConfig {
                model: BertConfig {
                    hidden_size: 32,
                    num_attention_heads: 2,
                    intermediate_size: 64,
                    max_position_embeddings: 48,
                    hidden_dropout_prob: 0.0,
                    ..BertConfig::preset("tiny").unwrap()
                },
                data: PretrainData {
                    corpus,
                    vocab_size: 100,
                    valid_paragraphs: 10,
                    max_len: 48,
                    batch_size: 16,
                    ..PretrainData::default()
                },
            },
        }
    }

    fn parse_file<T: Task>(path: &Path) -> RunConfig<T::Config> {
        let text = std::fs::read_to_string(path).unwrap();
        let m = seqlab_train::config::table_with_overrides(&text, &[]).unwrap();
        parse_config::<T>(m, &path.display().to_string()).unwrap()
    }

    #[test]
    fn preset_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for (name, layers, hidden) in [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512)] {
            let cfg = parse_file::<PretrainTask>(&root.join(format!("bert-{name}.toml")));
            let preset = BertConfig::preset(name).unwrap();
            assert_eq!(cfg.task.model, preset, "{name}");
            assert_eq!(
                (cfg.task.model.num_hidden_layers, cfg.task.model.hidden_size),
                (layers, hidden)
            );
            assert!(
                matches!(cfg.run.schedule, Some(Schedule::WarmupCosine { .. })),
                "{name}"
            );
        }
        let f = parse_file::<FinetuneTask>(&root.join("bert-finetune.toml"));
        assert_eq!(f.run.optim.lr, 1e-4);
    }

    /// A config of the old schema (no `task`, `[optim] warmup_steps`) still loads, as the
    /// warm-up cosine schedule it meant.
    #[test]
    fn old_bert_config_loads() {
        let old = "run_dir = \"r\"\n[data]\ncorpus = \"c.txt\"\n[optim]\nlr = 5e-4\nweight_decay = 0.01\nwarmup_steps = 200\nbetas = [0.9, 0.999]\neps = 1e-6\n[train]\nmax_steps = 3000\n";
        let mut m = seqlab_train::config::table_with_overrides(old, &[]).unwrap();
        assert!(PretrainTask::claims_untagged(&m) && !FinetuneTask::claims_untagged(&m));
        m.remove("task");
        let cfg = parse_config::<PretrainTask>(m, "old.toml").unwrap();
        assert_eq!(cfg.run.schedule, Some(bert_schedule(5e-4, 200, 3000)));
        assert_eq!((cfg.run.optim.name, cfg.run.optim.eps), (OptimName::Adamw, 1e-6));
    }

    #[test]
    fn tiny_pretraining_lowers_mlm_loss_and_finetuning_loads_encoder() {
        let dir = tmp("pt");
        let cfg = tiny_cfg(&dir);
        let vs = VarStore::new(cfg.run.train.seed, &Device::Cpu);
        let fresh = BuildFrom {
            checkpoint: None,
            purpose: Purpose::Train,
        };
        let before = PretrainTask::build(&cfg, &vs, fresh).unwrap().evaluate().unwrap();
        let out = seqlab_train::run::train::<PretrainTask>(&cfg, false).unwrap();
        let after = &out.summary.last_eval;
        assert!(
            after["mlm_loss"] < before["mlm_loss"] - 0.5,
            "MLM loss {} -> {}",
            before["mlm_loss"],
            after["mlm_loss"]
        );
        assert!(after["mlm_accuracy"] > before["mlm_accuracy"]);
        assert!(after.contains_key("nsp_accuracy"));
        let rep = out.test_report.expect("pretraining reports on its held-out part");
        assert_eq!(rep.split, Split::Valid);
        assert!(cfg.run_dir().join("loss.png").exists() && cfg.run_dir().join("test_report.json").exists());
        // The loader rebuilds the same model: the same held-out numbers.
        let loaded = seqlab_train::load::<PretrainTask>(&cfg.run_dir()).unwrap();
        let again = loaded.task.report(Split::Valid, None).unwrap();
        assert_eq!(again.json["mlm_loss"], rep.report.json["mlm_loss"]);

        // Fine-tuning: every bert.* weight equals the pretrained one; the head is fresh.
        let (train, valid) = (dir.join("train.tsv"), dir.join("valid.tsv"));
        let lines = corpus_lines();
        let tsv: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{l}\t{}\n", if l.contains("cat") && i % 2 == 0 { "a" } else { "b" }))
            .collect();
        std::fs::write(&train, &tsv).unwrap();
        std::fs::write(&valid, &tsv).unwrap();
        let fcfg = RunConfig {
            run: RunSettings {
                task: FinetuneTask::NAME.into(),
                run_dir: Some(dir.join("ft")),
                optim: FinetuneTask::default_optim(),
                schedule: None,
                train: LoopConfig {
                    max_steps: 2,
                    eval_every: 2,
                    log_every: 1,
                    progress: false,
                    ..LoopConfig::default()
                },
            },
            task: FinetuneTaskConfig {
                pretrained: cfg.run_dir(),
                init_from: None,
                from_scratch: false,
                data: FinetuneData {
                    train,
                    valid: Some(valid.clone()),
                    test: Some(valid),
                    max_len: 48,
                    batch_size: 16,
                    max_eval_batches: None,
                },
            },
        };
        let fvs = VarStore::new(99, &Device::Cpu);
        let task = FinetuneTask::build(&fcfg, &fvs, fresh).unwrap();
        let ck = resolve_checkpoint(&cfg.run_dir()).unwrap();
        let saved = candle_core::safetensors::load(ck.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut checked = 0;
        for (name, var) in fvs.trainable() {
            if name.starts_with("bert.") {
                let diff = seqlab_nn::testing::max_abs_diff(var.as_tensor(), &saved[&name]);
                assert_eq!(diff, 0.0, "{name} not loaded");
                checked += 1;
            } else {
                assert!(name.starts_with("classifier."), "unexpected {name}");
            }
        }
        assert_eq!(checked, saved.keys().filter(|k| k.starts_with("bert.")).count());
        assert_eq!(task.labels.len(), 2);
        let s = seqlab_train::run::train::<FinetuneTask>(&fcfg, false).unwrap();
        assert!(s.summary.last_eval.contains_key("accuracy"));
        let fin = s.test_report.expect("data.test was given");
        assert!(fin.report.text.contains("confusion matrix"), "{}", fin.report.text);
        // The report covers every test example, and the checkpoint loaded for evaluation
        // (labels, tokenizer and weights from the checkpoint alone) scores exactly the same.
        let json = &fin.report.json;
        let acc = json["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{json}");
        assert!(
            fin.report.text.contains(&format!("{} examples", lines.len())),
            "{}",
            fin.report.text
        );
        let reloaded = seqlab_train::load::<FinetuneTask>(&fcfg.run_dir()).unwrap();
        assert!(reloaded.task.train.seqs.is_empty(), "evaluation reads no training data");
        let again = reloaded.task.report(Split::Test, None).unwrap();
        assert_eq!(again.json["accuracy"], json["accuracy"]);
        assert_eq!(again.json["macro_f1"], json["macro_f1"]);

        // A checkpoint lacking an encoder weight is refused, naming it.
        let mut partial: HashMap<String, Tensor> = saved.clone();
        partial.remove("bert.embeddings.token_type_embeddings.weight");
        let f = dir.join("partial.safetensors");
        candle_core::safetensors::save(&partial, &f).unwrap();
        let e = format!("{:#}", load_encoder(&fvs, &f).unwrap_err());
        assert!(
            e.contains("missing bert.embeddings.token_type_embeddings.weight"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `[optim]` is one schema: AdamW, Adam and SGD each pretrain BERT a few steps through
    /// the same run path and lower the training loss.
    #[test]
    fn every_optimizer_pretrains() {
        let dir = tmp("optim");
        for name in [OptimName::Adamw, OptimName::Adam, OptimName::Sgd] {
            let mut cfg = tiny_cfg(&dir);
            cfg.run.run_dir = Some(dir.join(format!("run-{name:?}")));
            cfg.run.optim.name = name;
            let lr = if name == OptimName::Sgd { 0.2 } else { 3e-3 };
            cfg.run.schedule = Some(Schedule::Constant { lr });
            cfg.run.train.max_steps = 12;
            cfg.run.train.eval_every = 12;
            cfg.run.train.log_every = 4;
            let out = seqlab_train::run::train::<PretrainTask>(&cfg, false).unwrap();
            let l = &out.summary.train_losses;
            let (first, last) = (
                l[..3].iter().map(|x| x.1).sum::<f64>(),
                l[9..].iter().map(|x| x.1).sum::<f64>(),
            );
            assert!(
                last < first,
                "{name:?}: training loss {first} -> {last} (sums of 3 steps)"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
