//! A row-major f32 transpose, for handing `gemm` a weight in the layout it reads in place
//! ([`super::linear`]: the training forward's Wᵀ, [`super::linear::TransposedLinear`]'s
//! panels).
//!
//! Why a kernel: gemm packs a row-major left operand by gathering it one element at a time
//! (gemm-common 0.19 `pack_generic_inner_loop`: a scalar load and store per element, 64
//! strided rows per depth); that gather was 1.7 % of a `bench encoder` training step at one
//! thread (perf, cpu-clock, session 12). A plain tiled transpose costs as many scalar moves;
//! whole 16 × 16 tiles in AVX-512 registers (16 loads, 64 shuffles, 16 stores) cost about a
//! sixth of them.

#[cfg(target_arch = "x86_64")]
use super::simd::Avx512;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `dst` (cols × rows, row-major) = `src`ᵀ, where `src` is rows × cols row-major. Exact
/// copies (no arithmetic), so any path gives the same bits.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (full_r, full_c) = (rows / 16 * 16, cols / 16 * 16);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = Avx512::detect() {
        // SAFETY: the token proves AVX-512F; tiles stay within the full 16-row and 16-column
        // blocks of both matrices (lengths asserted above).
        unsafe { tiles_avx512(t, src, rows, cols, full_r, full_c, dst) };
        scalar_rest(src, rows, cols, full_r, full_c, dst);
        return;
    }
    scalar_rest(src, rows, cols, 0, 0, dst);
}

/// The elements outside the leading `full_r` × `full_c` block (all of them for 0 × 0), tiled
/// 16 × 16 so that both sides stay in a few cache lines.
fn scalar_rest(src: &[f32], rows: usize, cols: usize, full_r: usize, full_c: usize, dst: &mut [f32]) {
    for r0 in (0..rows).step_by(16) {
        for c0 in (0..cols).step_by(16) {
            if r0 < full_r && c0 < full_c {
                continue;
            }
            for r in r0..(r0 + 16).min(rows) {
                for c in c0..(c0 + 16).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// The 16 × 16 tiles of the leading `full_r` × `full_c` block (multiples of 16).
///
/// # Safety
/// `src` holds rows × cols and `dst` cols × rows elements, `full_r` ≤ rows and `full_c` ≤
/// cols.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tiles_avx512(
    _t: Avx512,
    src: &[f32],
    rows: usize,
    cols: usize,
    full_r: usize,
    full_c: usize,
    dst: &mut [f32],
) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for r0 in (0..full_r).step_by(16) {
        for c0 in (0..full_c).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(s.add((r0 + i) * cols + c0));
            }
            // Interleave pairs of rows (32-bit), then pairs of pairs (64-bit), then 128-bit
            // lanes twice: afterwards r[j] is column c0 + j of the tile.
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let pd = _mm512_castps_pd;
            for j in 0..4 {
                let (a, b, c, e) = (pd(t[4 * j]), pd(t[4 * j + 1]), pd(t[4 * j + 2]), pd(t[4 * j + 3]));
                r[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
                r[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
                r[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
                r[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
            }
            for g in [0, 8] {
                for q in 0..4 {
                    t[g + q] = _mm512_shuffle_f32x4::<0x88>(r[g + q], r[g + 4 + q]);
                    t[g + 4 + q] = _mm512_shuffle_f32x4::<0xdd>(r[g + q], r[g + 4 + q]);
                }
            }
            for q in 0..8 {
                r[q] = _mm512_shuffle_f32x4::<0x88>(t[q], t[8 + q]);
                r[8 + q] = _mm512_shuffle_f32x4::<0xdd>(t[q], t[8 + q]);
            }
            for (j, v) in r.iter().enumerate() {
                _mm512_storeu_ps(d.add((c0 + j) * rows + r0), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path (AVX-512 tiles plus scalar edges, scalar only) gives the plain transpose,
    /// for sizes with and without whole tiles.
    #[test]
    fn transpose_matches_plain_loop() {
        for (rows, cols) in [
            (1, 1),
            (3, 5),
            (16, 16),
            (17, 33),
            (32, 48),
            (48, 20),
            (5, 64),
            (130, 257),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut want = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    want[c * rows + r] = src[r * cols + c];
                }
            }
            let mut got = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, &mut got);
            assert_eq!(got, want, "{rows} × {cols}");
            let mut got = vec![f32::NAN; rows * cols];
            scalar_rest(&src, rows, cols, 0, 0, &mut got);
            assert_eq!(got, want, "{rows} × {cols}, scalar");
        }
    }
}
