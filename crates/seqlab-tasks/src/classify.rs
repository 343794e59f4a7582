//! Sequence classification (`task = "classify"`) of `text<TAB>label` files: batches by token
//! budget with length bucketing; accuracy, per-class precision/recall/F1 and the confusion
//! matrix.

use crate::common::{c, ids_tensor, print_warnings, tokenizer};
use crate::config::{Config, TaskConfig};
use crate::models::ClsNet;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use seqlab_data::{pad_batch, token_budget_batches, BudgetConfig, ClsData, LabelSet, Tokenizer, TokenizerConfig};
use seqlab_metrics::classification::class_report;
use seqlab_nn::loss::{cross_entropy, Reduction};
use seqlab_nn::VarStore;
use seqlab_train::trainer::{Shard, ShardLoss, TrainTask};
use seqlab_train::{BuildFrom, Purpose, Report, Split, Task};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

struct Encoded {
    seqs: Vec<Vec<u32>>,
    labels: Vec<usize>,
}

/// A sequence classifier with its tokenizer, label set and (when training) its data.
pub struct ClsTask {
    /// The whole run config (engine settings plus task keys).
    pub cfg: Config,
    /// The tokenizer.
    pub tok: Tokenizer,
    /// The label names and their ids.
    pub labels: LabelSet,
    /// The classifier.
    pub net: ClsNet,
    /// The model's parameters.
    pub vs: VarStore,
    train: Option<Encoded>,
    valid: Option<Encoded>,
    epoch_batches: Option<(u64, Vec<Vec<usize>>)>,
}

impl ClsTask {
    /// Reads the data (training data only for [`Purpose::Train`], or when no checkpoint
    /// supplies the labels and tokenizer) and builds the classifier.
    fn new(cfg: &Config, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        let (saved, with_train_data) = (from.checkpoint, from.purpose == Purpose::Train);
        let d = &cfg.task.data;
        let saved_labels = saved.map(|s| s.join("labels.json")).filter(|p| p.exists());
        let train_data = if with_train_data || saved_labels.is_none() {
            Some(ClsData::read_train(&d.train)?)
        } else {
            None
        };
        let labels = match &saved_labels {
            Some(p) => {
                let names: Vec<String> = serde_json::from_str(&std::fs::read_to_string(p)?)
                    .with_context(|| format!("{}: bad label list", p.display()))?;
                LabelSet::from_names(names)
            }
            None => train_data.as_ref().expect("read above").labels.clone(),
        };
        let tcfg = TokenizerConfig {
            kind: d.tokenizer,
            vocab_size: d.vocab_size,
            min_frequency: d.min_frequency,
        };
        let tok = tokenizer(
            saved,
            &tcfg,
            train_data
                .iter()
                .flat_map(|t| t.examples.iter().map(|e| e.text.as_str())),
        )?;
        let net = ClsNet::new(&cfg.task.model, tok.vocab_size(), labels.len(), tok.pad_id(), vs)?;
        if cfg.task.model.kind == crate::config::ModelKind::Transformer && d.max_len > cfg.task.model.max_positions {
            bail!(
                "data.max_len ({}) exceeds model.max_positions ({})",
                d.max_len,
                cfg.task.model.max_positions
            );
        }
        let mut t = Self {
            cfg: cfg.clone(),
            tok,
            labels,
            net,
            vs: vs.clone(),
            train: None,
            valid: None,
            epoch_batches: None,
        };
        if with_train_data {
            t.train = Some(t.encode(train_data.as_ref().expect("read above"))?);
            if let Some(v) = &d.valid {
                t.valid = Some(t.encode(&ClsData::read_eval(v, &t.labels)?)?);
            }
        }
        Ok(t)
    }

    fn encode(&self, data: &ClsData) -> Result<Encoded> {
        let mut w = Vec::new();
        let (seqs, labels) = data.encode(
            &self.tok,
            self.cfg.task.data.max_len,
            self.cfg.task.data.on_too_long,
            &mut w,
        )?;
        print_warnings(&w);
        Ok(Encoded { seqs, labels })
    }

    /// Logits (B, C) and labels (B) for the examples `idx`.
    fn batch_logits(&self, e: &Encoded, idx: &[usize], train: bool) -> Result<(Tensor, Tensor)> {
        let dev = self.vs.device();
        let pb = pad_batch(&e.seqs, idx, self.tok.pad_id());
        let ids = ids_tensor(&pb.ids, pb.batch, pb.max_len, dev)?;
        // PyTorch's key_padding_mask convention: 1 = padding.
        let pad: Vec<u8> = pb.mask.iter().map(|&m| 1 - m).collect();
        let pad = c(Tensor::from_vec(pad, (pb.batch, pb.max_len), dev))?;
        let logits = self.net.forward(&ids, &pb.lengths, &pad, train)?;
        let y: Vec<u32> = idx.iter().map(|&i| e.labels[i] as u32).collect();
        Ok((logits, c(Tensor::from_vec(y, idx.len(), dev))?))
    }

    fn predict(&self, e: &Encoded, max_batches: Option<usize>) -> Result<(Vec<usize>, Vec<usize>, f64)> {
        let lengths: Vec<usize> = e.seqs.iter().map(Vec::len).collect();
        let batches = c(
            token_budget_batches(&lengths, &BudgetConfig::new(self.cfg.task.data.batch_tokens), None)
                .map_err(|e| candle_core::Error::Msg(e.0)),
        )?;
        let (mut truth, mut pred, mut loss, mut n) = (vec![], vec![], 0.0, 0usize);
        for (i, b) in batches.iter().enumerate() {
            if max_batches.is_some_and(|m| i >= m) {
                break;
            }
            let (logits, y) = self.batch_logits(e, b, false)?;
            loss += c(cross_entropy(&logits, &y, None, 0.0, Reduction::Sum)?.to_scalar::<f32>())? as f64;
            pred.extend(
                c(logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>())?
                    .into_iter()
                    .map(|p| p as usize),
            );
            truth.extend(b.iter().map(|&i| e.labels[i]));
            n += b.len();
        }
        Ok((truth, pred, loss / n.max(1) as f64))
    }

