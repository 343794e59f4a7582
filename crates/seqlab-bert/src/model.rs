//! The BERT encoder and its pretraining / classification heads.
//!
//! Parameter names follow HF `BertForPreTraining` where the layer library allows:
//! `bert.embeddings.{word,position,token_type}_embeddings.weight`, `bert.embeddings.LayerNorm.*`,
//! `bert.pooler.dense.*`, `cls.predictions.transform.{dense,LayerNorm}.*`, `cls.predictions.bias`
//! (the decoder weight is tied to the word embedding), `cls.seq_relationship.*`. The encoder
//! layers are seqlab's `nn.TransformerEncoderLayer` (`bert.encoder.layers.{i}.self_attn...`),
//! post-norm with GELU as in BERT.

use crate::c;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use seqlab_nn::transformer::{Activation, TransformerEncoder, TransformerLayerConfig};
use seqlab_nn::{ops, Dropout, Init, LayerNorm, LayerNormConfig, Linear, LinearConfig, VarStore};
use seqlab_train::keys::{ConfigKeys, KeyDoc};
use serde::{Deserialize, Serialize};

/// Model size. Defaults (`tiny`) follow the small BERTs of Turc et al. 2019 (2 layers × 128);
/// the rest follow HF `BertConfig`: intermediate 4·hidden, GELU, dropout 0.1, LayerNorm eps
/// 1e-12, 2 segment types, N(0, 0.02) initialisation of embeddings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BertConfig {
    /// Set from the tokenizer when the model is built (0 in a config file means "from data").
    pub vocab_size: usize,
    /// Width of embeddings and Transformer layers. Default 128.
    pub hidden_size: usize,
    /// Number of Transformer encoder layers. Default 2.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`. Default 2.
    pub num_attention_heads: usize,
    /// Feed-forward inner width. Default 4 · hidden_size.
    pub intermediate_size: usize,
    /// Longest input, `[CLS]` and `[SEP]`s included. Default 128.
    pub max_position_embeddings: usize,
    /// Number of segment types (token types). Default 2.
    pub type_vocab_size: usize,
    /// Dropout on embeddings, attention and feed-forward outputs, in [0, 1). Default 0.1.
    pub hidden_dropout_prob: f64,
    /// LayerNorm epsilon. Default 1e-12.
    pub layer_norm_eps: f64,
    /// Standard deviation of the N(0, σ²) weight initialisation. Default 0.02.
    pub initializer_range: f64,
}

/// The BERT `[model]` keys at run time (`seqlab config keys bert-pretrain`); defaults come
/// from `Default` (the `tiny` preset).
impl ConfigKeys for BertConfig {
    const KEYS: &'static [KeyDoc] = &[
        KeyDoc::new(
            "vocab_size",
            "set from the tokenizer when the model is built (0 = from data)",
        ),
        KeyDoc::new("hidden_size", "width of embeddings and Transformer layers"),
        KeyDoc::new("num_hidden_layers", "Transformer encoder layers"),
        KeyDoc::new(
            "num_attention_heads",
            "attention heads per layer; must divide hidden_size",
        ),
        KeyDoc::new("intermediate_size", "feed-forward inner width"),
        KeyDoc::new(
            "max_position_embeddings",
            "longest input, [CLS] and [SEP]s included; >= 3",
        ),
        KeyDoc::new("type_vocab_size", "segment (token type) kinds"),
        KeyDoc::new(
            "hidden_dropout_prob",
            "dropout on embeddings, attention and feed-forward outputs, in [0, 1)",
        ),
        KeyDoc::new("layer_norm_eps", "LayerNorm ε"),
        KeyDoc::new(
            "initializer_range",
            "standard deviation of the N(0, σ²) weight initialisation",
        ),
    ];
}

impl Default for BertConfig {
    fn default() -> Self {
        Self::preset("tiny").expect("known preset")
    }
}

impl BertConfig {
    /// `tiny` (2 × 128), `mini` (4 × 256), `small` (4 × 512); heads = hidden / 64.
    pub fn preset(name: &str) -> Result<Self> {
        let (layers, hidden) = match name {
            "tiny" => (2, 128),
            "mini" => (4, 256),
            "small" => (4, 512),
            _ => bail!("unknown BERT preset `{name}` (expected tiny, mini or small)"),
        };
        Ok(Self {
            vocab_size: 0,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: hidden / 64,
            intermediate_size: 4 * hidden,
            max_position_embeddings: 128,
            type_vocab_size: 2,
            hidden_dropout_prob: 0.1,
            layer_norm_eps: 1e-12,
            initializer_range: 0.02,
        })
    }

