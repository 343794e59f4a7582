//! Machine translation: the paper's Transformer ([`seqlab_nn::Seq2SeqTransformer`]) and an
//! attention-LSTM baseline ([`rnn`]), trained as a [`task`] with BPE and token-budget batches;
//! decoders (greedy, beam, sampling) over cached incremental decoding, checkpoint averaging,
//! parallel-text reading and the CLI entry points (`seqlab translate`, ...).

pub mod average;
pub mod cli;
pub mod decode;
pub mod parallel;
pub mod rnn;
pub mod task;

/// candle's error as anyhow's.
pub(crate) fn c<T>(r: candle_core::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}
