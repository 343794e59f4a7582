//! The recurrent baseline: a bidirectional LSTM encoder and an LSTM decoder with global
//! attention (Luong, Pham & Manning 2015, "general" score), the strongest pre-Transformer
//! design the paper compares against in spirit.
//!
//! The decoder LSTM reads the whole target prefix in one fused call (no input feeding), and
//! attention is applied to all its outputs at once: score(h_t, s) = h_tᵀ W_a s, context c_t =
//! Σ softmax(score) s, output h̃_t = tanh(W_c [c_t; h_t]) → logits. The decoder starts from
//! the encoder's final states, forward and backward halves concatenated per layer.
//!
//! Parameter names follow OpenNMT-py's layout: `encoder.weight_ih_l0(_reverse)`,
//! `decoder.weight_hh_l1`, `attn.linear_in.weight`, `attn.linear_out.weight`,
//! `generator.weight`.

use crate::c;
use crate::decode::{repeat_rows, DecodeSession, Seq2SeqModel};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use seqlab_nn::recurrent::{Lstm, RecurrentConfig};
use seqlab_nn::{ops, Dropout, Embedding, EmbeddingConfig, Init, Linear, LinearConfig, VarStore};
use serde::{Deserialize, Serialize};

/// Sizes of [`RnnSeq2Seq`]. Defaults: embeddings 256, hidden 512 (the encoder's two
/// directions have 256 each), 2 layers, dropout 0.2, source and target embeddings separate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RnnSeq2SeqConfig {
    /// Source vocabulary size.
    pub src_vocab_size: usize,
    /// Target vocabulary size.
    pub tgt_vocab_size: usize,
    /// Embedding size. Default 256.
    pub embed_dim: usize,
    /// Decoder state size; the encoder's two directions get half each. Default 512.
    pub hidden_size: usize,
    /// Layers of encoder and decoder. Default 2.
    pub num_layers: usize,
    /// Dropout probability. Default 0.2.
    pub dropout: f64,
    /// Padding id, masked out of attention.
    pub pad_id: u32,
    /// One embedding table for both sides (needs one vocabulary).
    pub share_embeddings: bool,
}

impl RnnSeq2SeqConfig {
    /// Defaults for the given vocabulary sizes: embed 256, hidden 512, 2 layers.
    pub fn new(src_vocab_size: usize, tgt_vocab_size: usize) -> Self {
        Self {
            src_vocab_size,
            tgt_vocab_size,
            embed_dim: 256,
            hidden_size: 512,
            num_layers: 2,
            dropout: 0.2,
            pad_id: 0,
            share_embeddings: false,
        }
    }
}

/// The encoded source: memory (B, S, H), its padding mask as an additive (B, 1, S) bias, and
/// the decoder's initial state (L, B, H) ×2.
#[derive(Clone, Debug)]
pub struct RnnEncoded {
    /// Encoder outputs (B, S, H).
    pub memory: Tensor,
    /// Additive attention bias (B, 1, S): 0 on real tokens, a large negative on padding.
    pub mask_bias: Tensor,
    /// Decoder initial hidden state (L, B, H).
    pub h0: Tensor,
    /// Decoder initial cell state (L, B, H).
    pub c0: Tensor,
}

/// Bidirectional-LSTM encoder and attention-LSTM decoder for translation (Luong et al. 2015,
/// global attention).
pub struct RnnSeq2Seq {
    /// The sizes this model was built with.
    pub cfg: RnnSeq2SeqConfig,
    src_embed: Embedding,
    tgt_embed: Embedding,
    encoder: Lstm,
    decoder: Lstm,
    linear_in: Linear,
    linear_out: Linear,
    generator: Linear,
    dropout: Dropout,
}

