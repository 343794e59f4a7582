//! `exp(x − c)` over a row of f32: the inner loop of the softmax-like kernels (attention's
//! softmax, the cross-entropy's log-sum-exp and its gradient), eight lanes at a time with
//! [`simd::exp8`] where the CPU has AVX2 and FMA, libm's `expf` elsewhere.
//!
//! Why: these loops called libm's scalar `expf` per element; in a training step of
//! `configs/mt-bible-small.toml` (perf, 1 thread) `__expf_fma` alone was 3.6 % of the samples.
//!
//! Every element goes through the same 8-lane code (a ragged tail is padded to 8 lanes), so
//! an element's result does not depend on its position in the row. Shifted arguments below
//! −87 (e.g. masked −∞ scores) give exactly 0, as `expf` does for −∞ (NaN gives 0 too); the largest value lost
//! that way, e^−87 ≈ 1.6e-38, is far below an f32 ulp of any sum that contains the row's
//! maximum (e⁰ = 1). Accuracy otherwise: [`simd::exp8`]'s, ≤ 2 ulp.

use super::simd::{self, Avx2Fma};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Below this (after the shift) the exponential is taken as 0 (see the module docs).
const FLUSH_BELOW: f32 = -87.0;

/// Picks the vector path once; cheap to make (a cached feature check).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowExp(Option<Avx2Fma>);

impl RowExp {
    pub(crate) fn new() -> Self {
        Self(Avx2Fma::detect())
    }

    /// The portable path, for tests that compare both.
    #[cfg(test)]
    fn scalar() -> Self {
        Self(None)
    }

    /// `out[..ch.len()] = exp(ch − c)` for a chunk of at most 8 elements.
    #[inline]
    fn exp_chunk(self, ch: &[f32], c: f32, out: &mut [f32; 8]) {
        debug_assert!(ch.len() <= 8);
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Some(_) => {
                let mut pad = [f32::NEG_INFINITY; 8];
                pad[..ch.len()].copy_from_slice(ch);
                // SAFETY: `self.0` is `Some` only where AVX2 and FMA are present; the load and
                // the store touch the two 8-element arrays only.
                unsafe { exp8_shifted(pad.as_ptr(), c, out.as_mut_ptr()) };
            }
            _ => {
                for (o, &v) in out.iter_mut().zip(ch) {
                    let d = v - c;
                    // As the vector path's ordered comparison: NaN gives 0 too.
                    *o = if d >= FLUSH_BELOW { d.exp() } else { 0.0 };
                }
            }
        }
    }

    /// `f(exp(x − c) of a chunk, the chunk's offset)` over `x` in chunks of 8.
    #[inline]
    fn for_each_exp(self, x: &[f32], c: f32, mut f: impl FnMut(&[f32], usize)) {
        let mut buf = [0f32; 8];
        for (k, ch) in x.chunks(8).enumerate() {
            self.exp_chunk(ch, c, &mut buf);
            f(&buf[..ch.len()], k * 8);
        }
    }

    /// `x ← exp(x − c)` in place; returns the sum of the new values (f32: a sum per chunk of
    /// eight, added in row order).
    pub(crate) fn exp_sub_in_place(self, x: &mut [f32], c: f32) -> f32 {
        let mut sum = 0f32;
        let mut buf = [0f32; 8];
        for ch in x.chunks_mut(8) {
            self.exp_chunk(ch, c, &mut buf);
            let e = &buf[..ch.len()];
            ch.copy_from_slice(e);
            sum += e.iter().sum::<f32>();
        }
        sum
    }

    /// `Σ exp(x − c)`, accumulated in f64.
    pub(crate) fn sum_exp_sub(self, x: &[f32], c: f32) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.0.is_some() {
            // SAFETY: `self.0` is `Some` only where AVX2 and FMA are present.
            return unsafe { sum_exp8_f64(x, c) };
        }
        let mut s = 0f64;
        self.for_each_exp(x, c, |e, _| s += e.iter().map(|&v| v as f64).sum::<f64>());
        s
    }

    /// `Σ x` in f64 (label smoothing's sum of a row of logits).
    pub(crate) fn sum_f64(self, x: &[f32]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.0.is_some() {
            // SAFETY: `self.0` is `Some` only where AVX2 and FMA are present.
            return unsafe { sum8_f64(x) };
        }
        x.iter().map(|&v| v as f64).sum()
    }

    /// `out[i] = g · (exp(x[i] − c) − off)`.
    pub(crate) fn scaled_exp_sub(self, x: &[f32], c: f32, g: f32, off: f32, out: &mut [f32]) {
        assert_eq!(x.len(), out.len(), "scaled_exp_sub: lengths differ");
        self.for_each_exp(x, c, |e, at| {
            for (o, &v) in out[at..at + e.len()].iter_mut().zip(e) {
                *o = g * (v - off);
            }
        });
    }
}

/// `out[0..8] = exp(x[0..8] − c)`, 0 where `x − c < −87`.
///
/// # Safety
/// AVX2 and FMA must be present; `x` and `out` must point to 8 readable / writable f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8_shifted(x: *const f32, c: f32, out: *mut f32) {
    let d = _mm256_sub_ps(_mm256_loadu_ps(x), _mm256_set1_ps(c));
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(d, _mm256_set1_ps(FLUSH_BELOW));
    _mm256_storeu_ps(out, _mm256_and_ps(simd::exp8(d), keep));
}

