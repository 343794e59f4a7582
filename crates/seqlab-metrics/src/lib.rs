//! Evaluation metrics for generated text: corpus BLEU and chrF exactly as sacrebleu computes them.

pub mod cli;
