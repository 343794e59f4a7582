//! The Transformer (Vaswani et al. 2017) with PyTorch's module structure and names:
//! position-wise feed-forward block, `nn.TransformerEncoderLayer`,
//! `nn.TransformerDecoderLayer`, the encoder/decoder stacks, `nn.Transformer`, and the paper's
//! whole sequence-to-sequence model [`Seq2SeqTransformer`].
//!
//! Decoder layers, the decoder stack and [`Seq2SeqTransformer`] also decode incrementally: each
//! layer caches its self-attention keys/values, and the cross-attention keys/values of the
//! memory are projected once. A step gives the same numbers as re-running the whole prefix.

use crate::attention::mask::Masks;
use crate::attention::{KvCache, MhaStepWeights, MultiheadAttention, MultiheadAttentionConfig, ReturnWeights};
use crate::kernels::linear::{linear_act, linear_act_dropout, TransposedLinear};
use crate::positional::{SinusoidalLayout, SinusoidalPositionalEncoding};
use crate::{ops, Dropout, Init, LayerNorm, LayerNormConfig, Linear, LinearConfig, VarStore};
use candle_core::{bail, DType, Result, Tensor};
use std::sync::Arc;

/// Activation of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU, as PyTorch's `"gelu"`.
    Gelu,
}

impl Activation {
    /// `"relu"` or `"gelu"`, PyTorch's names.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "relu" => Ok(Self::Relu),
            "gelu" => Ok(Self::Gelu),
            _ => bail!("unknown activation {s:?}; expected \"relu\" or \"gelu\""),
        }
    }

    /// The activation, element-wise (any shape).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => ops::gelu(x),
        }
    }
}

/// Configuration shared by encoder and decoder layers; defaults follow
/// `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` (with `batch_first=True`).
#[derive(Clone, Debug)]
pub struct TransformerLayerConfig {
    /// Model width E; must be > 0 and divisible by `nhead`.
    pub d_model: usize,
    /// Attention heads; must be > 0.
    pub nhead: usize,
    /// Default 2048.
    pub dim_feedforward: usize,
    /// Default 0.1 (attention probabilities, FFN hidden layer and each residual branch).
    pub dropout: f64,
    /// Default ReLU.
    pub activation: Activation,
    /// Default 1e-5.
    pub layer_norm_eps: f64,
    /// Pre-norm when `true`; default `false` (post-norm, as in the paper).
    pub norm_first: bool,
}

impl TransformerLayerConfig {
    /// `d_model` and `nhead` with PyTorch's defaults for the rest.
    pub fn new(d_model: usize, nhead: usize) -> Self {
        Self {
            d_model,
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: Activation::Relu,
            layer_norm_eps: 1e-5,
            norm_first: false,
        }
    }

