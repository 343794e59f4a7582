//! Hugging Face BERT checkpoints: a model folder from the hub (`config.json`,
//! `model.safetensors`, and `tokenizer.json` or `vocab.txt`) read into seqlab's [`BertConfig`],
//! parameter names and [`BertTokenizer`].
//!
//! What is accepted (HF `BertModel` / `BertForPreTraining` / `BertForMaskedLM` checkpoints):
//! - names with or without the `bert.` prefix (a bare `BertModel` saves none);
//! - both LayerNorm spellings on the hub: `LayerNorm.weight/bias` and the older
//!   (TF-ported) `LayerNorm.gamma/beta`;
//! - pooler, MLM head (`cls.predictions.*`, decoder tied to the word embeddings) and NSP head
//!   (`cls.seq_relationship.*`) each optional;
//! - a `BertForSequenceClassification` head (`classifier.*`, labels from `id2label`), used by
//!   `seqlab predict` ([`load_predictor`]; fine-tuning starts a fresh head, for the
//!   training file's labels);
//! - `hidden_act` `gelu` (erf GELU, as seqlab's), absolute positions, encoder only.
//!
//! Rejected with an error naming the file and key: pickle checkpoints (`pytorch_model.bin`
//! only; the message says how to convert), other activations or position types, an untied
//! MLM decoder, unknown tensors, wrong shapes.
//!
//! HF → seqlab names (seqlab's layers are `nn.TransformerEncoderLayer`s, post-norm):
//! `encoder.layer.{i}.attention.self.{query,key,value}` → `self_attn.in_proj_{weight,bias}`
//! (concatenated q, k, v as in `nn.MultiheadAttention`), `attention.output.dense` →
//! `self_attn.out_proj`, `attention.output.LayerNorm` → `norm1`, `intermediate.dense` →
//! `linear1`, `output.dense` → `linear2`, `output.LayerNorm` → `norm2`; embeddings, pooler
//! and `cls.*` keep their names.

use crate::c;
use crate::data::{BertTokenizer, CLS, MASK, SEP};
use crate::model::BertConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// WordPiece padding token.
pub const PAD: &str = "[PAD]";
/// WordPiece unknown token.
pub const UNK: &str = "[UNK]";

/// True when `dir` looks like an HF model folder (it has a `config.json`).
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

fn json_file(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match serde_json::from_str::<Value>(&text).with_context(|| format!("{}: invalid JSON", path.display()))? {
        Value::Object(m) => Ok(m),
        _ => bail!("{}: expected a JSON object", path.display()),
    }
}

/// Reads `DIR/config.json` (HF `BertConfig`; HF's defaults for absent keys) into seqlab's
/// [`BertConfig`]. Rejects `model_type` other than `bert`, `hidden_act` other than `gelu`
/// (seqlab's GELU is the exact erf form), `position_embedding_type` other than `absolute`,
/// decoder configs, and what [`BertConfig::validate`] rejects. `attention_probs_dropout_prob`
/// is not kept: seqlab uses `hidden_dropout_prob` for every dropout (it only matters for
/// further training).
pub fn read_config(dir: &Path) -> Result<BertConfig> {
    let path = dir.join("config.json");
    let m = json_file(&path)?;
    let at = |k: &str| format!("{}: key `{k}`", path.display());
    let usize_or = |k: &str, d: usize| -> Result<usize> {
        match m.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| anyhow::anyhow!("{} must be a non-negative integer, got {v}", at(k))),
        }
    };
    let f64_or = |k: &str, d: f64| -> Result<f64> {
        match m.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("{} must be a number, got {v}", at(k))),
        }
    };
    let str_is = |k: &str, want: &[&str], default: &str| -> Result<()> {
        let got = m.get(k).and_then(Value::as_str).unwrap_or(default);
        if !want.contains(&got) {
            bail!("{} is {got:?}; seqlab's BERT supports only {want:?}", at(k));
        }
        Ok(())
    };
    str_is("model_type", &["bert"], "bert")?;
    // `gelu_python` is the same erf GELU written in Python; `gelu_new` and friends are the
    // tanh approximation, which would differ by up to ~1e-3.
    str_is("hidden_act", &["gelu", "gelu_python"], "gelu")?;
    str_is("position_embedding_type", &["absolute"], "absolute")?;
    for k in ["is_decoder", "add_cross_attention"] {
        if m.get(k).and_then(Value::as_bool) == Some(true) {
            bail!("{} is true: only encoder checkpoints can be imported", at(k));
        }
    }
    let hidden = usize_or("hidden_size", 768)?;
    let cfg = BertConfig {
        vocab_size: usize_or("vocab_size", 30522)?,
        hidden_size: hidden,
        num_hidden_layers: usize_or("num_hidden_layers", 12)?,
        num_attention_heads: usize_or("num_attention_heads", 12)?,
        intermediate_size: usize_or("intermediate_size", 3072)?,
        max_position_embeddings: usize_or("max_position_embeddings", 512)?,
        type_vocab_size: usize_or("type_vocab_size", 2)?,
        hidden_dropout_prob: f64_or("hidden_dropout_prob", 0.1)?,
        layer_norm_eps: f64_or("layer_norm_eps", 1e-12)?,
        initializer_range: f64_or("initializer_range", 0.02)?,
    };
    cfg.validate().with_context(|| path.display().to_string())?;
    Ok(cfg)
}

