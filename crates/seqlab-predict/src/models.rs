//! Adapters: each kind of trained model as a [`BatchPredictor`], calling only the models'
//! public APIs (`seqlab_mt::task`, `seqlab_tasks`, `seqlab_bert`, `seqlab_w2v`). Everything
//! model-specific in `seqlab predict` and `seqlab serve` lives in this file, so a change in
//! those APIs is handled here alone.
//!
//! Input errors (empty text, unknown word, too short a series, out-of-range options) come
//! back as [`BadInput`] (HTTP 400); anything else is a model error (500).

use crate::api::*;
use crate::BadInput;
use crate::BatchPredictor;
use anyhow::Result;
use candle_core::{Device, Tensor};
use seqlab_bert::task::FinetuneTask;
use seqlab_mt::decode::DecodeStrategy;
use seqlab_mt::task::{MtModelKind, MtTask};
use seqlab_nn::sampling::SamplingConfig;
use seqlab_tasks::classify::ClsTask;
use seqlab_tasks::forecast::ForecastTask;
use seqlab_tasks::lm::{GenerateConfig, LmTask};
use seqlab_train::run::load_on as load_run;
use seqlab_train::Task;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn c<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

fn bad<T>(msg: String) -> Result<T> {
    Err(BadInput(msg).into())
}

/// A model loaded for predictions, by what it answers.
// Made once per model at start and moved into its batcher: the size gap is harmless.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// An `mt` checkpoint.
    Translate(Translator),
    /// An `lm` checkpoint: generation and scoring.
    Lm(LanguageModel),
    /// A `classify` or `bert-finetune` checkpoint, or a Hugging Face
    /// `BertForSequenceClassification` folder.
    Classify(Classifier),
    /// A Hugging Face BERT folder with its MLM head: masked-word fill.
    FillMask(MaskFiller),
    /// A `forecast` checkpoint.
    Forecast(Forecaster),
    /// Word vectors.
    Similar(Similar),
}

/// The tasks whose checkpoints [`load_checkpoint`] turns into predictors.
pub const PREDICTABLE_TASKS: [&str; 5] = [
    LmTask::NAME,
    ClsTask::NAME,
    FinetuneTask::NAME,
    ForecastTask::NAME,
    MtTask::NAME,
];

/// File names a word-vector folder may hold (see [`load`]).
pub const VECTOR_FILES: [&str; 3] = ["vectors.txt", "vectors.bin", "vectors.safetensors"];

/// Loads what `path` holds: a word-vector file; a folder holding one of [`VECTOR_FILES`]
/// (a word2vec output folder) and no checkpoint; else a checkpoint folder or run folder
/// (→ its best checkpoint), whatever its task ([`load_checkpoint`]). Models load on the CPU.
pub fn load(path: &Path) -> Result<Loaded> {
    // CPU by design: `load` is the CPU default; `load_on` takes the device.
    load_on(path, &Device::Cpu)
}

