//! The networks the tasks train, assembled from seqlab-nn layers.

use crate::config::{ModelConfig, ModelKind};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use seqlab_nn::ops;
use seqlab_nn::positional::SinusoidalPositionalEncoding;
use seqlab_nn::recurrent::{
    CellKind, Gru, Lstm, Nonlinearity, RecurrentClassifier, RecurrentClassifierConfig, RecurrentConfig, Rnn,
};
use seqlab_nn::transformer::{Activation, TransformerEncoder, TransformerLayerConfig};
use seqlab_nn::{
    Dropout, Embedding, EmbeddingConfig, Init, Linear, LinearConfig, MambaCache, MambaLmHead, MambaLmHeadConfig,
    MambaModel, Padding, VarStore,
};

fn c<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// The recurrent cell for an RNN/LSTM/GRU kind; rejects Transformer and Mamba.
pub fn cell_kind(kind: ModelKind) -> Result<CellKind> {
    Ok(match kind {
        ModelKind::Rnn => CellKind::Rnn(Nonlinearity::Tanh),
        ModelKind::RnnRelu => CellKind::Rnn(Nonlinearity::Relu),
        ModelKind::Lstm => CellKind::Lstm,
        ModelKind::Gru => CellKind::Gru,
        ModelKind::Transformer | ModelKind::Mamba => bail!("not an RNN/LSTM/GRU model"),
    })
}

/// Recurrent state carried between calls (generation).
#[derive(Clone)]
pub enum RnnState {
    H(Tensor),
    Hc(Tensor, Tensor),
    /// Mamba's per-layer conv and SSM states.
    Mamba(MambaCache),
}

impl RnnState {
    /// The same state cut from the autograd graph. Generation carries the state from step
    /// to step; attached, it would keep every earlier step's activations alive.
    pub fn detach(&self) -> Self {
        match self {
            Self::H(h) => Self::H(h.detach()),
            Self::Hc(h, c) => Self::Hc(h.detach(), c.detach()),
            Self::Mamba(m) => Self::Mamba(MambaCache {
                layers: m
                    .layers
                    .iter()
                    .map(|l| seqlab_nn::MambaState {
                        conv: l.conv.detach(),
                        ssm: l.ssm.detach(),
                    })
                    .collect(),
            }),
        }
    }
}

/// One of the three recurrent layers behind one interface (batch-first).
pub enum RecurrentNet {
    Rnn(Rnn),
    Lstm(Lstm),
    Gru(Gru),
}

impl RecurrentNet {
    /// Batch-first RNN/LSTM/GRU of `kind` under `vs`. Rejects non-recurrent kinds and what the
    /// layer constructor rejects.
    pub fn new(kind: ModelKind, cfg: &RecurrentConfig, vs: &VarStore) -> Result<Self> {
        let mut cfg = cfg.clone();
        cfg.batch_first = true;
        Ok(match cell_kind(kind)? {
            CellKind::Rnn(n) => {
                cfg.nonlinearity = n;
                RecurrentNet::Rnn(c(Rnn::new(&cfg, vs))?)
            }
            CellKind::Lstm => RecurrentNet::Lstm(c(Lstm::new(&cfg, vs))?),
            CellKind::Gru => RecurrentNet::Gru(c(Gru::new(&cfg, vs))?),
        })
    }

    /// x (B, T, I) → out (B, T, D·H) and the final state.
    pub fn forward(&self, x: &Tensor, state: Option<&RnnState>, train: bool) -> Result<(Tensor, RnnState)> {
        Ok(match self {
            RecurrentNet::Rnn(m) => {
                let h0 = match state {
                    Some(RnnState::H(h)) => Some(h),
                    _ => None,
                };
                let (o, h) = c(m.forward(x, h0, None, train))?;
                (o, RnnState::H(h))
            }
            RecurrentNet::Gru(m) => {
                let h0 = match state {
                    Some(RnnState::H(h)) => Some(h),
                    _ => None,
                };
                let (o, h) = c(m.forward(x, h0, None, train))?;
                (o, RnnState::H(h))
            }
            RecurrentNet::Lstm(m) => {
                let s0 = match state {
                    Some(RnnState::Hc(h, cc)) => Some((h, cc)),
                    _ => None,
                };
                let (o, h, cc) = c(m.forward(x, s0, None, train))?;
                (o, RnnState::Hc(h, cc))
            }
        })
    }
}

