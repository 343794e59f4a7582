//! seqlab's layer library: PyTorch-compatible layers on candle-core.
//!
//! Every layer has a config struct with PyTorch's defaults, a validating constructor taking a
//! [`VarStore`] path (parameters get PyTorch `state_dict` names), and a `forward` whose doc
//! states the shapes. Layers whose behaviour differs between training and evaluation take a
//! `train: bool` flag.

pub mod attention;
pub mod clip;
pub mod dropout;
pub mod embedding;
pub mod golden;
pub mod io;
mod kernel;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod positional;
pub mod recurrent;
pub mod recurrent_fused;
pub mod rng;
pub mod sampling;
pub mod testing;
pub mod transformer;
pub mod varstore;

pub use attention::{
    causal_mask, scaled_dot_product_attention, AttnMasks, BoolMask, KvCache, MultiheadAttention,
    MultiheadAttentionConfig, SdpaOptions,
};
pub use clip::{clip_grad_norm, clip_grad_norm_pairs};
pub use dropout::Dropout;
pub use embedding::{Embedding, EmbeddingConfig};
pub use linear::{Linear, LinearConfig};
pub use loss::{cross_entropy, mse_loss, Reduction};
pub use norm::{BatchNorm1d, BatchNorm1dConfig, LayerNorm, LayerNormConfig};
pub use optim::{AdamW, AdamWConfig, Optimizer, OptimizerState, Sgd, SgdConfig};
pub use positional::{sinusoidal_table, LearnedPositionalEmbedding, SinusoidalPositionalEncoding};
pub use recurrent::{
    CellKind, Gru, GruConfig, Lstm, LstmConfig, Nonlinearity, RecurrentClassifier, RecurrentClassifierConfig,
    RecurrentConfig, Rnn, RnnConfig,
};
pub use rng::{RngState, SeqRng, SharedRng};
pub use transformer::{
    Activation, DecodeState, DecoderLayerCache, DecoderMasks, EmbeddingTying, EncodedSource, FeedForward,
    Seq2SeqConfig, Seq2SeqTransformer, Transformer, TransformerConfig, TransformerDecoder, TransformerDecoderLayer,
    TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig, TransformerMasks,
};
pub use varstore::{Init, VarStore};

pub use candle_core::{DType, Device, Result, Tensor, Var};