impl RnnSeq2Seq {
    /// Creates the parameters under `vs`. Rejects zero sizes, odd `hidden_size`, `pad_id` outside
    /// either vocabulary and shared embeddings with different vocabulary sizes.
    pub fn new(cfg: &RnnSeq2SeqConfig, vs: &VarStore) -> Result<Self> {
        let (e, h, l) = (cfg.embed_dim, cfg.hidden_size, cfg.num_layers);
        if e == 0 || h == 0 || l == 0 || h % 2 != 0 {
            bail!("RnnSeq2Seq: embed_dim, num_layers must be positive and hidden_size positive and even, got {cfg:?}");
        }
        if cfg.pad_id as usize >= cfg.src_vocab_size.min(cfg.tgt_vocab_size) {
            bail!("RnnSeq2Seq: pad_id {} is outside the vocabulary", cfg.pad_id);
        }
        if cfg.share_embeddings && cfg.src_vocab_size != cfg.tgt_vocab_size {
            bail!("RnnSeq2Seq: shared embeddings need one vocabulary");
        }
        let emb_init = Init::Uniform { lo: -0.1, hi: 0.1 };
        let emb = |n: usize, name: &str| {
            c(Embedding::with_init(
                &EmbeddingConfig {
                    num_embeddings: n,
                    embedding_dim: e,
                    padding_idx: Some(cfg.pad_id as usize),
                },
                emb_init,
                &vs.pp(name),
            ))
        };
        let src_embed = emb(
            cfg.src_vocab_size,
            if cfg.share_embeddings { "embed" } else { "src_embed" },
        )?;
        let tgt_embed = if cfg.share_embeddings {
            src_embed.clone()
        } else {
            emb(cfg.tgt_vocab_size, "tgt_embed")?
        };
        let rc = |input, hidden, bidirectional| RecurrentConfig {
            num_layers: l,
            batch_first: true,
            dropout: cfg.dropout,
            bidirectional,
            ..RecurrentConfig::new(input, hidden)
        };
        let no_bias = |i, o| LinearConfig {
            bias: false,
            ..LinearConfig::new(i, o)
        };
        Ok(Self {
            cfg: cfg.clone(),
            src_embed,
            tgt_embed,
            encoder: c(Lstm::new(&rc(e, h / 2, true), &vs.pp("encoder")))?,
            decoder: c(Lstm::new(&rc(e, h, false), &vs.pp("decoder")))?,
            linear_in: c(Linear::new(&no_bias(h, h), &vs.pp("attn").pp("linear_in")))?,
            linear_out: c(Linear::new(&no_bias(2 * h, h), &vs.pp("attn").pp("linear_out")))?,
            generator: c(Linear::new(
                &LinearConfig::new(h, cfg.tgt_vocab_size),
                &vs.pp("generator"),
            ))?,
            dropout: c(Dropout::new(cfg.dropout, vs.rng()))?,
        })
    }

    /// src ids (B, S), right-padded with `pad_id`, every row with at least one real token.
    pub fn encode(&self, src: &Tensor, train: bool) -> Result<RnnEncoded> {
        let src = c(src.to_dtype(DType::U32))?;
        let (b, s) = c(src.dims2())?;
        let rows = c(src.to_vec2::<u32>())?;
        let lengths: Vec<usize> = rows
            .iter()
            .map(|r| r.iter().rposition(|&t| t != self.cfg.pad_id).map_or(0, |p| p + 1))
            .collect();
        if lengths.contains(&0) {
            bail!("RnnSeq2Seq: an empty source sentence");
        }
        let x = c(self
            .src_embed
            .forward(&src)
            .and_then(|x| self.dropout.forward(&x, train)))?;
        let (memory, hn, cn) = c(self.encoder.forward(&x, None, Some(&lengths), train))?;
        // (2L, B, H/2) in order l0-forward, l0-backward, ... → (L, B, H).
        let (l, half) = (self.cfg.num_layers, self.cfg.hidden_size / 2);
        let join = |t: Tensor| -> Result<Tensor> {
            c(t.reshape((l, 2, b, half))
                .and_then(|t| t.transpose(1, 2))
                .and_then(|t| t.contiguous())
                .and_then(|t| t.reshape((l, b, 2 * half))))
        };
        let pad = c(src.eq(self.cfg.pad_id))?;
        let mask_bias = c(ops::bool_mask_to_additive(&pad).and_then(|m| m.reshape((b, 1, s))))?;
        Ok(RnnEncoded {
            memory,
            mask_bias,
            h0: join(hn)?,
            c0: join(cn)?,
        })
    }