    /// Rejects zero vocab/hidden/layer/intermediate sizes, `hidden_size` not divisible by the
    /// heads, `max_position_embeddings < 3`, `type_vocab_size = 0` and dropout outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            bail!(
                "BERT: vocab_size, hidden_size, num_hidden_layers and intermediate_size must be positive, got {self:?}"
            );
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "BERT: hidden_size {} must be divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.max_position_embeddings < 3 || self.type_vocab_size == 0 {
            bail!("BERT: max_position_embeddings must be >= 3 and type_vocab_size >= 1");
        }
        if !(0.0..1.0).contains(&self.hidden_dropout_prob) {
            bail!(
                "BERT: hidden_dropout_prob must be in [0, 1), got {}",
                self.hidden_dropout_prob
            );
        }
        Ok(())
    }

    fn layer(&self) -> TransformerLayerConfig {
        TransformerLayerConfig {
            dim_feedforward: self.intermediate_size,
            dropout: self.hidden_dropout_prob,
            activation: Activation::Gelu,
            layer_norm_eps: self.layer_norm_eps,
            norm_first: false,
            ..TransformerLayerConfig::new(self.hidden_size, self.num_attention_heads)
        }
    }

    fn norm(&self, vs: &VarStore) -> Result<LayerNorm> {
        c(LayerNorm::new(
            &LayerNormConfig {
                eps: self.layer_norm_eps,
                ..LayerNormConfig::new(self.hidden_size)
            },
            vs,
        ))
    }
}

/// The encoder (`bert.*`): embeddings, Transformer layers and the `[CLS]` pooler.
#[derive(Clone, Debug)]
pub struct BertModel {
    /// The configuration this model was built with.
    pub cfg: BertConfig,
    /// Token embeddings (V, H).
    pub word_embeddings: Tensor,
    /// Learned position embeddings (max_position_embeddings, H).
    pub position_embeddings: Tensor,
    /// Segment embeddings (type_vocab_size, H).
    pub token_type_embeddings: Tensor,
    /// LayerNorm over the summed embeddings.
    pub emb_norm: LayerNorm,
    /// Dropout after the embedding LayerNorm.
    pub dropout: Dropout,
    /// The post-norm Transformer encoder layers.
    pub encoder: TransformerEncoder,
    /// Linear (H → H, tanh) on the `[CLS]` state, giving the pooled output.
    pub pooler: Linear,
}

/// One batch of inputs: (B, L) u32 ids and segment ids, (B, L) u8 padding mask (1 = padding).
pub struct BertInput<'a> {
    /// Token ids (B, L), u32.
    pub ids: &'a Tensor,
    /// Segment ids (B, L), u32.
    pub segments: &'a Tensor,
    /// Padding mask (B, L), u8, 1 = padding.
    pub padding: &'a Tensor,
}

impl BertModel {
    /// Builds under `vs` (pass `vs.pp("bert")` for HF names).
    pub fn new(cfg: &BertConfig, vs: &VarStore) -> Result<Self> {
        cfg.validate()?;
        let init = Init::Normal {
            mean: 0.0,
            std: cfg.initializer_range,
        };
        let e = vs.pp("embeddings");
        let h = cfg.hidden_size;
        Ok(Self {
            cfg: cfg.clone(),
            word_embeddings: c(e.pp("word_embeddings").param("weight", (cfg.vocab_size, h), init))?,
            position_embeddings: c(e.pp("position_embeddings").param(
                "weight",
                (cfg.max_position_embeddings, h),
                init,
            ))?,
            token_type_embeddings: c(e
                .pp("token_type_embeddings")
                .param("weight", (cfg.type_vocab_size, h), init))?,
            emb_norm: cfg.norm(&e.pp("LayerNorm"))?,
            dropout: c(Dropout::new(cfg.hidden_dropout_prob, vs.rng()))?,
            encoder: c(TransformerEncoder::new(
                &cfg.layer(),
                cfg.num_hidden_layers,
                false,
                &vs.pp("encoder"),
            ))?,
            pooler: c(Linear::new(&LinearConfig::new(h, h), &vs.pp("pooler").pp("dense")))?,
        })
    }

