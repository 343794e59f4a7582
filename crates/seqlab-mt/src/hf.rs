//! Translation models to and from Hugging Face Transformers' M2M100 layout
//! (`M2M100ForConditionalGeneration`), which CTranslate2's Transformers converter also reads.
//!
//! Why M2M100: of the HF encoder-decoders, it is the one that computes what seqlab's
//! pre-norm Transformer computes: pre-norm layers (`normalize_before`), a final LayerNorm
//! after each stack, token embeddings × √d_model (`scale_embedding`), sinusoidal positions
//! (no learned ones, no LayerNorm on the embeddings as MBart has), one matrix for source,
//! target and output embeddings, biases on every projection, ReLU or GELU. Its sinusoidal
//! table is fairseq's (half sines, half cosines, positions offset by `padding_idx + 1` = 2),
//! so an exportable model sets `model.positions = "fairseq"` ([`PositionTable::Fairseq`]).
//! Marian, the post-norm candidate, has no final LayerNorms while PyTorch's (and seqlab's)
//! post-norm `nn.Transformer` has them, so post-norm models are not exported.
//!
//! Exportable: `kind = "transformer"`, `norm_first = true`, `positions = "fairseq"`,
//! `share_embeddings = true` (joint vocabulary), an even `d_model`. None of the shipped
//! presets is exportable as it stands (they use the paper's table); `mt-bible-small` with
//! `model.positions = "fairseq"` is.
//!
//! The ids of `<pad>` and `<bos>` are swapped on the way out (and back on the way in), so
//! the exported vocabulary is fairseq's order (`<bos>`=0, `<pad>`=1, `<eos>`=2, `<unk>`=3):
//! with padding at 1, HF's positions (`padding_idx + 1 + i`) and CTranslate2's (row `2 + i`
//! of the same table) agree.
//!
//! Names, seqlab → HF: `embed.weight` → `model.shared.weight` (tied to both
//! `embed_tokens` and `lm_head`); in each layer the fused `self_attn.in_proj_*` (q, k, v
//! stacked) → `self_attn.{q,k,v}_proj.*`, `multihead_attn` → `encoder_attn`, `linear1/2` →
//! `fc1/2`, encoder `norm1/norm2` → `self_attn_layer_norm`/`final_layer_norm`, decoder
//! `norm1/norm2/norm3` → `self_attn_layer_norm`/`encoder_attn_layer_norm`/`final_layer_norm`;
//! `encoder.norm`/`decoder.norm` → `model.{encoder,decoder}.layer_norm`.

use crate::c;
use crate::task::{MtModel, MtModelKind, MtTask, PositionTable};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use seqlab_data::Tokenizer;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// seqlab's ids of `<pad>` and `<bos>` (0 and 1) trade places in the exported vocabulary.
fn swap_pad_bos(id: u32) -> u32 {
    match id {
        0 => 1,
        1 => 0,
        x => x,
    }
}

/// Where one seqlab tensor goes in HF.
enum Target {
    /// The same tensor under another name.
    One(String),
    /// A fused (3E, ...) q/k/v tensor split in three, in this order.
    Qkv([String; 3]),
    /// The shared embedding, rows 0 and 1 swapped.
    Embedding(String),
}