/// Which parts an imported checkpoint holds (the encoder always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// `bert.pooler.dense.*`.
    pub pooler: bool,
    /// The MLM head `cls.predictions.*`.
    pub mlm: bool,
    /// The NSP head `cls.seq_relationship.*`.
    pub nsp: bool,
    /// A sequence-classification head `classifier.*` (HF `BertForSequenceClassification`).
    pub classifier: bool,
}

/// An HF BERT checkpoint's tensors under seqlab's names (f32, on the requested device).
#[derive(Clone, Debug)]
pub struct HfWeights {
    /// seqlab name → tensor.
    pub tensors: HashMap<String, Tensor>,
    /// What the checkpoint holds besides the encoder.
    pub parts: Parts,
}

/// The error for a folder that has a pickle checkpoint and no safetensors file.
fn pickle_only(dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: only pytorch_model.bin (a pickle) is there; seqlab reads safetensors only, since unpickling runs arbitrary code. \
         Convert it once with Python: `from transformers import AutoModel; AutoModel.from_pretrained(\"{dir}\").save_pretrained(\"{dir}\", safe_serialization=True)` \
         (for MLM/NSP heads use BertForPreTraining instead of AutoModel), or on the hub with the safetensors convert space",
        dir.join("pytorch_model.bin").display(),
        dir = dir.display()
    )
}

/// Reads `DIR/model.safetensors` and renames its tensors to seqlab's (see the module docs);
/// checks the names and shapes against `cfg`. Errors name the file and every offending key.
pub fn load_weights(dir: &Path, cfg: &BertConfig, device: &Device) -> Result<HfWeights> {
    let file = dir.join("model.safetensors");
    if !file.exists() {
        if dir.join("pytorch_model.bin").exists() {
            return Err(pickle_only(dir));
        }
        if dir.join("model.safetensors.index.json").exists() {
            bail!(
                "{}: sharded checkpoints are not supported (BERT-sized models fit one file)",
                dir.display()
            );
        }
        bail!("{}: no model.safetensors", dir.display());
    }
    let raw = candle_core::safetensors::load(&file, device).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    rename(raw, cfg).with_context(|| file.display().to_string())
}

