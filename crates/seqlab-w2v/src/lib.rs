//! word2vec (CBOW / skip-gram, negative sampling / hierarchical softmax) in plain Rust.
//! Stands alone: no tensor library.

pub mod cli;
pub mod eval;
pub mod format;
pub mod text;
pub mod train;
pub mod vocab;
