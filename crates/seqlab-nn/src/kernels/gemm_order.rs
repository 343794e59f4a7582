//! What the `gemm` crate (0.19, with its `x86-v4` feature, as this workspace builds it)
//! computes on this CPU, for the decoding kernels that must give its values bit for bit
//! while calling it less often ([`super::linear::TransposedLinear`]'s row chunks, the
//! single-query attention of [`super::attention`]).
//!
//! gemm picks its f32 kernels at run time: AVX-512F kernels (16 lanes, micro-kernel 64 × 6)
//! where the CPU has AVX-512F, else FMA kernels (8 lanes, 16 × 6), else scalar ones (4
//! columns; no horizontal kernels). Its horizontal (dot-product) kernel, taken for products
//! of at most 256 outputs whose operands are both contiguous along the depth, accumulates
//! each output in one vector of lanes (lane i: depth i, i + lanes, ...), one fused
//! multiply-add per depth chunk from +0, then adds the lanes in a fixed tree
//! (`reduce_sum`) and multiplies by the scale. Its column-major matrix-vector product
//! (one output column, depth > 2) computes `o = a₀·x₀`, then `o = fma(a_c, x_c, o)` for
//! each further depth c, per output element. Read from gemm-common 0.19.0 (`gemm.rs`,
//! `horizontal_microkernel.rs`, `gemv.rs`) and gemm-f32 0.19.0 (`microkernel.rs`).

/// The lane count of gemm's f32 kernels on this CPU (16 with AVX-512F, 8 with FMA), `None`
/// where it runs its scalar kernels (or off x86-64), where nothing here applies.
#[inline]
pub(crate) fn lanes() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Some(16);
        }
        if std::is_x86_feature_detected!("fma") {
            return Some(8);
        }
    }
    None
}

/// The columns (NR) of gemm's f32 micro-kernel on this CPU: 6 for its AVX-512 and FMA
/// kernels, 4 for the scalar one (and taken as 4 off x86-64). gemm packs an already
/// column-major left operand when a call has more than 8 · NR columns (single thread).
#[inline]
pub(crate) fn micro_kernel_columns() -> usize {
    if lanes().is_some() {
        6
    } else {
        4
    }
}

/// `scale · Σ a_i b_i` in the order of gemm's horizontal kernel with `L` lanes (16 or 8):
/// `a.len() == b.len()`, a multiple of `L`.
#[inline(always)]
pub(crate) fn horizontal_dot<const L: usize>(a: &[f32], b: &[f32], scale: f32) -> f32 {
    debug_assert!(a.len() == b.len() && a.len() % L == 0 && (L == 8 || L == 16));
    let mut acc = [0f32; L];
    for (ca, cb) in a.chunks_exact(L).zip(b.chunks_exact(L)) {
        for i in 0..L {
            acc[i] = ca[i].mul_add(cb[i], acc[i]);
        }
    }
    // reduce_sum: (16 lanes) halves added to 8; then lanes i + (i + 4) to 4, then
    // (0 + 2) + (1 + 3).
    let mut n = L;
    while n > 4 {
        n /= 2;
        for i in 0..n {
            acc[i] += acc[i + n];
        }
    }
    scale * ((acc[0] + acc[2]) + (acc[1] + acc[3]))
}

/// `o = Σ_c w_c · rows_c` in the order of gemm's column-major matrix-vector product (depth
/// > 2): `o = w₀ · rows₀`, then `o = fma(rows_c, w_c, o)`; `row(c)` is the c-th row
/// (`o.len()` elements), `w.len() > 2` rows in all.
///
/// Each output element is its own chain, so the outputs are taken 32 at a time, kept in
/// registers over the whole depth (gemm loads and stores them at every depth).
#[inline(always)]
pub(crate) fn gemv_colmajor<'a>(o: &mut [f32], w: &[f32], row: impl Fn(usize) -> &'a [f32]) {
    debug_assert!(w.len() > 2);
    const B: usize = 32;
    let n = o.len();
    let mut j0 = 0;
    while j0 + B <= n {
        let mut acc = [0f32; B];
        let r0 = &row(0)[j0..j0 + B];
        for i in 0..B {
            acc[i] = r0[i] * w[0];
        }
        for (c, &wc) in w.iter().enumerate().skip(1) {
            let r = &row(c)[j0..j0 + B];
            for i in 0..B {
                acc[i] = r[i].mul_add(wc, acc[i]);
            }
        }
        o[j0..j0 + B].copy_from_slice(&acc);
        j0 += B;
    }
    if j0 < n {
        let o = &mut o[j0..];
        for (o, &a) in o.iter_mut().zip(&row(0)[j0..n]) {
            *o = a * w[0];
        }
        for (c, &wc) in w.iter().enumerate().skip(1) {
            for (o, &a) in o.iter_mut().zip(&row(c)[j0..n]) {
                *o = a.mul_add(wc, *o);
            }
        }
    }
}