/// HF names (either spelling, with or without `bert.`) → seqlab names, q/k/v concatenated.
fn rename(raw: HashMap<String, Tensor>, cfg: &BertConfig) -> Result<HfWeights> {
    let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, v) in raw {
        let v = c(v.to_dtype(DType::F32))?;
        let k = name.strip_prefix("bert.").unwrap_or(&name);
        // Older TF-ported checkpoints name LayerNorm parameters gamma/beta.
        let k = k
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias");
        if k == "embeddings.position_ids" {
            continue; // a constant buffer (0..max_positions) saved by older versions
        }
        let known = k.starts_with("embeddings.")
            || k.starts_with("encoder.layer.")
            || k.starts_with("pooler.")
            || k.starts_with("cls.predictions.")
            || k.starts_with("cls.seq_relationship.")
            || k.starts_with("classifier.");
        if !known {
            unknown.push(name.clone());
            continue;
        }
        if t.insert(k.clone(), v).is_some() {
            bail!("{k} appears twice (with and without the bert. prefix, or in both LayerNorm spellings)");
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        bail!(
            "tensors that are not part of BertForPreTraining: {} (only the encoder, pooler and MLM/NSP heads are imported)",
            unknown.join(", ")
        );
    }
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut problems = Vec::new();
    let take = |t: &mut BTreeMap<String, Tensor>, hf: &str| t.remove(hf);
    let enc = |k: &str| k.starts_with("embeddings.") || k.starts_with("encoder.") || k.starts_with("pooler.");
    let keys: Vec<String> = t.keys().cloned().collect();
    for i in 0..cfg.num_hidden_layers {
        let hf = format!("encoder.layer.{i}.");
        let sl = format!("bert.encoder.layers.{i}.");
        for (suffix, what) in [("weight", "in_proj_weight"), ("bias", "in_proj_bias")] {
            let parts: Vec<Option<Tensor>> = ["query", "key", "value"]
                .iter()
                .map(|p| take(&mut t, &format!("{hf}attention.self.{p}.{suffix}")))
                .collect();
            match parts.into_iter().collect::<Option<Vec<Tensor>>>() {
                Some(qkv) => {
                    out.insert(format!("{sl}self_attn.{what}"), c(Tensor::cat(&qkv, 0))?);
                }
                None => problems.push(format!("missing {hf}attention.self.{{query,key,value}}.{suffix}")),
            }
        }
        for (from, to) in [
            ("attention.output.dense", "self_attn.out_proj"),
            ("attention.output.LayerNorm", "norm1"),
            ("intermediate.dense", "linear1"),
            ("output.dense", "linear2"),
            ("output.LayerNorm", "norm2"),
        ] {
            for p in ["weight", "bias"] {
                match take(&mut t, &format!("{hf}{from}.{p}")) {
                    Some(v) => {
                        out.insert(format!("{sl}{to}.{p}"), v);
                    }
                    None => problems.push(format!("missing {hf}{from}.{p}")),
                }
            }
        }
    }
    // The MLM decoder is tied to the word embeddings in BERT (and in seqlab); a checkpoint
    // may still store the copy, and its bias twice (`cls.predictions.bias` and
    // `cls.predictions.decoder.bias`).
    let decoder_w = take(&mut t, "cls.predictions.decoder.weight");
    let decoder_b = take(&mut t, "cls.predictions.decoder.bias");
    if let (Some(w), Some(e)) = (&decoder_w, t.get("embeddings.word_embeddings.weight")) {
        if w.dims() != e.dims() || seqlab_nn::testing::max_abs_diff(w, e) != 0.0 {
            problems.push(
                "cls.predictions.decoder.weight differs from the word embeddings: seqlab ties them (untied MLM decoders are not supported)"
                    .into(),
            );
        }
    }
    if let Some(b) = decoder_b {
        t.entry("cls.predictions.bias".into()).or_insert(b);
    }
    for k in keys {
        if let Some(v) = t.remove(&k) {
            if k.starts_with("encoder.layer.") {
                problems.push(format!("{k}: beyond num_hidden_layers or not a BERT layer tensor"));
            } else if enc(&k) {
                out.insert(format!("bert.{k}"), v);
            } else {
                out.insert(k, v);
            }
        }
    }
    let parts = Parts {
        pooler: out.contains_key("bert.pooler.dense.weight"),
        mlm: out.keys().any(|k| k.starts_with("cls.predictions.")),
        nsp: out.keys().any(|k| k.starts_with("cls.seq_relationship.")),
        classifier: out.keys().any(|k| k.starts_with("classifier.")),
    };
    // Shapes, against a model built from the config.
    // CPU by design: only the parameters' shapes are read from this model.
    let vs = seqlab_nn::VarStore::new(0, &Device::Cpu);
    crate::model::BertForPreTraining::new(cfg, &vs)?;
    let expected: HashMap<String, Vec<usize>> = vs
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    for (k, v) in &out {
        if k.starts_with("classifier.") {
            continue; // its rows are the labels': checked below
        }
        match expected.get(k) {
            None => problems.push(format!("unexpected {k}")),
            Some(d) if d.as_slice() != v.dims() => {
                problems.push(format!("{k}: shape {:?} in file, {d:?} from config.json", v.dims()))
            }
            Some(_) => {}
        }
    }
    for (k, _) in expected.iter() {
        let optional = k.starts_with("cls.") || k.starts_with("bert.pooler.");
        if !optional && !out.contains_key(k) && !k.starts_with("bert.encoder.layers.") {
            problems.push(format!("missing {}", k.strip_prefix("bert.").unwrap_or(k)));
        }
    }
    let heads_complete = |prefix: &str| {
        expected
            .keys()
            .filter(|k| k.starts_with(prefix))
            .all(|k| out.contains_key(k))
    };
    for (present, prefix) in [
        (parts.pooler, "bert.pooler."),
        (parts.mlm, "cls.predictions."),
        (parts.nsp, "cls.seq_relationship."),
    ] {
        if present && !heads_complete(prefix) {
            problems.push(format!("{prefix}* is incomplete"));
        }
    }
    if parts.classifier {
        let (w, b) = (out.get("classifier.weight"), out.get("classifier.bias"));
        match (w.map(|t| t.dims()), b.map(|t| t.dims())) {
            (Some(&[n, h]), Some(&[m])) if h == cfg.hidden_size && n == m => {}
            (w, b) => problems.push(format!(
                "classifier.weight {w:?} and classifier.bias {b:?}: expected (num_labels, {}) and (num_labels)",
                cfg.hidden_size
            )),
        }
    }
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        bail!("does not fit config.json: {}", problems.join("; "));
    }
    Ok(HfWeights { tensors: out, parts })
}

