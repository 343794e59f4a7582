//! Machine translation on [`seqlab_nn::Seq2SeqTransformer`]: decoders (greedy, beam, sampling)
//! over the cached incremental decoder, checkpoint averaging, parallel-text reading and the
//! CLI entry points.

pub mod average;
pub mod cli;
pub mod decode;
pub mod parallel;