/// The seqlab → HF name table of a model with these sizes (see the module docs).
fn name_table(m: &MtModel) -> Vec<(String, Target)> {
    let mut t = vec![(
        "embed.weight".to_string(),
        Target::Embedding("model.shared.weight".into()),
    )];
    let attn = |t: &mut Vec<(String, Target)>, sl: &str, hf: &str| {
        for p in ["weight", "bias"] {
            t.push((
                format!("{sl}.in_proj_{p}"),
                Target::Qkv(["q", "k", "v"].map(|x| format!("{hf}.{x}_proj.{p}"))),
            ));
            t.push((format!("{sl}.out_proj.{p}"), Target::One(format!("{hf}.out_proj.{p}"))));
        }
    };
    let one = |t: &mut Vec<(String, Target)>, sl: &str, hf: &str| {
        for p in ["weight", "bias"] {
            t.push((format!("{sl}.{p}"), Target::One(format!("{hf}.{p}"))));
        }
    };
    for (side, n) in [("encoder", m.num_encoder_layers), ("decoder", m.num_decoder_layers)] {
        for i in 0..n {
            let (sl, hf) = (
                format!("transformer.{side}.layers.{i}"),
                format!("model.{side}.layers.{i}"),
            );
            attn(&mut t, &format!("{sl}.self_attn"), &format!("{hf}.self_attn"));
            one(&mut t, &format!("{sl}.linear1"), &format!("{hf}.fc1"));
            one(&mut t, &format!("{sl}.linear2"), &format!("{hf}.fc2"));
            one(&mut t, &format!("{sl}.norm1"), &format!("{hf}.self_attn_layer_norm"));
            if side == "encoder" {
                one(&mut t, &format!("{sl}.norm2"), &format!("{hf}.final_layer_norm"));
            } else {
                attn(&mut t, &format!("{sl}.multihead_attn"), &format!("{hf}.encoder_attn"));
                one(&mut t, &format!("{sl}.norm2"), &format!("{hf}.encoder_attn_layer_norm"));
                one(&mut t, &format!("{sl}.norm3"), &format!("{hf}.final_layer_norm"));
            }
        }
        one(
            &mut t,
            &format!("transformer.{side}.norm"),
            &format!("model.{side}.layer_norm"),
        );
    }
    t
}

fn swap_rows(e: &Tensor) -> Result<Tensor> {
    let n = c(e.dim(0))?;
    let idx: Vec<u32> = (0..n as u32).map(swap_pad_bos).collect();
    c(e.index_select(&c(Tensor::new(idx.as_slice(), e.device()))?, 0))
}

/// Why `m` cannot be exported, or `Ok` (see the module docs for what is exportable).
pub fn check_exportable(m: &MtModel) -> Result<()> {
    let mut why = Vec::new();
    if m.kind != MtModelKind::Transformer {
        why.push("model.kind must be \"transformer\" (the RNN has no HF counterpart)");
    }
    if !m.norm_first {
        why.push("model.norm_first must be true (HF's post-norm Marian lacks the final LayerNorms of seqlab's post-norm nn.Transformer)");
    }
    if m.positions != PositionTable::Fairseq {
        why.push("model.positions must be \"fairseq\" (M2M100's sinusoidal table)");
    }
    if !m.share_embeddings {
        why.push("model.share_embeddings must be true (M2M100 ties source, target and output embeddings)");
    }
    if m.d_model % 2 != 0 || m.d_model < 4 {
        why.push("model.d_model must be even and >= 4 (fairseq's table)");
    }
    if !matches!(m.activation.as_str(), "relu" | "gelu") {
        why.push("model.activation must be relu or gelu");
    }
    if !why.is_empty() {
        bail!(
            "this model cannot be exported to Hugging Face M2M100: {}",
            why.join("; ")
        );
    }
    Ok(())
}

/// HF `config.json` of an M2M100 with seqlab's sizes; `max_positions` is the length of
/// seqlab's position table.
fn hf_config(m: &MtModel, vocab_size: usize, max_positions: usize) -> Value {
    json!({
        "architectures": ["M2M100ForConditionalGeneration"],
        "model_type": "m2m_100",
        "vocab_size": vocab_size,
        "d_model": m.d_model,
        "encoder_layers": m.num_encoder_layers,
        "decoder_layers": m.num_decoder_layers,
        "encoder_attention_heads": m.nhead,
        "decoder_attention_heads": m.nhead,
        "encoder_ffn_dim": m.dim_feedforward,
        "decoder_ffn_dim": m.dim_feedforward,
        "activation_function": m.activation,
        "dropout": m.dropout,
        "attention_dropout": m.dropout,
        "activation_dropout": m.dropout,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "max_position_embeddings": max_positions,
        "scale_embedding": true,
        "init_std": 0.02,
        "use_cache": true,
        "is_encoder_decoder": true,
        "tie_word_embeddings": true,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "decoder_start_token_id": 0,
        "torch_dtype": "float32",
        "seqlab": {"exported_by": "seqlab export --format hf", "pad_bos_swapped": true},
    })
}

