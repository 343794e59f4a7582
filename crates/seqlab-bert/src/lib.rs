//! BERT (Devlin et al. 2019): a Transformer encoder pretrained with masked-language-model and
//! next-sentence-prediction objectives, then fine-tuned for sequence classification.
//!
//! - [`model`]: the encoder with token, learned position and segment embeddings, the MLM head
//!   (tied to the token embedding) and the NSP head; HF BERT parameter names.
//! - [`data`]: tokenizer with `[CLS]`/`[SEP]`/`[MASK]`, sentence-pair sampling and masking,
//!   all pure functions of (seed, epoch, index).
//! - [`hf`]: Hugging Face BERT checkpoints (config, safetensors under either naming scheme,
//!   WordPiece tokenizer) read into seqlab's model and tokenizer.
//! - [`task`]: pretraining (`task = "bert-pretrain"`) and fine-tuning (`"bert-finetune"`)
//!   as [`seqlab_train::Task`]s; [`register`] adds both to the `seqlab` binary's registry.

pub mod data;
pub mod hf;
pub mod model;
pub mod task;

pub use model::{BertClassifier, BertConfig, BertForPreTraining, BertModel};

/// Adds `bert-pretrain` and `bert-finetune` to the registry.
pub fn register(r: &mut seqlab_train::Registry) {
    r.add::<task::PretrainTask>().add::<task::FinetuneTask>();
}

pub(crate) fn c<T>(r: candle_core::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}