fn layer_config(m: &ModelConfig) -> Result<TransformerLayerConfig> {
    let mut lc = TransformerLayerConfig::new(m.d_model, m.nhead);
    lc.dim_feedforward = m.dim_feedforward;
    lc.dropout = m.dropout;
    lc.activation = c(Activation::parse(&m.activation))?;
    lc.norm_first = m.norm_first;
    Ok(lc)
}

/// Embedding × √d_model + sinusoidal positions → dropout: the paper's input layer.
pub struct TransformerInput {
    emb: Embedding,
    pe: SinusoidalPositionalEncoding,
    drop: Dropout,
    scale: f64,
}

impl TransformerInput {
    fn new(m: &ModelConfig, vocab: usize, padding_idx: Option<usize>, vs: &VarStore) -> Result<Self> {
        let emb = c(Embedding::with_init(
            &EmbeddingConfig {
                num_embeddings: vocab,
                embedding_dim: m.d_model,
                padding_idx,
            },
            Init::Normal {
                mean: 0.0,
                std: (m.d_model as f64).powf(-0.5),
            },
            &vs.pp("embed"),
        ))?;
        let pe = c(SinusoidalPositionalEncoding::new(
            m.max_positions,
            m.d_model,
            vs.device(),
        ))?;
        Ok(Self {
            emb,
            pe,
            drop: c(Dropout::new(m.dropout, vs.rng()))?,
            scale: (m.d_model as f64).sqrt(),
        })
    }

    fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let x = c((self.emb.forward(ids)? * self.scale).and_then(|x| self.pe.forward(&x, 0)))?;
        c(self.drop.forward(&x, train))
    }
}

/// A language model: ids (B, T) → next-token logits (B, T, V).
pub enum LmNet {
    Recurrent {
        emb: Embedding,
        rnn: RecurrentNet,
        drop: Dropout,
        out: Option<Linear>,
    },
    Transformer {
        input: TransformerInput,
        enc: TransformerEncoder,
        max_positions: usize,
    },
    /// `backbone.*` and tied `lm_head`, as `mamba_ssm`'s `MambaLMHeadModel`.
    Mamba(MambaLmHead),
}

impl LmNet {
    /// Language model of kind `m.kind` over `vocab` tokens, parameters under `vs`. Rejects
    /// invalid model settings.
    pub fn new(m: &ModelConfig, vocab: usize, vs: &VarStore) -> Result<Self> {
        if m.kind == ModelKind::Mamba {
            return Ok(LmNet::Mamba(c(MambaLmHead::new(
                &MambaLmHeadConfig::new(m.mamba(vocab)),
                vs,
            ))?));
        }
        if m.kind == ModelKind::Transformer {
            let input = TransformerInput::new(m, vocab, None, vs)?;
            let enc = c(TransformerEncoder::new(
                &layer_config(m)?,
                m.num_layers,
                m.norm_first,
                &vs.pp("encoder"),
            ))?;
            return Ok(LmNet::Transformer {
                input,
                enc,
                max_positions: m.max_positions,
            });
        }
        let rc = RecurrentConfig {
            num_layers: m.num_layers,
            dropout: m.dropout,
            proj_size: m.proj_size,
            ..RecurrentConfig::new(m.embed_dim, m.hidden_size)
        };
        if m.tie_weights && m.embed_dim != rc.h_out() {
            let out = if m.proj_size > 0 { "proj_size" } else { "hidden_size" };
            bail!(
                "model.tie_weights needs model.embed_dim ({}) == model.{out} ({})",
                m.embed_dim,
                rc.h_out()
            );
        }
        let emb = c(Embedding::new(
            &EmbeddingConfig {
                num_embeddings: vocab,
                embedding_dim: m.embed_dim,
                padding_idx: None,
            },
            &vs.pp("embed"),
        ))?;
        let rnn = RecurrentNet::new(m.kind, &rc, &vs.pp("rnn"))?;
        let out = if m.tie_weights {
            None
        } else {
            Some(c(Linear::new(
                &LinearConfig::new(rc.h_out(), vocab),
                &vs.pp("decoder"),
            ))?)
        };
        Ok(LmNet::Recurrent {
            emb,
            rnn,
            drop: c(Dropout::new(m.dropout, vs.rng()))?,
            out,
        })
    }

    /// Longest input the model accepts (Transformer position table), if any.
    pub fn max_len(&self) -> Option<usize> {
        match self {
            LmNet::Transformer { max_positions, .. } => Some(*max_positions),
            _ => None,
        }
    }