    fn validate(&self, what: &str) -> Result<()> {
        crate::check::positive(
            what,
            &[
                ("d_model", self.d_model),
                ("nhead", self.nhead),
                ("dim_feedforward", self.dim_feedforward),
            ],
        )?;
        if !self.d_model.is_multiple_of(self.nhead) {
            bail!(
                "{what}: d_model {} must be divisible by nhead {}",
                self.d_model,
                self.nhead
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("{what}: dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }

    fn mha(&self, vs: &VarStore) -> Result<MultiheadAttention> {
        let cfg = MultiheadAttentionConfig {
            dropout: self.dropout,
            ..MultiheadAttentionConfig::new(self.d_model, self.nhead)
        };
        MultiheadAttention::new(&cfg, vs)
    }

    fn norm(&self, vs: &VarStore) -> Result<LayerNorm> {
        LayerNorm::new(
            &LayerNormConfig {
                eps: self.layer_norm_eps,
                ..LayerNormConfig::new(self.d_model)
            },
            vs,
        )
    }
}

/// The position-wise feed-forward block `linear2(dropout(act(linear1(x))))`; parameters
/// `linear1.*` (d_ff, d_model) and `linear2.*` (d_model, d_ff) in the layer's namespace.
#[derive(Clone, Debug)]
pub struct FeedForward {
    /// d_model → dim_feedforward.
    pub linear1: Linear,
    /// dim_feedforward → d_model.
    pub linear2: Linear,
    /// Between the two linear layers.
    pub activation: Activation,
    /// Dropout (training only).
    pub dropout: Dropout,
    /// The model's RNG (the one `dropout` draws from), for the fused ReLU + dropout pass.
    rng: crate::SharedRng,
}

impl FeedForward {
    /// `linear1.*`, `linear2.*` under `vs`.
    pub fn new(cfg: &TransformerLayerConfig, vs: &VarStore) -> Result<Self> {
        Ok(Self {
            linear1: Linear::new(&LinearConfig::new(cfg.d_model, cfg.dim_feedforward), &vs.pp("linear1"))?,
            linear2: Linear::new(&LinearConfig::new(cfg.dim_feedforward, cfg.d_model), &vs.pp("linear2"))?,
            activation: cfg.activation,
            dropout: Dropout::new(cfg.dropout, vs.rng())?,
            rng: vs.rng(),
        })
    }

    /// (..., d_model) → (..., d_model).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_then_dropout(x, None, train)
    }

    /// `outer(forward(x))` with the outer dropout (the layer's residual-branch dropout) fused
    /// into the output bias pass; draws from the RNG in the same order as separate layers.
    pub fn forward_then_dropout(&self, x: &Tensor, outer: Option<&Dropout>, train: bool) -> Result<Tensor> {
        let (w1, b1) = (&self.linear1.weight, self.linear1.bias.as_ref());
        let h = match self.activation {
            Activation::Relu => {
                let drop = (train && self.dropout.p > 0.0).then_some((self.dropout.p, &self.rng));
                linear_act_dropout(x, w1, b1, true, drop)?
            }
            Activation::Gelu => self
                .dropout
                .forward(&ops::gelu(&linear_act(x, w1, b1, false)?)?, train)?,
        };
        let outer = outer.filter(|d| train && d.p > 0.0).map(|d| (d.p, &self.rng));
        linear_act_dropout(&h, &self.linear2.weight, self.linear2.bias.as_ref(), false, outer)
    }

    /// Copies of both linear layers for decoding steps, transposed once
    /// ([`TransposedLinear`]); a snapshot of the current parameters.
    pub fn step_weights(&self) -> Result<FeedForwardStepWeights> {
        let t = |l: &Linear| TransposedLinear::new(&l.weight, l.bias.as_ref());
        Ok(FeedForwardStepWeights {
            linear1: t(&self.linear1)?,
            linear2: t(&self.linear2)?,
        })
    }

    /// [`forward`](Self::forward) in evaluation mode with the step weights' copies: the same
    /// values.
    pub fn forward_step(&self, x: &Tensor, w: &FeedForwardStepWeights) -> Result<Tensor> {
        let h = match self.activation {
            Activation::Relu => w.linear1.forward(x, true)?,
            Activation::Gelu => ops::gelu(&w.linear1.forward(x, false)?)?,
        };
        w.linear2.forward(&h, false)
    }
}

/// A [`FeedForward`] block's linear layers for decoding steps ([`FeedForward::step_weights`]).
#[derive(Clone, Debug)]
pub struct FeedForwardStepWeights {
    linear1: TransposedLinear,
    linear2: TransposedLinear,
}

/// A decoder layer's projections for decoding steps, transposed once when decoding starts
/// ([`TransformerDecoderLayer::init_cache`]): self-attention (q, k, v and output),
/// cross-attention (q and output) and the feed-forward block.
#[derive(Clone, Debug)]
pub struct DecoderStepWeights {
    self_attn: MhaStepWeights,
    cross_attn: MhaStepWeights,
    ff: FeedForwardStepWeights,
}

/// `nn.TransformerEncoderLayer(batch_first=True)`: `self_attn.*`, `linear1/2.*`, `norm1/2.*`.
#[derive(Clone, Debug)]
pub struct TransformerEncoderLayer {
    /// Self-attention block.
    pub self_attn: MultiheadAttention,
    /// Feed-forward block.
    pub ff: FeedForward,
    /// LayerNorm around the first block.
    pub norm1: LayerNorm,
    /// LayerNorm around the second block.
    pub norm2: LayerNorm,
    /// Residual-branch dropout of the first block.
    pub dropout1: Dropout,
    /// Residual-branch dropout of the second block.
    pub dropout2: Dropout,
    /// Pre-norm (`true`) or post-norm.
    pub norm_first: bool,
}

impl TransformerEncoderLayer {
    /// `self_attn.*`, `linear1/2.*`, `norm1/2.*` under `vs`. Rejects `d_model`, `nhead` or
    /// `dim_feedforward` = 0, `d_model` not divisible by `nhead`, and `dropout` outside [0, 1).
    pub fn new(cfg: &TransformerLayerConfig, vs: &VarStore) -> Result<Self> {
        cfg.validate("TransformerEncoderLayer")?;
        Ok(Self {
            self_attn: cfg.mha(&vs.pp("self_attn"))?,
            ff: FeedForward::new(cfg, vs)?,
            norm1: cfg.norm(&vs.pp("norm1"))?,
            norm2: cfg.norm(&vs.pp("norm2"))?,
            dropout1: Dropout::new(cfg.dropout, vs.rng())?,
            dropout2: Dropout::new(cfg.dropout, vs.rng())?,
            norm_first: cfg.norm_first,
        })
    }

    fn sa_block(&self, x: &Tensor, masks: &Masks, train: bool) -> Result<Tensor> {
        self.self_attn
            .forward_then_dropout((x, x, x), masks, Some(&self.dropout1), train)
    }

    fn ff_block(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.ff.forward_then_dropout(x, Some(&self.dropout2), train)
    }

    /// src (B, L, E) → (B, L, E). `src_mask` (L, L) or (B·H, L, L): integer 1 = may NOT attend,
    /// or additive float; `src_key_padding_mask` (B, L): 1 = padding. `is_causal` adds the
    /// causal mask without a mask tensor.
    pub fn forward(
        &self,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        src_key_padding_mask: Option<&Tensor>,
        is_causal: bool,
        train: bool,
    ) -> Result<Tensor> {
        let masks = Masks::from_torch(src_mask, src_key_padding_mask, is_causal);
        if self.norm_first {
            let x = (src + self.sa_block(&self.norm1.forward(src)?, &masks, train)?)?;
            &x + self.ff_block(&self.norm2.forward(&x)?, train)?
        } else {
            let x = self.norm1.forward(&(src + self.sa_block(src, &masks, train)?)?)?;
            self.norm2.forward(&(&x + self.ff_block(&x, train)?)?)
        }
    }
}

/// The masks of a decoder (PyTorch's argument names and conventions: integer 1 = may NOT
/// attend / padding; float masks are additive).
#[derive(Clone, Copy, Debug, Default)]
pub struct DecoderMasks<'a> {
    /// (T, T) or (B·H, T, T).
    pub tgt_mask: Option<&'a Tensor>,
    /// (T, S) or (B·H, T, S).
    pub memory_mask: Option<&'a Tensor>,
    /// (B, T).
    pub tgt_key_padding_mask: Option<&'a Tensor>,
    /// (B, S).
    pub memory_key_padding_mask: Option<&'a Tensor>,
    /// Adds the causal mask on the target without a mask tensor.
    pub tgt_is_causal: bool,
}

/// Per-layer state of incremental decoding.
#[derive(Clone, Debug)]
pub struct DecoderLayerCache {
    /// Self-attention keys/values of the positions decoded so far.
    pub self_kv: KvCache,
    /// Cross-attention keys/values of the memory (B, S, H, D), computed once.
    pub cross_k: Tensor,
    /// Cross-attention values of the memory (B, S, H, D).
    pub cross_v: Tensor,
    /// The layer's projections transposed for the steps (a snapshot taken by `init_cache`),
    /// used outside training; `None` = the layer's own parameters.
    pub step_weights: Option<Arc<DecoderStepWeights>>,
}

/// `nn.TransformerDecoderLayer(batch_first=True)`: `self_attn.*`, `multihead_attn.*`,
/// `linear1/2.*`, `norm1/2/3.*`.
#[derive(Clone, Debug)]
pub struct TransformerDecoderLayer {
    /// Self-attention block.
    pub self_attn: MultiheadAttention,
    /// Cross-attention over the memory.
    pub multihead_attn: MultiheadAttention,
    /// Feed-forward block.
    pub ff: FeedForward,
    /// LayerNorm around the first block.
    pub norm1: LayerNorm,
    /// LayerNorm around the second block.
    pub norm2: LayerNorm,
    /// LayerNorm around the feed-forward block.
    pub norm3: LayerNorm,
    /// Residual-branch dropout of the first block.
    pub dropout1: Dropout,
    /// Residual-branch dropout of the second block.
    pub dropout2: Dropout,
    /// Residual-branch dropout of the feed-forward block.
    pub dropout3: Dropout,
    /// Pre-norm (`true`) or post-norm.
    pub norm_first: bool,
}

impl TransformerDecoderLayer {
    /// `self_attn.*`, `multihead_attn.*`, `linear1/2.*`, `norm1/2/3.*` under `vs`. Rejects what
    /// [`TransformerEncoderLayer::new`] rejects.
    pub fn new(cfg: &TransformerLayerConfig, vs: &VarStore) -> Result<Self> {
        cfg.validate("TransformerDecoderLayer")?;
        Ok(Self {
            self_attn: cfg.mha(&vs.pp("self_attn"))?,
            multihead_attn: cfg.mha(&vs.pp("multihead_attn"))?,
            ff: FeedForward::new(cfg, vs)?,
            norm1: cfg.norm(&vs.pp("norm1"))?,
            norm2: cfg.norm(&vs.pp("norm2"))?,
            norm3: cfg.norm(&vs.pp("norm3"))?,
            dropout1: Dropout::new(cfg.dropout, vs.rng())?,
            dropout2: Dropout::new(cfg.dropout, vs.rng())?,
            dropout3: Dropout::new(cfg.dropout, vs.rng())?,
            norm_first: cfg.norm_first,
        })
    }

    /// The three sub-blocks wrapped in residual + norm as PyTorch places them; `sa` and `ca`
    /// compute the (undropped) self- and cross-attention outputs of their input.
    fn run(
        &self,
        x: &Tensor,
        sa: impl FnOnce(&Tensor) -> Result<Tensor>,
        ca: impl FnOnce(&Tensor) -> Result<Tensor>,
        step_ff: Option<&FeedForwardStepWeights>,
        train: bool,
    ) -> Result<Tensor> {
        let ff = |y: &Tensor| match step_ff.filter(|_| !train) {
            Some(w) => self.ff.forward_step(y, w),
            None => self.ff.forward_then_dropout(y, Some(&self.dropout3), train),
        };
        if self.norm_first {
            let x = (x + self.dropout1.forward(&sa(&self.norm1.forward(x)?)?, train)?)?;
            let x = (&x + self.dropout2.forward(&ca(&self.norm2.forward(&x)?)?, train)?)?;
            &x + ff(&self.norm3.forward(&x)?)?
        } else {
            let x = self.norm1.forward(&(x + self.dropout1.forward(&sa(x)?, train)?)?)?;
            let x = self.norm2.forward(&(&x + self.dropout2.forward(&ca(&x)?, train)?)?)?;
            self.norm3.forward(&(&x + ff(&x)?)?)
        }
    }

    /// tgt (B, T, E), memory (B, S, E) → (B, T, E).
    pub fn forward(&self, tgt: &Tensor, memory: &Tensor, masks: &DecoderMasks, train: bool) -> Result<Tensor> {
        Ok(self.forward_weights(tgt, memory, masks, false, train)?.0)
    }

    /// [`forward`](Self::forward), plus with `cross_weights` the encoder-decoder attention
    /// probabilities per head, (B, H, T, S).
    pub fn forward_weights(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        masks: &DecoderMasks,
        cross_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let self_masks = Masks::from_torch(masks.tgt_mask, masks.tgt_key_padding_mask, masks.tgt_is_causal);
        let cross_masks = Masks::from_torch(masks.memory_mask, masks.memory_key_padding_mask, false);
        let cross_weights = if cross_weights {
            ReturnWeights::PerHead
        } else {
            ReturnWeights::No
        };
        let mut weights = None;
        let y = self.run(
            tgt,
            |y| {
                Ok(self
                    .self_attn
                    .forward_impl(y, y, y, &self_masks, ReturnWeights::No, train, None)?
                    .output)
            },
            |y| {
                let out =
                    self.multihead_attn
                        .forward_impl(y, memory, memory, &cross_masks, cross_weights, train, None)?;
                weights = out.weights;
                Ok(out.output)
            },
            None,
            train,
        )?;
        Ok((y, weights))
    }

    /// Projects the memory (B, S, E) for cross-attention once, starts an empty self cache and
    /// takes the transposed copies of the projections the steps multiply.
    pub fn init_cache(&self, memory: &Tensor) -> Result<DecoderLayerCache> {
        let (cross_k, cross_v) = self.multihead_attn.project_kv(memory, memory)?;
        let step_weights = DecoderStepWeights {
            self_attn: self.self_attn.step_weights(false)?,
            cross_attn: self.multihead_attn.step_weights(true)?,
            ff: self.ff.step_weights()?,
        };
        Ok(DecoderLayerCache {
            self_kv: KvCache::default(),
            cross_k,
            cross_v,
            step_weights: Some(Arc::new(step_weights)),
        })
    }

    /// One decoding step: x (B, 1, E) at position `cache.self_kv.len()` → (B, 1, E). Equals
    /// that row of [`forward`](Self::forward) with a causal `tgt_mask` (no target padding, no
    /// `memory_mask`).
    pub fn step(
        &self,
        x: &Tensor,
        cache: &mut DecoderLayerCache,
        memory_key_padding_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let DecoderLayerCache {
            self_kv,
            cross_k,
            cross_v,
            step_weights,
        } = cache;
        let cross_masks = Masks::from_torch(None, memory_key_padding_mask, false);
        let mha = &self.multihead_attn;
        let w = step_weights.as_deref().filter(|_| !train);
        self.run(
            x,
            |y| {
                self.self_attn
                    .self_attn_step_with(y, self_kv, w.map(|w| &w.self_attn), train)
            },
            |y| {
                let ca = w.map(|w| &w.cross_attn);
                mha.attend(
                    &mha.project_q_step(y, ca)?,
                    cross_k,
                    cross_v,
                    None,
                    &cross_masks,
                    ca,
                    train,
                )
            },
            w.map(|w| &w.ff),
            train,
        )
    }
}

/// A stack of encoder layers (`layers.{i}.*`) with an optional final LayerNorm (`norm.*`),
/// as `nn.TransformerEncoder`.
#[derive(Clone, Debug)]
pub struct TransformerEncoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerEncoderLayer>,
    /// Final LayerNorm, if any.
    pub norm: Option<LayerNorm>,
}

impl TransformerEncoder {
    /// `num_layers` layers `layers.{i}.*` and, with `final_norm`, a final LayerNorm `norm.*`.
    /// Rejects `num_layers = 0` and what [`TransformerEncoderLayer::new`] rejects.
    pub fn new(cfg: &TransformerLayerConfig, num_layers: usize, final_norm: bool, vs: &VarStore) -> Result<Self> {
        if num_layers == 0 {
            bail!("TransformerEncoder: num_layers must be > 0");
        }
        let layers = (0..num_layers)
            .map(|i| TransformerEncoderLayer::new(cfg, &vs.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = if final_norm {
            Some(cfg.norm(&vs.pp("norm"))?)
        } else {
            None
        };
        Ok(Self { layers, norm })
    }

    /// src (B, L, E) → (B, L, E); masks as in [`TransformerEncoderLayer::forward`].
    pub fn forward(
        &self,
        src: &Tensor,
        mask: Option<&Tensor>,
        src_key_padding_mask: Option<&Tensor>,
        is_causal: bool,
        train: bool,
    ) -> Result<Tensor> {
        let mut x = src.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask, src_key_padding_mask, is_causal, train)?;
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }
}

/// A stack of decoder layers (`layers.{i}.*`) with an optional final LayerNorm (`norm.*`),
/// as `nn.TransformerDecoder`.
#[derive(Clone, Debug)]
pub struct TransformerDecoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerDecoderLayer>,
    /// Final LayerNorm, if any.
    pub norm: Option<LayerNorm>,
}

impl TransformerDecoder {
    /// `num_layers` layers `layers.{i}.*` and, with `final_norm`, a final LayerNorm `norm.*`.
    /// Rejects `num_layers = 0` and what [`TransformerDecoderLayer::new`] rejects.
    pub fn new(cfg: &TransformerLayerConfig, num_layers: usize, final_norm: bool, vs: &VarStore) -> Result<Self> {
        if num_layers == 0 {
            bail!("TransformerDecoder: num_layers must be > 0");
        }
        let layers = (0..num_layers)
            .map(|i| TransformerDecoderLayer::new(cfg, &vs.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = if final_norm {
            Some(cfg.norm(&vs.pp("norm"))?)
        } else {
            None
        };
        Ok(Self { layers, norm })
    }

    fn final_norm(&self, x: Tensor) -> Result<Tensor> {
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    /// tgt (B, T, E), memory (B, S, E) → (B, T, E).
    pub fn forward(&self, tgt: &Tensor, memory: &Tensor, masks: &DecoderMasks, train: bool) -> Result<Tensor> {
        let mut x = tgt.clone();
        for layer in &self.layers {
            x = layer.forward(&x, memory, masks, train)?;
        }
        self.final_norm(x)
    }

    /// Evaluation-mode forward that also returns every layer's encoder-decoder attention
    /// probabilities, (B, H, T, S) each.
    pub fn forward_cross_attention(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        masks: &DecoderMasks,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = tgt.clone();
        let mut all = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (y, w) = layer.forward_weights(&x, memory, masks, true, false)?;
            all.push(w.expect("cross weights were asked for"));
            x = y;
        }
        Ok((self.final_norm(x)?, all))
    }

    /// One cache per layer for decoding against `memory` (B, S, E).
    pub fn init_cache(&self, memory: &Tensor) -> Result<Vec<DecoderLayerCache>> {
        self.layers.iter().map(|l| l.init_cache(memory)).collect()
    }

    /// One decoding step through every layer: x (B, 1, E) → (B, 1, E).
    pub fn step(
        &self,
        x: &Tensor,
        caches: &mut [DecoderLayerCache],
        memory_key_padding_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        if caches.len() != self.layers.len() {
            bail!(
                "TransformerDecoder::step: {} caches for {} layers",
                caches.len(),
                self.layers.len()
            );
        }
        let mut x = x.clone();
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            x = layer.step(&x, cache, memory_key_padding_mask, train)?;
        }
        self.final_norm(x)
    }
}

/// Configuration of [`Transformer`]; defaults follow `nn.Transformer` (the paper's base model).
#[derive(Clone, Debug)]
pub struct TransformerConfig {
    /// Default 512.
    pub d_model: usize,
    /// Default 8.
    pub nhead: usize,
    /// Default 6.
    pub num_encoder_layers: usize,
    /// Default 6.
    pub num_decoder_layers: usize,
    /// Default 2048.
    pub dim_feedforward: usize,
    /// Default 0.1.
    pub dropout: f64,
    /// Default ReLU.
    pub activation: Activation,
    /// Default 1e-5.
    pub layer_norm_eps: f64,
    /// Default `false`.
    pub norm_first: bool,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            d_model: 512,
            nhead: 8,
            num_encoder_layers: 6,
            num_decoder_layers: 6,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: Activation::Relu,
            layer_norm_eps: 1e-5,
            norm_first: false,
        }
    }
}

