//! Shared plumbing of seqlab's fused CPU kernels (candle `CustomOp`s).

use candle_core::{bail, CpuStorage, Layout, Result};

/// All f32 elements of a CPU storage (a strided view is read through its layout by the op).
pub(crate) fn storage_f32<'a>(op: &str, what: &str, s: &'a CpuStorage) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("{op}: {what} must be f32"),
    }
}

/// The elements of a contiguous f32 CPU tensor argument.
pub(crate) fn contiguous_f32<'a>(op: &str, what: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    contiguous(op, what, storage_f32(op, what, s)?, l)
}

/// The part of `data` a contiguous layout covers.
pub(crate) fn contiguous<'a>(op: &str, what: &str, data: &'a [f32], l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}
