//! Pretraining (MLM + NSP) and classification fine-tuning as `TrainTask`s, so both get
//! seqlab-train's checkpoints, exact resume and metrics.

use crate::c;
use crate::data::{pretrain_batch, BertTokenizer, MaskConfig, PairCorpus};
use crate::model::{BertClassifier, BertConfig, BertForPreTraining, BertInput};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use seqlab_data::{shuffled_indices, ClsData, LabelSet, TokenizerConfig, TokenizerKind};
use seqlab_metrics::classification::class_report;
use seqlab_nn::loss::{cross_entropy, Reduction};
use seqlab_nn::optim::{AdamW, AdamWConfig};
use seqlab_nn::VarStore;
use seqlab_train::schedule::Schedule;
use seqlab_train::trainer::{LoopConfig, RunSummary, TrainTask, Trainer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// `[optim]`: AdamW with linear warm-up and cosine decay to 0 at `train.max_steps`.
/// Defaults follow the BERT paper (lr 1e-4, weight decay 0.01, β = (0.9, 0.999)) with
/// eps 1e-6 as in its code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub betas: [f64; 2],
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.01,
            warmup_steps: 1000,
            betas: [0.9, 0.999],
            eps: 1e-6,
        }
    }
}

impl OptimConfig {
    fn schedule(&self, total: u64) -> Schedule {
        Schedule::WarmupCosine {
            lr: self.lr,
            warmup: self.warmup_steps.min(total.saturating_sub(1)),
            total,
            min_lr: 0.0,
        }
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

/// A pretraining run (`configs/bert-*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub run_dir: PathBuf,
    #[serde(default)]
    pub model: BertConfig,
    #[serde(default)]
    pub data: PretrainData,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
}

impl PretrainConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        seqlab_train::overrides::load_with(path, &[])
    }
}

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
    pub cfg: PretrainConfig,
    pub tok: BertTokenizer,
    pub net: BertForPreTraining,
    pub vs: VarStore,
    pub train: PairCorpus,
    pub valid: PairCorpus,
}

impl PretrainTask {
    /// Reads the corpus, trains the tokenizer (or takes `saved/tokenizer.json`) and builds the
    /// model; sets `cfg.model.vocab_size` from the tokenizer.
    pub fn build(cfg: &PretrainConfig, vs: &VarStore, saved: Option<&Path>) -> Result<Self> {
        let d = &cfg.data;
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
        cfg.model.vocab_size = tok.vocab_size();
        if d.max_len > cfg.model.max_position_embeddings {
            bail!(
                "data.max_len ({}) exceeds model.max_position_embeddings ({})",
                d.max_len,
                cfg.model.max_position_embeddings
            );
        }
        let net = BertForPreTraining::new(&cfg.model, vs)?;
        Ok(Self {
            cfg,
            tok,
            net,
            vs: vs.clone(),
            train,
            valid,
        })
    }