impl TransformerConfig {
    /// The configuration of each of its layers.
    pub fn layer(&self) -> TransformerLayerConfig {
        TransformerLayerConfig {
            d_model: self.d_model,
            nhead: self.nhead,
            dim_feedforward: self.dim_feedforward,
            dropout: self.dropout,
            activation: self.activation,
            layer_norm_eps: self.layer_norm_eps,
            norm_first: self.norm_first,
        }
    }
}

/// The masks of [`Transformer::forward`] (PyTorch's names and conventions).
#[derive(Clone, Copy, Debug, Default)]
pub struct TransformerMasks<'a> {
    /// (S, S) or (B·H, S, S); integer 1 = may NOT attend, or additive float.
    pub src_mask: Option<&'a Tensor>,
    /// (T, T) or (B·H, T, T); integer 1 = may NOT attend, or additive float.
    pub tgt_mask: Option<&'a Tensor>,
    /// (T, S) or (B·H, T, S); integer 1 = may NOT attend, or additive float.
    pub memory_mask: Option<&'a Tensor>,
    /// (B, S); integer 1 = padding.
    pub src_key_padding_mask: Option<&'a Tensor>,
    /// (B, T); integer 1 = padding.
    pub tgt_key_padding_mask: Option<&'a Tensor>,
    /// (B, S); integer 1 = padding.
    pub memory_key_padding_mask: Option<&'a Tensor>,
    /// Causal mask on the source without a tensor.
    pub src_is_causal: bool,
    /// Causal mask on the target without a tensor.
    pub tgt_is_causal: bool,
}

