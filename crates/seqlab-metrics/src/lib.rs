//! Evaluation metrics for generated text: corpus BLEU and chrF exactly as sacrebleu 2.x computes
//! them (same tokenization, smoothing, reference handling and rounding of the printed line).
//!
//! ```
//! use seqlab_metrics::{bleu, chrf};
//! let hyps = vec!["The cat sat on the mat.".to_string()];
//! let refs = vec![vec!["The cat is on the mat.".to_string()]]; // refs[k][i]: k-th ref of segment i
//! let b = bleu::corpus_bleu(&hyps, &refs, &bleu::BleuConfig::default()).unwrap();
//! let c = chrf::corpus_chrf(&hyps, &refs, &chrf::ChrfConfig::default()).unwrap();
//! assert!(b.score > 0.0 && c.score > 0.0);
//! ```
//!
//! Files are read as sacrebleu's CLI reads them with [`text::read_aligned`]. The `seqlab bleu` /
//! `seqlab chrf` commands (argument parsing, printing) live in the `seqlab` binary.

pub mod bleu;
pub mod chrf;
pub mod classification;
pub mod text;
pub mod tokenizers;

use std::path::PathBuf;

/// Errors from scoring: bad configuration, mismatched inputs, unreadable files.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("invalid metric configuration: {0}")]
    Config(String),
    #[error("no hypotheses to score (sacrebleu refuses an empty test set too)")]
    EmptyCorpus,
    #[error("no reference streams given (need at least one)")]
    NoReferences,
    #[error("reference stream {stream} has {got} segments but there are {expected} hypotheses")]
    RefCount { stream: usize, got: usize, expected: usize },
    // `error` rather than `source`: the cause belongs in this message, printed once.
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: line {line} is not valid UTF-8 (invalid byte at byte {byte} of the line)", path.display())]
    Utf8 { path: PathBuf, line: usize, byte: usize },
    #[error("hypothesis file {} has no lines", path.display())]
    EmptyHypotheses { path: PathBuf },
    #[error(
        "line counts differ: hypothesis file {} has {hyp_lines} lines, reference file {} has {ref_lines}",
        hyp.display(),
        reference.display()
    )]
    LineCounts {
        hyp: PathBuf,
        hyp_lines: usize,
        reference: PathBuf,
        ref_lines: usize,
    },
}

/// Checks the shapes every corpus metric needs: `refs[k][i]` for each hypothesis `i`.
pub(crate) fn check_corpus<S: AsRef<str>>(hyps: &[S], refs: &[Vec<S>]) -> Result<(), MetricError> {
    if hyps.is_empty() {
        return Err(MetricError::EmptyCorpus);
    }
    if refs.is_empty() {
        return Err(MetricError::NoReferences);
    }
    for (k, stream) in refs.iter().enumerate() {
        if stream.len() != hyps.len() {
            return Err(MetricError::RefCount {
                stream: k,
                got: stream.len(),
                expected: hyps.len(),
            });
        }
    }
    Ok(())
}