    fn mask_cfg(&self) -> MaskConfig {
        MaskConfig {
            select: self.cfg.data.mask_prob,
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
    ) -> Result<(Tensor, Tensor, usize, usize, usize)> {
        let dev = self.vs.device();
        let b = pretrain_batch(
            corpus,
            &self.tok,
            anchors,
            self.cfg.train.seed,
            epoch,
            self.cfg.data.max_len,
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
        let mlm_loss = c(cross_entropy(
            &mlm,
            &u32_tensor(&b.mlm_labels, dev)?,
            None,
            0.0,
            Reduction::Mean,
        ))?;
        let nsp_loss = c(cross_entropy(
            &nsp,
            &u32_tensor(&b.nsp_labels, dev)?,
            None,
            0.0,
            Reduction::Mean,
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

impl TrainTask for PretrainTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.cfg.data.batch_size)
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        let order = shuffled_indices(self.train.len(), self.cfg.train.seed, epoch);
        let bs = self.cfg.data.batch_size;
        let lo = (index * bs).min(order.len().saturating_sub(1));
        let idx = &order[lo..(lo + bs).min(order.len())];
        let (mlm, nsp, _, n, _) = self.batch(&self.train, idx, epoch, true)?;
        // The paper's objective: the sum of the mean MLM and mean NSP losses.
        Ok((c(mlm + nsp)?, n))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let bs = self.cfg.data.batch_size;
        let all: Vec<usize> = (0..self.valid.len()).collect();
        let (mut ml, mut nl, mut mc, mut mn, mut nc, mut nn, mut batches) = (0.0, 0.0, 0, 0, 0, 0, 0);
        for idx in all.chunks(bs) {
            if self.cfg.data.max_eval_batches.is_some_and(|m| batches >= m) {
                break;
            }
            let (m, n, a, k, b) = self.batch(&self.valid, idx, EVAL_EPOCH, false)?;
            ml += c(m.to_scalar::<f32>())? as f64 * k as f64;
            nl += c(n.to_scalar::<f32>())? as f64 * idx.len() as f64;
            (mc, mn, nc, nn) = (mc + a, mn + k, nc + b, nn + idx.len());
            batches += 1;
        }
        let (mlm_loss, nsp_loss) = (ml / mn.max(1) as f64, nl / nn.max(1) as f64);
        Ok(BTreeMap::from([
            ("loss".into(), mlm_loss + nsp_loss),
            ("mlm_loss".into(), mlm_loss),
            ("nsp_loss".into(), nsp_loss),
            ("mlm_accuracy".into(), mc as f64 / mn.max(1) as f64),
            ("nsp_accuracy".into(), nc as f64 / nn.max(1) as f64),
        ]))
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        self.tok.save(&dir.join("tokenizer.json"))?;
        std::fs::write(
            dir.join("bert_config.json"),
            serde_json::to_string_pretty(&self.cfg.model)?,
        )?;
        Ok(())
    }
}

fn optimizer(o: &OptimConfig, vs: &VarStore, lr: f64) -> Result<Box<dyn seqlab_nn::Optimizer>> {
    let ac = AdamWConfig {
        lr,
        betas: (o.betas[0], o.betas[1]),
        eps: o.eps,
        weight_decay: o.weight_decay,
    };
    Ok(Box::new(c(AdamW::new(vs.trainable(), ac))?))
}

fn run(
    cfg_train: &LoopConfig,
    o: &OptimConfig,
    vs: VarStore,
    run_dir: &Path,
    run_config: serde_json::Value,
    resume: bool,
    task: &mut dyn TrainTask,
) -> Result<RunSummary> {
    let sched = o.schedule(cfg_train.max_steps);
    let opt = optimizer(o, &vs, sched.lr(1))?;
    let mut trainer = Trainer::new(cfg_train.clone(), vs, opt, sched, run_dir, run_config)?;
    if resume {
        trainer.resume()?;
    }
    trainer.run(task)
}

/// Pretrains per `cfg`; with `resume`, continues from the run folder's newest checkpoint.
pub fn pretrain(cfg: &PretrainConfig, resume: bool) -> Result<RunSummary> {
    let latest = prepare_run_dir(&cfg.run_dir, resume, &toml::to_string(cfg)?)?;
    let vs = VarStore::new(cfg.train.seed, &Device::Cpu);
    let mut task = PretrainTask::build(cfg, &vs, latest.as_deref())?;
    let rc = serde_json::to_value(&task.cfg)?;
    run(&cfg.train, &cfg.optim, vs, &cfg.run_dir, rc, resume, &mut task)
}

/// `[data]` of a fine-tuning run: `text<TAB>label` files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneData {
    pub train: PathBuf,
    pub valid: Option<PathBuf>,
    /// Scored with the best checkpoint when training ends.
    pub test: Option<PathBuf>,
    /// Longest input, `[CLS]`/`[SEP]` included; longer texts are cut. Default 128.
    pub max_len: usize,
    /// Default 32.
    pub batch_size: usize,
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

/// A fine-tuning run: a pretrained checkpoint plus classification data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// A pretraining checkpoint folder, or a pretraining run folder (→ `best`, else latest).
    pub pretrained: PathBuf,
    /// Keep the random initial weights instead of loading the pretrained encoder (the
    /// checkpoint still gives the tokenizer and model shape): the no-pretraining baseline.
    #[serde(default)]
    pub from_scratch: bool,
    pub run_dir: PathBuf,
    pub data: FinetuneData,
    #[serde(default = "finetune_optim")]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
}

/// The paper's fine-tuning range (lr 2e-5..5e-5, 10 % warm-up is typical).
fn finetune_optim() -> OptimConfig {
    OptimConfig {
        lr: 3e-5,
        warmup_steps: 100,
        ..OptimConfig::default()
    }
}

impl FinetuneConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        seqlab_train::overrides::load_with(path, &[])
    }
}

use seqlab_train::checkpoint::{prepare_run_dir, resolve as resolve_checkpoint};