/// `nn.Transformer(batch_first=True)`: `encoder.*` and `decoder.*`, each ending with a final
/// LayerNorm (`encoder.norm`, `decoder.norm`). Like PyTorch's `_reset_parameters`, every
/// parameter with more than one dimension is re-initialised xavier-uniform.
#[derive(Clone, Debug)]
pub struct Transformer {
    /// The encoder stack.
    pub encoder: TransformerEncoder,
    /// The decoder stack.
    pub decoder: TransformerDecoder,
    /// Model width E; must be > 0 and divisible by `nhead`.
    pub d_model: usize,
}

/// Re-draws every parameter of rank ≥ 2 whose name starts with `prefix` xavier-uniform.
fn xavier_reinit(vs: &VarStore, prefix: &str) -> Result<()> {
    let rng = vs.rng();
    for (name, var) in vs.trainable() {
        if !name.starts_with(prefix) || var.rank() < 2 {
            continue;
        }
        let dims = var.dims().to_vec();
        let fan_in: usize = dims[1..].iter().product();
        let Init::Uniform { lo, hi } = Init::xavier_uniform(fan_in, dims[0]) else {
            unreachable!()
        };
        let fresh = rng.lock().unwrap().uniform(dims, lo, hi, var.device())?;
        var.set(&fresh)?;
    }
    Ok(())
}

