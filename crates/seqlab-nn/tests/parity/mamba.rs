//! Kind `mamba`: the `state-spaces/mamba` mixer (`mamba_simple.py` slow path,
//! `selective_scan_ref`) on `x` (B, L, d_model) → `y`.
//!
//! Optional tensors (made by `scripts/make_mamba_fixtures.py`): `input.key_padding_mask`
//! (B, L) u8, 1 = padded, runs with that [`Padding`] (the reference ran each real span alone,
//! zeros elsewhere); `output.y_step`, `output.conv_state`, `output.ssm_state` are checked
//! against [`Mamba::step`] run token by token from zero states.

use super::{run_standard, Case, Computed};
use candle_core::{bail, Result, Tensor};
use seqlab_nn::mamba::DtRank;
use seqlab_nn::{Mamba, MambaConfig, Padding, VarStore};

pub fn mamba(case: &Case) -> Result<Computed> {
    let d_model: usize = case.cfg_req("d_model")?;
    let d_inner: usize = case.cfg_req("d_inner")?;
    if d_model == 0 || !d_inner.is_multiple_of(d_model) {
        bail!(
            "case {}: d_inner {d_inner} is not a multiple of d_model {d_model}",
            case.name
        );
    }
    let cfg = MambaConfig {
        d_state: case.cfg_req("d_state")?,
        d_conv: case.cfg_req("d_conv")?,
        expand: d_inner / d_model,
        dt_rank: DtRank::Fixed(case.cfg_req("dt_rank")?),
        bias: case.cfg_req("bias")?,
        conv_bias: case.cfg_req("conv_bias")?,
        ..MambaConfig::new(d_model)
    };
    let vs = VarStore::new(0, &super::device());
    let m = Mamba::new(&cfg, &vs)?;
    let mut computed = run_standard(case, &vs, |inp| {
        let padding = inp
            .opt("key_padding_mask")
            .map(|k| Padding::from_key_padding_mask(&k))
            .transpose()?;
        Ok([("y".to_string(), m.forward(&inp.get("x")?, padding.as_ref())?)].into())
    })?;
    if case.tensors.contains_key("output.y_step") {
        if case.tensors.contains_key("input.key_padding_mask") {
            bail!(
                "case {}: step outputs with a key_padding_mask are not defined",
                case.name
            );
        }
        let x = case.tensor("input.x")?;
        let (b, l, _) = x.dims3()?;
        let mut st = m.new_state(b, &super::device())?;
        let ys = (0..l)
            .map(|t| m.step(&x.narrow(1, t, 1)?.squeeze(1)?, &mut st))
            .collect::<Result<Vec<_>>>()?;
        computed.outputs.insert("y_step".into(), Tensor::stack(&ys, 1)?);
        computed.outputs.insert("conv_state".into(), st.conv);
        computed.outputs.insert("ssm_state".into(), st.ssm);
    }
    Ok(computed)
}
