//! Machine translation: the paper's Transformer ([`seqlab_nn::Seq2SeqTransformer`]) and an
//! attention-LSTM baseline ([`rnn`]), trained as a [`seqlab_train::Task`] ([`task::MtTask`],
//! `task = "mt"`) with BPE and token-budget batches; decoders (greedy, beam, sampling) over
//! cached incremental decoding, checkpoint averaging, parallel-text reading and pictures
//! (attention, positional encoding), and the Hugging Face M2M100 export and import ([`hf`]). The `seqlab` binary parses the arguments of `translate`,
//! `average-checkpoints` and `plot-pe` and calls these functions.

pub mod average;
pub mod bench;
pub mod decode;
pub mod hf;
pub mod parallel;
pub mod plots;
pub mod rnn;
pub mod task;

/// Adds `mt` to the registry.
pub fn register(r: &mut seqlab_train::Registry) {
    r.add::<task::MtTask>();
}

/// candle's error as anyhow's.
pub(crate) fn c<T>(r: candle_core::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}