    /// Hidden states (B, L, H).
    pub fn forward(&self, x: &BertInput, train: bool) -> Result<Tensor> {
        let (b, l) = c(x.ids.dims2())?;
        if l > self.cfg.max_position_embeddings {
            bail!(
                "BERT: input length {l} exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        if x.segments.dims() != [b, l] || x.padding.dims() != [b, l] {
            bail!(
                "BERT: ids {:?}, segments {:?} and padding {:?} must have one (B, L) shape",
                x.ids.dims(),
                x.segments.dims(),
                x.padding.dims()
            );
        }
        let lookup = |w: &Tensor, ids: &Tensor| -> Result<Tensor> {
            let flat = c(ids.flatten_all().and_then(|f| f.to_dtype(DType::U32)))?;
            c(w.index_select(&flat, 0)
                .and_then(|e| e.reshape((b, l, self.cfg.hidden_size))))
        };
        let words = lookup(&self.word_embeddings, x.ids)?;
        let segs = lookup(&self.token_type_embeddings, x.segments)?;
        let pos = c(self.position_embeddings.narrow(0, 0, l).and_then(|p| p.unsqueeze(0)))?;
        let emb = c((words + segs).and_then(|s| s.broadcast_add(&pos)))?;
        let emb = c(self.dropout.forward(&c(self.emb_norm.forward(&emb))?, train))?;
        c(self.encoder.forward(&emb, None, Some(x.padding), false, train))
    }

    /// `tanh(dense(h[:, 0]))`: the `[CLS]` summary (B, H).
    pub fn pool(&self, hidden: &Tensor) -> Result<Tensor> {
        c(hidden
            .narrow(1, 0, 1)
            .and_then(|h| h.squeeze(1))
            .and_then(|h| self.pooler.forward(&h))
            .and_then(|p| p.tanh()))
    }
}

/// Encoder plus MLM and NSP heads (`bert.*`, `cls.*`).
#[derive(Clone, Debug)]
pub struct BertForPreTraining {
    /// The encoder (`bert.*`).
    pub bert: BertModel,
    /// MLM head transform, H → H (`cls.predictions.transform.dense`).
    pub transform: Linear,
    /// LayerNorm after the MLM transform.
    pub transform_norm: LayerNorm,
    /// Output bias (V) of the MLM decoder, whose weight is tied to the word embeddings.
    pub mlm_bias: Tensor,
    /// NSP head, H → 2 on the pooled output (`cls.seq_relationship`).
    pub seq_relationship: Linear,
}

impl BertForPreTraining {
    /// Encoder plus masked-LM and next-sentence heads (HF `BertForPreTraining`), parameters
    /// under `bert.*` and `cls.*`. Rejects what [`BertConfig::validate`] rejects.
    pub fn new(cfg: &BertConfig, vs: &VarStore) -> Result<Self> {
        let bert = BertModel::new(cfg, &vs.pp("bert"))?;
        let p = vs.pp("cls").pp("predictions");
        let h = cfg.hidden_size;
        Ok(Self {
            bert,
            transform: c(Linear::new(&LinearConfig::new(h, h), &p.pp("transform").pp("dense")))?,
            transform_norm: cfg.norm(&p.pp("transform").pp("LayerNorm"))?,
            mlm_bias: c(p.param("bias", cfg.vocab_size, Init::Zeros))?,
            seq_relationship: c(Linear::new(
                &LinearConfig::new(h, 2),
                &vs.pp("cls").pp("seq_relationship"),
            ))?,
        })
    }

    /// MLM logits (N, V) at the flat positions `masked` (u32 indices into B·L), and NSP
    /// logits (B, 2). Scoring only the selected positions saves the (B·L, V) product.
    pub fn forward(&self, x: &BertInput, masked: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let hidden = self.bert.forward(x, train)?;
        let (b, l, h) = c(hidden.dims3())?;
        let sel = c(hidden.reshape((b * l, h)).and_then(|f| f.index_select(masked, 0)))?;
        let mlm = self.mlm_head(&sel)?;
        let nsp = c(self.seq_relationship.forward(&self.bert.pool(&hidden)?))?;
        Ok((mlm, nsp))
    }
}

impl BertForPreTraining {
    /// The MLM head on hidden states (N, H) → logits (N, V): dense, GELU, LayerNorm, then the
    /// (tied) word embeddings plus `cls.predictions.bias` (HF `BertLMPredictionHead`).
    pub fn mlm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = c(self.transform.forward(hidden).and_then(|t| ops::gelu(&t)))?;
        let t = c(self.transform_norm.forward(&t))?;
        c(ops::linear(&t, &self.bert.word_embeddings, Some(&self.mlm_bias)))
    }
}

/// Encoder plus a fresh classifier on the pooled `[CLS]` (`bert.*`, `classifier.*`), as HF
/// `BertForSequenceClassification`.
#[derive(Clone, Debug)]
pub struct BertClassifier {
    /// The encoder (`bert.*`).
    pub bert: BertModel,
    /// Dropout on the pooled output.
    pub dropout: Dropout,
    /// Linear head, H → num_labels (`classifier.*`).
    pub classifier: Linear,
}

