//! Language modelling (`task = "lm"`): contiguous (batch, bptt) chunks of a token stream,
//! next-token cross-entropy; perplexity and bits per character; generation with
//! [`seqlab_nn::sampling`] (temperature, top-k, top-p).

use crate::common::{c, ids_tensor, tokenizer};
use crate::config::{Config, TaskConfig};
use crate::models::{LmNet, RnnState};
use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use seqlab_data::{shuffled_indices, LmText, StreamBatcher, StreamChunk, Tokenizer, TokenizerConfig, TokenizerKind};
use seqlab_nn::loss::{cross_entropy, Reduction};
use seqlab_nn::sampling::{Sampler, SamplingConfig};
use seqlab_nn::VarStore;
use seqlab_train::trainer::{Shard, ShardLoss, TrainTask};
use seqlab_train::{BuildFrom, Purpose, Report, Split, Task};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// A language model with its tokenizer and (when training) its data.
pub struct LmTask {
    /// The whole run config (engine settings plus task keys).
    pub cfg: Config,
    /// The tokenizer.
    pub tok: Tokenizer,
    /// The language model.
    pub net: LmNet,
    /// The model's parameters.
    pub vs: VarStore,
    train: Option<StreamBatcher>,
    valid: Option<StreamBatcher>,
}

impl LmTask {
    /// Builds the task; `from.checkpoint` holds a checkpoint's tokenizer (resume, eval), and
    /// only [`Purpose::Train`] reads the training and validation streams.
    fn new(cfg: &Config, vs: &VarStore, from: BuildFrom<'_>) -> Result<Self> {
        let (saved, with_train_data) = (from.checkpoint, from.purpose == Purpose::Train);
        let d = &cfg.task.data;
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
        let net = LmNet::new(&cfg.task.model, tok.vocab_size(), vs)?;
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
            (Some(p), true) => Some(Self::stream(&LmText::read(p)?, &tok, d.batch_size)?),
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

    fn stream(text: &LmText, tok: &Tokenizer, batch: usize) -> Result<StreamBatcher> {
        let ids = text.encode_stream(tok)?;
        // Evaluation text may be short: fewer rows rather than an error.
        let rows = batch.min((ids.len() / 2).max(1));
        StreamBatcher::new(&ids, rows).map_err(|e| anyhow::anyhow!("{}: {}", text.path.display(), e.0))
    }

    /// How well the model predicts `text` (read as an evaluation file is: its lines, each with
    /// its newline, as one stream in `data.batch_size` rows of `data.bptt` chunks): what
    /// `seqlab eval --data FILE` reports and `seqlab predict` prints. Errors when the text
    /// has fewer than 2 tokens or only out-of-vocabulary targets.
    pub fn score(&self, text: &LmText) -> Result<LmScore> {
        let sb = Self::stream(text, &self.tok, self.cfg.task.data.batch_size)?;
        let (loss, tokens, oov_tokens) = self.stream_loss(&sb, None)?;
        Ok(LmScore {
            loss,
            tokens,
            oov_tokens,
            char_tokens: self.tok.kind() == TokenizerKind::Char,
        })
    }

    /// Cross-entropy of one chunk. `ignore` is a target id left out of the loss (the
    /// evaluation path passes `<unk>`; training passes `None`).
    fn chunk_loss(&self, ch: &StreamChunk, train: bool, ignore: Option<u32>, reduction: Reduction) -> Result<Tensor> {
        let dev = self.vs.device();
        let x = ids_tensor(&ch.input, ch.batch, ch.len, dev)?;
        let y = c(Tensor::from_slice(&ch.target, ch.batch * ch.len, dev))?;
        let (logits, _) = self.net.forward(&x, None, train)?;
        let v = c(logits.dim(D::Minus1))?;
        let ls = if train { self.cfg.task.loss.label_smoothing } else { 0.0 };
        c(cross_entropy(
            &c(logits.reshape((ch.batch * ch.len, v)))?,
            &y,
            ignore.map(i64::from),
            ls,
            reduction,
        ))
    }

    /// Next-token loss over a stream: the mean (nats) over the targets inside the vocabulary,
    /// how many those are, and how many targets are `<unk>` (out of vocabulary). `<unk>`
    /// targets are left out of the loss: a model trained on text lacking those characters
    /// would otherwise be rewarded for predicting `<unk>` (an LM trained on `aaaa…` scored
    /// 2.4 bits/char on Shakespeare). The validation `loss` used to pick the best checkpoint
    /// is this same in-vocabulary loss; the vocabulary is fixed within a run, so checkpoints
    /// stay comparable.
    pub fn stream_loss(&self, sb: &StreamBatcher, max_batches: Option<usize>) -> Result<(f64, usize, usize)> {
        let unk = self.tok.unk_id();
        let (mut total, mut n, mut oov) = (0.0, 0usize, 0usize);
        for (i, ch) in sb.chunks(self.cfg.task.data.bptt).enumerate() {
            if max_batches.is_some_and(|m| i >= m) {
                break;
            }
            let k = ch.target.iter().filter(|&&t| t == unk).count();
            oov += k;
            if k == ch.target.len() {
                continue;
            }
            total += c(self
                .chunk_loss(&ch, false, Some(unk), Reduction::Sum)?
                .to_scalar::<f32>())? as f64;
            n += ch.batch * ch.len - k;
        }
        anyhow::ensure!(
            n > 0,
            "no tokens to evaluate{}",
            if oov > 0 {
                format!(" ({oov} targets are all outside the vocabulary)")
            } else {
                String::new()
            }
        );
        Ok((total / n as f64, n, oov))
    }

    fn oov_metrics(m: &mut BTreeMap<String, f64>, n: usize, oov: usize) {
        m.insert("oov_tokens".into(), oov as f64);
        m.insert("oov_rate".into(), oov as f64 / (n + oov) as f64);
    }

    fn metrics(&self, loss: f64) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([("loss".to_string(), loss), ("ppl".to_string(), loss.exp())]);
        if self.tok.kind() == TokenizerKind::Char {
            m.insert("bpc".into(), loss / std::f64::consts::LN_2);
        }
        m
    }

