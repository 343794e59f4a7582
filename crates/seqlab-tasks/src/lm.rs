//! Language modelling: contiguous (batch, bptt) chunks of a token stream, next-token
//! cross-entropy; perplexity and bits per character; sampling with temperature, top-k, top-p.

use crate::common::{c, ids_tensor, tokenizer, Report, Split};
use crate::config::RunConfig;
use crate::models::{LmNet, RnnState};
use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use seqlab_data::{shuffled_indices, LmText, StreamBatcher, StreamChunk, Tokenizer, TokenizerConfig, TokenizerKind};
use seqlab_nn::loss::{cross_entropy, Reduction};
use seqlab_nn::{SeqRng, VarStore};
use seqlab_train::trainer::TrainTask;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

pub struct LmTask {
    pub cfg: RunConfig,
    pub tok: Tokenizer,
    pub net: LmNet,
    pub vs: VarStore,
    train: Option<StreamBatcher>,
    valid: Option<StreamBatcher>,
}

impl LmTask {
    /// Builds the task; `saved` holds a checkpoint's tokenizer (resume, eval), and
    /// `with_train_data` is false when only evaluating or generating.
    pub fn build(cfg: &RunConfig, vs: &VarStore, saved: Option<&Path>, with_train_data: bool) -> Result<Self> {
        let d = &cfg.data;
        let tcfg = TokenizerConfig {
            kind: d.tokenizer,
            vocab_size: d.vocab_size,
            min_frequency: d.min_frequency,
        };
        let need_text = with_train_data || saved.is_none_or(|s| !s.join("tokenizer.json").exists());
        let text = if need_text { Some(LmText::read(&d.train)?) } else { None };
        let tok = tokenizer(
            saved,
            &tcfg,
            text.as_ref().map(|t| t.text.lines()).into_iter().flatten(),
        )?;
        let net = LmNet::new(&cfg.model, tok.vocab_size(), vs)?;
        if let Some(m) = net.max_len() {
            if d.bptt > m {
                bail!("data.bptt ({}) exceeds model.max_positions ({m})", d.bptt);
            }
        }
        let train = match (with_train_data, &text) {
            (true, Some(t)) => Some(c(StreamBatcher::new(&t.encode_stream(&tok)?, d.batch_size)
                .map_err(|e| candle_core::Error::Msg(format!("{}: {}", d.train.display(), e.0))))?),
            _ => None,
        };
        let valid = match (&d.valid, with_train_data) {
            (Some(p), true) => Some(Self::stream(p, &tok, d.batch_size)?),
            _ => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            tok,
            net,
            vs: vs.clone(),
            train,
            valid,
        })
    }

    fn stream(path: &Path, tok: &Tokenizer, batch: usize) -> Result<StreamBatcher> {
        let ids = LmText::read(path)?.encode_stream(tok)?;
        // Evaluation text may be short: fewer rows rather than an error.
        let rows = batch.min((ids.len() / 2).max(1));
        StreamBatcher::new(&ids, rows).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.0))
    }

    fn chunk_loss(&self, ch: &StreamChunk, train: bool, reduction: Reduction) -> Result<Tensor> {
        let dev = self.vs.device();
        let x = ids_tensor(&ch.input, ch.batch, ch.len, dev)?;
        let y = c(Tensor::from_slice(&ch.target, ch.batch * ch.len, dev))?;
        let (logits, _) = self.net.forward(&x, None, train)?;
        let v = c(logits.dim(D::Minus1))?;
        let ls = if train { self.cfg.optim.label_smoothing } else { 0.0 };
        c(cross_entropy(
            &c(logits.reshape((ch.batch * ch.len, v)))?,
            &y,
            None,
            ls,
            reduction,
        ))
    }

    /// Mean next-token loss (nats) over a stream, and the number of tokens.
    pub fn stream_loss(&self, sb: &StreamBatcher, max_batches: Option<usize>) -> Result<(f64, usize)> {
        let (mut total, mut n) = (0.0, 0usize);
        for (i, ch) in sb.chunks(self.cfg.data.bptt).enumerate() {
            if max_batches.is_some_and(|m| i >= m) {
                break;
            }
            total += c(self.chunk_loss(&ch, false, Reduction::Sum)?.to_scalar::<f32>())? as f64;
            n += ch.batch * ch.len;
        }
        anyhow::ensure!(n > 0, "no tokens to evaluate");
        Ok((total / n as f64, n))
    }

    fn metrics(&self, loss: f64) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([("loss".to_string(), loss), ("ppl".to_string(), loss.exp())]);
        if self.tok.kind() == TokenizerKind::Char {
            m.insert("bpc".into(), loss / std::f64::consts::LN_2);
        }
        m
    }

    /// Loss, perplexity (and bits per character) on the test or validation file, or `path`.
    pub fn report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        let p = crate::common::eval_file(&self.cfg, split, path)?;
        let sb = Self::stream(&p, &self.tok, self.cfg.data.batch_size)?;
        let (loss, n) = self.stream_loss(&sb, None)?;
        let m = self.metrics(loss);
        let mut text = format!(
            "{}: {n} tokens  loss {loss:.4} nats/token  perplexity {:.2}",
            p.display(),
            m["ppl"]
        );
        if let Some(b) = m.get("bpc") {
            text.push_str(&format!("  {b:.3} bits/char"));
        }
        let mut j = json!({"file": p.display().to_string(), "tokens": n});
        for (k, v) in &m {
            j[k] = json!(v);
        }
        Ok(Report { text, json: j })
    }

    /// Continues `prompt` by sampling; deterministic for a given seed.
    pub fn generate(&self, prompt: &str, s: &SampleConfig) -> Result<String> {
        let mut ids = self.tok.encode(prompt)?;
        if ids.is_empty() {
            ids = self.tok.encode("\n")?;
        }
        let n_prompt = ids.len();
        let mut rng = SeqRng::new(s.seed);
        let dev = self.vs.device();
        let mut state: Option<RnnState> = None;
        let mut feed = ids.clone();
        for _ in 0..s.max_tokens {
            let window = match self.net.max_len() {
                Some(m) if ids.len() > m => &ids[ids.len() - m..],
                Some(_) => &ids[..],
                None => &feed[..],
            };
            let x = ids_tensor(window, 1, window.len(), dev)?;
            let (logits, st) = self.net.forward(&x, state.as_ref(), false)?;
            state = st.map(|s| s.detach());
            let last = c(logits
                .get(0)
                .and_then(|l| l.get(window.len() - 1))
                .and_then(|l| l.to_vec1::<f32>()))?;
            let next = sample(&last, s, &mut rng);
            if next == self.tok.eos_id() {
                break;
            }
            ids.push(next);
            feed = vec![next];
        }
        Ok(self
            .tok
            .decode(&ids[n_prompt..], true)
            .map(|g| format!("{prompt}{g}"))?)
    }
}