    /// ids (B, T) u32 → logits (B, T, V), and the recurrent state after the last step. Mamba
    /// runs the whole sequence when `state` is `None` (a prompt) and steps through `ids` with
    /// its step function otherwise (generation).
    pub fn forward(&self, ids: &Tensor, state: Option<&RnnState>, train: bool) -> Result<(Tensor, Option<RnnState>)> {
        match self {
            LmNet::Recurrent { emb, rnn, drop, out } => {
                let x = c(emb.forward(ids).and_then(|x| drop.forward(&x, train)))?;
                let (h, st) = rnn.forward(&x, state, train)?;
                let h = c(drop.forward(&h, train))?;
                let logits = match out {
                    Some(l) => c(l.forward(&h))?,
                    None => c(ops::linear(&h, &emb.weight, None))?,
                };
                Ok((logits, Some(st)))
            }
            LmNet::Transformer {
                input,
                enc,
                max_positions,
            } => {
                let t = c(ids.dim(1))?;
                if t > *max_positions {
                    bail!("input of {t} tokens exceeds model.max_positions ({max_positions})");
                }
                let x = input.forward(ids, train)?;
                let h = c(enc.forward(&x, None, None, true, train))?;
                Ok((c(ops::linear(&h, &input.emb.weight, None))?, None))
            }
            LmNet::Mamba(lm) => match state {
                // Training never continues a state: skip gathering it.
                None if train => Ok((c(lm.forward(ids, None))?, None)),
                None => {
                    let (logits, cache) = c(lm.forward_with_cache(ids, None))?;
                    Ok((logits, Some(RnnState::Mamba(cache))))
                }
                Some(RnnState::Mamba(cache)) => {
                    let mut cache = cache.clone();
                    let steps = (0..c(ids.dim(1))?)
                        .map(|t| lm.step(&ids.narrow(1, t, 1)?.squeeze(1)?, &mut cache))
                        .collect::<candle_core::Result<Vec<_>>>();
                    Ok((c(Tensor::stack(&c(steps)?, 1))?, Some(RnnState::Mamba(cache))))
                }
                Some(_) => bail!("Mamba language model given another model's state"),
            },
        }
    }
}

/// A sequence classifier: ids (B, T) with lengths → logits (B, C).
pub enum ClsNet {
    /// Embedding → recurrent layer → last valid step → Linear.
    Recurrent { emb: Embedding, clf: RecurrentClassifier },
    /// Transformer encoder with padding mask → mean over real tokens → Linear.
    Transformer {
        input: TransformerInput,
        enc: TransformerEncoder,
        fc: Linear,
    },
    /// Mamba blocks over the padded batch (padding touches no real token) → mean over real
    /// tokens → Linear.
    Mamba { backbone: MambaModel, fc: Linear },
}

impl ClsNet {
    /// Classifier of kind `m.kind` into `classes` labels, `pad_id` masked. Rejects invalid
    /// model settings.
    pub fn new(m: &ModelConfig, vocab: usize, classes: usize, pad_id: u32, vs: &VarStore) -> Result<Self> {
        if m.kind == ModelKind::Mamba {
            let backbone = c(MambaModel::new(&m.mamba(vocab), &vs.pp("backbone")))?;
            let fc = c(Linear::new(&LinearConfig::new(m.d_model, classes), &vs.pp("fc")))?;
            return Ok(ClsNet::Mamba { backbone, fc });
        }
        if m.kind == ModelKind::Transformer {
            let input = TransformerInput::new(m, vocab, Some(pad_id as usize), vs)?;
            let enc = c(TransformerEncoder::new(
                &layer_config(m)?,
                m.num_layers,
                m.norm_first,
                &vs.pp("encoder"),
            ))?;
            let fc = c(Linear::new(&LinearConfig::new(m.d_model, classes), &vs.pp("fc")))?;
            return Ok(ClsNet::Transformer { input, enc, fc });
        }
        let emb = c(Embedding::new(
            &EmbeddingConfig {
                num_embeddings: vocab,
                embedding_dim: m.embed_dim,
                padding_idx: Some(pad_id as usize),
            },
            &vs.pp("embed"),
        ))?;
        let cc = RecurrentClassifierConfig {
            num_layers: m.num_layers,
            bidirectional: m.bidirectional,
            dropout: m.dropout,
            proj_size: m.proj_size,
            ..RecurrentClassifierConfig::new(cell_kind(m.kind)?, m.embed_dim, m.hidden_size, classes)
        };
        Ok(ClsNet::Recurrent {
            emb,
            clf: c(RecurrentClassifier::new(&cc, vs))?,
        })
    }