/// The tokenizer of an HF BERT folder: `tokenizer.json` when present (it must be a
/// WordPiece one holding `[CLS]`, `[SEP]`, `[MASK]`, `[PAD]`, `[UNK]`), else `vocab.txt` with
/// the settings of `tokenizer_config.json` (`do_lower_case`, default true; `strip_accents`,
/// default: as lowercase; `tokenize_chinese_chars`, default true), built as HF's
/// `BertTokenizerFast` builds it (BERT normalizer and pre-tokenizer, WordPiece with `##`
/// continuations and at most 100 characters per word).
pub fn load_tokenizer(dir: &Path) -> Result<BertTokenizer> {
    let json = dir.join("tokenizer.json");
    if json.exists() {
        let tok = BertTokenizer::load(&json)?;
        if !matches!(tok.hf.get_model(), tokenizers::ModelWrapper::WordPiece(_)) {
            bail!("{}: not a WordPiece tokenizer", json.display());
        }
        return Ok(tok);
    }
    let vocab = dir.join("vocab.txt");
    if !vocab.exists() {
        bail!("{}: neither tokenizer.json nor vocab.txt", dir.display());
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let tc = if cfg_path.exists() {
        json_file(&cfg_path)?
    } else {
        Default::default()
    };
    let flag = |k: &str| -> Result<Option<bool>> {
        match tc.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => bail!("{}: key `{k}` must be true, false or null, got {v}", cfg_path.display()),
        }
    };
    let lowercase = flag("do_lower_case")?.unwrap_or(true);
    let strip_accents = flag("strip_accents")?;
    let chinese = flag("tokenize_chinese_chars")?.unwrap_or(true);
    wordpiece_from_vocab(&vocab, lowercase, strip_accents, chinese)
}

