//! word2vec (CBOW / skip-gram, negative sampling / hierarchical softmax) in plain Rust.
//! Stands alone: no tensor library.

pub mod cli;
