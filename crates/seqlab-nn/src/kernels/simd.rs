//! Hand-vectorised AVX2 + FMA building blocks for the kernels, behind a token ([`Avx2Fma`])
//! that only exists on a CPU that has both features, so that the safe wrappers are sound.
//!
//! Why: loops over the scalar [`super::recurrence::fexp`] are not vectorised by the compiler
//! when the exponential sits inside the selective scan's state update (callgrind: ~29
//! instructions per element, a quarter of a scan call's instructions); [`exp8`] computes
//! eight at once.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Proof that the CPU has AVX2 and FMA (x86-64 only); [`Avx2Fma::detect`] is the only way to
/// make one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma(());

impl Avx2Fma {
    /// `Some` when the CPU has AVX2 and FMA (a cached feature check; cheap enough per task).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Some(Self(()));
            }
        }
        None
    }
}

/// exp of eight f32 lanes, the algorithm of the scalar [`super::recurrence::fexp`] with fused
/// multiply-adds: x clamped to [−87, 88]; x = n·ln 2 + r with n = round(x·log2 e) and the
/// Cody–Waite split of ln 2 (|r| ≤ ln 2 / 2); e^r by its degree-7 Taylor polynomial
/// (truncation error r⁸/8! < 6e-9 relative, below half an ulp); times 2ⁿ built in the
/// exponent bits.
///
/// Accuracy (test `exp8_is_within_two_ulp_of_exp`): at most 2 ulp from the correctly rounded
/// e^x on [−87, 88], i.e. relative error < 2.4e-7; below −87 it returns e^−87 ≈ 1.6e-38
/// instead of a smaller number or 0 (absolute error < 1.7e-38), above 88 e^88 (no ∞). The
/// selective scan calls it with δ·A ≤ 0 (δ > 0, A < 0).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    // n ∈ [−126, 127] after the clamp, so n + 127 is a valid biased exponent.
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
}

/// Sum of eight lanes as the tree `(v0+v4 + v2+v6) + (v1+v5 + v3+v7)`, the order of the
/// scalar kernels' lane sums.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum8(v: __m256) -> f32 {
    let a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps::<0b01>(b, b)))
}

#[cfg(test)]
impl Avx2Fma {
    /// [`exp8`] over a slice whose length is a multiple of 8 (for the tests).
    fn exp_in_place(self, x: &mut [f32]) {
        assert_eq!(
            x.len() % 8,
            0,
            "exp_in_place: length {} is not a multiple of 8",
            x.len()
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` exists only where AVX2 and FMA are present; loads and stores stay
        // inside `x` (8 at a time, length a multiple of 8).
        unsafe {
            for ch in x.chunks_exact_mut(8) {
                _mm256_storeu_ps(ch.as_mut_ptr(), exp8(_mm256_loadu_ps(ch.as_ptr())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two positive finite f32s.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp8_is_within_two_ulp_of_exp() {
        let Some(simd) = Avx2Fma::detect() else {
            eprintln!("no AVX2 + FMA here: nothing to test");
            return;
        };
        // Every 1/4096 of [−87, 88] plus the ends: 716,801 points, rounded up to whole lanes.
        let mut xs: Vec<f32> = (0..=175 * 4096).map(|i| -87.0 + i as f32 / 4096.0).collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.0, -87.0]);
        while xs.len() % 8 != 0 {
            xs.push(0.5);
        }
        let mut ys = xs.clone();
        simd.exp_in_place(&mut ys);
        let (mut worst, mut at) = (0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            // The correctly rounded value (f64 exp rounded to f32).
            let u = ulps(y, (x as f64).exp() as f32);
            if u > worst {
                (worst, at) = (u, x);
            }
            // And against Rust's f32 exp (libm), which is itself within 1 ulp.
            assert!(ulps(y, x.exp()) <= 3, "exp8({x}) = {y}, f32::exp {}", x.exp());
        }
        assert!(worst <= 2, "exp8 is {worst} ulp off at x = {at}");
        // Outside the range: clamped, finite.
        let mut out = [
            -1000.0,
            -88.0,
            -87.5,
            100.0,
            89.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -87.0,
        ];
        simd.exp_in_place(&mut out);
        let e87 = (-87f64).exp() as f32;
        for v in &out[..3] {
            assert!(ulps(*v, e87) <= 2, "{v}");
        }
        assert!(out.iter().all(|v| v.is_finite() && *v > 0.0), "{out:?}");
    }

    #[test]
    fn hsum8_sums_in_the_scalar_tree_order() {
        let Some(_simd) = Avx2Fma::detect() else {
            return;
        };
        let v = [1e8f32, 1.0, -1e8, 3.0, 0.5, 0.25, 2.0, 7.0];
        let a = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
        let want = (a[0] + a[2]) + (a[1] + a[3]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected; the load reads the 8 elements of `v`.
        let got = unsafe { hsum8(_mm256_loadu_ps(v.as_ptr())) };
        #[cfg(not(target_arch = "x86_64"))]
        let got = want;
        assert_eq!(got, want);
    }
}