    /// Teacher-forced decoding: tgt ids (B, T) (`<bos>` first) from state `(h, c)` →
    /// logits (B, T, V), attention (B, T, S) and the final state.
    pub fn decode(
        &self,
        tgt: &Tensor,
        enc: &RnnEncoded,
        state: (&Tensor, &Tensor),
        train: bool,
    ) -> Result<(Tensor, Tensor, (Tensor, Tensor))> {
        let tgt = c(tgt.to_dtype(DType::U32))?;
        let y = c(self
            .tgt_embed
            .forward(&tgt)
            .and_then(|x| self.dropout.forward(&x, train)))?;
        let (out, hn, cn) = c(self.decoder.forward(&y, Some(state), None, train))?;
        let q = c(self.linear_in.forward(&out))?;
        let scores = c(q
            .matmul(&c(enc.memory.transpose(1, 2).and_then(|m| m.contiguous()))?)
            .and_then(|s| s.broadcast_add(&enc.mask_bias)))?;
        let attn = c(ops::softmax(&scores, D::Minus1))?;
        let ctx = c(attn.matmul(&enc.memory))?;
        let h = c(Tensor::cat(&[&ctx, &out], D::Minus1)
            .and_then(|x| self.linear_out.forward(&x))
            .and_then(|x| x.tanh())
            .and_then(|x| self.dropout.forward(&x, train)))?;
        Ok((c(self.generator.forward(&h))?, attn, (hn, cn)))
    }

    /// src (B, S), tgt (B, T) → logits (B, T, V).
    pub fn forward(&self, src: &Tensor, tgt: &Tensor, train: bool) -> Result<Tensor> {
        let enc = self.encode(src, train)?;
        Ok(self.decode(tgt, &enc, (&enc.h0, &enc.c0), train)?.0)
    }

    /// Attention of a translation in evaluation mode: (B, 1, T, S), one "head".
    pub fn cross_attention(&self, src: &Tensor, tgt: &Tensor) -> Result<Vec<Tensor>> {
        let enc = self.encode(src, false)?;
        let attn = self.decode(tgt, &enc, (&enc.h0, &enc.c0), false)?.1;
        Ok(vec![c(attn.unsqueeze(1))?])
    }
}

/// The recurrent state is the whole history, so there is nothing to re-run: `use_cache` has
/// no effect for this model.
struct RnnSession<'a> {
    model: &'a RnnSeq2Seq,
    enc: RnnEncoded,
    h: Tensor,
    c: Tensor,
}

impl DecodeSession for RnnSession<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let t = c(Tensor::new(tokens, self.h.device()).and_then(|t| t.reshape((tokens.len(), 1))))?;
        let (logits, _, (h, cc)) = self.model.decode(&t, &self.enc, (&self.h, &self.c), false)?;
        // Detached, or every step's activations stay reachable from the state until the end.
        (self.h, self.c) = (h.detach(), cc.detach());
        c(logits.squeeze(1))
    }

    fn reorder(&mut self, idx: &[u32]) -> Result<()> {
        let i = c(Tensor::new(idx, self.h.device()))?;
        if idx.len() != c(self.h.dim(1))? {
            // Rows of finished sentences leave: the memory and its mask follow.
            self.enc.memory = c(self.enc.memory.index_select(&i, 0))?;
            self.enc.mask_bias = c(self.enc.mask_bias.index_select(&i, 0))?;
        }
        // The LSTM's final states can be strided views; index_select wants contiguous input.
        self.h = c(self.h.contiguous().and_then(|h| h.index_select(&i, 1)))?;
        self.c = c(self.c.contiguous().and_then(|x| x.index_select(&i, 1)))?;
        Ok(())
    }
}