    /// Loss, perplexity (and bits per character) on the test or validation file, or `path`.
    fn split_report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        let p = crate::common::eval_file(&self.cfg, split, path)?;
        let LmScore {
            loss,
            tokens: n,
            oov_tokens: oov,
            ..
        } = self.score(&LmText::read(&p)?)?;
        let mut m = self.metrics(loss);
        Self::oov_metrics(&mut m, n, oov);
        let mut text = format!(
            "{}: {n} tokens  loss {loss:.4} nats/token  perplexity {:.2}",
            p.display(),
            m["ppl"]
        );
        if let Some(b) = m.get("bpc") {
            text.push_str(&format!("  {b:.3} bits/char"));
        }
        text.push_str(&format!(
            "\n{oov} of {} target tokens ({:.1} %) are outside the vocabulary and are left out of perplexity",
            n + oov,
            100.0 * m["oov_rate"]
        ));
        // `tokens`: the targets scored (in the vocabulary); `oov_tokens` are the others.
        let mut j = json!({"file": p.display().to_string(), "tokens": n});
        for (k, v) in &m {
            j[k] = json!(v);
        }
        Ok(Report {
            text,
            json: j,
            files: Vec::new(),
        })
    }

    /// Continues `prompt` with up to `g.max_tokens` tokens drawn by [`Sampler`] (stops at
    /// `<eos>`); deterministic for a given seed. Rejects invalid sampling settings.
    pub fn generate(&self, prompt: &str, g: &GenerateConfig) -> Result<String> {
        let mut sampler = Sampler::new(g.sampling.clone(), g.seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut ids = self.tok.encode(prompt)?;
        if ids.is_empty() {
            ids = self.tok.encode("\n")?;
        }
        let n_prompt = ids.len();
        let mut state: Option<RnnState> = None;
        let mut feed = ids.clone();
        for _ in 0..g.max_tokens {
            let logits = self.next_logits(std::slice::from_ref(&ids), std::slice::from_ref(&feed), &mut state)?;
            let last = c(logits.get(0).and_then(|l| l.to_vec1::<f32>()))?;
            let next = sampler.sample(&last);
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

impl LmTask {
    /// One decoding call for `rows` (sequences of one length): a Transformer re-reads the last
    /// `max_len` ids of each row; a recurrent model reads only `feed` (the ids it has not
    /// read yet) from `state`, which is updated. Returns the last position's logits, (B, V).
    fn next_logits(&self, rows: &[Vec<u32>], feed: &[Vec<u32>], state: &mut Option<RnnState>) -> Result<Tensor> {
        let len = rows[0].len();
        let window: Vec<&[u32]> = match self.net.max_len() {
            Some(m) => rows.iter().map(|r| &r[len.saturating_sub(m)..]).collect(),
            None => feed.iter().map(|r| &r[..]).collect(),
        };
        let t = window[0].len();
        let x = ids_tensor(&window.concat(), rows.len(), t, self.vs.device())?;
        let (logits, st) = self.net.forward(&x, state.as_ref(), false)?;
        *state = st.map(|s| s.detach());
        c(logits.narrow(1, t - 1, 1).and_then(|l| l.squeeze(1)))
    }

    /// Greedy continuation of `batch` sequences at once by `tokens` tokens each, from the
    /// prompt "\n": one forward over the prompt, then one call per token that feeds the
    /// previous arg-max with the recurrent state (LSTM/GRU hidden state, Mamba's conv and SSM
    /// states through its step function; a Transformer re-reads its window, as in
    /// [`LmTask::generate`]). `<eos>` does not stop it, so every call does the same work
    /// (`seqlab bench generate` times this). Returns each sequence's `tokens` new ids.
    /// Rejects `batch = 0` and `tokens = 0`.
    pub fn greedy_batch(&self, batch: usize, tokens: usize) -> Result<Vec<Vec<u32>>> {
        anyhow::ensure!(batch > 0 && tokens > 0, "greedy_batch: batch and tokens must be > 0");
        let prompt = self.tok.encode("\n")?;
        let n_prompt = prompt.len();
        let mut rows: Vec<Vec<u32>> = vec![prompt; batch];
        let mut state: Option<RnnState> = None;
        let mut feed = rows.clone();
        for _ in 0..tokens {
            let logits = self.next_logits(&rows, &feed, &mut state)?;
            let next = c(logits.argmax(D::Minus1).and_then(|l| l.to_vec1::<u32>()))?;
            for (r, &n) in rows.iter_mut().zip(&next) {
                r.push(n);
            }
            feed = next.iter().map(|&n| vec![n]).collect();
        }
        Ok(rows.into_iter().map(|r| r[n_prompt..].to_vec()).collect())
    }
}

/// How well a language model predicts a text ([`LmTask::score`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LmScore {
    /// Mean next-token cross-entropy in nats over the targets inside the vocabulary.
    pub loss: f64,
    /// Targets scored (inside the vocabulary).
    pub tokens: usize,
    /// Targets outside the vocabulary (`<unk>`), left out of `loss`.
    pub oov_tokens: usize,
    /// The tokenizer is the character one: a token is a character, bits/token = bits/char.
    pub char_tokens: bool,
}

impl LmScore {
    /// e^loss.
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }

    /// loss / ln 2.
    pub fn bits_per_token(&self) -> f64 {
        self.loss / std::f64::consts::LN_2
    }

    /// Bits per character, for character tokenizers only (`None` otherwise).
    pub fn bits_per_char(&self) -> Option<f64> {
        self.char_tokens.then(|| self.bits_per_token())
    }

    /// Share of the targets outside the vocabulary, in [0, 1].
    pub fn oov_rate(&self) -> f64 {
        self.oov_tokens as f64 / (self.tokens + self.oov_tokens).max(1) as f64
    }
}

/// `seqlab generate`'s and `POST /v1/generate`'s temperature when none is given: a little
/// below 1 (sampling as trained), which keeps small models' samples readable.
pub const DEFAULT_TEMPERATURE: f64 = 0.8;

/// Settings of [`LmTask::generate`] (`seqlab generate`).
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Most tokens to add to the prompt.
    pub max_tokens: usize,
    /// Temperature, top-k, top-p, with [`seqlab_nn::sampling`]'s meaning.
    pub sampling: SamplingConfig,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Task for LmTask {
    type Config = TaskConfig;
    const NAME: &'static str = "lm";
    const ABOUT: &'static str = "language modelling on plain text (perplexity, bits per character)";

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
        "perplexity is e^loss: the model is as unsure as a uniform choice among that many tokens (uniform over the vocabulary is the untrained value); bits/char starts at log2(vocabulary size) for an untrained model; near 3 it has learned letter patterns and short common words (the 600-step bundled sample job ends near 2.8), and well-trained character models of Shakespeare reach about 2.".into()
    }
}

