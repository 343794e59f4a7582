//! Kinds `encoder_layer`, `decoder_layer`, `transformer` (`nn.Transformer*`, eval mode) and
//! `seq2seq_tied` (the paper's model with one shared embedding).

use super::{run_standard, Case, Computed};
use candle_core::{bail, Result, Tensor};
use seqlab_nn::{
    Activation, DecoderMasks, Seq2SeqConfig, Seq2SeqTransformer, Transformer, TransformerConfig,
    TransformerDecoderLayer, TransformerEncoderLayer, TransformerLayerConfig, TransformerMasks, VarStore,
};

fn layer_config(case: &Case) -> Result<TransformerLayerConfig> {
    if !case.cfg_or("batch_first", true)? {
        bail!("case {}: only batch_first=True is supported", case.name);
    }
    if !case.cfg_or("bias", true)? {
        bail!("case {}: bias=False is not supported", case.name);
    }
    Ok(TransformerLayerConfig {
        d_model: case.cfg_req("d_model")?,
        nhead: case.cfg_req("nhead")?,
        dim_feedforward: case.cfg_or("dim_feedforward", 2048)?,
        dropout: case.cfg_or("dropout", 0.0)?,
        activation: Activation::parse(&case.cfg_or("activation", "relu".to_string())?)?,
        layer_norm_eps: case.cfg_or("layer_norm_eps", 1e-5)?,
        norm_first: case.cfg_or("norm_first", false)?,
    })
}

/// `layers_key`: one config key giving both stack depths (`seq2seq_tied`'s `num_layers`).
fn transformer_config(case: &Case, layers_key: Option<&str>) -> Result<TransformerConfig> {
    let l = layer_config(case)?;
    let (ne, nd) = match layers_key {
        Some(k) => {
            let n: usize = case.cfg_req(k)?;
            (n, n)
        }
        None => (
            case.cfg_or("num_encoder_layers", 6)?,
            case.cfg_or("num_decoder_layers", 6)?,
        ),
    };
    Ok(TransformerConfig {
        d_model: l.d_model,
        nhead: l.nhead,
        num_encoder_layers: ne,
        num_decoder_layers: nd,
        dim_feedforward: l.dim_feedforward,
        dropout: l.dropout,
        activation: l.activation,
        layer_norm_eps: l.layer_norm_eps,
        norm_first: l.norm_first,
    })
}

/// `nn.TransformerEncoderLayer(**config).eval()(src, src_mask, src_key_padding_mask)` → `y`.
pub fn encoder_layer(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let layer = TransformerEncoderLayer::new(&layer_config(case)?, &vs)?;
    let is_causal: bool = case.cfg_or("is_causal", false)?;
    run_standard(case, &vs, |inp| {
        let (m, k) = (inp.opt("src_mask"), inp.opt("src_key_padding_mask"));
        let y = layer.forward(&inp.get("src")?, m.as_ref(), k.as_ref(), is_causal, false)?;
        Ok([("y".to_string(), y)].into())
    })
}

/// `nn.TransformerDecoderLayer(**config).eval()(tgt, memory, tgt_mask, memory_mask,
/// tgt_key_padding_mask, memory_key_padding_mask)` → `y`.
pub fn decoder_layer(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let layer = TransformerDecoderLayer::new(&layer_config(case)?, &vs)?;
    run_standard(case, &vs, |inp| {
        let (tm, mm) = (inp.opt("tgt_mask"), inp.opt("memory_mask"));
        let (tk, mk) = (inp.opt("tgt_key_padding_mask"), inp.opt("memory_key_padding_mask"));
        let masks = DecoderMasks {
            tgt_mask: tm.as_ref(),
            memory_mask: mm.as_ref(),
            tgt_key_padding_mask: tk.as_ref(),
            memory_key_padding_mask: mk.as_ref(),
            tgt_is_causal: false,
        };
        let y = layer.forward(&inp.get("tgt")?, &inp.get("memory")?, &masks, false)?;
        Ok([("y".to_string(), y)].into())
    })
}

/// `nn.Transformer(**config).eval()(src, tgt, src_mask, tgt_mask, memory_mask,
/// src_key_padding_mask, tgt_key_padding_mask, memory_key_padding_mask)` → `y`.
pub fn transformer(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let model = Transformer::new(&transformer_config(case, None)?, &vs)?;
    run_standard(case, &vs, |inp| {
        let names = [
            "src_mask",
            "tgt_mask",
            "memory_mask",
            "src_key_padding_mask",
            "tgt_key_padding_mask",
            "memory_key_padding_mask",
        ];
        let m: Vec<Option<Tensor>> = names.iter().map(|n| inp.opt(n)).collect();
        let masks = TransformerMasks {
            src_mask: m[0].as_ref(),
            tgt_mask: m[1].as_ref(),
            memory_mask: m[2].as_ref(),
            src_key_padding_mask: m[3].as_ref(),
            tgt_key_padding_mask: m[4].as_ref(),
            memory_key_padding_mask: m[5].as_ref(),
            ..Default::default()
        };
        let y = model.forward(&inp.get("src")?, &inp.get("tgt")?, &masks, false)?;
        Ok([("y".to_string(), y)].into())
    })
}

/// See the case's `note`: logits = transformer(embed(src)·√d + pe, embed(tgt)·√d + pe,
/// padding masks from `pad_id`, causal target mask) @ embed.weightᵀ.
pub fn seq2seq_tied(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let vocab: usize = case.cfg_req("vocab_size")?;
    let tcfg = transformer_config(case, Some("num_layers"))?;
    let cfg = Seq2SeqConfig {
        pad_id: case.cfg_or("pad_id", 0)?,
        ..Seq2SeqConfig::new(vocab, tcfg)
    };
    let model = Seq2SeqTransformer::new(&cfg, &vs)?;
    run_standard(case, &vs, |inp| {
        let logits = model.forward(&inp.get("src")?, &inp.get("tgt")?, false)?;
        Ok([("logits".to_string(), logits)].into())
    })
}
