//! Vector primitives for the trainer: a portable scalar version and an AVX2+FMA version
//! chosen at run time.

/// Vector primitives over rows of `dim` f32. Two implementations: portable scalar code,
/// and AVX2+FMA intrinsics (LLVM does not vectorize an f32 dot product by itself, since
/// that reorders the sum; the 100-wide dot and axpy are nearly all of the training time).
pub(crate) trait Simd {
    /// Hint that `row` will be read soon.
    unsafe fn prefetch(row: &[f32]);
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += a · x`
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]);
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
}