/// [`load`] with a checkpoint's model on `device` (word vectors stay on the CPU).
pub fn load_on(path: &Path, device: &Device) -> Result<Loaded> {
    if path.is_file() {
        return Ok(Loaded::Similar(Similar::load(path)?));
    }
    let is_run = path.join("trainer.json").exists() || path.join("checkpoints").exists();
    if path.is_dir() && !is_run {
        let found: Vec<PathBuf> = VECTOR_FILES
            .iter()
            .map(|f| path.join(f))
            .filter(|p| p.is_file())
            .collect();
        match found.as_slice() {
            [one] => return Ok(Loaded::Similar(Similar::load(one)?)),
            [] => {}
            many => anyhow::bail!(
                "{}: holds several word-vector files ({}); give one with --vectors FILE",
                path.display(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    load_checkpoint_on(path, device)
}

/// Loads a checkpoint folder or run folder (→ its best checkpoint) through the run engine's
/// loader, picking the predictor from the run's `task`; a task without one (bert-pretrain)
/// is an error naming the ones that have. A Hugging Face model folder ([`load_hf`]) is
/// loaded too. The model loads on the CPU.
pub fn load_checkpoint(path: &Path) -> Result<Loaded> {
    // CPU by design: the CPU default; `load_checkpoint_on` takes the device.
    load_checkpoint_on(path, &Device::Cpu)
}

/// [`load_checkpoint`] with the model on `device`; Hugging Face folders load on the CPU only.
pub fn load_checkpoint_on(path: &Path, device: &Device) -> Result<Loaded> {
    if seqlab_mt::hf::is_hf_dir(path) && !path.join("checkpoints").exists() {
        anyhow::ensure!(
            device.is_cpu(),
            "{}: Hugging Face model folders load on the CPU only (--device cpu)",
            path.display()
        );
        return load_hf(path);
    }
    let dir = seqlab_train::checkpoint::resolve(path)?;
    let cfg = seqlab_train::checkpoint::stored_config(&dir)?;
    let task = cfg.get("task").and_then(Value::as_str).unwrap_or_default();
    Ok(match task {
        MtTask::NAME => Loaded::Translate(Translator::new(load_run::<MtTask>(&dir, device)?.task)),
        LmTask::NAME => Loaded::Lm(LanguageModel {
            task: load_run::<LmTask>(&dir, device)?.task,
        }),
        ClsTask::NAME => Loaded::Classify(Classifier {
            model: ClsModel::Rnn(load_run::<ClsTask>(&dir, device)?.task),
        }),
        FinetuneTask::NAME => Loaded::Classify(Classifier {
            model: ClsModel::Bert(load_run::<FinetuneTask>(&dir, device)?.task),
        }),
        ForecastTask::NAME => Loaded::Forecast(Forecaster {
            task: load_run::<ForecastTask>(&dir, device)?.task,
        }),
        other => anyhow::bail!(
            "{}: a checkpoint of task {other:?}, which has no predictions (predictions exist for {} checkpoints and word vectors; `seqlab eval` evaluates any checkpoint)",
            dir.display(),
            PREDICTABLE_TASKS.join(", ")
        ),
    })
}

/// Loads a Hugging Face model folder (`config.json`, `model.safetensors`, tokenizer files)
/// by its `model_type`: `m2m_100` (an export of seqlab's, see `seqlab_mt::hf`) translates;
/// `bert` classifies with a `BertForSequenceClassification` head or fills `[MASK]`s with an
/// MLM head (`seqlab_bert::hf::load_predictor`, which rejects a bare encoder). Other types
/// are an error naming `config.json`'s key.
pub fn load_hf(dir: &Path) -> Result<Loaded> {
    let cfg = dir.join("config.json");
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.display()))?)
            .map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", cfg.display()))?;
    // CPU by design: Hugging Face folders load on the CPU only (`load_checkpoint_on` refuses another device).
    let dev = candle_core::Device::Cpu;
    Ok(match j.get("model_type").and_then(Value::as_str) {
        Some("m2m_100") => Loaded::Translate(Translator::new(seqlab_mt::hf::load(dir, &dev)?)),
        Some("bert") => match seqlab_bert::hf::load_predictor(dir, &dev)? {
            seqlab_bert::hf::HfPredictor::Classifier(m) => Loaded::Classify(Classifier {
                model: ClsModel::HfBert(m),
            }),
            seqlab_bert::hf::HfPredictor::FillMask(m) => Loaded::FillMask(MaskFiller { model: m }),
        },
        other => anyhow::bail!(
            "{}: key `model_type` is {other:?}; seqlab predicts with Hugging Face folders of model_type \"bert\" (sequence classification, fill-mask) and \"m2m_100\" (translation)",
            cfg.display()
        ),
    })
}

/// Runs `model` once over the requests that `prepare` accepts, and returns every request's
/// answer in request order: its `prepare` error, the batch's model error, or `finish` of its
/// model output.
fn batch_valid<I, P, R, O>(
    reqs: &[I],
    prepare: impl Fn(&I) -> Result<P>,
    model: impl FnOnce(&[P]) -> Result<Vec<R>>,
    finish: impl Fn(&I, &P, R) -> Result<O>,
) -> Vec<Result<O>> {
    let prepared: Vec<Result<P>> = reqs.iter().map(prepare).collect();
    let (mut idx, mut ok) = (Vec::new(), Vec::new());
    let mut answers: Vec<Option<Result<O>>> = Vec::with_capacity(reqs.len());
    for (i, p) in prepared.into_iter().enumerate() {
        match p {
            Ok(p) => {
                idx.push(i);
                ok.push(p);
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    if !ok.is_empty() {
        match model(&ok) {
            Ok(outs) if outs.len() == ok.len() => {
                for ((&i, p), out) in idx.iter().zip(&ok).zip(outs) {
                    answers[i] = Some(finish(&reqs[i], p, out));
                }
            }
            Ok(outs) => {
                for &i in &idx {
                    answers[i] = Some(Err(anyhow::anyhow!(
                        "the model gave {} outputs for {} inputs",
                        outs.len(),
                        ok.len()
                    )));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for &i in &idx {
                    answers[i] = Some(Err(anyhow::anyhow!("{msg}")));
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.expect("every request answered"))
        .collect()
}

/// Translation with the checkpoint's own decoder settings (`decode.*` of its config).
pub struct Translator {
    task: MtTask,
    strategy: DecodeStrategy,
}

impl Translator {
    pub fn new(task: MtTask) -> Self {
        let strategy = task.cfg.task.decode.strategy();
        Self { task, strategy }
    }

    pub fn info(&self) -> Value {
        let m = &self.task.cfg.task.model;
        let (arch, layers, heads) = match m.kind {
            MtModelKind::Transformer => ("transformer", m.num_decoder_layers, m.nhead),
            MtModelKind::Rnn => ("rnn", 1, 1),
        };
        json!({"architecture": arch, "d_model": m.d_model, "attention_layers": layers, "attention_heads": heads,
            "decoder": format!("{:?}", self.strategy)})
    }

    /// Cross-attention of one translation: the decoder is fed `<bos>` + the output ids.
    fn attention(&self, src: &[u32], out: &[u32]) -> Result<AttentionMaps> {
        let t = &self.task;
        let mut tgt = vec![seqlab_data::tokenizer::BOS_ID];
        tgt.extend_from_slice(out);
        let dev = t.vs.device();
        let s = c(Tensor::from_slice(src, (1, src.len()), dev))?;
        let tt = c(Tensor::from_slice(&tgt, (1, tgt.len()), dev))?;
        let mut weights = Vec::new();
        for layer in t.net.cross_attention(&s, &tt)? {
            // Four decimals are plenty for a picture and keep the JSON small.
            weights.push(c(layer
                .squeeze(0)
                .and_then(|w| w.round_to(4))
                .and_then(|w| w.to_vec3::<f32>()))?);
        }
        let source = src.iter().map(|&i| seqlab_mt::plots::piece(&t.src_tok, i)).collect();
        let mut target: Vec<String> = out.iter().map(|&i| seqlab_mt::plots::piece(&t.tgt_tok, i)).collect();
        target.push("<eos>".into());
        Ok(AttentionMaps {
            source,
            target,
            weights,
        })
    }
}

impl BatchPredictor for Translator {
    type In = TranslateRequest;
    type Out = TranslateResponse;

    /// All valid sentences of the batch go through the decoder in one call.
    fn predict_batch(&self, reqs: Vec<TranslateRequest>) -> Vec<Result<TranslateResponse>> {
        batch_valid(
            &reqs,
            |r| match r.text.trim() {
                "" => bad("`text` is empty".into()),
                t => self.task.encode_source(t),
            },
            |srcs| self.task.translate_ids(srcs, &self.strategy, srcs.len(), true),
            |r, src, out| {
                Ok(TranslateResponse {
                    translation: self.task.detokenize(&out)?,
                    attention: match r.attention {
                        true => Some(self.attention(src, &out)?),
                        false => None,
                    },
                })
            },
        )
    }
}

/// A language model: sampling (`/v1/generate`) and scoring (`seqlab predict`). Each prompt
/// is its own sampling loop (prompts differ in length and options), so a batch runs its
/// requests one after the other on the model thread.
pub struct LanguageModel {
    task: LmTask,
}

/// The longest continuation a request may ask for.
pub const MAX_GENERATE_TOKENS: usize = 2000;

impl LanguageModel {
    pub fn info(&self) -> Value {
        let t = &self.task.cfg.task;
        json!({"architecture": format!("{:?}", t.model.kind).to_lowercase(),
            "tokenizer": format!("{:?}", t.data.tokenizer).to_lowercase()})
    }

    fn one(&self, r: &GenerateRequest) -> Result<GenerateResponse> {
        if r.max_tokens == 0 || r.max_tokens > MAX_GENERATE_TOKENS {
            return bad(format!(
                "`max_tokens` must be 1..={MAX_GENERATE_TOKENS}, got {}",
                r.max_tokens
            ));
        }
        // The CLI's meaning (`--temperature/--top-k/--top-p`): an absent top_p is 1 (off).
        let sampling = SamplingConfig {
            temperature: r.temperature,
            top_k: r.top_k,
            top_p: r.top_p.unwrap_or(1.0),
        };
        if let Err(e) = sampling.validate() {
            return bad(e.to_string());
        }
        let g = GenerateConfig {
            max_tokens: r.max_tokens,
            sampling,
            seed: r.seed,
        };
        Ok(GenerateResponse {
            text: self.task.generate(&r.prompt, &g)?,
        })
    }

    /// How well the model predicts `text`, computed as `seqlab eval --data FILE` computes it
    /// for a file holding `text` ([`LmTask::score`]). A blank text, or one too short or too
    /// far outside the vocabulary to score, is [`BadInput`].
    pub fn score(&self, text: &str) -> Result<ScoreResponse> {
        if text.trim().is_empty() {
            return bad("the text to score is empty".into());
        }
        let t = seqlab_data::LmText {
            path: "<input>".into(),
            text: text.to_string(),
        };
        let s = self
            .task
            .score(&t)
            .map_err(|e| BadInput(format!("the text cannot be scored: {e:#}")))?;
        Ok(ScoreResponse {
            tokens: s.tokens,
            oov_tokens: s.oov_tokens,
            oov_rate: s.oov_rate(),
            loss: s.loss,
            perplexity: s.perplexity(),
            bits_per_token: s.bits_per_token(),
            bits_per_char: s.bits_per_char(),
        })
    }
}

impl BatchPredictor for LanguageModel {
    type In = GenerateRequest;
    type Out = GenerateResponse;
    fn predict_batch(&self, reqs: Vec<GenerateRequest>) -> Vec<Result<GenerateResponse>> {
        reqs.iter().map(|r| self.one(r)).collect()
    }
}

/// Text classification (an RNN/Transformer/Mamba `classify` run or a fine-tuned BERT); a
/// batch is one padded forward pass.
pub struct Classifier {
    model: ClsModel,
}

enum ClsModel {
    Rnn(ClsTask),
    Bert(FinetuneTask),
    HfBert(seqlab_bert::hf::HfClassifier),
}

impl Classifier {
    pub fn info(&self) -> Value {
        let arch = match &self.model {
            ClsModel::Rnn(t) => format!("{:?}", t.cfg.task.model.kind).to_lowercase(),
            ClsModel::Bert(_) | ClsModel::HfBert(_) => "bert".into(),
        };
        json!({"architecture": arch, "labels": self.labels()})
    }

    /// The label names, in the order of the probabilities.
    pub fn labels(&self) -> &[String] {
        match &self.model {
            ClsModel::Rnn(t) => t.labels.names(),
            ClsModel::Bert(t) => t.labels.names(),
            ClsModel::HfBert(t) => &t.labels,
        }
    }

    /// Class probabilities of each text, in the order of `texts`.
    fn probabilities(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        match &self.model {
            ClsModel::Rnn(t) => t.probabilities(texts),
            ClsModel::Bert(t) => t.probabilities(texts),
            ClsModel::HfBert(t) => t.probabilities(texts),
        }
    }
}

impl BatchPredictor for Classifier {
    type In = ClassifyRequest;
    type Out = ClassifyResponse;
    fn predict_batch(&self, reqs: Vec<ClassifyRequest>) -> Vec<Result<ClassifyResponse>> {
        let names = self.labels();
        batch_valid(
            &reqs,
            |r| match (r.text.trim(), r.top_k) {
                ("", _) => bad("`text` is empty".into()),
                (_, Some(0)) => bad("`top_k` must be at least 1".into()),
                (t, _) => Ok(t.to_string()),
            },
            |texts| self.probabilities(&texts.iter().map(String::as_str).collect::<Vec<_>>()),
            |r, _, p| {
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                order.truncate(r.top_k.unwrap_or(usize::MAX));
                Ok(ClassifyResponse {
                    label: names[order[0]].clone(),
                    probabilities: order
                        .iter()
                        .map(|&k| LabelProbability {
                            label: names[k].clone(),
                            probability: p[k],
                        })
                        .collect(),
                })
            },
        )
    }
}

/// Masked-word fill (a Hugging Face BERT with its MLM head); a batch is one padded forward
/// pass.
pub struct MaskFiller {
    model: seqlab_bert::hf::HfFillMask,
}

/// The most candidates per mask a request may ask for.
pub const MAX_FILL_CANDIDATES: usize = 100;

impl MaskFiller {
    pub fn info(&self) -> Value {
        json!({"architecture": "bert", "head": "masked-lm", "max_len": self.model.max_len()})
    }
}

impl BatchPredictor for MaskFiller {
    type In = FillMaskRequest;
    type Out = FillMaskResponse;
    fn predict_batch(&self, reqs: Vec<FillMaskRequest>) -> Vec<Result<FillMaskResponse>> {
        let most = reqs.iter().map(|r| r.top_k).max().unwrap_or(1);
        batch_valid(
            &reqs,
            |r| {
                if r.top_k == 0 || r.top_k > MAX_FILL_CANDIDATES {
                    return bad(format!("`top_k` must be 1..={MAX_FILL_CANDIDATES}, got {}", r.top_k));
                }
                self.model
                    .encode(&r.text)
                    .map_err(|e| BadInput(format!("{e:#}")).into())
            },
            |seqs| self.model.fill(seqs, most),
            |r, _, masks| {
                Ok(FillMaskResponse {
                    masks: masks
                        .into_iter()
                        .map(|m| {
                            m.into_iter()
                                .take(r.top_k)
                                .map(|(token, probability)| TokenProbability { token, probability })
                                .collect()
                        })
                        .collect(),
                })
            },
        )
    }
}

/// Forecasting from the last `data.input_len` values, standardised as in training.
pub struct Forecaster {
    task: ForecastTask,
}

/// The longest forecast a request may ask for.
pub const MAX_HORIZON: usize = 10_000;

impl Forecaster {
    pub fn info(&self) -> Value {
        let d = &self.task.cfg.task.data;
        json!({"architecture": format!("{:?}", self.task.cfg.task.model.kind).to_lowercase(),
            "column": d.column, "input_len": d.input_len, "horizon": d.horizon, "season": d.season})
    }

    /// The model's own horizon (`data.horizon`): a request's default.
    pub fn horizon(&self) -> usize {
        self.task.cfg.task.data.horizon
    }

    /// The model input of a request (its last `input_len` values, standardised) and how many
    /// values it asks for.
    fn prepare(&self, r: &ForecastRequest) -> Result<(Vec<f32>, usize)> {
        let l = self.task.cfg.task.data.input_len;
        let h = r.horizon.unwrap_or(self.horizon());
        if h == 0 || h > MAX_HORIZON {
            return bad(format!("`horizon` must be 1..={MAX_HORIZON}, got {h}"));
        }
        if r.series.len() < l {
            return bad(format!(
                "`series` has {} values; this model needs at least {l} (data.input_len)",
                r.series.len()
            ));
        }
        if let Some(i) = r.series.iter().position(|v| !v.is_finite()) {
            return bad(format!("`series[{i}]` is not a finite number"));
        }
        let s = &r.series[r.series.len() - l..];
        Ok((s.iter().map(|&v| self.task.ts.scaler.apply(v) as f32).collect(), h))
    }

    /// Standardised forecasts of `want[i]` values after each window: one forward pass over
    /// every window per model horizon; a window that needs more slides on over the model's
    /// own (standardised) forecasts.
    fn forecast(&self, windows: &[Vec<f32>], want: &[usize]) -> Result<Vec<Vec<f32>>> {
        let t = &self.task;
        let l = t.cfg.task.data.input_len;
        let mut wins = windows.to_vec();
        let mut outs: Vec<Vec<f32>> = vec![Vec::new(); wins.len()];
        loop {
            let todo: Vec<usize> = (0..wins.len()).filter(|&i| outs[i].len() < want[i]).collect();
            if todo.is_empty() {
                break;
            }
            let x: Vec<f32> = todo.iter().flat_map(|&i| wins[i].iter().copied()).collect();
            let x = c(Tensor::from_vec(x, (todo.len(), l, 1), t.vs.device()))?;
            let rows = c(t.net.forward(&x, None, false).and_then(|p| p.to_vec2::<f32>()))?;
            for (&i, row) in todo.iter().zip(rows) {
                wins[i].extend_from_slice(&row);
                let extra = wins[i].len() - l;
                wins[i].drain(..extra);
                outs[i].extend(row);
            }
        }
        for (o, &h) in outs.iter_mut().zip(want) {
            o.truncate(h);
        }
        Ok(outs)
    }
}

impl BatchPredictor for Forecaster {
    type In = ForecastRequest;
    type Out = ForecastResponse;
    /// One forward pass over all windows of the batch (per model horizon asked for).
    fn predict_batch(&self, reqs: Vec<ForecastRequest>) -> Vec<Result<ForecastResponse>> {
        let t = &self.task;
        let season = t.cfg.task.data.season.max(1);
        batch_valid(
            &reqs,
            |r| self.prepare(r),
            |prepared| {
                let (windows, want): (Vec<Vec<f32>>, Vec<usize>) = prepared.iter().cloned().unzip();
                self.forecast(&windows, &want)
            },
            |r, (_, h), row| {
                let s = &r.series;
                Ok(ForecastResponse {
                    forecast: row.iter().map(|&z| t.ts.scaler.invert(z as f64)).collect(),
                    last_value: vec![s[s.len() - 1]; *h],
                    seasonal_naive: (0..*h)
                        .map(|k| seqlab_tasks::forecast::seasonal_naive(s, k, season))
                        .collect(),
                })
            },
        )
    }
}

/// Nearest words in a word-vector file (word2vec text/binary or safetensors).
pub struct Similar {
    index: seqlab_w2v::eval::Index,
}

/// The most neighbours a request may ask for.
pub const MAX_NEIGHBOURS: usize = 1000;

impl Similar {
    pub fn load(path: &Path) -> Result<Self> {
        let wv = seqlab_w2v::format::load(path)?;
        anyhow::ensure!(!wv.is_empty(), "{}: no word vectors", path.display());
        Ok(Self {
            index: seqlab_w2v::eval::Index::new(&wv)?,
        })
    }

    pub fn info(&self) -> Value {
        json!({"words": self.index.words.len(), "dim": self.index.dim})
    }

    fn one(&self, r: &SimilarRequest) -> Result<SimilarResponse> {
        if r.n == 0 || r.n > MAX_NEIGHBOURS {
            return bad(format!("`n` must be 1..={MAX_NEIGHBOURS}, got {}", r.n));
        }
        let mut positive: Vec<&str> = r.positive.iter().map(String::as_str).collect();
        match (&r.word, positive.is_empty() && r.negative.is_empty()) {
            (Some(w), true) => positive.push(w),
            (Some(_), false) => return bad("give `word` or `positive`/`negative`, not both".into()),
            (None, true) => return bad("give a `word`, or `positive` and/or `negative` words".into()),
            (None, false) => {}
        }
        let negative: Vec<&str> = r.negative.iter().map(String::as_str).collect();
        Ok(SimilarResponse {
            similar: self
                .index
                .most_similar(&positive, &negative, r.n)
                .map_err(|e| BadInput(e.to_string()))?
                .into_iter()
                .map(|(word, similarity)| Neighbour { word, similarity })
                .collect(),
        })
    }
}

impl BatchPredictor for Similar {
    type In = SimilarRequest;
    type Out = SimilarResponse;
    fn predict_batch(&self, reqs: Vec<SimilarRequest>) -> Vec<Result<SimilarResponse>> {
        reqs.iter().map(|r| self.one(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_valid_keeps_request_order_and_errors_apart() {
        let reqs = [3, -1, 5, 0, 7];
        let prepare = |&x: &i32| {
            if x < 0 {
                bad(format!("negative {x}"))
            } else {
                Ok(x * 10)
            }
        };
        let out = batch_valid(
            &reqs,
            prepare,
            |xs| Ok(xs.iter().map(|x| x + 1).collect()),
            |&r, &p, o| if r == 0 { anyhow::bail!("zero") } else { Ok((r, p, o)) },
        );
        assert_eq!(out[0].as_ref().unwrap(), &(3, 30, 31));
        assert!(out[1].as_ref().unwrap_err().downcast_ref::<BadInput>().is_some());
        assert_eq!(out[2].as_ref().unwrap(), &(5, 50, 51));
        assert_eq!(out[3].as_ref().unwrap_err().to_string(), "zero");
        assert_eq!(out[4].as_ref().unwrap(), &(7, 70, 71));
        // A model failure fails every valid request, not the invalid ones' own errors.
        let out = batch_valid(
            &reqs,
            prepare,
            |_| -> Result<Vec<i32>> { anyhow::bail!("boom") },
            |_, _, o| Ok(o),
        );
        assert!(out[1].as_ref().unwrap_err().to_string().contains("negative -1"));
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, r)| i == 1 || r.as_ref().unwrap_err().to_string() == "boom"));
        let out = batch_valid(&reqs, prepare, |_| Ok(vec![1]), |_, _, o| Ok(o));
        assert!(out[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("1 outputs for 4 inputs"));
    }
}