impl BertClassifier {
    /// Encoder, dropout and a linear head on the pooled `[CLS]` output (HF
    /// `BertForSequenceClassification`). Rejects `num_labels < 2` and invalid configs.
    pub fn new(cfg: &BertConfig, num_labels: usize, vs: &VarStore) -> Result<Self> {
        if num_labels < 2 {
            bail!("BERT classifier: need at least 2 labels, got {num_labels}");
        }
        Ok(Self {
            bert: BertModel::new(cfg, &vs.pp("bert"))?,
            dropout: c(Dropout::new(cfg.hidden_dropout_prob, vs.rng()))?,
            classifier: c(Linear::new(
                &LinearConfig::new(cfg.hidden_size, num_labels),
                &vs.pp("classifier"),
            ))?,
        })
    }

    /// Class logits (B, C).
    pub fn forward(&self, x: &BertInput, train: bool) -> Result<Tensor> {
        let pooled = self.bert.pool(&self.bert.forward(x, train)?)?;
        c(self
            .dropout
            .forward(&pooled, train)
            .and_then(|p| self.classifier.forward(&p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use seqlab_nn::testing::assert_all_params_get_grad;

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 30,
            hidden_size: 16,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 12,
            ..BertConfig::preset("tiny").unwrap()
        }
    }

    fn input(dev: &Device) -> (Tensor, Tensor, Tensor) {
        let ids = Tensor::new(&[[1u32, 5, 6, 7, 2, 8, 9, 2], [1, 10, 11, 2, 12, 2, 0, 0]], dev).unwrap();
        let segs = Tensor::new(&[[0u32, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0]], dev).unwrap();
        let pad = Tensor::new(&[[0u8, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]], dev).unwrap();
        (ids, segs, pad)
    }

    #[test]
    fn hf_names_and_presets() {
        let vs = VarStore::new(0, &Device::Cpu);
        BertForPreTraining::new(&tiny(), &vs).unwrap();
        let names: Vec<String> = vs.trainable().into_iter().map(|(n, _)| n).collect();
        for n in [
            "bert.embeddings.word_embeddings.weight",
            "bert.embeddings.position_embeddings.weight",
            "bert.embeddings.token_type_embeddings.weight",
            "bert.embeddings.LayerNorm.weight",
            "bert.pooler.dense.weight",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.bias",
            "cls.seq_relationship.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        // Tied: no separate decoder weight.
        assert!(!names.iter().any(|x| x.contains("decoder")));
        let s = BertConfig::preset("small").unwrap();
        assert_eq!((s.num_hidden_layers, s.hidden_size, s.num_attention_heads), (4, 512, 8));
        assert!(BertConfig::preset("huge").is_err());
    }

    #[test]
    fn pretraining_gradient_reaches_every_parameter() {
        let dev = Device::Cpu;
        let vs = VarStore::new(1, &dev);
        let m = BertForPreTraining::new(&tiny(), &vs).unwrap();
        let (ids, segs, pad) = input(&dev);
        let masked = Tensor::new(&[2u32, 3, 9, 12], &dev).unwrap();
        let (mlm, nsp) = m
            .forward(
                &BertInput {
                    ids: &ids,
                    segments: &segs,
                    padding: &pad,
                },
                &masked,
                true,
            )
            .unwrap();
        assert_eq!(mlm.dims(), [4, 30]);
        assert_eq!(nsp.dims(), [2, 2]);
        let y = Tensor::cat(&[mlm.flatten_all().unwrap(), nsp.flatten_all().unwrap()], 0).unwrap();
        assert_all_params_get_grad(&vs, &y);
    }

    #[test]
    fn classifier_gradient_reaches_every_parameter() {
        let dev = Device::Cpu;
        let vs = VarStore::new(2, &dev);
        let m = BertClassifier::new(&tiny(), 3, &vs).unwrap();
        let (ids, segs, pad) = input(&dev);
        let y = m
            .forward(
                &BertInput {
                    ids: &ids,
                    segments: &segs,
                    padding: &pad,
                },
                true,
            )
            .unwrap();
        assert_eq!(y.dims(), [2, 3]);
        assert_all_params_get_grad(&vs, &y);
    }

    #[test]
    fn too_long_input_is_an_error() {
        let dev = Device::Cpu;
        let vs = VarStore::new(0, &dev);
        let m = BertModel::new(&tiny(), &vs).unwrap();
        let ids = Tensor::zeros((1, 13), DType::U32, &dev).unwrap();
        let pad = Tensor::zeros((1, 13), DType::U8, &dev).unwrap();
        let e = m
            .forward(
                &BertInput {
                    ids: &ids,
                    segments: &ids,
                    padding: &pad,
                },
                false,
            )
            .unwrap_err();
        assert!(e.to_string().contains("max_position_embeddings"), "{e}");
    }
}