/// `BertTokenizerFast` from a `vocab.txt` (one piece per line, the id is the line number).
fn wordpiece_from_vocab(
    vocab: &Path,
    lowercase: bool,
    strip_accents: Option<bool>,
    chinese: bool,
) -> Result<BertTokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let bytes = std::fs::read(vocab).with_context(|| format!("reading {}", vocab.display()))?;
    // HF's reading: one piece per line, trailing whitespace dropped, the id is the line index.
    let map = WordPiece::read_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", vocab.display()))?;
    for s in [PAD, UNK, CLS, SEP, MASK] {
        if !map.contains_key(s) {
            bail!(
                "{}: no {s} line (a BERT vocabulary has [PAD], [UNK], [CLS], [SEP], [MASK])",
                vocab.display()
            );
        }
    }
    let (cls, sep) = (map[CLS], map[SEP]);
    let wp = WordPiece::builder()
        .vocab(map)
        .unk_token(UNK.into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| anyhow::anyhow!("{}: {e}", vocab.display()))?;
    let mut hf = tokenizers::Tokenizer::new(wp);
    hf.with_normalizer(Some(BertNormalizer::new(true, chinese, strip_accents, lowercase)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    hf.with_pre_tokenizer(Some(BertPreTokenizer));
    hf.with_post_processor(Some(BertProcessing::new((SEP.into(), sep), (CLS.into(), cls))));
    hf.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    // The specials are added tokens in HF's files: never split, and left whole in the input.
    hf.add_special_tokens(
        [PAD, UNK, CLS, SEP, MASK]
            .iter()
            .map(|s| tokenizers::AddedToken::from(*s, true))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    BertTokenizer::from_hf(hf).with_context(|| vocab.display().to_string())
}

/// An HF BERT folder read whole: config, tokenizer and weights (seqlab names).
pub struct HfBert {
    /// The model configuration from `config.json`.
    pub cfg: BertConfig,
    /// The WordPiece tokenizer.
    pub tok: BertTokenizer,
    /// The weights, renamed.
    pub weights: HfWeights,
}

impl HfBert {
    /// Reads `config.json`, the tokenizer and `model.safetensors` of `dir`; the tokenizer
    /// must fit the embedding table (its ids below `vocab_size`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = read_config(dir)?;
        let tok = load_tokenizer(dir)?;
        if tok.vocab_size() > cfg.vocab_size {
            bail!(
                "{}: the tokenizer has {} ids but config.json's vocab_size is {}",
                dir.display(),
                tok.vocab_size(),
                cfg.vocab_size
            );
        }
        let weights = load_weights(dir, &cfg, device)?;
        Ok(Self { cfg, tok, weights })
    }
}

/// The label names of a sequence classifier with `rows` outputs, from `DIR/config.json`:
/// `id2label` in id order (HF's default names `LABEL_0`... when absent). Rejected, naming
/// the key: ids other than 0..rows, `problem_type` `regression` or a single output (seqlab
/// predicts classes), `multi_label_classification` (a sigmoid per label, where seqlab gives
/// one softmax over the labels).
pub fn read_labels(dir: &Path, rows: usize) -> Result<Vec<String>> {
    let path = dir.join("config.json");
    let m = json_file(&path)?;
    match m.get("problem_type").and_then(Value::as_str) {
        None | Some("single_label_classification") => {}
        Some(p) => bail!(
            "{}: key `problem_type` is {p:?}; seqlab predicts single-label classes (one softmax over the labels)",
            path.display()
        ),
    }
    if rows < 2 {
        bail!(
            "{}: the classifier has {rows} output (regression); seqlab predicts classes (2 or more labels)",
            path.display()
        );
    }
    let Some(map) = m.get("id2label") else {
        return Ok((0..rows).map(|i| format!("LABEL_{i}")).collect());
    };
    let map = map
        .as_object()
        .with_context(|| format!("{}: key `id2label` must be an object", path.display()))?;
    let mut names = vec![None; rows];
    for (k, v) in map {
        let i = k.parse::<usize>().ok().filter(|&i| i < rows).with_context(|| {
            format!(
                "{}: key `id2label`: id {k:?} is not one of the classifier's rows 0..{rows}",
                path.display()
            )
        })?;
        let name = v
            .as_str()
            .with_context(|| format!("{}: key `id2label.{k}` must be a string", path.display()))?;
        names[i] = Some(name.to_string());
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| n.with_context(|| format!("{}: key `id2label` has no id {i}", path.display())))
        .collect()
}

/// What `seqlab predict` answers with an HF BERT folder, chosen by its head.
pub enum HfPredictor {
    /// `classifier.*` (HF `BertForSequenceClassification`): class probabilities.
    Classifier(HfClassifier),
    /// `cls.predictions.*` (HF `BertForMaskedLM` / `BertForPreTraining`): the most probable
    /// tokens at each `[MASK]`.
    FillMask(HfFillMask),
}

/// Loads an HF BERT folder ([`HfBert::load`]) for predictions: a classifier when it has a
/// `classifier.*` head (it then needs the pooler, as HF's), else masked-word fill when it has
/// the MLM head. A bare encoder (`BertModel`, or NSP head only) is an error that says how to
/// get a classifier from it (`seqlab finetune --init-from DIR`).
pub fn load_predictor(dir: &Path, device: &Device) -> Result<HfPredictor> {
    let h = HfBert::load(dir, device)?;
    let vs = seqlab_nn::VarStore::new(0, device);
    let p = h.weights.parts;
    // Called once the model is built in `vs`. Absent optional parts (pooler, NSP head) keep
    // their fresh values and are not used.
    let inputs = |vs: seqlab_nn::VarStore| -> Result<HfInputs> {
        vs.load_state_dict(&h.weights.tensors, false)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        Ok(HfInputs {
            tok: h.tok.clone(),
            max_len: h.cfg.max_position_embeddings,
            vs,
        })
    };
    if p.classifier {
        if !p.pooler {
            bail!(
                "{}: a classifier head without the pooler (bert.pooler.*), which BertForSequenceClassification applies first",
                dir.display()
            );
        }
        let rows = c(h.weights.tensors["classifier.bias"].dim(0))?;
        let labels = read_labels(dir, rows)?;
        let net = crate::model::BertClassifier::new(&h.cfg, rows, &vs)?;
        return Ok(HfPredictor::Classifier(HfClassifier {
            net,
            labels,
            inputs: inputs(vs)?,
        }));
    }
    if p.mlm {
        let net = crate::model::BertForPreTraining::new(&h.cfg, &vs)?;
        return Ok(HfPredictor::FillMask(HfFillMask {
            net,
            inputs: inputs(vs)?,
        }));
    }
    bail!(
        "{}: no head to predict with (neither classifier.* of BertForSequenceClassification nor the MLM head cls.predictions.*); \
         train a classifier from it with `seqlab finetune --init-from {}`",
        dir.display(),
        dir.display()
    )
}

/// What both HF predictors hold besides their network: tokenizer, length limit, weights.
struct HfInputs {
    tok: BertTokenizer,
    /// Longest input, `[CLS]`/`[SEP]` included (`max_position_embeddings`).
    max_len: usize,
    vs: seqlab_nn::VarStore,
}

impl HfInputs {
    /// `seqs` padded into one batch: (ids, segments, padding), see [`crate::model::BertInput`].
    fn batch(&self, seqs: &[Vec<u32>]) -> Result<(Tensor, Tensor, Tensor)> {
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        crate::task::padded_batch(&refs, self.tok.pad, self.vs.device())
    }
}

/// An HF `BertForSequenceClassification`.
pub struct HfClassifier {
    net: crate::model::BertClassifier,
    /// Label names, in the order of the probabilities (`id2label`).
    pub labels: Vec<String>,
    inputs: HfInputs,
}

impl HfClassifier {
    /// Class probabilities (softmax of the logits, in [`HfClassifier::labels`] order) of each
    /// `[CLS] text [SEP]` (cut to `max_len`), from one padded forward pass.
    pub fn probabilities(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let i = &self.inputs;
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| crate::task::cls_ids(&i.tok, t, i.max_len))
            .collect::<Result<_>>()?;
        let (ids, segments, padding) = i.batch(&seqs)?;
        let x = crate::model::BertInput {
            ids: &ids,
            segments: &segments,
            padding: &padding,
        };
        let logits = self.net.forward(&x, false)?;
        c(seqlab_nn::ops::softmax(&logits, candle_core::D::Minus1).and_then(|p| p.to_vec2::<f32>()))
    }
}

