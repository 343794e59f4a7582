//! Kinds `embedding`, `positional_encoding`, `cross_entropy`, `adamw`.

use super::{run_standard, Case, Computed};
use candle_core::{bail, Result};
use seqlab_nn::{
    clip_grad_norm_pairs, cross_entropy, sinusoidal_table, AdamW, AdamWConfig, Embedding, EmbeddingConfig, Init,
    Optimizer, Reduction, VarStore,
};

/// `nn.Embedding(num_embeddings, embedding_dim, padding_idx)(ids)` → `y`.
pub fn embedding(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let cfg = EmbeddingConfig {
        num_embeddings: case.cfg_req("num_embeddings")?,
        embedding_dim: case.cfg_req("embedding_dim")?,
        padding_idx: case.cfg("padding_idx")?,
    };
    let emb = Embedding::new(&cfg, &vs)?;
    run_standard(case, &vs, |inp| {
        Ok([("y".to_string(), emb.forward(&inp.get("ids")?)?)].into())
    })
}

/// The sinusoidal table (max_len, d_model) as `pe`.
pub fn positional_encoding(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let d: usize = case.cfg_req("d_model")?;
    let max_len: usize = case.cfg_req("max_len")?;
    run_standard(case, &vs, |_| {
        Ok([("pe".to_string(), sinusoidal_table(max_len, d, &super::device())?)].into())
    })
}

/// `F.cross_entropy(logits, target, ignore_index, label_smoothing, reduction)` → `loss`.
pub fn cross_entropy_case(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    // F.cross_entropy's own default when the case does not name one.
    let ignore_index: i64 = case.cfg_or("ignore_index", -100)?;
    let ls: f64 = case.cfg_or("label_smoothing", 0.0)?;
    let reduction: Reduction = case.cfg_or("reduction", "mean".to_string())?.parse()?;
    run_standard(case, &vs, |inp| {
        let loss = cross_entropy(
            &inp.get("logits")?,
            &inp.get("target")?,
            Some(ignore_index),
            ls,
            reduction,
        )?;
        Ok([("loss".to_string(), loss)].into())
    })
}

/// `config.steps` AdamW steps on params `w`, `b`, each after clipping the given gradients
/// `input.grad_w.i`, `input.grad_b.i` to `max_grad_norm`; outputs `w.i`, `b.i` after step i.
pub fn adamw(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let params = case.params();
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    for n in &names {
        vs.param(n, params[*n].shape(), Init::Zeros)?;
    }
    vs.load_state_dict(&params, true)?;
    let betas: Vec<f64> = case.cfg_or("betas", vec![0.9, 0.999])?;
    if betas.len() != 2 {
        bail!("case {}: betas must have two values", case.name);
    }
    let cfg = AdamWConfig {
        lr: case.cfg_or("lr", 1e-3)?,
        betas: (betas[0], betas[1]),
        eps: case.cfg_or("eps", 1e-8)?,
        weight_decay: case.cfg_or("weight_decay", 1e-2)?,
    };
    let max_norm: Option<f64> = case.cfg("max_grad_norm")?;
    let steps: usize = case.cfg_req("steps")?;
    let mut opt = AdamW::new(vs.trainable(), cfg)?;
    let mut computed = Computed::default();
    for i in 0..steps {
        let mut pairs = Vec::new();
        for (name, var) in vs.trainable() {
            pairs.push((var, case.tensor(&format!("input.grad_{name}.{i}"))?));
        }
        if let Some(m) = max_norm {
            clip_grad_norm_pairs(&mut pairs, m)?;
        }
        opt.step_with(&pairs)?;
        for (name, var) in vs.trainable() {
            computed.outputs.insert(format!("{name}.{i}"), var.as_tensor().copy()?);
        }
    }
    Ok(computed)
}