/// The HF `tokenizer.json` of seqlab's tokenizer: `<pad>`/`<bos>` ids swapped, and a
/// post-processor appending `<eos>` to each text (seqlab's sources end in `<eos>`).
fn hf_tokenizer_json(tok: &Tokenizer) -> Result<Value> {
    let mut j: Value = serde_json::from_str(&tok.to_json().map_err(|e| anyhow::anyhow!("{}", e.0))?)?;
    remap_token_ids(&mut j, swap_pad_bos)?;
    j["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<eos>", "type_id": 0}}],
        "pair": [
            {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<eos>", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "<eos>", "type_id": 0}}
        ],
        "special_tokens": {"<eos>": {"id": "<eos>", "ids": [2], "tokens": ["<eos>"]}},
    });
    Ok(j)
}

/// Applies `f` to every id of a tokenizer.json's vocabulary and added tokens.
fn remap_token_ids(j: &mut Value, f: impl Fn(u32) -> u32) -> Result<()> {
    let vocab = j
        .pointer_mut("/model/vocab")
        .and_then(Value::as_object_mut)
        .context("tokenizer.json: no model.vocab")?;
    for v in vocab.values_mut() {
        let id = v.as_u64().context("tokenizer.json: a non-integer id")? as u32;
        *v = json!(f(id));
    }
    if let Some(added) = j.get_mut("added_tokens").and_then(Value::as_array_mut) {
        for a in added {
            let id = a["id"].as_u64().context("tokenizer.json: added token without id")? as u32;
            a["id"] = json!(f(id));
        }
        added_sort(j);
    }
    Ok(())
}

fn added_sort(j: &mut Value) {
    if let Some(added) = j.get_mut("added_tokens").and_then(Value::as_array_mut) {
        added.sort_by_key(|a| a["id"].as_u64());
    }
}

/// What [`export`] wrote.
#[derive(Debug)]
pub struct Exported {
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// The files written, in `dir`.
    pub files: Vec<&'static str>,
}

/// The HF tensors of a loaded translation model (names and values as written by
/// [`export`]). Rejects what [`check_exportable`] rejects.
pub fn hf_tensors(task: &MtTask) -> Result<HashMap<String, Tensor>> {
    let m = &task.cfg.task.model;
    check_exportable(m)?;
    let sd: HashMap<String, Tensor> = task.vs.state_dict().into_iter().collect();
    let mut out = HashMap::new();
    let table = name_table(m);
    if table.len() != sd.len() {
        bail!(
            "internal: {} seqlab tensors, {} in the export table",
            sd.len(),
            table.len()
        );
    }
    for (sl, target) in table {
        let t = sd
            .get(&sl)
            .with_context(|| format!("internal: no seqlab tensor {sl}"))?;
        // CPU by design: export writes host tensors, whatever device the model is on.
        let t = c(t.to_device(&Device::Cpu))?;
        match target {
            Target::One(n) => {
                out.insert(n, t);
            }
            Target::Embedding(n) => {
                out.insert(n, swap_rows(&t)?);
            }
            Target::Qkv(names) => {
                let e = c(t.dim(0))? / 3;
                for (k, n) in names.into_iter().enumerate() {
                    out.insert(n, c(t.narrow(0, k * e, e).and_then(|x| x.contiguous()))?);
                }
            }
        }
    }
    Ok(out)
}

