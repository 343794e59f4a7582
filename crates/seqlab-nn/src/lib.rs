//! seqlab's layer library: PyTorch-compatible layers on candle-core.
//!
//! Every layer has a config struct with PyTorch's defaults, a validating constructor taking a
//! [`VarStore`] path (parameters get PyTorch `state_dict` names), and a `forward` whose doc
//! states the shapes. Layers whose behaviour differs between training and evaluation take a
//! `train: bool` flag.
//!
//! Where things live:
//! - layers and their public API: [`linear`], [`embedding`], [`dropout`], [`norm`]
//!   (LayerNorm, RMSNorm, BatchNorm1d), [`recurrent`] (RNN/LSTM/GRU, the sequence
//!   classifier), [`attention`] (SDPA, MultiheadAttention, typed masks in
//!   [`attention::mask`]), [`positional`], [`transformer`], [`mamba`] (the selective
//!   state-space mixer, its block, stacked model and LM, padded batches, step decoding);
//! - [`kernels`]: the unsafe fused CPU kernels behind those layers (forward + backward);
//! - training pieces: [`loss`], [`optim`], [`clip`], [`rng`] (seeded, checkpointable),
//!   [`varstore`] (named parameters), [`io`] (atomic writes), [`ops`] (differentiable helpers,
//!   and the fused/composed switch [`ops::Path`]), [`device`] (device names: cpu, cuda:N);
//! - [`testing`]: helpers for tests of this and other crates (gradient reachability, ...).
//!
//! PyTorch parity is checked by `tests/torch_parity.rs` against the reference cases in
//! `tests/golden/` (format and generator: `tests/golden/README.md`).

pub mod attention;
mod check;
pub mod clip;
pub mod device;
pub mod dropout;
pub mod embedding;
pub mod io;
pub mod kernels;
pub mod linear;
pub mod loss;
pub mod mamba;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod positional;
pub mod recurrent;
pub mod rng;
pub mod sampling;
pub mod testing;
pub mod transformer;
pub mod varstore;

pub use attention::{
    causal_mask, scaled_dot_product_attention, AttnMask, KeyPaddingMask, KvCache, MhaInput, MhaOutput, MhaStepWeights,
    MultiheadAttention, MultiheadAttentionConfig, ReturnWeights, SdpaOptions,
};
pub use clip::{clip_grad_norm, clip_grad_norm_pairs};
pub use device::parse_device;
pub use dropout::Dropout;
pub use embedding::{Embedding, EmbeddingConfig};
pub use linear::{Linear, LinearConfig};
pub use loss::{cross_entropy, mse_loss, Reduction};
pub use mamba::{
    DtRank, Mamba, MambaBlock, MambaBlockConfig, MambaCache, MambaConfig, MambaLmHead, MambaLmHeadConfig, MambaModel,
    MambaModelConfig, MambaState, NormKind, Padding,
};
pub use norm::{BatchNorm1d, BatchNorm1dConfig, LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
pub use optim::{AdamW, AdamWConfig, Optimizer, OptimizerState, Sgd, SgdConfig};
pub use positional::{
    fairseq_sinusoidal_table, sinusoidal_table, LearnedPositionalEmbedding, SinusoidalLayout,
    SinusoidalPositionalEncoding,
};
pub use recurrent::{
    CellKind, Gru, GruConfig, Lstm, LstmConfig, Nonlinearity, RecurrentClassifier, RecurrentClassifierConfig,
    RecurrentConfig, Rnn, RnnConfig,
};
pub use rng::{RngState, SeqRng, SharedRng};
pub use transformer::{
    Activation, DecodeState, DecoderLayerCache, DecoderMasks, DecoderStepWeights, EmbeddingTying, EncodedSource,
    FeedForward, FeedForwardStepWeights, Seq2SeqConfig, Seq2SeqTransformer, Transformer, TransformerConfig,
    TransformerDecoder, TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig,
    TransformerMasks,
};
pub use varstore::{Init, VarStore};

pub use candle_core::{DType, Device, Result, Tensor, Var};