/// `out[j] = scale · q·key_j` for keys `key_j = keys[at(j)..][..q.len()]`, each in the order
/// of gemm's horizontal kernel with `lanes` (16 or 8) lanes, with its instructions (AVX-512F
/// or FMA) where the CPU has them, four keys at a time as gemm does; elsewhere (and as the
/// reference of the tests) [`horizontal_dot`]. `at(j)` is where key j starts: `j · stride`
/// for keys in one strided run, or anywhere (decoding caches read through their ancestor
/// table); the arithmetic does not depend on it.
pub(crate) fn dots(out: &mut [f32], q: &[f32], keys: &[f32], at: impl Fn(usize) -> usize, lanes: usize, scale: f32) {
    let d = q.len();
    assert!(d.is_multiple_of(lanes));
    // Checked once here, so the unsafe loads below stay in `keys`.
    let key = |j: usize| -> usize {
        let o = at(j);
        assert!(o + d <= keys.len(), "key {j} at {o} past {} elements", keys.len());
        o
    };
    #[cfg(target_arch = "x86_64")]
    {
        if lanes == 16 && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; key j's d elements are in `keys` (`key` asserts).
            unsafe { dots_avx512(out, q, keys, key, scale) };
            return;
        }
        if lanes == 8 && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx") {
            // SAFETY: as above, with AVX and FMA.
            unsafe { dots_fma(out, q, keys, key, scale) };
            return;
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        let k0 = key(j);
        let kj = &keys[k0..k0 + d];
        *o = if lanes == 16 {
            horizontal_dot::<16>(kj, q, scale)
        } else {
            horizontal_dot::<8>(kj, q, scale)
        };
    }
}

/// gemm-f32's AVX-512 `reduce_sum`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce16(x: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    let y = _mm256_add_ps(
        _mm512_castps512_ps256(x),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
    );
    reduce8(y)
}

/// gemm-f32's FMA (8-lane) `reduce_sum`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn reduce8(x: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let x = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let hi = _mm_movehl_ps(x, x);
    let r0 = _mm_add_ps(x, hi);
    let r0_shuffled = _mm_shuffle_ps::<0b0001>(r0, r0);
    _mm_cvtss_f32(_mm_add_ss(r0, r0_shuffled))
}

/// [`dots`] on AVX-512F: keys four at a time (gemm's `hx4x1`), one accumulator each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(out: &mut [f32], q: &[f32], keys: &[f32], key: impl Fn(usize) -> usize, scale: f32) {
    use std::arch::x86_64::*;
    let d = q.len();
    let (qp, kp) = (q.as_ptr(), keys.as_ptr());
    let mut j = 0;
    while j < out.len() {
        let nk = (out.len() - j).min(4);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut at = [0usize; 4];
        for (i, a) in at.iter_mut().enumerate().take(nk) {
            *a = key(j + i);
        }
        let mut c = 0;
        while c < d {
            let qv = _mm512_loadu_ps(qp.add(c));
            for (i, a) in acc.iter_mut().enumerate().take(nk) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(kp.add(at[i] + c)), qv, *a);
            }
            c += 16;
        }
        for (i, a) in acc.iter().enumerate().take(nk) {
            out[j + i] = scale * reduce16(*a);
        }
        j += nk;
    }
}