/// Writes `config.json`, `generation_config.json`, `model.safetensors`, `tokenizer.json`,
/// `tokenizer_config.json` and `special_tokens_map.json` into `dir` (created if needed;
/// each file written atomically), so that `M2M100ForConditionalGeneration.from_pretrained`
/// and `AutoTokenizer.from_pretrained` load it, and CTranslate2's Transformers converter
/// converts it. The generation settings are the run's `[decode]` (beam size, length
/// penalty) and seqlab's length limit.
pub fn export(task: &MtTask, dir: &Path) -> Result<Exported> {
    let m = &task.cfg.task.model;
    let tensors = hf_tensors(task)?;
    let vocab = task.tgt_tok.vocab_size();
    let max_positions = task.net.max_source_len();
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        seqlab_nn::io::write_atomic(&dir.join(name), bytes).map_err(|e| anyhow::anyhow!("{e}"))
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(
        "config.json",
        serde_json::to_string_pretty(&hf_config(m, vocab, max_positions))?.as_bytes(),
    )?;
    let d = &task.cfg.task.decode;
    let generation = json!({
        "decoder_start_token_id": 0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "num_beams": d.beam_size.max(1),
        "length_penalty": d.length_penalty,
        "max_length": max_positions,
        "early_stopping": true,
    });
    write(
        "generation_config.json",
        serde_json::to_string_pretty(&generation)?.as_bytes(),
    )?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    seqlab_nn::io::save_tensors_atomic(&tensors, &dir.join("model.safetensors"), Some(metadata))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write(
        "tokenizer.json",
        serde_json::to_string(&hf_tokenizer_json(&task.tgt_tok)?)?.as_bytes(),
    )?;
    let specials = json!({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"});
    let mut tc = specials.clone();
    tc["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    tc["model_max_length"] = json!(max_positions);
    tc["clean_up_tokenization_spaces"] = json!(false);
    write("tokenizer_config.json", serde_json::to_string_pretty(&tc)?.as_bytes())?;
    write(
        "special_tokens_map.json",
        serde_json::to_string_pretty(&specials)?.as_bytes(),
    )?;
    Ok(Exported {
        tensors: tensors.len(),
        files: vec![
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ],
    })
}

/// True when `dir` holds an HF model (`config.json`) rather than a seqlab checkpoint.
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file() && !dir.join("trainer.json").exists()
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// seqlab's `[model]` from an M2M100 `config.json`, checking that seqlab computes what HF
/// does with it (pre-norm M2M100, scaled embeddings, fairseq's ids `<bos>`=0, `<pad>`=1,
/// `<eos>`=2, equal encoder and decoder widths and heads). Errors name the file and key.
pub fn read_model_config(dir: &Path) -> Result<MtModel> {
    let path = dir.join("config.json");
    let j = read_json(&path)?;
    let at = |k: &str| format!("{}: key `{k}`", path.display());
    let num = |k: &str| -> Result<usize> {
        j.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .with_context(|| format!("{} must be a non-negative integer", at(k)))
    };
    let want = |k: &str, v: Value| -> Result<()> {
        match j.get(k) {
            Some(got) if got == &v || (got.as_f64().is_some() && got.as_f64() == v.as_f64()) => Ok(()),
            got => bail!("{} is {got:?}; seqlab imports only {v}", at(k)),
        }
    };
    want("model_type", json!("m2m_100"))?;
    want("scale_embedding", json!(true))?;
    want("pad_token_id", json!(1))?;
    want("bos_token_id", json!(0))?;
    want("eos_token_id", json!(2))?;
    want("decoder_start_token_id", json!(0))?;
    if j.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false) {
        bail!(
            "{} is false; seqlab ties the output layer to the embeddings",
            at("tie_word_embeddings")
        );
    }
    for (a, b) in [
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ] {
        if num(a)? != num(b)? {
            bail!("{}: {a} and {b} differ; seqlab's layers share them", path.display());
        }
    }
    let activation = j
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("relu")
        .to_string();
    if !matches!(activation.as_str(), "relu" | "gelu") {
        bail!(
            "{} is {activation:?}; seqlab supports relu and gelu",
            at("activation_function")
        );
    }
    let model = MtModel {
        kind: MtModelKind::Transformer,
        d_model: num("d_model")?,
        nhead: num("encoder_attention_heads")?,
        num_encoder_layers: num("encoder_layers")?,
        num_decoder_layers: num("decoder_layers")?,
        dim_feedforward: num("encoder_ffn_dim")?,
        dropout: j.get("dropout").and_then(Value::as_f64).unwrap_or(0.1),
        norm_first: true,
        activation,
        share_embeddings: true,
        positions: PositionTable::Fairseq,
        ..MtModel::default()
    };
    check_exportable(&model).with_context(|| path.display().to_string())?;
    Ok(model)
}

/// seqlab's tokenizer from an exported `tokenizer.json` (ids of `<pad>`/`<bos>` swapped
/// back, the `<eos>` post-processor dropped).
fn read_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut j = read_json(&path)?;
    remap_token_ids(&mut j, swap_pad_bos).with_context(|| path.display().to_string())?;
    j["post_processor"] = Value::Null;
    Tokenizer::from_json(&serde_json::to_string(&j)?).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.0))
}