/// `Σ exp(x − c)` with [`exp8_shifted`]'s values, the sums in four f64 lanes per half (the
/// scalar f64 adds of the values were 2.4 % of a mt-bible-small training step).
///
/// # Safety
/// AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp8_f64(x: &[f32], c: f32) -> f64 {
    let mut acc = F64Lanes::new();
    let (cv, flush) = (_mm256_set1_ps(c), _mm256_set1_ps(FLUSH_BELOW));
    // exp8_shifted's values, kept in registers (same lanes, same order of the sums).
    let exp_of = |v: __m256| {
        let d = _mm256_sub_ps(v, cv);
        _mm256_and_ps(simd::exp8(d), _mm256_cmp_ps::<_CMP_GE_OQ>(d, flush))
    };
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        acc.add8(exp_of(_mm256_loadu_ps(ch.as_ptr())));
    }
    if !chunks.remainder().is_empty() {
        let mut pad = [f32::NEG_INFINITY; 8];
        pad[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        acc.add8(exp_of(_mm256_loadu_ps(pad.as_ptr())));
    }
    acc.total()
}

/// The maximum of a row as `fold(−∞, f32::max)` gives it (NaN ignored), 16 lanes at a time
/// (the fold's dependency chain kept it scalar). Only the sign of a zero maximum may differ
/// (max(+0, −0) is either), which changes no log-probability: x − (±0) and ±0 + ln s agree
/// for every x and s > 0 that give a nonzero result, and are ±0 otherwise.
pub(crate) fn row_max(r: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = r.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    let m = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    lanes.iter().fold(m, |a, &b| a.max(b))
}

/// `Σ x` in four f64 lanes per half of eight f32.
///
/// # Safety
/// AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum8_f64(x: &[f32]) -> f64 {
    let mut acc = F64Lanes::new();
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        acc.add8(_mm256_loadu_ps(ch.as_ptr()));
    }
    acc.total() + chunks.remainder().iter().map(|&v| v as f64).sum::<f64>()
}

/// The f64 sum of [`sum_exp8_f64`] and [`sum8_f64`]: eight f32 values at a time, widened into
/// four f64 lanes per half.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct F64Lanes {
    lo: __m256d,
    hi: __m256d,
}

#[cfg(target_arch = "x86_64")]
impl F64Lanes {
    /// # Safety
    /// AVX2 and FMA must be present (as for every method).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn new() -> Self {
        Self {
            lo: _mm256_setzero_pd(),
            hi: _mm256_setzero_pd(),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add8(&mut self, v: __m256) {
        self.lo = _mm256_add_pd(self.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        self.hi = _mm256_add_pd(self.hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn total(self) -> f64 {
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(self.lo, self.hi));
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Vec<f32>> {
        let mut v = Vec::new();
        for len in [1usize, 7, 8, 9, 31, 100] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.9).collect();
            v.push(row);
        }
        // Masked entries (−∞), a row of large magnitudes, and arguments near the flush bound.
        v.push(vec![
            0.5,
            f32::NEG_INFINITY,
            -3.0,
            f32::NEG_INFINITY,
            2.0,
            -86.9,
            -87.1,
            -200.0,
            1.0,
        ]);
        v.push(vec![80.0, 87.5, -50.0, 60.25]);
        v
    }

    /// Both paths against f64 exp: relative error ≤ 3e-7 (exp8's 2 ulp plus the shift's
    /// rounding), exact 0 for −∞ and below the flush bound.
    #[test]
    fn both_paths_match_f64_exp_and_flush_masked_entries() {
        for re in [RowExp::new(), RowExp::scalar()] {
            for row in rows() {
                let c = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut x = row.clone();
                let sum = re.exp_sub_in_place(&mut x, c);
                let mut want_sum = 0f64;
                for (&got, &v) in x.iter().zip(&row) {
                    let d = v - c;
                    let want = if d < FLUSH_BELOW { 0.0 } else { (d as f64).exp() };
                    want_sum += want;
                    if want == 0.0 {
                        assert_eq!(got, 0.0, "{v} - {c} must flush to 0");
                    } else {
                        let rel = ((got as f64 - want) / want).abs();
                        assert!(rel <= 3e-7, "exp({d}) = {got}, want {want} (rel {rel:e})");
                    }
                }
                assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-6, "{sum} vs {want_sum}");
                let s64 = re.sum_exp_sub(&row, c);
                assert!(((s64 - want_sum) / want_sum).abs() < 1e-6, "{s64} vs {want_sum}");
                let finite: Vec<f32> = row.iter().map(|&v| v.max(-1e3)).collect();
                let want: f64 = finite.iter().map(|&v| v as f64).sum();
                assert!((re.sum_f64(&finite) - want).abs() <= 1e-9 * want.abs().max(1.0));
                let mut out = vec![0f32; row.len()];
                re.scaled_exp_sub(&row, c, 2.0, 0.25, &mut out);
                for (o, e) in out.iter().zip(&x) {
                    assert!((o - 2.0 * (e - 0.25)).abs() <= 1e-6, "{o} vs {e}");
                }
            }
        }
    }

    /// An element's value does not depend on where it sits in the row (the tail is padded
    /// through the same 8-lane code).
    #[test]
    fn results_do_not_depend_on_position() {
        let re = RowExp::new();
        let row: Vec<f32> = (0..13).map(|i| i as f32 * -0.7).collect();
        let mut a = row.clone();
        re.exp_sub_in_place(&mut a, 0.0);
        for start in 0..13 {
            let mut b = row[start..].to_vec();
            re.exp_sub_in_place(&mut b, 0.0);
            assert_eq!(&a[start..], &b[..], "start {start}");
        }
    }
}