/// Copies every `bert.*` weight of `vs` from the safetensors file; an error names each one
/// that is missing or has the wrong shape. Other entries of the file (`cls.*`) are ignored.
/// Returns how many tensors were loaded.
pub fn load_encoder(vs: &VarStore, file: &Path) -> Result<usize> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(file, vs.device()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
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
        bail!(
            "{}: pretrained encoder does not fit: {}",
            file.display(),
            problems.join("; ")
        );
    }
    Ok(n)
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
    pub cfg: FinetuneConfig,
    pub tok: BertTokenizer,
    pub labels: LabelSet,
    pub bert_cfg: BertConfig,
    pub net: BertClassifier,
    pub vs: VarStore,
    train: ClsSet,
    valid: Option<ClsSet>,
}

impl FinetuneTask {
    /// Reads the data, the pretrained tokenizer and model config, builds the classifier and
    /// loads every encoder weight from the pretrained checkpoint.
    pub fn build(cfg: &FinetuneConfig, vs: &VarStore) -> Result<Self> {
        let ck = resolve_checkpoint(&cfg.pretrained)?;
        let tok = BertTokenizer::load(&ck.join("tokenizer.json"))?;
        let bc = ck.join("bert_config.json");
        let bert_cfg: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(&bc).with_context(|| format!("reading {}", bc.display()))?)
                .with_context(|| format!("{}: bad model config", bc.display()))?;
        let d = &cfg.data;
        if d.max_len < 3 || d.max_len > bert_cfg.max_position_embeddings || d.batch_size == 0 {
            bail!(
                "data: need 3 <= max_len <= {} (the model's positions) and batch_size > 0",
                bert_cfg.max_position_embeddings
            );
        }
        let tr = ClsData::read_train(&d.train)?;
        let labels = tr.labels.clone();
        let net = BertClassifier::new(&bert_cfg, labels.len(), vs)?;
        if !cfg.from_scratch {
            load_encoder(vs, &ck.join("model.safetensors"))?;
        }
        let encode = |data: &ClsData| encode_cls(&tok, data, d.max_len);
        let train = encode(&tr)?;
        let valid = match &d.valid {
            Some(p) => Some(encode(&ClsData::read_eval(p, &labels)?)?),
            None => None,
        };
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
        for (k, idx) in all.chunks(self.cfg.data.batch_size).enumerate() {
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

    /// Accuracy, per-class P/R/F1 and confusion matrix of the current weights on a
    /// `text<TAB>label` file (labels must be ones seen in training).
    pub fn report(&self, path: &Path) -> Result<(String, serde_json::Value)> {
        let set = encode_cls(
            &self.tok,
            &ClsData::read_eval(path, &self.labels)?,
            self.cfg.data.max_len,
        )?;
        let (truth, pred, loss) = self.predict(&set, None)?;
        let r = class_report(&truth, &pred, self.labels.len());
        let head = format!("{}: {} examples", path.display(), truth.len());
        let (text, mut json) = r.render(&head, self.labels.names(), loss / truth.len().max(1) as f64);
        json["file"] = serde_json::json!(path.display().to_string());
        Ok((text, json))
    }
}

impl TrainTask for FinetuneTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.seqs.len().div_ceil(self.cfg.data.batch_size)
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        let order = shuffled_indices(self.train.seqs.len(), self.cfg.train.seed, epoch);
        let bs = self.cfg.data.batch_size;
        let lo = (index * bs).min(order.len().saturating_sub(1));
        let idx = &order[lo..(lo + bs).min(order.len())];
        let (logits, y) = self.logits(&self.train, idx, true)?;
        let loss = c(cross_entropy(
            &logits,
            &u32_tensor(&y, self.vs.device())?,
            None,
            0.0,
            Reduction::Mean,
        ))?;
        Ok((loss, idx.iter().map(|&i| self.train.seqs[i].len()).sum()))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let Some(v) = &self.valid else {
            bail!("fine-tuning needs data.valid for evaluation during training");
        };
        let (truth, pred, loss) = self.predict(v, self.cfg.data.max_eval_batches)?;
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

/// Fine-tunes per `cfg`; with `resume`, continues from the run folder's newest checkpoint
/// (whose weights then replace the pretrained ones).
/// What a fine-tuning run produced: the loop's summary and, with `data.test`, the best
/// checkpoint's report on it (also written to `test_report.json` in the run folder).
pub struct FinetuneOutcome {
    pub summary: RunSummary,
    pub test: Option<(String, serde_json::Value)>,
}

/// Fine-tunes per `cfg`; with `resume`, continues from the run folder's newest checkpoint
/// (whose weights then replace the pretrained ones).
pub fn finetune(cfg: &FinetuneConfig, resume: bool) -> Result<FinetuneOutcome> {
    prepare_run_dir(&cfg.run_dir, resume, &toml::to_string(cfg)?)?;
    let vs = VarStore::new(cfg.train.seed, &Device::Cpu);
    let mut task = FinetuneTask::build(cfg, &vs)?;
    let summary = run(
        &cfg.train,
        &cfg.optim,
        vs.clone(),
        &cfg.run_dir,
        serde_json::to_value(cfg)?,
        resume,
        &mut task,
    )?;
    let test = match &cfg.data.test {
        Some(p) => {
            let best = resolve_checkpoint(&cfg.run_dir)?;
            c(vs.load_safetensors(best.join("model.safetensors"), true))?;
            let (text, json) = task.report(p)?;
            let text = format!("{} on the test data:\n{text}", best.display());
            seqlab_nn::io::write_atomic(
                &cfg.run_dir.join("test_report.json"),
                serde_json::to_string_pretty(&json)?.as_bytes(),
            )?;
            Some((text, json))
        }
        None => None,
    };
    Ok(FinetuneOutcome { summary, test })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::corpus_lines;

    fn tmp(tag: &str) -> PathBuf {
        seqlab_nn::testing::scratch_dir(&format!("bert-{tag}"))
    }

    fn tiny_cfg(dir: &Path) -> PretrainConfig {
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, corpus_lines().join("\n")).unwrap();
        PretrainConfig {
            run_dir: dir.join("run"),
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
            optim: OptimConfig {
                lr: 3e-3,
                warmup_steps: 5,
                weight_decay: 0.0,
                ..OptimConfig::default()
            },
            train: LoopConfig {
                max_steps: 60,
                eval_every: 60,
                log_every: 10,
                progress: false,
                seed: 3,
                ..LoopConfig::default()
            },
        }
    }

