//! word2vec (CBOW / skip-gram, negative sampling / hierarchical softmax) in plain Rust.
//! Stands alone: no tensor library.
//!
//! - [`train`]: the trainer (`seqlab w2v train`), Hogwild threads each streaming a byte
//!   range of the corpus, so the corpus never has to fit in memory.
//! - [`vocab`]: counting pass, subsampling, unigram^0.75 alias table, Huffman tree.
//! - [`text`]: chunked line reader, invalid UTF-8 handling, lower-casing / punctuation.
//! - [`format`]: word2vec text and binary formats (gensim/word2vec.c compatible) and
//!   safetensors + vocabulary; format detection, strict readers.
//! - [`output`]: output checks before work starts, atomic writes.
//! - [`eval`]: `similar`, `analogy`, `eval-analogy`, `eval-similarity`.
//!
//! Argument parsing lives in the `seqlab` binary (`seqlab-cli/src/w2v.rs`); this crate
//! exposes plain functions and config types.
//!
//! ```text
//! seqlab w2v prepare --input corpus.en.txt --output prepared.txt --lowercase --strip-punct
//! seqlab w2v train --input prepared.txt --output vectors.bin --format binary --threads 2
//! seqlab w2v eval-analogy vectors.bin questions-words.txt --restrict-vocab 30000
//! ```

pub mod eval;
pub mod format;
pub mod output;
mod simd;
pub mod text;
pub mod train;
pub mod vocab;
