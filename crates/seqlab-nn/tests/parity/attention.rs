//! Kinds `sdpa` (`F.scaled_dot_product_attention`) and `mha` (`nn.MultiheadAttention`).

use super::{run_standard, Case, Computed, Outputs};
use candle_core::{bail, Result};
use seqlab_nn::{
    scaled_dot_product_attention, AttnMask, KeyPaddingMask, MhaInput, MultiheadAttention, MultiheadAttentionConfig,
    ReturnWeights, SdpaOptions, VarStore,
};

/// `F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)` → `y`.
pub fn sdpa(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let is_causal: bool = case.cfg_or("is_causal", false)?;
    let scale: Option<f64> = case.cfg("scale")?;
    let conv: String = case.cfg_or("mask_convention", "1 = may attend".to_string())?;
    if conv != "1 = may attend" {
        bail!("case {}: unsupported sdpa mask_convention {conv:?}", case.name);
    }
    run_standard(case, &vs, |inp| {
        let attn_mask = match (inp.opt("attn_mask"), is_causal) {
            (Some(_), true) => bail!(
                "case {}: give either attn_mask or is_causal, as PyTorch requires",
                case.name
            ),
            (Some(m), false) => Some(AttnMask::from_torch_sdpa(&m)),
            (None, true) => Some(AttnMask::Causal),
            (None, false) => None,
        };
        let opts = SdpaOptions {
            attn_mask,
            scale,
            ..Default::default()
        };
        let y = scaled_dot_product_attention(&inp.get("q")?, &inp.get("k")?, &inp.get("v")?, &opts)?;
        Ok([("y".to_string(), y)].into())
    })
}

/// `nn.MultiheadAttention(embed_dim, num_heads, bias=bias, batch_first=True)(query, key,
/// value, key_padding_mask, attn_mask=attn_mask, average_attn_weights=...)` → `y`, `weights`.
pub fn mha(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    if !case.cfg_or("batch_first", true)? {
        bail!("case {}: only batch_first=True is supported", case.name);
    }
    let cfg = MultiheadAttentionConfig {
        embed_dim: case.cfg_req("embed_dim")?,
        num_heads: case.cfg_req("num_heads")?,
        dropout: 0.0,
        bias: case.cfg_or("bias", true)?,
    };
    let weights = if case.cfg_or("average_attn_weights", true)? {
        ReturnWeights::Averaged
    } else {
        ReturnWeights::PerHead
    };
    let mha = MultiheadAttention::new(&cfg, &vs)?;
    run_standard(case, &vs, |inp| {
        let query = inp.get("query")?;
        let key = inp.opt("key").unwrap_or_else(|| query.clone());
        let value = inp.opt("value").unwrap_or_else(|| key.clone());
        let mut input = MhaInput::new(&query, &key, &value).weights(weights);
        if let Some(m) = inp.opt("key_padding_mask") {
            input = input.key_padding_mask(KeyPaddingMask::from_torch(&m));
        }
        if let Some(m) = inp.opt("attn_mask") {
            input = input.attn_mask(AttnMask::from_torch_mha(&m));
        }
        let out = mha.forward(&input)?;
        let mut m: Outputs = [("y".to_string(), out.output)].into();
        if let Some(w) = out.weights {
            m.insert("weights".to_string(), w);
        }
        Ok(m)
    })
}