    #[test]
    fn preset_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for (name, layers, hidden) in [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512)] {
            let cfg = PretrainConfig::from_file(&root.join(format!("bert-{name}.toml"))).unwrap();
            let preset = BertConfig::preset(name).unwrap();
            assert_eq!(cfg.model, preset, "{name}");
            assert_eq!((cfg.model.num_hidden_layers, cfg.model.hidden_size), (layers, hidden));
            cfg.train.validate().unwrap();
        }
        FinetuneConfig::from_file(&root.join("bert-finetune.toml")).unwrap();
    }

    #[test]
    fn tiny_pretraining_lowers_mlm_loss_and_finetuning_loads_encoder() {
        let dir = tmp("pt");
        let cfg = tiny_cfg(&dir);
        let vs = VarStore::new(cfg.train.seed, &Device::Cpu);
        let before = PretrainTask::build(&cfg, &vs, None).unwrap().evaluate().unwrap();
        let summary = pretrain(&cfg, false).unwrap();
        let after = &summary.last_eval;
        assert!(
            after["mlm_loss"] < before["mlm_loss"] - 0.5,
            "MLM loss {} -> {}",
            before["mlm_loss"],
            after["mlm_loss"]
        );
        assert!(after["mlm_accuracy"] > before["mlm_accuracy"]);
        assert!(after.contains_key("nsp_accuracy"));

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
        let fcfg = FinetuneConfig {
            pretrained: cfg.run_dir.clone(),
            run_dir: dir.join("ft"),
            from_scratch: false,
            data: FinetuneData {
                train,
                valid: Some(valid.clone()),
                test: Some(valid),
                max_len: 48,
                batch_size: 16,
                max_eval_batches: None,
            },
            optim: finetune_optim(),
            train: LoopConfig {
                max_steps: 2,
                eval_every: 2,
                log_every: 1,
                progress: false,
                ..LoopConfig::default()
            },
        };
        let fvs = VarStore::new(99, &Device::Cpu);
        let task = FinetuneTask::build(&fcfg, &fvs).unwrap();
        let ck = resolve_checkpoint(&cfg.run_dir).unwrap();
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
        let s = finetune(&fcfg, false).unwrap();
        assert!(s.summary.last_eval.contains_key("accuracy"));
        let (text, json) = s.test.expect("data.test was given");
        assert!(text.contains("confusion matrix"), "{text}");
        assert!(json["accuracy"].as_f64().unwrap() >= 0.0);

        // A checkpoint lacking an encoder weight is refused, naming it.
        let mut partial: HashMap<String, Tensor> = saved.clone();
        partial.remove("bert.embeddings.token_type_embeddings.weight");
        let f = dir.join("partial.safetensors");
        candle_core::safetensors::save(&partial, &f).unwrap();
        let e = load_encoder(&fvs, &f).unwrap_err().to_string();
        assert!(
            e.contains("missing bert.embeddings.token_type_embeddings.weight"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