impl Seq2SeqModel for RnnSeq2Seq {
    fn start<'a>(&'a self, src: &Tensor, expand: usize, _use_cache: bool) -> Result<Box<dyn DecodeSession + 'a>> {
        let enc = self.encode(src, false)?;
        let across = |t: &Tensor| -> Result<Tensor> {
            c(t.transpose(0, 1))
                .and_then(|t| repeat_rows(&t, expand))
                .and_then(|t| c(t.transpose(0, 1).and_then(|t| t.contiguous())))
        };
        // Decoding needs no gradient: detached, the encoder's activations are freed now.
        let (h, cc) = (across(&enc.h0.detach())?, across(&enc.c0.detach())?);
        let enc = RnnEncoded {
            memory: repeat_rows(&enc.memory.detach(), expand)?,
            mask_bias: repeat_rows(&enc.mask_bias, expand)?,
            h0: h.clone(),
            c0: cc.clone(),
        };
        Ok(Box::new(RnnSession {
            model: self,
            enc,
            h,
            c: cc,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use seqlab_nn::testing::{assert_all_params_get_grad, max_abs_diff};

    fn tiny(share: bool) -> (VarStore, RnnSeq2Seq) {
        let vs = VarStore::new(3, &Device::Cpu);
        let cfg = RnnSeq2SeqConfig {
            embed_dim: 8,
            hidden_size: 12,
            num_layers: 2,
            dropout: 0.1,
            share_embeddings: share,
            ..RnnSeq2SeqConfig::new(20, 20)
        };
        let m = RnnSeq2Seq::new(&cfg, &vs).unwrap();
        (vs, m)
    }

    fn ids(rows: &[&[u32]]) -> Tensor {
        let w = rows.iter().map(|r| r.len()).max().unwrap();
        let flat: Vec<u32> = rows
            .iter()
            .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0, w - r.len())))
            .collect();
        Tensor::from_vec(flat, (rows.len(), w), &Device::Cpu).unwrap()
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        for share in [false, true] {
            let (vs, m) = tiny(share);
            let logits = m
                .forward(&ids(&[&[5, 6, 7, 2], &[8, 2]]), &ids(&[&[1, 9, 10], &[1, 11]]), true)
                .unwrap();
            assert_eq!(logits.dims(), &[2, 3, 20]);
            assert_all_params_get_grad(&vs, &logits);
        }
    }

    /// Stepping one token at a time equals the teacher-forced decoder, and padding a source
    /// does not change its translation's logits.
    #[test]
    fn incremental_equals_full_and_padding_is_ignored() {
        let (_vs, m) = tiny(false);
        let src = ids(&[&[5, 6, 7, 2], &[8, 2]]);
        let tgt = ids(&[&[1, 9, 10, 4], &[1, 11, 12, 13]]);
        let full = m.forward(&src, &tgt, false).unwrap();
        let mut sess = m.start(&src, 1, true).unwrap();
        let rows = tgt.to_vec2::<u32>().unwrap();
        for t in 0..4 {
            let step = sess.step(&[rows[0][t], rows[1][t]]).unwrap();
            let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            assert!(max_abs_diff(&step, &want) < 1e-5, "step {t}");
        }
        // Beam search reorders the 2-layer state between steps.
        let strategy = crate::decode::DecodeStrategy::Beam {
            size: 3,
            length_penalty: 0.6,
        };
        let outs = crate::decode::decoder(&strategy, true)
            .unwrap()
            .decode(&m, &src, crate::decode::SpecialIds::default())
            .unwrap();
        assert_eq!(outs.len(), 2);
        let alone = m.forward(&ids(&[&[8, 2]]), &ids(&[&[1, 11, 12, 13]]), false).unwrap();
        let batched = full.narrow(0, 1, 1).unwrap();
        assert!(max_abs_diff(&alone, &batched) < 1e-5);
        let attn = m.cross_attention(&src, &tgt).unwrap();
        let a = attn[0].to_vec3::<f32>().ok();
        assert!(a.is_none(), "4-D attention expected");
        let a = attn[0].squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        // Row 1's source has 2 real tokens: no weight on its padding, rows sum to 1.
        for t in 0..4 {
            assert_eq!(a[1][t][2], 0.0);
            assert!((a[1][t].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
