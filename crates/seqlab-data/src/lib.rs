//! Data pipeline: tokenizers, readers with file/line errors, batching.