    /// Class probabilities (softmax of the logits, in [`ClsTask::labels`] order) of each
    /// text, in the order of `texts`, from one padded forward pass. Texts are encoded as in
    /// evaluation (`<bos> text <eos>`), cut to `data.max_len` tokens whatever
    /// `data.on_too_long` says (a text to classify is never dropped).
    pub fn probabilities(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let data = ClsData::unlabelled(texts, &self.labels);
        let mut warnings = Vec::new();
        let (seqs, labels) = data.encode(
            &self.tok,
            self.cfg.task.data.max_len,
            seqlab_data::LengthPolicy::Truncate,
            &mut warnings,
        )?;
        let all: Vec<usize> = (0..seqs.len()).collect();
        let (logits, _) = self.batch_logits(&Encoded { seqs, labels }, &all, false)?;
        crate::models::probs_rows(&logits)
    }

    /// Accuracy, per-class P/R/F1 and the confusion matrix on the test or validation file,
    /// or `path`.
    fn split_report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        let p = crate::common::eval_file(&self.cfg, split, path)?;
        let e = self.encode(&ClsData::read_eval(&p, &self.labels)?)?;
        let (truth, pred, loss) = self.predict(&e, None)?;
        let k = self.labels.len();
        let r = class_report(&truth, &pred, k);
        let names = self.labels.names();
        let head = format!("{}: {} examples", p.display(), truth.len());
        let (text, mut json) = r.render(&head, names, loss);
        json["file"] = json!(p.display().to_string());
        Ok(Report {
            text,
            json,
            files: Vec::new(),
        })
    }
}

impl Task for ClsTask {
    type Config = TaskConfig;
    const NAME: &'static str = "classify";
    const ABOUT: &'static str = "text<TAB>label sequence classification (accuracy, per-class F1)";

    fn validate(cfg: &Config) -> Result<()> {
        crate::config::validate_common(cfg)
    }

    fn config_keys() -> Result<Vec<seqlab_train::keys::TableDoc>> {
        crate::config::config_keys()
    }

    fn build(cfg: &Config, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        Self::new(cfg, vs, from)
    }

    fn final_split(cfg: &Config) -> Option<Split> {
        crate::common::test_else_valid(cfg)
    }

    fn report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        self.split_report(split, path)
    }

    fn guide(&self) -> String {
        "accuracy is the share of passages whose class was predicted right; chance is 1/number-of-classes.".into()
    }
}

impl TrainTask for ClsTask {
    fn batches_per_epoch(&self) -> usize {
        let Some(t) = &self.train else { return 0 };
        let lengths: Vec<usize> = t.seqs.iter().map(Vec::len).collect();
        token_budget_batches(
            &lengths,
            &BudgetConfig::new(self.cfg.task.data.batch_tokens),
            Some((self.cfg.run.train.seed, 0)),
        )
        .map_or(0, |b| b.len())
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.train_loss_shard(epoch, index, Shard::WHOLE)?.into_mean()
    }

    /// The shard's texts of the batch; the summed loss over its texts.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        let t = self.train.as_ref().expect("built with training data");
        if self.epoch_batches.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let lengths: Vec<usize> = t.seqs.iter().map(Vec::len).collect();
            let b = c(token_budget_batches(
                &lengths,
                &BudgetConfig::new(self.cfg.task.data.batch_tokens),
                Some((self.cfg.run.train.seed, epoch)),
            )
            .map_err(|e| candle_core::Error::Msg(e.0)))?;
            self.epoch_batches = Some((epoch, b));
        }
        let batches = &self.epoch_batches.as_ref().expect("set above").1;
        // Batch counts can differ by one between epochs (pools cut differently); wrap.
        let idx = &batches[index % batches.len()];
        let idx = &idx[shard.range(idx.len())];
        if idx.is_empty() {
            return ShardLoss::empty(self.vs.device());
        }
        let (logits, y) = self.batch_logits(t, idx, true)?;
        let loss = c(cross_entropy(
            &logits,
            &y,
            None,
            self.cfg.task.loss.label_smoothing,
            Reduction::Sum,
        ))?;
        Ok(ShardLoss::sum_over(
            loss,
            idx.len(),
            idx.iter().map(|&i| t.seqs[i].len()).sum(),
        ))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let Some(v) = &self.valid else {
            bail!("classification needs data.valid for evaluation during training");
        };
        let (truth, pred, loss) = self.predict(v, self.cfg.task.data.max_eval_batches)?;
        let r = class_report(&truth, &pred, self.labels.len());
        Ok(BTreeMap::from([
            ("loss".into(), loss),
            ("accuracy".into(), r.accuracy),
            ("macro_f1".into(), r.macro_f1),
        ]))
    }

    fn selection(&self) -> (String, bool) {
        ("accuracy".into(), false)
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        self.tok.save(dir.join("tokenizer.json"))?;
        std::fs::write(
            dir.join("labels.json"),
            serde_json::to_string_pretty(self.labels.names())?,
        )?;
        Ok(())
    }
}
