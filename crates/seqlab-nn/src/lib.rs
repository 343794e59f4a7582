//! seqlab's layer library: PyTorch-compatible layers on candle-core.
//!
//! Every layer has a config struct with PyTorch's defaults, a validating constructor taking a
//! [`VarStore`] path (parameters get PyTorch `state_dict` names), and a `forward` whose doc
//! states the shapes. Layers whose behaviour differs between training and evaluation take a
//! `train: bool` flag.

pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod golden;
pub mod io;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod positional;
pub mod rng;
pub mod testing;
pub mod transformer;
pub mod varstore;

pub use attention::{
    causal_mask, scaled_dot_product_attention, AttnMasks, BoolMask, KvCache, MultiheadAttention,
    MultiheadAttentionConfig, SdpaOptions,
};
pub use dropout::Dropout;
pub use embedding::{Embedding, EmbeddingConfig};
pub use linear::{Linear, LinearConfig};
pub use norm::{LayerNorm, LayerNormConfig};
pub use positional::{sinusoidal_table, LearnedPositionalEmbedding, SinusoidalPositionalEncoding};
pub use rng::{RngState, SeqRng, SharedRng};
pub use transformer::{
    Activation, DecodeState, DecoderLayerCache, DecoderMasks, EmbeddingTying, EncodedSource, FeedForward,
    Seq2SeqConfig, Seq2SeqTransformer, Transformer, TransformerConfig, TransformerDecoder,
    TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig,
    TransformerMasks,
};
pub use varstore::{Init, VarStore};

pub use candle_core::{DType, Device, Result, Tensor, Var};