/// [`dots`] with FMA (8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
unsafe fn dots_fma(out: &mut [f32], q: &[f32], keys: &[f32], key: impl Fn(usize) -> usize, scale: f32) {
    use std::arch::x86_64::*;
    let d = q.len();
    let (qp, kp) = (q.as_ptr(), keys.as_ptr());
    let mut j = 0;
    while j < out.len() {
        let nk = (out.len() - j).min(4);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut at = [0usize; 4];
        for (i, a) in at.iter_mut().enumerate().take(nk) {
            *a = key(j + i);
        }
        let mut c = 0;
        while c < d {
            let qv = _mm256_loadu_ps(qp.add(c));
            for (i, a) in acc.iter_mut().enumerate().take(nk) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(kp.add(at[i] + c)), qv, *a);
            }
            c += 8;
        }
        for (i, a) in acc.iter().enumerate().take(nk) {
            out[j + i] = scale * reduce8(*a);
        }
        j += nk;
    }
}

/// `o = Σ_c w_c · rows_c` ([`gemv_colmajor`]) for rows `rows[at(c)..][..o.len()]` (`at` as
/// in [`dots`]), compiled with FMA where the CPU has it.
pub(crate) fn weighted_rows(o: &mut [f32], w: &[f32], rows: &[f32], at: impl Fn(usize) -> usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "fma")]
        unsafe fn fma(o: &mut [f32], w: &[f32], rows: &[f32], at: impl Fn(usize) -> usize) {
            let n = o.len();
            gemv_colmajor(o, w, |c| {
                let a = at(c);
                &rows[a..a + n]
            })
        }
        // SAFETY: the CPU has FMA.
        return unsafe { fma(o, w, rows, at) };
    }
    let n = o.len();
    gemv_colmajor(o, w, |c| {
        let a = at(c);
        &rows[a..a + n]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;
    use gemm::{gemm, Parallelism};

    /// The two orders reproduce gemm's own calls bit for bit (the attention step's shapes:
    /// one query row against 3..=256 keys, and the probabilities times the values), with the
    /// lane count gemm takes on this CPU.
    #[test]
    fn orders_equal_gemm_bitwise() {
        let Some(l) = lanes() else { return };
        for (i, &(s, d)) in [(3, 64), (17, 64), (40, 32), (256, 16), (5, 128), (9, 48)]
            .iter()
            .enumerate()
        {
            let q = randn(1 + i as u64, &[d]).to_vec1::<f32>().unwrap();
            let k = randn(11 + i as u64, &[s, d])
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let p = randn(21 + i as u64, &[s]).to_vec1::<f32>().unwrap();
            let scale = 0.125f32;
            let mut want = vec![0f32; s];
            let mut o_want = vec![0f32; d];
            // SAFETY: sizes as named: q (1, d), k (s, d) row-major, scores (1, s); p (1, s),
            // k read as v (s, d), o (1, d).
            unsafe {
                gemm(
                    1,
                    s,
                    d,
                    want.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    q.as_ptr(),
                    1,
                    d as isize,
                    k.as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                gemm(
                    1,
                    d,
                    s,
                    o_want.as_mut_ptr(),
                    1,
                    d as isize,
                    false,
                    p.as_ptr(),
                    1,
                    s as isize,
                    k.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            let mut got = vec![0f32; s];
            dots(&mut got, &q, &k, |j| j * d, l, scale);
            let portable: Vec<f32> = (0..s)
                .map(|j| {
                    let kj = &k[j * d..(j + 1) * d];
                    if l == 16 {
                        horizontal_dot::<16>(kj, &q, scale)
                    } else {
                        horizontal_dot::<8>(kj, &q, scale)
                    }
                })
                .collect();
            let mut o = vec![0f32; d];
            weighted_rows(&mut o, &p, &k, |c| c * d);
            let bits = crate::testing::bits;
            assert_eq!(bits(&got), bits(&want), "scores, s {s}, d {d}, {l} lanes");
            assert_eq!(bits(&portable), bits(&want), "portable scores, s {s}, d {d}, {l} lanes");
            assert_eq!(bits(&o), bits(&o_want), "values, s {s}, d {d}");
        }
    }
}