    /// ids (B, T) u32, `lengths` per row, `pad` (B, T) u8 with 1 on padding → logits (B, C).
    pub fn forward(&self, ids: &Tensor, lengths: &[usize], pad: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            ClsNet::Recurrent { emb, clf } => {
                let x = c(emb.forward(ids))?;
                c(clf.forward(&x, Some(lengths), train))
            }
            ClsNet::Transformer { input, enc, fc } => {
                let x = input.forward(ids, train)?;
                let h = c(enc.forward(&x, None, Some(pad), false, train))?;
                c(fc.forward(&mean_over_real(&h, pad)?))
            }
            ClsNet::Mamba { backbone, fc } => {
                // An empty text still gets one (pad) position, so that every row has a state.
                let lengths: Vec<usize> = lengths.iter().map(|&n| n.max(1)).collect();
                let padding = c(Padding::right(&lengths, c(ids.dim(1))?))?;
                let h = c(backbone.forward(ids, Some(&padding)))?;
                c(fc.forward(&mean_over_real(&h, pad)?))
            }
        }
    }
}

/// Mean of h (B, T, D) over the positions where `pad` (B, T) is 0 → (B, D).
fn mean_over_real(h: &Tensor, pad: &Tensor) -> Result<Tensor> {
    let keep = c((1.0 - pad.to_dtype(DType::F32)?)?.unsqueeze(2))?;
    let summed = c(h.broadcast_mul(&keep)?.sum(1))?;
    let n = c(keep.sum(1)?.clamp(1.0, f64::MAX))?;
    c(summed.broadcast_div(&n))
}

/// Forecaster: windows (B, input_len) → next `horizon` values (B, horizon): recurrent layer
/// → last step → Linear, the classifier's shape with a regression head.
pub fn forecaster(m: &ModelConfig, horizon: usize, vs: &VarStore) -> Result<RecurrentClassifier> {
    let cc = RecurrentClassifierConfig {
        num_layers: m.num_layers,
        bidirectional: m.bidirectional,
        dropout: m.dropout,
        proj_size: m.proj_size,
        ..RecurrentClassifierConfig::new(cell_kind(m.kind)?, 1, m.hidden_size, horizon)
    };
    c(RecurrentClassifier::new(&cc, vs))
}

/// Softmax over the last dimension of logits (B, C) → probabilities as rows.
pub fn probs_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    c(ops::softmax(logits, D::Minus1).and_then(|p| p.to_vec2::<f32>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use seqlab_nn::testing::max_abs_diff as diff;

    fn mamba_cfg() -> ModelConfig {
        ModelConfig {
            kind: ModelKind::Mamba,
            d_model: 16,
            num_layers: 2,
            d_state: 4,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn mamba_lm_continues_a_prompt_with_its_step_function() {
        let vs = VarStore::new(0, &Device::Cpu);
        let net = LmNet::new(&mamba_cfg(), 11, &vs).unwrap();
        assert!(vs.get("backbone.layers.1.mixer.A_log").is_some() && vs.get("lm_head.weight").is_none());
        let ids = Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2]], &Device::Cpu).unwrap();
        let (full, _) = net.forward(&ids, None, false).unwrap();
        let (_, st) = net.forward(&ids.narrow(1, 0, 4).unwrap(), None, false).unwrap();
        let (rest, _) = net.forward(&ids.narrow(1, 4, 3).unwrap(), st.as_ref(), false).unwrap();
        assert!(diff(&rest, &full.narrow(1, 4, 3).unwrap()) < 1e-5);
        let other = RnnState::H(Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
        assert!(net.forward(&ids, Some(&other), false).is_err());
    }

    #[test]
    fn mamba_classifier_ignores_padding() {
        let vs = VarStore::new(0, &Device::Cpu);
        let net = ClsNet::new(&mamba_cfg(), 11, 3, 0, &vs).unwrap();
        let ids = Tensor::new(&[[3u32, 1, 4, 1], [5, 9, 0, 0]], &Device::Cpu).unwrap();
        let pad = Tensor::new(&[[0u8, 0, 0, 0], [0, 0, 1, 1]], &Device::Cpu).unwrap();
        let both = net.forward(&ids, &[4, 2], &pad, false).unwrap();
        let alone = net
            .forward(
                &Tensor::new(&[[5u32, 9]], &Device::Cpu).unwrap(),
                &[2],
                &Tensor::zeros((1, 2), DType::U8, &Device::Cpu).unwrap(),
                false,
            )
            .unwrap();
        assert!(diff(&both.narrow(0, 1, 1).unwrap(), &alone) < 1e-5);
        seqlab_nn::testing::assert_all_params_get_grad(&vs, &both);
    }
}