impl TrainTask for LmTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.as_ref().map_or(0, |t| t.num_chunks(self.cfg.task.data.bptt))
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.train_loss_shard(epoch, index, Shard::WHOLE)?.into_mean()
    }

    /// The shard's rows of the chunk; the summed token loss over its tokens.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        let t = self.train.as_ref().expect("built with training data");
        let order = shuffled_indices(t.num_chunks(self.cfg.task.data.bptt), self.cfg.run.train.seed, epoch);
        let ch = t
            .chunk(order[index], self.cfg.task.data.bptt)
            .expect("index within the epoch");
        let rows = shard.range(ch.batch);
        let span = rows.start * ch.len..rows.end * ch.len;
        let part = StreamChunk {
            input: ch.input[span.clone()].to_vec(),
            target: ch.target[span].to_vec(),
            batch: rows.len(),
            len: ch.len,
        };
        let n = part.batch * part.len;
        if n == 0 {
            return ShardLoss::empty(self.vs.device());
        }
        Ok(ShardLoss::sum_over(
            self.chunk_loss(&part, true, None, Reduction::Sum)?,
            n,
            n,
        ))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let Some(v) = self.valid.as_ref() else {
            bail!("language modelling needs data.valid for evaluation during training");
        };
        let (loss, n, oov) = self.stream_loss(v, self.cfg.task.data.max_eval_batches)?;
        let mut m = self.metrics(loss);
        Self::oov_metrics(&mut m, n, oov);
        Ok(m)
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        Ok(self.tok.save(dir.join("tokenizer.json"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqlab_train::task::parse_config;

    /// A tiny untrained char LM whose vocabulary is {a, b} (plus specials), built from
    /// `dir/train.txt`; evaluation files are read with batch 1 so every target is scored.
    fn tiny(dir: &Path) -> LmTask {
        tiny_with(dir, "kind = \"lstm\"\nembed_dim = 8\nhidden_size = 8\nnum_layers = 1")
    }

    /// [`tiny`] with the given `[model]` table body.
    fn tiny_with(dir: &Path, model: &str) -> LmTask {
        std::fs::write(dir.join("train.txt"), "abababababab\nbabababa\n").unwrap();
        let text = format!(
            "task = \"lm\"\n[data]\ntrain = \"{d}/train.txt\"\nbatch_size = 1\nbptt = 8\n[model]\n{model}\n",
            d = dir.display()
        );
        let cfg = parse_config::<LmTask>(
            seqlab_train::config::table_with_overrides(&text, &[]).unwrap(),
            "t.toml",
        )
        .unwrap();
        let vs = VarStore::new(0, &candle_core::Device::Cpu);
        let from = BuildFrom {
            checkpoint: None,
            purpose: Purpose::Evaluate,
        };
        LmTask::build(&cfg, &vs, from).unwrap()
    }

    #[test]
    fn oov_targets_are_counted_and_left_out_of_perplexity() {
        let dir = seqlab_nn::testing::scratch_dir("lm-oov");
        let t = tiny(&dir);
        let unk = t.tok.unk_id();
        assert!(t.tok.token_to_id("x").is_none() && t.tok.token_to_id("a").is_some());

        // "abxab": targets b, <unk>, a, b; one of four is outside the vocabulary.
        std::fs::write(dir.join("oov.txt"), "abxab").unwrap();
        let sb = LmTask::stream(&LmText::read(dir.join("oov.txt")).unwrap(), &t.tok, 1).unwrap();
        let (loss, n, oov) = t.stream_loss(&sb, None).unwrap();
        assert_eq!((n, oov), (3, 1));
        // The loss is the mean over the three in-vocabulary targets only.
        let ch = sb.chunks(8).next().unwrap();
        assert_eq!(ch.target.iter().filter(|&&x| x == unk).count(), 1);
        let each: Vec<f32> = t
            .chunk_loss(&ch, false, None, Reduction::None)
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: f64 = ch
            .target
            .iter()
            .zip(&each)
            .filter(|(&x, _)| x != unk)
            .map(|(_, &l)| l as f64)
            .sum::<f64>()
            / 3.0;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        let r = t.split_report(Split::Test, Some(&dir.join("oov.txt"))).unwrap();
        assert_eq!(r.json["oov_tokens"], json!(1.0));
        assert!(
            (r.json["oov_rate"].as_f64().unwrap() - 0.25).abs() < 1e-12,
            "{}",
            r.json
        );
        assert_eq!(r.json["tokens"], json!(3));
        assert!((r.json["ppl"].as_f64().unwrap() - want.exp()).abs() < 1e-4);
        assert!(
            r.text
                .contains("1 of 4 target tokens (25.0 %) are outside the vocabulary and are left out of perplexity"),
            "{}",
            r.text
        );

        // No OOV: rate 0, and the loss is the plain mean over every target, as before.
        std::fs::write(dir.join("iv.txt"), "abbab").unwrap();
        let sb = LmTask::stream(&LmText::read(dir.join("iv.txt")).unwrap(), &t.tok, 1).unwrap();
        let (loss, n, oov) = t.stream_loss(&sb, None).unwrap();
        assert_eq!((n, oov), (4, 0));
        let ch = sb.chunks(8).next().unwrap();
        let plain = t
            .chunk_loss(&ch, false, None, Reduction::Mean)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((loss - plain).abs() < 1e-6, "{loss} vs {plain}");
        let r = t.split_report(Split::Test, Some(&dir.join("iv.txt"))).unwrap();
        assert_eq!(r.json["oov_rate"], json!(0.0));
        assert!(r.text.contains("0 of 4 target tokens (0.0 %)"), "{}", r.text);

        // Only OOV targets: an error that says so, not NaN.
        std::fs::write(dir.join("all.txt"), "xyz").unwrap();
        let sb = LmTask::stream(&LmText::read(dir.join("all.txt")).unwrap(), &t.tok, 1).unwrap();
        let e = t.stream_loss(&sb, None).unwrap_err();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A projected LSTM (`model.proj_size`) has PyTorch's parameters (`weight_hr_l{k}`, h of
    /// proj_size feeding the next layer and the output layer), ties its embedding when
    /// embed_dim equals proj_size, and gets a gradient in every parameter.
    #[test]
    fn projected_lstm_lm_has_pytorchs_parameters() {
        let dir = seqlab_nn::testing::scratch_dir("lm-proj");
        let t = tiny_with(
            &dir,
            "kind = \"lstm\"\nembed_dim = 8\nhidden_size = 12\nproj_size = 6\nnum_layers = 2",
        );
        let shapes: BTreeMap<String, Vec<usize>> =
            t.vs.trainable()
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec()))
                .collect();
        assert_eq!(shapes["rnn.weight_ih_l0"], [48, 8]);
        assert_eq!(shapes["rnn.weight_hh_l0"], [48, 6]);
        assert_eq!(shapes["rnn.weight_hr_l0"], [6, 12]);
        assert_eq!(shapes["rnn.weight_ih_l1"], [48, 6]);
        assert_eq!(shapes["rnn.weight_hr_l1"], [6, 12]);
        assert_eq!(shapes["decoder.weight"][1], 6);
        let ids = ids_tensor(&t.tok.encode("abab").unwrap(), 1, 4, t.vs.device()).unwrap();
        let (logits, _) = t.net.forward(&ids, None, true).unwrap();
        seqlab_nn::testing::assert_all_params_get_grad(&t.vs, &logits.sqr().unwrap().sum_all().unwrap());
        let tied = tiny_with(
            &dir,
            "kind = \"lstm\"\nembed_dim = 6\nhidden_size = 12\nproj_size = 6\ntie_weights = true",
        );
        assert!(!tied.vs.trainable().iter().any(|(n, _)| n.starts_with("decoder")));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Generation with the recurrent state (LSTM hidden state; Mamba's step function) picks
    /// the same tokens as re-running the model over the whole sequence at every step.
    #[test]
    fn greedy_batch_with_the_state_equals_re_running_the_whole_sequence() {
        let dir = seqlab_nn::testing::scratch_dir("lm-greedy");
        for model in [
            "kind = \"lstm\"\nembed_dim = 8\nhidden_size = 8\nnum_layers = 2",
            "kind = \"lstm\"\nembed_dim = 8\nhidden_size = 8\nproj_size = 5\nnum_layers = 2",
            "kind = \"mamba\"\nd_model = 8\nnum_layers = 2\nd_state = 4",
        ] {
            let t = tiny_with(&dir, model);
            let got = t.greedy_batch(2, 7).unwrap();
            assert_eq!(got.len(), 2);
            assert!(got.iter().all(|r| r.len() == 7), "{got:?}");
            assert_eq!(got[0], got[1], "{model}: the sequences of a batch differ");
            let mut ids = t.tok.encode("\n").unwrap();
            let dev = t.vs.device();
            for (k, &want) in got[0].iter().enumerate() {
                let x = ids_tensor(&ids, 1, ids.len(), dev).unwrap();
                let (logits, _) = t.net.forward(&x, None, false).unwrap();
                let last = logits.get(0).unwrap().get(ids.len() - 1).unwrap();
                let next = last.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
                assert_eq!(next, want, "{model}: token {k} differs from the full re-run");
                ids.push(next);
            }
            assert!(t.greedy_batch(0, 3).is_err() && t.greedy_batch(1, 0).is_err());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
