//! Data pipeline: tokenizers, readers with file/line errors, batching.
//!
//! Everything here produces plain vectors (`Vec<u32>` ids, `Vec<u8>` masks, lengths); the
//! training engine turns them into tensors.

pub mod batch;
pub mod error;
pub mod text;
pub mod timeseries;
pub mod tokenizer;

pub use batch::{
    epoch_rng, fixed_batches, pad_batch, pad_lm_batch, shuffled_indices, token_budget_batches,
    BatchError, BudgetConfig, PaddedBatch, StreamBatcher, StreamChunk,
};
pub use error::{DataError, ErrorKind};
pub use text::{ClsData, ClsExample, LabelSet, LengthPolicy, LmText, Warning};
pub use timeseries::{Part, Standardizer, TimeSeries, Windows};
pub use tokenizer::{Tokenizer, TokenizerConfig, TokenizerError, TokenizerKind};
