//! Vector primitives for the trainer: a portable scalar version and an AVX2+FMA version
//! chosen at run time.
//!
//! On CPUs with AVX-512F the 16-lane version is used. On the AMD EPYC (Zen 5)
//! development machine it ran skip-gram at 1.90 M words/s against the AVX2 version's 1.53 M
//! (2 threads, `bench/run.py --rows w2v-sg`, quiet, 3 alternating runs each, medians;
//! 2026-12-01), CBOW at the same speed; the vectors' quality stayed within seed noise
//! (bench/w2v_vs_gensim.results.md). An earlier 16-lane version on the Intel machine ran at
//! 0.65x AVX2 (dev build, loaded machine), perhaps because 400-byte rows make every other
//! 64-byte load span two cache lines there.
//!
//! The trainer now keeps its rows 64-byte aligned with a zero pad to a multiple of 16 floats
//! (`train::Matrix`), and the AVX-512 primitives read and write the last vector of a row
//! whole instead of masking it ([`Avx512`]`<true>`; same values bit for bit). On the EPYC:
//! user CPU seconds, 1 thread, 1 epoch, medians of 5 and 4 alternating runs on a loaded
//! machine (indicative): skip-gram 12.08 / 12.31 against 12.65 / 12.96 with the unaligned
//! 400-byte rows and masked tails; CBOW 3.78 / 3.64 against 4.01 / 3.63 (2026-12-01).

/// Vector primitives over rows of `dim` f32. Two implementations: portable scalar code,
/// and AVX2+FMA intrinsics (LLVM does not vectorize an f32 dot product by itself, since
/// that reorders the sum; the 100-wide dot and axpy are nearly all of the training time).
pub(crate) trait Simd {
    /// Hint that `row` will be read soon.
    unsafe fn prefetch(row: &[f32]);
    /// Hint that `row` will be read after the current step: fetched into L2 only.
    #[inline(always)]
    unsafe fn prefetch_far(_row: &[f32]) {}
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
    #[inline(always)]
    unsafe fn prefetch_far(row: &[f32]) {
        use std::arch::x86_64::*;
        let p = row.as_ptr() as *const i8;
        let mut o = 0;
        while o < row.len() * 4 {
            _mm_prefetch::<_MM_HINT_T1>(p.add(o));
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

/// f32 lanes of one AVX-512 vector (and of one 64-byte cache line).
pub(crate) const LANES: usize = 16;

/// The row stride of the trainer's padded layout: `dim` rounded up to whole cache lines.
pub(crate) fn padded_stride(dim: usize) -> usize {
    dim.next_multiple_of(LANES)
}

/// The first `k` (< 16) of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tail_mask(k: usize) -> std::arch::x86_64::__mmask16 {
    ((1u32 << k) - 1) as u16
}

/// 16 x f32 (AVX-512F): the same operations as [`Avx2`], the sums in other lanes (so other
/// bits). The last, partial vector of a row (`dim % 16` lanes) is read and written
/// - with `PADDED = false`: through masks (rows of any layout);
/// - with `PADDED = true`: whole, because every slice passed is a row of a padded layout: it
///   is followed by +0.0 up to a multiple of 16 values ([`padded_stride`]), which the
///   primitives may read and rewrite. The masked loads read +0.0 in those lanes too, so every
///   sum is the same bit for bit; and the pad stays +0.0, since each store there writes
///   `fma(a, +0, +0)` = +0 for finite `a`. Test: `padded_tails_match_masked_tails`.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512<const PADDED: bool>;

/// The `k = n % 16` trailing lanes at `p` (others +0.0; see [`Avx512`] for `PADDED`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tail_load<const PADDED: bool>(k: usize, p: *const f32) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    if PADDED {
        _mm512_loadu_ps(p)
    } else {
        _mm512_maskz_loadu_ps(tail_mask(k), p)
    }
}

/// Stores the `k = n % 16` trailing lanes of `v` at `p` (with `PADDED`, the pad lanes too).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tail_store<const PADDED: bool>(k: usize, p: *mut f32, v: std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    if PADDED {
        _mm512_storeu_ps(p, v)
    } else {
        _mm512_mask_storeu_ps(p, tail_mask(k), v)
    }
}

