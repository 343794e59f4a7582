//! Vector primitives for the trainer: a portable scalar version and an AVX2+FMA version
//! chosen at run time.
//!
//! On CPUs with AVX-512F the 16-lane version is used (masked tails). On the AMD EPYC (Zen 5)
//! development machine it ran skip-gram at 1.90 M words/s against the AVX2 version's 1.53 M
//! (2 threads, `bench/run.py --rows w2v-sg`, quiet, 3 alternating runs each, medians;
//! 2026-12-01), CBOW at the same speed; the vectors' quality stayed within seed noise
//! (bench/w2v_vs_gensim.results.md). An earlier 16-lane version on the Intel machine ran at
//! 0.65x AVX2 (dev build, loaded machine), perhaps because 400-byte rows make every other
//! 64-byte load span two cache lines there.

/// Vector primitives over rows of `dim` f32. Two implementations: portable scalar code,
/// and AVX2+FMA intrinsics (LLVM does not vectorize an f32 dot product by itself, since
/// that reorders the sum; the 100-wide dot and axpy are nearly all of the training time).
pub(crate) trait Simd {
    /// Hint that `row` will be read soon.
    unsafe fn prefetch(row: &[f32]);
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += a · x`
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]);
    /// One logistic-regression update in a single pass over `l2`: `e += g · l2` with `l2`'s
    /// old value, then `l2 += g · l1` (word2vec.c's two loops, in its order per element).
    /// Fused because the two loops read `l2` twice and it is a random row, usually not in L1.
    /// `l1`, `l2`, `e` are disjoint and of equal length.
    #[inline(always)]
    unsafe fn update(g: f32, l1: &[f32], l2: &mut [f32], e: &mut [f32]) {
        Self::axpy(g, l2, e);
        Self::axpy(g, l1, l2);
    }
}

pub(crate) struct Scalar;

impl Simd for Scalar {
    #[inline(always)]
    unsafe fn prefetch(_row: &[f32]) {}
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 4];
        let n = a.len().min(b.len());
        let mut i = 0;
        while i + 4 <= n {
            for k in 0..4 {
                acc[k] += a[i + k] * b[i + k];
            }
            i += 4;
        }
        let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        for (yi, xi) in y[..n].iter_mut().zip(&x[..n]) {
            *yi += a * xi;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

/// Unaligned 8 x f32. Reading/writing a packed field by value compiles to `vmovups`, like
/// `_mm256_loadu_ps`, but without the `copy_nonoverlapping` precondition checks that builds
/// with debug assertions (our dev/test profile) put around every such load.
#[cfg(target_arch = "x86_64")]
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct U8(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn ld(p: *const f32) -> std::arch::x86_64::__m256 {
    (*(p as *const U8)).0
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn st(p: *mut f32, v: std::arch::x86_64::__m256) {
    (*(p as *mut U8)).0 = v;
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    #[inline(always)]
    unsafe fn prefetch(row: &[f32]) {
        use std::arch::x86_64::*;
        let p = row.as_ptr() as *const i8;
        let bytes = row.len() * 4;
        let mut o = 0;
        while o < bytes {
            _mm_prefetch::<_MM_HINT_T0>(p.add(o));
            o += 64;
        }
    }
    /// Caller guarantees AVX2 and FMA (checked once in `pick_kernel`) and `a.len() == b.len()`.
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm256_setzero_ps();
        let mut s1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(ld(pa.add(i)), ld(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(ld(pa.add(i + 8)), ld(pb.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(ld(pa.add(i)), ld(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        r
    }
    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            st(py.add(i), _mm256_fmadd_ps(va, ld(px.add(i)), ld(py.add(i))));
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
    #[inline(always)]
    unsafe fn update(g: f32, l1: &[f32], l2: &mut [f32], e: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = l1.len();
        let (p1, p2, pe) = (l1.as_ptr(), l2.as_mut_ptr(), e.as_mut_ptr());
        let vg = _mm256_set1_ps(g);
        let mut i = 0;
        while i + 8 <= n {
            let w = ld(p2.add(i));
            st(pe.add(i), _mm256_fmadd_ps(vg, w, ld(pe.add(i))));
            st(p2.add(i), _mm256_fmadd_ps(vg, ld(p1.add(i)), w));
            i += 8;
        }
        while i < n {
            let w = *p2.add(i);
            *pe.add(i) += g * w;
            *p2.add(i) = w + g * *p1.add(i);
            i += 1;
        }
    }
}

/// The first `k` (< 16) of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tail_mask(k: usize) -> std::arch::x86_64::__mmask16 {
    ((1u32 << k) - 1) as u16
}

/// 16 x f32 with masked tails (AVX-512F): the same operations as [`Avx2`], the sums in
/// other lanes (so other bits).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    #[inline(always)]
    unsafe fn prefetch(row: &[f32]) {
        Avx2::prefetch(row)
    }
    /// Caller guarantees AVX-512F (checked once in `pick_kernel`) and `a.len() == b.len()`.
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)), s1);
            i += 32;
        }
        if i + 16 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            s1 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                s1,
            );
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }
    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm512_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(
                py.add(i),
                _mm512_fmadd_ps(va, _mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(py.add(i))),
            );
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let v = _mm512_fmadd_ps(
                va,
                _mm512_maskz_loadu_ps(m, px.add(i)),
                _mm512_maskz_loadu_ps(m, py.add(i)),
            );
            _mm512_mask_storeu_ps(py.add(i), m, v);
        }
    }
    #[inline(always)]
    unsafe fn update(g: f32, l1: &[f32], l2: &mut [f32], e: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = l1.len();
        let (p1, p2, pe) = (l1.as_ptr(), l2.as_mut_ptr(), e.as_mut_ptr());
        let vg = _mm512_set1_ps(g);
        let mut i = 0;
        while i + 16 <= n {
            let w = _mm512_loadu_ps(p2.add(i));
            _mm512_storeu_ps(pe.add(i), _mm512_fmadd_ps(vg, w, _mm512_loadu_ps(pe.add(i))));
            _mm512_storeu_ps(p2.add(i), _mm512_fmadd_ps(vg, _mm512_loadu_ps(p1.add(i)), w));
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let w = _mm512_maskz_loadu_ps(m, p2.add(i));
            let e1 = _mm512_fmadd_ps(vg, w, _mm512_maskz_loadu_ps(m, pe.add(i)));
            _mm512_mask_storeu_ps(pe.add(i), m, e1);
            let w1 = _mm512_fmadd_ps(vg, _mm512_maskz_loadu_ps(m, p1.add(i)), w);
            _mm512_mask_storeu_ps(p2.add(i), m, w1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Every implementation against the scalar one, on lengths around each tail case
    /// (1..=40) and the usual dims (100, 300): dot to 1e-5 relative, axpy and the fused
    /// update exactly (element-wise fma against mul+add may differ by one rounding: 1e-6).
    fn check<S: Simd>() {
        for n in (1..=40).chain([100, 300]) {
            let (a, b) = (row(n, 1), row(n, 2));
            let (d, ds) = unsafe { (S::dot(&a, &b), Scalar::dot(&a, &b)) };
            assert!((d - ds).abs() <= 1e-5 * (1.0 + ds.abs()), "dot n={n}: {d} vs {ds}");
            let (mut y, mut ys) = (b.clone(), b.clone());
            unsafe { S::axpy(0.3, &a, &mut y) };
            unsafe { Scalar::axpy(0.3, &a, &mut ys) };
            // l2 and e sit in longer buffers whose tails must stay untouched (masked stores)
            let guard = [7.0f32; 16];
            let (mut l2, mut e) = (
                [b.clone(), guard.to_vec()].concat(),
                [row(n, 3), guard.to_vec()].concat(),
            );
            let (mut l2s, mut es) = (b.clone(), row(n, 3));
            unsafe { S::update(-0.7, &a, &mut l2[..n], &mut e[..n]) };
            assert_eq!(
                (&l2[n..], &e[n..]),
                (&guard[..], &guard[..]),
                "n={n}: wrote past the row"
            );
            let (l2, e) = (l2[..n].to_vec(), e[..n].to_vec());
            unsafe { Scalar::update(-0.7, &a, &mut l2s, &mut es) };
            for (got, want) in [(&y, &ys), (&l2, &l2s), (&e, &es)] {
                for (g, w) in got.iter().zip(want.iter()) {
                    assert!((g - w).abs() <= 1e-6, "n={n}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn vector_primitives_match_scalar() {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                check::<Avx2>();
            }
            if std::is_x86_feature_detected!("avx512f") {
                check::<Avx512>();
            }
        }
        check::<Scalar>();
    }
}