/// Sampling settings for `seqlab generate`.
#[derive(Clone, Debug)]
pub struct SampleConfig {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

/// Draws a token id from logits with temperature, then top-k, then nucleus (top-p) filtering.
pub fn sample(logits: &[f32], s: &SampleConfig, rng: &mut SeqRng) -> u32 {
    if s.temperature <= 0.0 {
        return logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
            .0 as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    let top = logits[order[0]] as f64;
    let mut p: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / s.temperature).exp())
        .collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= z);
    if let Some(tp) = s.top_p {
        let mut cum = 0.0;
        let mut keep = p.len();
        for (i, v) in p.iter().enumerate() {
            cum += v;
            if cum >= tp {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
        order.truncate(keep);
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= z);
    }
    let u = rng.unit_f32() as f64;
    let mut cum = 0.0;
    for (i, v) in p.iter().enumerate() {
        cum += v;
        if u < cum {
            return order[i] as u32;
        }
    }
    order[p.len() - 1] as u32
}

impl TrainTask for LmTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.as_ref().map_or(0, |t| t.num_chunks(self.cfg.data.bptt))
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        let t = self.train.as_ref().expect("built with training data");
        let order = shuffled_indices(t.num_chunks(self.cfg.data.bptt), self.cfg.train.seed, epoch);
        let ch = t
            .chunk(order[index], self.cfg.data.bptt)
            .expect("index within the epoch");
        let n = ch.batch * ch.len;
        Ok((self.chunk_loss(&ch, true, Reduction::Mean)?, n))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let Some(v) = self.valid.as_ref() else {
            bail!("language modelling needs data.valid for evaluation during training");
        };
        let (loss, _) = self.stream_loss(v, self.cfg.data.max_eval_batches)?;
        Ok(self.metrics(loss))
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        Ok(self.tok.save(dir.join("tokenizer.json"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_filters() {
        let logits = [0.0f32, 5.0, 1.0, 4.9];
        let mut rng = SeqRng::new(0);
        let greedy = SampleConfig {
            max_tokens: 1,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        };
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        let top2 = SampleConfig {
            temperature: 1.0,
            top_k: Some(2),
            ..greedy.clone()
        };
        for _ in 0..200 {
            assert!(matches!(sample(&logits, &top2, &mut rng), 1 | 3));
        }
        let nucleus = SampleConfig {
            temperature: 1.0,
            top_p: Some(0.3),
            ..greedy
        };
        for _ in 0..50 {
            assert_eq!(sample(&logits, &nucleus, &mut rng), 1);
        }
    }
}
