//! Mamba residual block, stacked model and language model, as `mamba_ssm`'s `Block`,
//! `MixerModel` and `MambaLMHeadModel` (`mixer_seq_simple.py`) without an MLP or attention
//! layers.

use super::{Mamba, MambaConfig, MambaState, MixerInit, Padding};
use crate::{
    Embedding, EmbeddingConfig, Init, LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig,
    VarStore,
};
use candle_core::{bail, Device, Result, Tensor};

/// The normalisation in front of each mixer and at the end of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `nn.RMSNorm` (the reference `MambaConfig`'s default `rms_norm=True`): `weight` only.
    RmsNorm,
    /// `nn.LayerNorm`: `weight` and `bias`.
    LayerNorm,
}

#[derive(Clone, Debug)]
enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    fn new(kind: NormKind, d: usize, eps: f64, vs: &VarStore) -> Result<Self> {
        Ok(match kind {
            NormKind::RmsNorm => Norm::Rms(RmsNorm::new(
                &RmsNormConfig {
                    eps: Some(eps),
                    ..RmsNormConfig::new(d)
                },
                vs,
            )?),
            NormKind::LayerNorm => Norm::Layer(LayerNorm::new(
                &LayerNormConfig {
                    eps,
                    ..LayerNormConfig::new(d)
                },
                vs,
            )?),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms(n) => n.forward(x),
            Norm::Layer(n) => n.forward(x),
        }
    }
}

/// Configuration of [`MambaBlock`].
#[derive(Clone, Debug, PartialEq)]
pub struct MambaBlockConfig {
    pub mixer: MambaConfig,
    /// Default [`NormKind::RmsNorm`].
    pub norm: NormKind,
    /// The norm's eps (`norm_epsilon`). Default 1e-5.
    pub norm_eps: f64,
}

impl MambaBlockConfig {
    pub fn new(mixer: MambaConfig) -> Self {
        Self {
            mixer,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.mixer.validate()?;
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            bail!(
                "MambaBlockConfig: `norm_eps` must be a positive number, got {}",
                self.norm_eps
            );
        }
        Ok(())
    }
}

/// Pre-norm residual block: `x + mixer(norm(x))`. The reference's `Block` computes the same
/// sum in its "add → norm → mixer" order (residual carried separately). Parameters `norm.*`
/// and `mixer.*`.
#[derive(Clone, Debug)]
pub struct MambaBlock {
    norm: Norm,
    mixer: Mamba,
}

impl MambaBlock {
    pub fn new(cfg: &MambaBlockConfig, vs: &VarStore) -> Result<Self> {
        Self::with_init(cfg, MixerInit::STANDALONE, vs)
    }

    fn with_init(cfg: &MambaBlockConfig, init: MixerInit, vs: &VarStore) -> Result<Self> {
        cfg.validate()?;
        // Creation order as the reference's Block: norm, then mixer.
        let norm = Norm::new(cfg.norm, cfg.mixer.d_model, cfg.norm_eps, &vs.pp("norm"))?;
        let mixer = Mamba::with_init(&cfg.mixer, init, &vs.pp("mixer"))?;
        Ok(Self { norm, mixer })
    }

    pub fn mixer(&self) -> &Mamba {
        &self.mixer
    }

    /// (B, L, d_model) → (B, L, d_model); padded positions pass `x` through unchanged.
    pub fn forward(&self, x: &Tensor, padding: Option<&Padding>) -> Result<Tensor> {
        x + self.mixer.forward(&self.norm.forward(x)?, padding)?
    }

    /// [`MambaBlock::forward`] that also returns the mixer's state (prefill).
    pub fn forward_with_state(&self, x: &Tensor, padding: Option<&Padding>) -> Result<(Tensor, MambaState)> {
        let (y, st) = self.mixer.forward_with_state(&self.norm.forward(x)?, padding)?;
        Ok(((x + y)?, st))
    }

    /// One decoding step: x (B, d_model) → (B, d_model).
    pub fn step(&self, x: &Tensor, state: &mut MambaState) -> Result<Tensor> {
        x + self.mixer.step(&self.norm.forward(x)?, state)?
    }
}

/// Configuration of [`MambaModel`].
#[derive(Clone, Debug, PartialEq)]
pub struct MambaModelConfig {
    pub vocab_size: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Every block's configuration (d_model is `block.mixer.d_model`).
    pub block: MambaBlockConfig,
}