/// Loads an M2M100 folder that [`export`] wrote (or one following the same conventions:
/// see [`read_model_config`]; a byte-level BPE `tokenizer.json` with `<bos>`, `<pad>`,
/// `<eos>`, `<unk>` at 0..4) as a translation task, for `seqlab translate`. The weights must
/// be exactly the model's (no missing or unexpected tensors). Decoding settings come from
/// `generation_config.json` when present (`num_beams`, `length_penalty`).
pub fn load(dir: &Path, device: &Device) -> Result<MtTask> {
    let model = read_model_config(dir)?;
    let tok = read_tokenizer(dir)?;
    let file = dir.join("model.safetensors");
    if !file.exists() && dir.join("pytorch_model.bin").exists() {
        bail!(
            "{}: only pytorch_model.bin (a pickle); seqlab reads safetensors only. Convert with `model.save_pretrained(dir, safe_serialization=True)`",
            dir.display()
        );
    }
    let hf = candle_core::safetensors::load(&file, device).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let weights = seqlab_tensors(&model, hf).with_context(|| file.display().to_string())?;
    let mut decode = crate::task::MtDecode::default();
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        let g = read_json(&gen)?;
        if let Some(b) = g.get("num_beams").and_then(Value::as_u64) {
            decode.beam_size = b as usize;
        }
        if let Some(lp) = g.get("length_penalty").and_then(Value::as_f64) {
            decode.length_penalty = lp;
        }
    }
    let cfg = crate::task::MtConfig {
        run: seqlab_train::RunSettings {
            task: "mt".into(),
            run_dir: None,
            optim: <MtTask as seqlab_train::Task>::default_optim(),
            schedule: None,
            train: Default::default(),
        },
        task: crate::task::MtTaskConfig {
            data: Default::default(),
            model,
            loss: seqlab_train::LossConfig { label_smoothing: 0.1 },
            decode,
        },
    };
    let vs = seqlab_nn::VarStore::new(0, device);
    MtTask::from_parts(&cfg, tok, &weights, &vs)
}

/// HF tensors → seqlab names (the inverse of [`hf_tensors`]); every tensor must be used and
/// every seqlab tensor found.
fn seqlab_tensors(m: &MtModel, mut hf: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    // Tied copies HF may also store.
    for k in [
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
        "lm_head.weight",
    ] {
        if let (Some(t), Some(s)) = (hf.get(k), hf.get("model.shared.weight")) {
            if t.dims() != s.dims() || seqlab_nn::testing::max_abs_diff(t, s) != 0.0 {
                bail!("{k} differs from model.shared.weight: seqlab ties them");
            }
        }
        hf.remove(k);
    }
    for (sl, target) in name_table(m) {
        let t = match target {
            Target::One(n) => hf.remove(&n).ok_or(n),
            Target::Embedding(n) => match hf.remove(&n) {
                Some(t) => Ok(swap_rows(&t)?),
                None => Err(n),
            },
            Target::Qkv(names) => {
                let parts: Vec<Option<Tensor>> = names.iter().map(|n| hf.remove(n)).collect();
                match parts.into_iter().collect::<Option<Vec<_>>>() {
                    Some(p) => Ok(c(Tensor::cat(&p, 0))?),
                    None => Err(names.join(" / ")),
                }
            }
        };
        match t {
            Ok(t) => {
                out.insert(sl, c(t.to_dtype(candle_core::DType::F32))?);
            }
            Err(n) => missing.push(n),
        }
    }
    let mut unexpected: Vec<String> = hf.into_keys().collect();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        bail!(
            "does not fit config.json: missing [{}], unexpected [{}]",
            missing.join(", "),
            unexpected.join(", ")
        );
    }
    Ok(out)
}
