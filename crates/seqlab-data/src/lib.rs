//! Data pipeline: tokenizers, readers with file/line errors, batching.
//!
//! Everything here produces plain vectors (`Vec<u32>` ids, `Vec<u8>` masks, lengths); the
//! training engine turns them into tensors.
//!
//! Typical use (training split first: it fits the tokenizer, the label set, the scaler):
//!
//! ```no_run
//! use seqlab_data::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Character LM, classic (batch, bptt) streams.
//! let train = LmText::read("data/sample/shakespeare.train.txt")?;
//! let tok = Tokenizer::train(&TokenizerConfig::new(TokenizerKind::Char), train.text.lines())?;
//! tok.save("runs/x/tokenizer.json")?; // HF format, stored with each checkpoint
//! let stream = StreamBatcher::new(&train.encode_stream(&tok)?, 32)?;
//! for chunk in stream.chunks(128) { /* chunk.input, chunk.target: [32, chunk.len] */ }
//!
//! // Classification, token-budget batches reshuffled per epoch from (seed, epoch).
//! let cls = ClsData::read_train("data/sample/authors.train.tsv")?;
//! let valid = ClsData::read_eval("data/sample/authors.valid.tsv", &cls.labels)?;
//! let mut warnings = Vec::new(); // truncations, for the CLI to print
//! let (seqs, labels) = cls.encode(&tok, 256, LengthPolicy::Truncate, &mut warnings)?;
//! let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
//! let (seed, epoch) = (42, 0);
//! for idx in token_budget_batches(&lengths, &BudgetConfig::new(4096), Some((seed, epoch)))? {
//!     let batch = pad_batch(&seqs, &idx, tok.pad_id()); // ids + mask, [batch, max_len]
//! }
//!
//! // Time series: column by name, scaler fitted on the training part only.
//! let ts = TimeSeries::read_csv("data/sample/sunspot-month.csv", "sunspot.month", 0.1, 0.1)?;
//! let windows = ts.windows(Part::Train, 48, 1)?;
//! # Ok(()) }
//! ```

pub mod batch;
pub mod error;
pub mod text;
pub mod timeseries;
pub mod tokenizer;

pub use batch::{
    epoch_rng, fixed_batches, pad_batch, pad_lm_batch, shuffled_indices, token_budget_batches, BatchError,
    BudgetConfig, PaddedBatch, StreamBatcher, StreamChunk,
};
pub use error::{DataError, ErrorKind};
pub use text::{ClsData, ClsExample, LabelSet, LengthPolicy, LmText, Warning};
pub use timeseries::{Part, Standardizer, TimeSeries, Windows};
pub use tokenizer::{Tokenizer, TokenizerConfig, TokenizerError, TokenizerKind};