impl MambaModelConfig {
    pub fn new(vocab_size: usize, n_layer: usize, d_model: usize) -> Self {
        Self {
            vocab_size,
            n_layer,
            block: MambaBlockConfig::new(MambaConfig::new(d_model)),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 {
            bail!("MambaModelConfig: `vocab_size` must be positive, got 0");
        }
        if self.n_layer == 0 {
            bail!("MambaModelConfig: `n_layer` must be positive, got 0");
        }
        self.block.validate()
    }

    pub fn d_model(&self) -> usize {
        self.block.mixer.d_model
    }
}

/// Per-layer decoding states of a [`MambaModel`].
#[derive(Clone, Debug)]
pub struct MambaCache {
    pub layers: Vec<MambaState>,
}

/// The reference's `MixerModel` with Mamba blocks only: `embedding` → `layers.{i}` →
/// `norm_f`. Initialisation as its `_init_weights`: embedding N(0, 0.02), Linear biases zero
/// (not `dt_proj.bias`), `out_proj.weight` U(±1/√d_inner)/√n_layer.
#[derive(Clone, Debug)]
pub struct MambaModel {
    cfg: MambaModelConfig,
    embedding: Embedding,
    layers: Vec<MambaBlock>,
    norm_f: Norm,
}

impl MambaModel {
    pub fn new(cfg: &MambaModelConfig, vs: &VarStore) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model();
        let embedding = Embedding::with_init(
            &EmbeddingConfig {
                num_embeddings: cfg.vocab_size,
                embedding_dim: d,
                padding_idx: None,
            },
            Init::Normal { mean: 0.0, std: 0.02 },
            &vs.pp("embedding"),
        )?;
        let init = MixerInit {
            zero_linear_bias: true,
            n_layer: cfg.n_layer,
        };
        let layers = (0..cfg.n_layer)
            .map(|i| MambaBlock::with_init(&cfg.block, init, &vs.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm_f = Norm::new(cfg.block.norm, d, cfg.block.norm_eps, &vs.pp("norm_f"))?;
        Ok(Self {
            cfg: cfg.clone(),
            embedding,
            layers,
            norm_f,
        })
    }

    pub fn config(&self) -> &MambaModelConfig {
        &self.cfg
    }

    pub fn embedding(&self) -> &Embedding {
        &self.embedding
    }

    pub fn layers(&self) -> &[MambaBlock] {
        &self.layers
    }

    /// Token ids (B, L) → hidden states (B, L, d_model) after `norm_f`.
    pub fn forward(&self, ids: &Tensor, padding: Option<&Padding>) -> Result<Tensor> {
        let mut h = self.embedding.forward(ids)?;
        for layer in &self.layers {
            h = layer.forward(&h, padding)?;
        }
        self.norm_f.forward(&h)
    }

    /// [`MambaModel::forward`] that also returns every layer's state (prefill).
    pub fn forward_with_cache(&self, ids: &Tensor, padding: Option<&Padding>) -> Result<(Tensor, MambaCache)> {
        let mut h = self.embedding.forward(ids)?;
        let mut states = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (y, st) = layer.forward_with_state(&h, padding)?;
            h = y;
            states.push(st);
        }
        Ok((self.norm_f.forward(&h)?, MambaCache { layers: states }))
    }

    /// Empty states for `batch` sequences.
    pub fn new_cache(&self, batch: usize, device: &Device) -> Result<MambaCache> {
        Ok(MambaCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.mixer.new_state(batch, device))
                .collect::<Result<_>>()?,
        })
    }

    /// One decoding step: ids (B,) → hidden (B, d_model) after `norm_f`.
    pub fn step(&self, ids: &Tensor, cache: &mut MambaCache) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            bail!(
                "MambaModel::step: cache has {} layers, the model {}",
                cache.layers.len(),
                self.layers.len()
            );
        }
        let mut h = self.embedding.forward(ids)?;
        for (layer, st) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.step(&h, st)?;
        }
        self.norm_f.forward(&h)
    }
}

/// Configuration of [`MambaLmHead`].
#[derive(Clone, Debug, PartialEq)]
pub struct MambaLmHeadConfig {
    pub backbone: MambaModelConfig,
    /// The output layer reuses `backbone.embedding.weight`. Default `true` (the reference's
    /// `tie_embeddings`); otherwise `lm_head.weight` (vocab, d_model), no bias.
    pub tie_embeddings: bool,
}

impl MambaLmHeadConfig {
    pub fn new(backbone: MambaModelConfig) -> Self {
        Self {
            backbone,
            tie_embeddings: true,
        }
    }
}

/// The reference's `MambaLMHeadModel`: `backbone` ([`MambaModel`]) → `lm_head` logits.
#[derive(Clone, Debug)]
pub struct MambaLmHead {
    backbone: MambaModel,
    lm_head: Tensor,
}

impl MambaLmHead {
    pub fn new(cfg: &MambaLmHeadConfig, vs: &VarStore) -> Result<Self> {
        let backbone = MambaModel::new(&cfg.backbone, &vs.pp("backbone"))?;
        let lm_head = if cfg.tie_embeddings {
            backbone.embedding.weight.clone()
        } else {
            let (v, d) = (cfg.backbone.vocab_size, cfg.backbone.d_model());
            Linear::new(
                &LinearConfig {
                    bias: false,
                    ..LinearConfig::new(d, v)
                },
                &vs.pp("lm_head"),
            )?
            .weight
        };
        Ok(Self { backbone, lm_head })
    }

    pub fn backbone(&self) -> &MambaModel {
        &self.backbone
    }

    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        crate::ops::linear(h, &self.lm_head, None)
    }

    /// Token ids (B, L) → logits (B, L, vocab).
    pub fn forward(&self, ids: &Tensor, padding: Option<&Padding>) -> Result<Tensor> {
        self.logits(&self.backbone.forward(ids, padding)?)
    }

    /// Logits and per-layer states after the prompt (prefill), for [`MambaLmHead::step`].
    pub fn forward_with_cache(&self, ids: &Tensor, padding: Option<&Padding>) -> Result<(Tensor, MambaCache)> {
        let (h, cache) = self.backbone.forward_with_cache(ids, padding)?;
        Ok((self.logits(&h)?, cache))
    }

    /// One decoding step: ids (B,) → logits (B, vocab).
    pub fn step(&self, ids: &Tensor, cache: &mut MambaCache) -> Result<Tensor> {
        self.logits(&self.backbone.step(ids, cache)?)
    }

    pub fn new_cache(&self, batch: usize, device: &Device) -> Result<MambaCache> {
        self.backbone.new_cache(batch, device)
    }
}
