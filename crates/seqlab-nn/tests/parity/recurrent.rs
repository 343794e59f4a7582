//! Kinds `rnn`, `lstm`, `gru` (optionally packed through `input.lengths`) and `seed_model`.

use super::{run_standard, Case, Computed, Inputs, Outputs};
use candle_core::{bail, DType, Result};
use seqlab_nn::{
    CellKind, Gru, Lstm, Nonlinearity, RecurrentClassifier, RecurrentClassifierConfig, RecurrentConfig, Rnn, VarStore,
};

/// `input.lengths` (int64), if the case has one: the batch then runs as
/// `pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False)` → `pad_packed_sequence`.
fn lengths(inp: &Inputs) -> Result<Option<Vec<usize>>> {
    match inp.opt("lengths") {
        None => Ok(None),
        Some(t) => Ok(Some(
            t.to_dtype(DType::I64)?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|v| v.max(0) as usize)
                .collect(),
        )),
    }
}

fn config(case: &Case) -> Result<RecurrentConfig> {
    let d = RecurrentConfig::new(case.cfg_req("input_size")?, case.cfg_req("hidden_size")?);
    let nl: String = case.cfg_or("nonlinearity", "tanh".to_string())?;
    Ok(RecurrentConfig {
        num_layers: case.cfg_or("num_layers", d.num_layers)?,
        bias: case.cfg_or("bias", d.bias)?,
        batch_first: case.cfg_or("batch_first", d.batch_first)?,
        dropout: case.cfg_or("dropout", d.dropout)?,
        bidirectional: case.cfg_or("bidirectional", d.bidirectional)?,
        proj_size: case.cfg_or("proj_size", d.proj_size)?,
        nonlinearity: match nl.as_str() {
            "tanh" => Nonlinearity::Tanh,
            "relu" => Nonlinearity::Relu,
            o => bail!("case {}: unknown nonlinearity `{o}`", case.name),
        },
        ..d
    })
}

/// `nn.RNN/LSTM/GRU(**config)(x[, h0 / (h0, c0)])` → `out`, `hn` (and `cn` for LSTM).
pub fn recurrent(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let cfg = config(case)?;
    match case.module.as_str() {
        "rnn" => {
            let rnn = Rnn::new(&cfg, &vs)?;
            run_standard(case, &vs, |inp| {
                let (out, hn) = rnn.forward(&inp.get("x")?, inp.opt("h0").as_ref(), lengths(inp)?.as_deref(), false)?;
                Ok([("out".to_string(), out), ("hn".to_string(), hn)].into())
            })
        }
        "gru" => {
            let gru = Gru::new(&cfg, &vs)?;
            run_standard(case, &vs, |inp| {
                let (out, hn) = gru.forward(&inp.get("x")?, inp.opt("h0").as_ref(), lengths(inp)?.as_deref(), false)?;
                Ok([("out".to_string(), out), ("hn".to_string(), hn)].into())
            })
        }
        "lstm" => {
            let lstm = Lstm::new(&cfg, &vs)?;
            run_standard(case, &vs, |inp| {
                let state0 = match (inp.opt("h0"), inp.opt("c0")) {
                    (Some(h), Some(c)) => Some((h, c)),
                    (None, None) => None,
                    _ => bail!("case {}: an LSTM case gives both h0 and c0 or neither", case.name),
                };
                let (out, hn, cn) = lstm.forward(
                    &inp.get("x")?,
                    state0.as_ref().map(|(h, c)| (h, c)),
                    lengths(inp)?.as_deref(),
                    false,
                )?;
                let m: Outputs = [("out".to_string(), out), ("hn".to_string(), hn), ("cn".to_string(), cn)].into();
                Ok(m)
            })
        }
        o => bail!("case {}: not a recurrent module `{o}`", case.name),
    }
}

/// `cell` layer (batch_first) → last step → `nn.Linear` → `y`.
pub fn seed_model(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let cell: String = case.cfg_req("cell")?;
    let cfg = RecurrentClassifierConfig {
        num_layers: case.cfg_or("num_layers", 1)?,
        bidirectional: case.cfg_or("bidirectional", false)?,
        ..RecurrentClassifierConfig::new(
            CellKind::parse(&cell)?,
            case.cfg_req("input_size")?,
            case.cfg_req("hidden_size")?,
            case.cfg_req("output_size")?,
        )
    };
    let model = RecurrentClassifier::new(&cfg, &vs)?;
    run_standard(case, &vs, |inp| {
        let y = model.forward(&inp.get("x")?, lengths(inp)?.as_deref(), false)?;
        Ok([("y".to_string(), y)].into())
    })
}