impl Transformer {
    /// `encoder.*` and `decoder.*` under `vs`. Rejects what the layers reject (`d_model`,
    /// `nhead`, `dim_feedforward` = 0, `d_model` not divisible by `nhead`, `dropout` outside
    /// [0, 1)) and zero `num_encoder_layers` / `num_decoder_layers`.
    pub fn new(cfg: &TransformerConfig, vs: &VarStore) -> Result<Self> {
        let lc = cfg.layer();
        let encoder = TransformerEncoder::new(&lc, cfg.num_encoder_layers, true, &vs.pp("encoder"))?;
        let decoder = TransformerDecoder::new(&lc, cfg.num_decoder_layers, true, &vs.pp("decoder"))?;
        xavier_reinit(vs, &vs.path("encoder."))?;
        xavier_reinit(vs, &vs.path("decoder."))?;
        Ok(Self {
            encoder,
            decoder,
            d_model: cfg.d_model,
        })
    }

    /// src (B, S, E) → memory (B, S, E).
    pub fn encode(
        &self,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        src_key_padding_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.encoder.forward(src, src_mask, src_key_padding_mask, false, train)
    }

    /// src (B, S, E), tgt (B, T, E) → (B, T, E).
    pub fn forward(&self, src: &Tensor, tgt: &Tensor, masks: &TransformerMasks, train: bool) -> Result<Tensor> {
        let (bs, _, es) = src.dims3()?;
        let (bt, _, et) = tgt.dims3()?;
        if bs != bt || es != self.d_model || et != self.d_model {
            bail!(
                "Transformer: src {:?} and tgt {:?} must be (B, *, {})",
                src.dims(),
                tgt.dims(),
                self.d_model
            );
        }
        let memory = self.encoder.forward(
            src,
            masks.src_mask,
            masks.src_key_padding_mask,
            masks.src_is_causal,
            train,
        )?;
        let dm = DecoderMasks {
            tgt_mask: masks.tgt_mask,
            memory_mask: masks.memory_mask,
            tgt_key_padding_mask: masks.tgt_key_padding_mask,
            memory_key_padding_mask: masks.memory_key_padding_mask,
            tgt_is_causal: masks.tgt_is_causal,
        };
        self.decoder.forward(tgt, &memory, &dm, train)
    }

    /// PyTorch's `Transformer.generate_square_subsequent_mask(n)` in this crate's integer
    /// convention (1 = may NOT attend).
    pub fn generate_square_subsequent_mask(n: usize, device: &candle_core::Device) -> Result<Tensor> {
        crate::attention::causal_mask(n, device)
    }
}

/// How [`Seq2SeqTransformer`] shares its embedding matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingTying {
    /// One matrix `embed.weight` for source, target and output (the paper, §3.4); needs one
    /// shared vocabulary.
    Shared,
    /// `src_embed.weight`, `tgt_embed.weight` and an output layer `generator.weight`/`.bias`.
    Separate,
}

/// Configuration of [`Seq2SeqTransformer`].
#[derive(Clone, Debug)]
pub struct Seq2SeqConfig {
    /// Source vocabulary size; must be > 0.
    pub src_vocab_size: usize,
    /// Target vocabulary size; must be > 0.
    pub tgt_vocab_size: usize,
    /// The encoder-decoder.
    pub transformer: TransformerConfig,
    /// Padding token id (masked as a key everywhere). Default 0.
    pub pad_id: usize,
    /// Longest sequence the sinusoidal table covers. Default 1024.
    pub max_len: usize,
    /// Default [`EmbeddingTying::Shared`].
    pub tying: EmbeddingTying,
    /// The position table. Default [`SinusoidalLayout::Paper`].
    pub positions: SinusoidalLayout,
}

impl Seq2SeqConfig {
    /// One shared vocabulary of `vocab_size` and the defaults for the rest.
    pub fn new(vocab_size: usize, transformer: TransformerConfig) -> Self {
        Self {
            src_vocab_size: vocab_size,
            tgt_vocab_size: vocab_size,
            transformer,
            pad_id: 0,
            max_len: 1024,
            tying: EmbeddingTying::Shared,
            positions: SinusoidalLayout::Paper,
        }
    }
}

/// An encoded source batch: memory (B, S, E) and its padding mask (B, S), u8 1 = padding.
#[derive(Clone, Debug)]
pub struct EncodedSource {
    /// Encoder output (B, S, d_model).
    pub memory: Tensor,
    /// (B, S) u8, 1 = padding.
    pub src_key_padding_mask: Tensor,
}

