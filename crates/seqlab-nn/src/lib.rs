//! seqlab's layer library: PyTorch-compatible layers on candle-core.
//!
//! Every layer has a config struct with PyTorch's defaults, a validating constructor taking a
//! [`VarStore`] path (parameters get PyTorch `state_dict` names), and a `forward` whose doc
//! states the shapes. Layers whose behaviour differs between training and evaluation take a
//! `train: bool` flag.

pub mod dropout;
pub mod embedding;
pub mod golden;
pub mod io;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod recurrent;
pub mod recurrent_fused;
pub mod rng;
pub mod testing;
pub mod varstore;

pub use dropout::Dropout;
pub use embedding::{Embedding, EmbeddingConfig};
pub use linear::{Linear, LinearConfig};
pub use norm::{LayerNorm, LayerNormConfig};
pub use recurrent::{
    CellKind, Gru, GruConfig, Lstm, LstmConfig, Nonlinearity, RecurrentClassifier, RecurrentClassifierConfig,
    RecurrentConfig, Rnn, RnnConfig,
};
pub use rng::{RngState, SeqRng, SharedRng};
pub use varstore::{Init, VarStore};

pub use candle_core::{DType, Device, Result, Tensor, Var};