/// Masked-word fill with an HF BERT's MLM head.
pub struct HfFillMask {
    net: crate::model::BertForPreTraining,
    inputs: HfInputs,
}

/// One candidate for a `[MASK]`: a vocabulary piece (`##` marks a word continuation) and
/// its probability.
pub type Candidate = (String, f32);

impl HfFillMask {
    /// Longest input, `[CLS]`/`[SEP]` included (`max_position_embeddings`).
    pub fn max_len(&self) -> usize {
        self.inputs.max_len
    }

    /// `[CLS] text [SEP]` ids; an error when the text has no `[MASK]` or is longer than
    /// [`HfFillMask::max_len`] (cutting it could drop a mask).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tok = &self.inputs.tok;
        let mut ids = vec![tok.cls];
        ids.extend(tok.encode(text)?);
        ids.push(tok.sep);
        if !ids.contains(&tok.mask) {
            bail!("no {MASK} in the text: nothing to fill");
        }
        if ids.len() > self.max_len() {
            bail!(
                "{} tokens with [CLS] and [SEP]; this model takes at most {} (max_position_embeddings)",
                ids.len(),
                self.max_len()
            );
        }
        Ok(ids)
    }

    /// For each sequence ([`HfFillMask::encode`]), for each `[MASK]` in order, the `top_k`
    /// most probable pieces (softmax over the whole vocabulary, as HF's fill-mask pipeline),
    /// most probable first. One padded forward pass.
    pub fn fill(&self, seqs: &[Vec<u32>], top_k: usize) -> Result<Vec<Vec<Vec<Candidate>>>> {
        let (tok, dev) = (&self.inputs.tok, self.inputs.vs.device());
        let (ids, segments, padding) = self.inputs.batch(seqs)?;
        let x = crate::model::BertInput {
            ids: &ids,
            segments: &segments,
            padding: &padding,
        };
        let hidden = self.net.bert.forward(&x, false)?;
        let (b, l, h) = c(hidden.dims3())?;
        let at: Vec<u32> = (0..b)
            .flat_map(|r| {
                let s = &seqs[r];
                (0..s.len())
                    .filter(move |&i| s[i] == tok.mask)
                    .map(move |i| (r * l + i) as u32)
            })
            .collect();
        let sel = c(Tensor::new(at.as_slice(), dev)
            .and_then(|a| hidden.reshape((b * l, h)).and_then(|f| f.index_select(&a, 0))))?;
        let probs = c(
            seqlab_nn::ops::softmax(&self.net.mlm_head(&sel)?, candle_core::D::Minus1).and_then(|p| p.to_vec2::<f32>()),
        )?;
        let mut rows = probs.into_iter();
        let mut out = Vec::with_capacity(b);
        for s in seqs {
            let masks = s.iter().filter(|&&i| i == tok.mask).count();
            let mut per = Vec::with_capacity(masks);
            for p in rows.by_ref().take(masks) {
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                per.push(
                    order
                        .into_iter()
                        .take(top_k)
                        .map(|k| {
                            let piece = tok.hf.id_to_token(k as u32).unwrap_or_else(|| format!("<id {k}>"));
                            (piece, p[k])
                        })
                        .collect(),
                );
            }
            out.push(per);
        }
        Ok(out)
    }
}