/// State of incremental decoding: per-layer caches and the next position.
#[derive(Clone, Debug)]
pub struct DecodeState {
    /// One cache per decoder layer.
    pub caches: Vec<DecoderLayerCache>,
    /// Positions decoded so far.
    pub pos: usize,
    /// The output projection transposed for the steps (a snapshot taken by `begin_decode`).
    pub out_proj: Option<Arc<TransposedLinear>>,
}

/// The paper's model: token embeddings × √d_model + sinusoidal positions (+ dropout) →
/// [`Transformer`] → logits. With [`EmbeddingTying::Shared`] the output layer is
/// `embed.weight`ᵀ (no bias). Padding masks come from `pad_id` (source, target and memory keys);
/// the target gets the causal mask. Embeddings are initialised N(0, d_model^-1/2) so that the
/// √d_model scaling gives them unit variance.
#[derive(Clone, Debug)]
pub struct Seq2SeqTransformer {
    /// (src_vocab_size, d_model).
    pub src_embed: Tensor,
    /// (tgt_vocab_size, d_model) (the same tensor when shared).
    pub tgt_embed: Tensor,
    /// (tgt_vocab_size, d_model) output layer (the embedding when shared).
    pub out_weight: Tensor,
    /// Output bias (untied only).
    pub out_bias: Option<Tensor>,
    /// The sinusoidal table.
    pub pe: SinusoidalPositionalEncoding,
    /// The encoder-decoder.
    pub transformer: Transformer,
    /// Dropout (training only).
    pub dropout: Dropout,
    /// Model width E; must be > 0 and divisible by `nhead`.
    pub d_model: usize,
    /// Padding token id.
    pub pad_id: usize,
}

impl Seq2SeqTransformer {
    /// The embeddings, the Transformer and (untied) the generator under `vs`. Rejects
    /// `src_vocab_size`, `tgt_vocab_size` or `max_len` = 0, `pad_id` outside a vocabulary, tied
    /// embeddings over vocabularies of different sizes, and what [`Transformer::new`] rejects.
    pub fn new(cfg: &Seq2SeqConfig, vs: &VarStore) -> Result<Self> {
        let d = cfg.transformer.d_model;
        crate::check::positive(
            "Seq2SeqTransformer",
            &[
                ("src_vocab_size", cfg.src_vocab_size),
                ("tgt_vocab_size", cfg.tgt_vocab_size),
                ("max_len", cfg.max_len),
            ],
        )?;
        if cfg.pad_id >= cfg.src_vocab_size || cfg.pad_id >= cfg.tgt_vocab_size {
            bail!("Seq2SeqTransformer: pad_id {} is outside the vocabulary", cfg.pad_id);
        }
        let emb_init = Init::Normal {
            mean: 0.0,
            std: (d as f64).powf(-0.5),
        };
        let (src_embed, tgt_embed, out_weight, out_bias) = match cfg.tying {
            EmbeddingTying::Shared => {
                if cfg.src_vocab_size != cfg.tgt_vocab_size {
                    bail!(
                        "Seq2SeqTransformer: shared embeddings need one vocabulary, got {} and {}",
                        cfg.src_vocab_size,
                        cfg.tgt_vocab_size
                    );
                }
                let e = vs.pp("embed").param("weight", (cfg.src_vocab_size, d), emb_init)?;
                (e.clone(), e.clone(), e, None)
            }
            EmbeddingTying::Separate => {
                let s = vs.pp("src_embed").param("weight", (cfg.src_vocab_size, d), emb_init)?;
                let t = vs.pp("tgt_embed").param("weight", (cfg.tgt_vocab_size, d), emb_init)?;
                let g = Linear::new(&LinearConfig::new(d, cfg.tgt_vocab_size), &vs.pp("generator"))?;
                (s, t, g.weight, g.bias)
            }
        };
        let transformer = Transformer::new(&cfg.transformer, &vs.pp("transformer"))?;
        Ok(Self {
            src_embed,
            tgt_embed,
            out_weight,
            out_bias,
            pe: SinusoidalPositionalEncoding::with_layout(cfg.max_len, d, cfg.positions, vs.device())?,
            transformer,
            dropout: Dropout::new(cfg.transformer.dropout, vs.rng())?,
            d_model: d,
            pad_id: cfg.pad_id,
        })
    }

    fn ids_u32(ids: &Tensor, what: &str) -> Result<Tensor> {
        if ids.rank() != 2 || ids.dtype().is_float() {
            bail!(
                "Seq2SeqTransformer: {what} must be integer ids (B, L), got {:?} {:?}",
                ids.dtype(),
                ids.dims()
            );
        }
        ids.to_dtype(DType::U32)
    }

