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
use seqlab_nn::{Dropout, Embedding, EmbeddingConfig, Init, Linear, LinearConfig, VarStore};

fn c<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn cell_kind(kind: ModelKind) -> Result<CellKind> {
    Ok(match kind {
        ModelKind::Rnn => CellKind::Rnn(Nonlinearity::Tanh),
        ModelKind::RnnRelu => CellKind::Rnn(Nonlinearity::Relu),
        ModelKind::Lstm => CellKind::Lstm,
        ModelKind::Gru => CellKind::Gru,
        ModelKind::Transformer => bail!("not a recurrent model"),
    })
}

/// Recurrent state carried between calls (generation).
#[derive(Clone)]
pub enum RnnState {
    H(Tensor),
    Hc(Tensor, Tensor),
}

impl RnnState {
    /// The same state cut from the autograd graph. Generation carries the state from step
    /// to step; attached, it would keep every earlier step's activations alive.
    pub fn detach(&self) -> Self {
        match self {
            Self::H(h) => Self::H(h.detach()),
            Self::Hc(h, c) => Self::Hc(h.detach(), c.detach()),
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
}

impl LmNet {
    pub fn new(m: &ModelConfig, vocab: usize, vs: &VarStore) -> Result<Self> {
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
        if m.tie_weights && m.embed_dim != m.hidden_size {
            bail!(
                "model.tie_weights needs model.embed_dim ({}) == model.hidden_size ({})",
                m.embed_dim,
                m.hidden_size
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
        let rc = RecurrentConfig {
            num_layers: m.num_layers,
            dropout: m.dropout,
            ..RecurrentConfig::new(m.embed_dim, m.hidden_size)
        };
        let rnn = RecurrentNet::new(m.kind, &rc, &vs.pp("rnn"))?;
        let out = if m.tie_weights {
            None
        } else {
            Some(c(Linear::new(
                &LinearConfig::new(m.hidden_size, vocab),
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

    /// ids (B, T) u32 → logits (B, T, V), and the recurrent state after the last step.
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
}

impl ClsNet {
    pub fn new(m: &ModelConfig, vocab: usize, classes: usize, pad_id: u32, vs: &VarStore) -> Result<Self> {
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
                let keep = c((1.0 - pad.to_dtype(DType::F32)?)?.unsqueeze(2))?;
                let summed = c(h.broadcast_mul(&keep)?.sum(1))?;
                let n = c(keep.sum(1)?.clamp(1.0, f64::MAX))?;
                let pooled = c(summed.broadcast_div(&n))?;
                c(fc.forward(&pooled))
            }
        }
    }
}

/// Forecaster: windows (B, input_len) → next `horizon` values (B, horizon): recurrent layer
/// → last step → Linear, the classifier's shape with a regression head.
pub fn forecaster(m: &ModelConfig, horizon: usize, vs: &VarStore) -> Result<RecurrentClassifier> {
    let cc = RecurrentClassifierConfig {
        num_layers: m.num_layers,
        bidirectional: m.bidirectional,
        dropout: m.dropout,
        ..RecurrentClassifierConfig::new(cell_kind(m.kind)?, 1, m.hidden_size, horizon)
    };
    c(RecurrentClassifier::new(&cc, vs))
}

/// Softmax over the last dimension of logits (B, C) → probabilities as rows.
pub fn probs_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    c(ops::softmax(logits, D::Minus1).and_then(|p| p.to_vec2::<f32>()))
}