#[cfg(target_arch = "x86_64")]
impl<const PADDED: bool> Simd for Avx512<PADDED> {
    #[inline(always)]
    unsafe fn prefetch(row: &[f32]) {
        Avx2::prefetch(row)
    }
    #[inline(always)]
    unsafe fn prefetch_far(row: &[f32]) {
        Avx2::prefetch_far(row)
    }
    /// Caller guarantees AVX-512F (checked once in `pick_kernel`), `a.len() == b.len()` and,
    /// with `PADDED`, padded rows.
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
            let k = n - i;
            s1 = _mm512_fmadd_ps(tail_load::<PADDED>(k, pa.add(i)), tail_load::<PADDED>(k, pb.add(i)), s1);
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
            let k = n - i;
            let v = _mm512_fmadd_ps(va, tail_load::<PADDED>(k, px.add(i)), tail_load::<PADDED>(k, py.add(i)));
            tail_store::<PADDED>(k, py.add(i), v);
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
            let k = n - i;
            let w = tail_load::<PADDED>(k, p2.add(i));
            let e1 = _mm512_fmadd_ps(vg, w, tail_load::<PADDED>(k, pe.add(i)));
            tail_store::<PADDED>(k, pe.add(i), e1);
            let w1 = _mm512_fmadd_ps(vg, tail_load::<PADDED>(k, p1.add(i)), w);
            tail_store::<PADDED>(k, p2.add(i), w1);
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
                check::<Avx512<false>>();
            }
        }
        check::<Scalar>();
    }

    /// The padded AVX-512 primitives on padded rows give the masked ones' results bit for bit,
    /// and leave the pad at +0.0 (negative scales make `g · 0` a -0.0 there first).
    #[test]
    fn padded_tails_match_masked_tails() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            type M = Avx512<false>;
            type P = Avx512<true>;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for n in (1..=40).chain([100, 300]) {
                let p = padded_stride(n);
                let pad = |v: &[f32]| [v, &vec![0f32; p - n]].concat();
                // Full mantissas (`row`'s values are multiples of 1/500, whose sums often come
                // out the same in any order).
                let full = |s| row(n, s).iter().map(|x| x * 0.737_373_7 + 1e-3).collect::<Vec<_>>();
                let (a, b, c) = (full(1), full(2), full(3));
                let (pa, mut pb, mut pc) = (pad(&a), pad(&b), pad(&c));
                let (mut b1, mut c1) = (b.clone(), c.clone());
                unsafe {
                    assert_eq!(
                        P::dot(&pa[..n], &pb[..n]).to_bits(),
                        M::dot(&a, &b).to_bits(),
                        "dot n={n}"
                    );
                    for g in [-0.7, 0.3] {
                        P::axpy(g, &pa[..n], &mut pb[..n]);
                        M::axpy(g, &a, &mut b1);
                        P::update(g, &pa[..n], &mut pb[..n], &mut pc[..n]);
                        M::update(g, &a, &mut b1, &mut c1);
                        let (d, dm) = (P::dot(&pb[..n], &pc[..n]), M::dot(&b1, &c1));
                        assert_eq!(d.to_bits(), dm.to_bits(), "dot after updates n={n}");
                    }
                }
                // Such sums mostly round alike in any lane order, so a probe that does not:
                // 1 (lane 0 of the first vector, summed in `s0`) + 2^-24 (the second, `s1`) +
                // 2^-24 (the tail) is 1 + 2^-23 when the tail goes to `s1` and 1 if to `s0`.
                if n > 32 && n % 16 != 0 {
                    let mut q = vec![0f32; p];
                    (q[0], q[16], q[n / 16 * 16]) = (1.0, 2f32.powi(-12), 2f32.powi(-12));
                    let (d, dm) = unsafe { (P::dot(&q[..n], &q[..n]), M::dot(&q[..n], &q[..n])) };
                    assert_eq!(
                        (d, dm),
                        (1.0 + 2f32.powi(-23), 1.0 + 2f32.powi(-23)),
                        "lane order n={n}"
                    );
                }
                assert_eq!(bits(&pb), bits(&pad(&b1)), "axpy/update row n={n}");
                assert_eq!(bits(&pc), bits(&pad(&c1)), "update gradient n={n}");
            }
        }
    }
}