    fn embed(&self, table: &Tensor, ids: &Tensor, offset: usize, train: bool) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let vocab = table.dim(0)? as u32;
        let flat = ids.flatten_all()?;
        if flat.max(0)?.to_scalar::<u32>()? >= vocab {
            bail!("Seq2SeqTransformer: token id out of range for vocabulary of {vocab}");
        }
        let e = table.index_select(&flat, 0)?.reshape((b, l, self.d_model))?;
        let e = self.pe.forward(&(e * (self.d_model as f64).sqrt())?, offset)?;
        self.dropout.forward(&e, train)
    }

    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        ops::linear(h, &self.out_weight, self.out_bias.as_ref())
    }

    /// src ids (B, S) → memory and source padding mask.
    pub fn encode(&self, src: &Tensor, train: bool) -> Result<EncodedSource> {
        let src = Self::ids_u32(src, "src")?;
        let kpm = src.eq(self.pad_id as u32)?;
        let x = self.embed(&self.src_embed, &src, 0, train)?;
        let memory = self.transformer.encode(&x, None, Some(&kpm), train)?;
        Ok(EncodedSource {
            memory,
            src_key_padding_mask: kpm,
        })
    }

    /// tgt ids (B, T) (teacher forcing) → logits (B, T, V).
    pub fn decode(&self, tgt: &Tensor, enc: &EncodedSource, train: bool) -> Result<Tensor> {
        let tgt = Self::ids_u32(tgt, "tgt")?;
        let tkpm = tgt.eq(self.pad_id as u32)?;
        let y = self.embed(&self.tgt_embed, &tgt, 0, train)?;
        let masks = DecoderMasks {
            tgt_key_padding_mask: Some(&tkpm),
            memory_key_padding_mask: Some(&enc.src_key_padding_mask),
            tgt_is_causal: true,
            ..Default::default()
        };
        let h = self.transformer.decoder.forward(&y, &enc.memory, &masks, train)?;
        self.logits(&h)
    }

    /// src (B, S), tgt (B, T) integer ids → logits (B, T, V).
    pub fn forward(&self, src: &Tensor, tgt: &Tensor, train: bool) -> Result<Tensor> {
        let enc = self.encode(src, train)?;
        self.decode(tgt, &enc, train)
    }

    /// Encoder-decoder attention of a translation: src (B, S), tgt (B, T) (the decoder input,
    /// `<bos>` first) → per layer (B, H, T, S) probabilities, in evaluation mode.
    pub fn cross_attention(&self, src: &Tensor, tgt: &Tensor) -> Result<Vec<Tensor>> {
        let enc = self.encode(src, false)?;
        let tgt = Self::ids_u32(tgt, "tgt")?;
        let y = self.embed(&self.tgt_embed, &tgt, 0, false)?;
        let masks = DecoderMasks {
            memory_key_padding_mask: Some(&enc.src_key_padding_mask),
            tgt_is_causal: true,
            ..Default::default()
        };
        Ok(self
            .transformer
            .decoder
            .forward_cross_attention(&y, &enc.memory, &masks)?
            .1)
    }

    /// Whether a decoding step gives every row the same values at any row count from `rows`
    /// up (so that a batch may be decoded in fewer rows and widened later, bit for bit): gemm
    /// then takes the same kernel and depth blocks for every product of the step at each such
    /// count. That holds from two rows when every projection a step multiplies has more than
    /// 64 outputs and the rows times the narrowest exceed 256 (below, gemm's dot-product
    /// kernels and its small-product depth blocks take over); attention, LayerNorm and the
    /// rest work row by row.
    pub fn step_rows_exact(&self, rows: usize) -> bool {
        let d_ff = self.transformer.decoder.layers[0].ff.linear1.weight.dims()[0];
        let narrowest = self.d_model.min(d_ff).min(self.out_weight.dims()[0]);
        rows >= 2 && narrowest > 64 && rows * narrowest > 256
    }

    /// Starts incremental decoding against an encoded source.
    pub fn begin_decode(&self, enc: &EncodedSource) -> Result<DecodeState> {
        Ok(DecodeState {
            caches: self.transformer.decoder.init_cache(&enc.memory)?,
            pos: 0,
            out_proj: Some(Arc::new(TransposedLinear::new(
                &self.out_weight,
                self.out_bias.as_ref(),
            )?)),
        })
    }

    /// Feeds one target token per sequence, `tokens` (B,) or (B, 1), in evaluation mode →
    /// logits (B, V) for the next token. Equals the last row of [`decode`](Self::decode) over
    /// the whole prefix (for prefixes without padding).
    pub fn decode_step(&self, tokens: &Tensor, enc: &EncodedSource, state: &mut DecodeState) -> Result<Tensor> {
        let b = tokens.dim(0)?;
        let ids = Self::ids_u32(&tokens.reshape((b, 1))?, "tokens")?;
        let y = self.embed(&self.tgt_embed, &ids, state.pos, false)?;
        let h = self
            .transformer
            .decoder
            .step(&y, &mut state.caches, Some(&enc.src_key_padding_mask), false)?;
        state.pos += 1;
        match &state.out_proj {
            Some(w) => w.forward(&h.squeeze(1)?, false),
            None => self.logits(&h.squeeze(1)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_all_params_get_grad, max_abs_diff as max_diff, randn};
    use candle_core::Device;

    fn small(norm_first: bool, activation: Activation, dropout: f64) -> TransformerLayerConfig {
        TransformerLayerConfig {
            dim_feedforward: 12,
            dropout,
            activation,
            norm_first,
            ..TransformerLayerConfig::new(8, 2)
        }
    }

    #[test]
    fn encoder_layer_gradients_all_variants() {
        for nf in [false, true] {
            for act in [Activation::Relu, Activation::Gelu] {
                let vs = VarStore::new(0, &Device::Cpu);
                let layer = TransformerEncoderLayer::new(&small(nf, act, 0.1), &vs).unwrap();
                let kpm = Tensor::new(&[[0u8, 0, 0, 1], [0, 0, 0, 0]], &Device::Cpu).unwrap();
                let y = layer
                    .forward(&randn(1, &[2, 4, 8]), None, Some(&kpm), false, true)
                    .unwrap();
                assert_eq!(y.dims(), &[2, 4, 8]);
                assert_all_params_get_grad(&vs, &y);
            }
        }
    }

    /// The fused FFN + residual-branch dropout draws the same masks as separate Dropout layers.
    #[test]
    fn fused_ffn_dropout_equals_separate_layers() {
        let cfg = small(false, Activation::Relu, 0.3);
        let x = randn(1, &[2, 4, 8]);
        let (vs1, vs2) = (VarStore::new(5, &Device::Cpu), VarStore::new(5, &Device::Cpu));
        let (f1, f2) = (
            FeedForward::new(&cfg, &vs1).unwrap(),
            FeedForward::new(&cfg, &vs2).unwrap(),
        );
        let (o1, o2) = (
            Dropout::new(0.3, vs1.rng()).unwrap(),
            Dropout::new(0.3, vs2.rng()).unwrap(),
        );
        let y1 = f1.forward_then_dropout(&x, Some(&o1), true).unwrap();
        let h = ops::linear(&x, &f2.linear1.weight, f2.linear1.bias.as_ref())
            .unwrap()
            .relu()
            .unwrap();
        let h = f2.dropout.forward(&h, true).unwrap();
        let y2 = o2.forward(&f2.linear2.forward(&h).unwrap(), true).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-6);
    }

    /// The encoder layer's fused dropouts give the same training-mode output as the same
    /// layer computed from separate ops and separate Dropout layers on the same seed.
    #[test]
    fn encoder_layer_fused_dropouts_equal_separate_ops() {
        let cfg = small(false, Activation::Relu, 0.3);
        let x = randn(1, &[2, 4, 8]);
        let (vs1, vs2) = (VarStore::new(5, &Device::Cpu), VarStore::new(5, &Device::Cpu));
        let l1 = TransformerEncoderLayer::new(&cfg, &vs1).unwrap();
        let l2 = TransformerEncoderLayer::new(&cfg, &vs2).unwrap();
        let y1 = l1.forward(&x, None, None, false, true).unwrap();
        let sa = l2
            .self_attn
            .forward(&crate::MhaInput::self_attention(&x).train(true))
            .unwrap()
            .output;
        let h = l2
            .norm1
            .forward(&(&x + l2.dropout1.forward(&sa, true).unwrap()).unwrap())
            .unwrap();
        let f = l2.dropout2.forward(&l2.ff.forward(&h, true).unwrap(), true).unwrap();
        let y2 = l2.norm2.forward(&(&h + f).unwrap()).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-5);
    }

    #[test]
    fn decoder_layer_gradients_all_variants() {
        for nf in [false, true] {
            for act in [Activation::Relu, Activation::Gelu] {
                let vs = VarStore::new(0, &Device::Cpu);
                let layer = TransformerDecoderLayer::new(&small(nf, act, 0.1), &vs).unwrap();
                let masks = DecoderMasks {
                    tgt_is_causal: true,
                    ..Default::default()
                };
                let y = layer
                    .forward(&randn(1, &[2, 3, 8]), &randn(2, &[2, 5, 8]), &masks, true)
                    .unwrap();
                assert_all_params_get_grad(&vs, &y);
            }
        }
    }

    #[test]
    fn bad_configs_are_errors() {
        let vs = VarStore::new(0, &Device::Cpu);
        assert!(TransformerEncoderLayer::new(&TransformerLayerConfig::new(10, 3), &vs).is_err());
        assert!(TransformerDecoderLayer::new(
            &TransformerLayerConfig {
                dropout: 1.0,
                ..small(false, Activation::Relu, 0.0)
            },
            &vs
        )
        .is_err());
        assert!(Activation::parse("tanh").is_err());
        let cfg = Seq2SeqConfig {
            tgt_vocab_size: 7,
            ..Seq2SeqConfig::new(5, tiny_transformer())
        };
        assert!(Seq2SeqTransformer::new(&cfg, &VarStore::new(0, &Device::Cpu)).is_err());
        for (cfg, key) in [
            (TransformerLayerConfig::new(0, 2), "d_model must be > 0"),
            (TransformerLayerConfig::new(8, 0), "nhead must be > 0"),
            (
                TransformerLayerConfig {
                    dim_feedforward: 0,
                    ..TransformerLayerConfig::new(8, 2)
                },
                "dim_feedforward must be > 0",
            ),
        ] {
            let msg = TransformerEncoderLayer::new(&cfg, &vs).err().unwrap().to_string();
            assert!(msg.contains(key) && !msg.contains("TransformerLayerConfig"), "{msg}");
        }
    }

    fn tiny_transformer() -> TransformerConfig {
        TransformerConfig {
            d_model: 8,
            nhead: 2,
            num_encoder_layers: 2,
            num_decoder_layers: 2,
            dim_feedforward: 12,
            dropout: 0.1,
            ..Default::default()
        }
    }

    #[test]
    fn transformer_gradients_and_names() {
        let vs = VarStore::new(0, &Device::Cpu);
        let t = Transformer::new(&tiny_transformer(), &vs).unwrap();
        let names: Vec<String> = vs.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"encoder.norm.weight".to_string()));
        assert!(names.contains(&"decoder.layers.1.multihead_attn.in_proj_weight".to_string()));
        let cm = Transformer::generate_square_subsequent_mask(3, &Device::Cpu).unwrap();
        assert_eq!(
            cm.to_vec2::<u8>().unwrap(),
            vec![vec![0, 1, 1], vec![0, 0, 1], vec![0, 0, 0]]
        );
        let masks = TransformerMasks {
            tgt_mask: Some(&cm),
            ..Default::default()
        };
        let y = t
            .forward(&randn(1, &[2, 4, 8]), &randn(2, &[2, 3, 8]), &masks, true)
            .unwrap();
        assert_all_params_get_grad(&vs, &y);
    }

    #[test]
    fn seq2seq_gradients_tied_and_separate() {
        for tying in [EmbeddingTying::Shared, EmbeddingTying::Separate] {
            let vs = VarStore::new(0, &Device::Cpu);
            let cfg = Seq2SeqConfig {
                tying,
                max_len: 16,
                ..Seq2SeqConfig::new(11, tiny_transformer())
            };
            let m = Seq2SeqTransformer::new(&cfg, &vs).unwrap();
            let src = Tensor::new(&[[3u32, 4, 5, 0], [6, 7, 8, 9]], &Device::Cpu).unwrap();
            let tgt = Tensor::new(&[[1u32, 2, 10], [1, 5, 0]], &Device::Cpu).unwrap();
            let logits = m.forward(&src, &tgt, true).unwrap();
            assert_eq!(logits.dims(), &[2, 3, 11]);
            assert_all_params_get_grad(&vs, &logits);
            let bad = Tensor::new(&[[3u32, 40]], &Device::Cpu).unwrap();
            assert!(m.forward(&bad, &tgt, false).is_err());
        }
    }

    /// Step-by-step decoding with caches equals re-running the decoder on the whole prefix.
    #[test]
    fn cached_decoding_equals_full_rerun() {
        for nf in [false, true] {
            let vs = VarStore::new(3, &Device::Cpu);
            let tcfg = TransformerConfig {
                norm_first: nf,
                ..tiny_transformer()
            };
            let cfg = Seq2SeqConfig {
                max_len: 16,
                ..Seq2SeqConfig::new(11, tcfg)
            };
            let m = Seq2SeqTransformer::new(&cfg, &vs).unwrap();
            let src = Tensor::new(&[[3u32, 4, 5, 0, 0], [6, 7, 8, 9, 2]], &Device::Cpu).unwrap();
            let tgt = Tensor::new(&[[1u32, 2, 10, 4, 7, 3], [1, 5, 9, 9, 2, 8]], &Device::Cpu).unwrap();
            let enc = m.encode(&src, false).unwrap();
            let full = m.decode(&tgt, &enc, false).unwrap();
            let mut st = m.begin_decode(&enc).unwrap();
            for t in 0..6 {
                let step = m.decode_step(&tgt.narrow(1, t, 1).unwrap(), &enc, &mut st).unwrap();
                let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
                let d = max_diff(&step, &want);
                assert!(d < 1e-5, "norm_first={nf} step {t}: max diff {d}");
            }
        }
    }
}
