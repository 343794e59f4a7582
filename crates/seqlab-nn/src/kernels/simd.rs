//! Hand-vectorised building blocks for the kernels, behind tokens that only exist on a CPU
//! with the features ([`Avx2Fma`], [`Avx512`]), so that the safe wrappers are sound.
//!
//! - [`Lanes`]: elementwise arithmetic of one vector width, implemented by the tokens (16
//!   lanes AVX-512, 8 lanes AVX2 + FMA) and by [`Scalar`] (1 lane), so that an elementwise
//!   kernel is written once: [`exp`], [`sigmoid`], [`tanh`] and the recurrences' gate loops
//!   (`super::recurrence`). The one-lane instances are the portable path and the loops' tails.
//! - [`LaneBody`] and [`for_each_lane`]: an elementwise loop body written once for every width,
//!   and the one loop that runs it over whole vectors and then the one-lane tail.
//! - [`exp8`], [`hsum8`]: AVX2 pieces of the selective scan's hand-written loop.
//!
//! Why: loops over the scalar [`super::recurrence::fexp`] are not vectorised by the compiler
//! when the exponential sits inside the selective scan's state update (callgrind: ~29
//! instructions per element, a quarter of a scan call's instructions), nor in the LSTM's
//! gate loop (perf annotate: scalar vmulss/vdivss chains even in the AVX-512 build, 19 % of
//! a char-LSTM training step).
//!
//! Accuracy (test `vector_gate_functions_match_scalar_and_truth`, ~450k inputs over
//! [−100, 100], magnitudes 1e-30..1e4, ±0, subnormals, ±∞): [`sigmoid`] ≤ 2 ulp from the
//! correctly rounded value on every width and ≤ 2 ulp between widths; [`tanh`] ≤ 2 ulp
//! (AVX2, scalar) or 3 ulp (AVX-512) from the correctly rounded value and ≤ 4 ulp between
//! widths.

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

/// Proof that the CPU has AVX-512 F, VL, BW and DQ plus AVX2 and FMA (x86-64 only), the
/// features the recurrence's wide gate loops are compiled for; [`Avx512::detect`] is the only
/// way to make one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// `Some` when the CPU has every feature listed on the type (cached feature checks).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                return Some(Self(()));
            }
        }
        None
    }
}

/// One f32 lane: the portable implementation of [`Lanes`] (other CPUs, and the tails of the
/// vector loops). Its [`exp`] is bitwise the scalar [`super::recurrence::fexp`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

/// Elementwise f32 arithmetic on vectors of one width, so that an elementwise kernel (the
/// recurrences' gate loops, [`exp`], [`sigmoid`], [`tanh`]) is written once for every width:
/// 16 lanes with [`Avx512`], 8 with [`Avx2Fma`], 1 with [`Scalar`]. The implementing types
/// are the CPU-feature tokens, which is what makes the intrinsics inside sound. Every method
/// is `#[inline(always)]`: callers instantiate them inside a function compiled for the
/// token's features (`#[target_feature]`), where the intrinsics inline into packed code.
pub(crate) trait Lanes: Copy {
    /// The vector (f32 for [`Scalar`]).
    type V: Copy;
    /// Lanes per vector.
    const N: usize;
    /// Reads `N` f32 from `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p + N` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Writes `N` f32 to `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p + N` must be writable and not borrowed elsewhere.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn splat(self, x: f32) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c`: one rounding with FMA ([`Avx512`], [`Avx2Fma`]), two in [`Scalar`].
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c − a·b`, rounded as [`Lanes::mul_add`].
    fn neg_mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a / b`; [`Avx512`] within 1 ulp of the quotient's rounding (a reciprocal estimate
    /// with one Newton step instead of the 16-lane divide, which would cost as much as the
    /// rest of a gate), the others correctly rounded.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b` correctly rounded on every width (the GELU's erf, whose result must not depend
    /// on the width).
    fn div_exact(self, a: Self::V, b: Self::V) -> Self::V;
    /// `x` clamped to `[lo, hi]`; NaN stays NaN.
    fn clamp(self, x: Self::V, lo: f32, hi: f32) -> Self::V;
    /// max(x, 0); NaN stays NaN (as PyTorch's relu).
    fn relu(self, x: Self::V) -> Self::V;
    /// `x` rounded to the nearest integer, ties to even (|x| < 2^22).
    fn round(self, x: Self::V) -> Self::V;
    /// 2^n for an integral `n` in [−126, 127].
    fn pow2(self, n: Self::V) -> Self::V;
    fn abs(self, x: Self::V) -> Self::V;
    /// |mag| with the sign bit of `sign` (`mag` must be ≥ +0).
    fn with_sign_of(self, mag: Self::V, sign: Self::V) -> Self::V;
    /// `x` where `test` > 0, +0 elsewhere (NaN `test` included): the gradient gate of a ReLU
    /// from its output.
    fn where_positive(self, test: Self::V, x: Self::V) -> Self::V;
}

/// The body of an elementwise loop, for [`for_each_lane`]: computes elements `q..q + L::N`
/// of its operands (the pointers it holds) on the lanes of `l`. One generic body serves the
/// vector width and the one-lane tail.
pub(crate) trait LaneBody: Copy {
    /// # Safety
    /// Elements `q..q + L::N` of every operand are in bounds, and those it writes are not
    /// borrowed elsewhere.
    unsafe fn at<L: Lanes>(self, l: L, q: usize);
}

/// Runs `f` over elements `0..n`: whole vectors of `l`, then the rest one lane at a time
/// ([`Scalar`]). The only lane-plus-tail loop of the gate kernels.
///
/// # Safety
/// Every operand of `f` holds at least `n` elements (as [`LaneBody::at`] requires).
#[inline(always)]
pub(crate) unsafe fn for_each_lane<L: Lanes, F: LaneBody>(l: L, n: usize, f: F) {
    let mut q = 0;
    while q + L::N <= n {
        f.at(l, q);
        q += L::N;
    }
    for q in q..n {
        f.at(Scalar, q);
    }
}

/// Code written once for every vector width: [`run16`], [`run8`] and [`run_widest`] compile
/// it with the width's features enabled and hand it the width's [`Lanes`]. A body may use
/// `l` (hand-vectorised code, the recurrences' gate loops, the GELU) or ignore it: a loop
/// of plain scalar Rust, compiled with AVX-512 or AVX2 enabled, is vectorised by the compiler
/// 16 or 8 lanes wide instead of the crate's SSE2 baseline. Such a loop holds only integer
/// operations and exactly rounded float operations (add, sub, mul, div, sqrt, min/max; no
/// `mul_add`): Rust never contracts them into FMAs, so every width gives the scalar loop's
/// bits.
pub(crate) trait WithLanes {
    type Out;
    /// The body. Implementations mark it `#[inline(always)]`, so that it is compiled inside
    /// the feature-enabled functions rather than called from them.
    fn run<L: Lanes>(self, l: L) -> Self::Out;
}

/// `body` on 16 lanes, compiled with AVX-512 enabled.
///
/// # Safety
/// None beyond the token, which proves the features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
pub(crate) unsafe fn run16<B: WithLanes>(body: B, l: Avx512) -> B::Out {
    body.run(l)
}

/// `body` on 8 lanes, compiled with AVX2 and FMA enabled.
///
/// # Safety
/// As [`run16`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn run8<B: WithLanes>(body: B, l: Avx2Fma) -> B::Out {
    body.run(l)
}

/// `body` on the widest vector unit present (AVX-512, else AVX2 + FMA, else one lane), or on
/// one lane with `portable` (tests). Why: the fused AdamW update compiled for the baseline
/// was a scalar `sqrtss`/`divss` chain, 4.4 % of a 1-thread `seqlab bench lstm` step (perf,
/// session 12), where the 16-lane loop is bound by memory; the recurrences' gate loops and the
/// GELU are hand-vectorised on [`Lanes`].
#[inline]
pub(crate) fn run_widest<B: WithLanes>(portable: bool, body: B) -> B::Out {
    #[cfg(target_arch = "x86_64")]
    if !portable {
        if let Some(l) = Avx512::detect() {
            // SAFETY: the token proves the features `run16` is compiled for.
            return unsafe { run16(body, l) };
        }
        if let Some(l) = Avx2Fma::detect() {
            // SAFETY: as above.
            return unsafe { run8(body, l) };
        }
    }
    let _ = portable;
    body.run(Scalar)
}

/// 1.5·2^23: adding it to |x| < 2^22 rounds x to an integer in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

impl Lanes for Scalar {
    type V = f32;
    const N: usize = 1;
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        *p = v
    }
    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        // Unfused on purpose: `f32::mul_add` is a libm call on CPUs without FMA.
        a * b + c
    }
    #[inline(always)]
    fn neg_mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        c - a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn div_exact(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn clamp(self, x: f32, lo: f32, hi: f32) -> f32 {
        x.clamp(lo, hi)
    }
    #[inline(always)]
    fn relu(self, x: f32) -> f32 {
        if x < 0.0 {
            0.0
        } else {
            x
        }
    }
    #[inline(always)]
    fn round(self, x: f32) -> f32 {
        // Integer-free (a float → int cast does not vectorise where the compiler would
        // vectorise a loop around this).
        (x + MAGIC) - MAGIC
    }
    #[inline(always)]
    fn pow2(self, n: f32) -> f32 {
        // n + MAGIC holds n in its low mantissa bits (MAGIC's bits are 0x4B40_0000).
        f32::from_bits((n + MAGIC).to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
    }
    #[inline(always)]
    fn abs(self, x: f32) -> f32 {
        x.abs()
    }
    #[inline(always)]
    fn with_sign_of(self, mag: f32, sign: f32) -> f32 {
        mag.copysign(sign)
    }
    #[inline(always)]
    fn where_positive(self, test: f32, x: f32) -> f32 {
        if test > 0.0 {
            x
        } else {
            0.0
        }
    }
}

/// Unaligned vectors: reading or writing a packed field compiles to `vmovups`, without the
/// overlap check that `_mm*_loadu_ps` (a `copy_nonoverlapping`) gets in builds with debug
/// assertions (the optimised dev/test profile; see the selective scan's note).
#[cfg(target_arch = "x86_64")]
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Unaligned<T: Copy>(T);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2Fma {
    type V = __m256;
    const N: usize = 8;
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        (*(p as *const Unaligned<__m256>)).0
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        (*(p as *mut Unaligned<__m256>)).0 = v
    }
    // SAFETY (every method below): a token exists only where AVX2 and FMA were detected.
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn neg_mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn div_exact(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn clamp(self, x: __m256, lo: f32, hi: f32) -> __m256 {
        // max/min return their second operand when one is NaN: x's NaN goes through.
        unsafe { _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), x)) }
    }
    #[inline(always)]
    fn relu(self, x: __m256) -> __m256 {
        unsafe { _mm256_max_ps(_mm256_setzero_ps(), x) }
    }
    #[inline(always)]
    fn round(self, x: __m256) -> __m256 {
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x) }
    }
    #[inline(always)]
    fn pow2(self, n: __m256) -> __m256 {
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    fn abs(self, x: __m256) -> __m256 {
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), x) }
    }
    #[inline(always)]
    fn with_sign_of(self, mag: __m256, sign: __m256) -> __m256 {
        unsafe { _mm256_or_ps(mag, _mm256_and_ps(_mm256_set1_ps(-0.0), sign)) }
    }
    #[inline(always)]
    fn where_positive(self, test: __m256, x: __m256) -> __m256 {
        // The ordered compare is false for NaN.
        unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(test, _mm256_setzero_ps()), x) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    type V = __m512;
    const N: usize = 16;
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        (*(p as *const Unaligned<__m512>)).0
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        (*(p as *mut Unaligned<__m512>)).0 = v
    }
    // SAFETY (every method below): a token exists only where AVX-512 F/VL/BW/DQ were detected.
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn neg_mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // 1/b from the 14-bit estimate and one Newton step r' = r + r(1 − b r) (≈ 2^-28
        // before rounding); then a·r'. 3 instructions instead of a 16-lane vdivps (one per
        // ~10 cycles, 5 per LSTM unit).
        unsafe {
            let r = _mm512_rcp14_ps(b);
            let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(1.0)), r);
            _mm512_mul_ps(a, r)
        }
    }
    #[inline(always)]
    fn div_exact(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn clamp(self, x: __m512, lo: f32, hi: f32) -> __m512 {
        // As for AVX2: the second operand (x) comes back when one is NaN.
        unsafe { _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), x)) }
    }
    #[inline(always)]
    fn relu(self, x: __m512) -> __m512 {
        unsafe { _mm512_max_ps(_mm512_setzero_ps(), x) }
    }
    #[inline(always)]
    fn round(self, x: __m512) -> __m512 {
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x) }
    }
    #[inline(always)]
    fn pow2(self, n: __m512) -> __m512 {
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n),
                _mm512_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    fn abs(self, x: __m512) -> __m512 {
        unsafe { _mm512_abs_ps(x) }
    }
    #[inline(always)]
    fn with_sign_of(self, mag: __m512, sign: __m512) -> __m512 {
        unsafe {
            let s = _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(i32::MIN));
            _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), s))
        }
    }
    #[inline(always)]
    fn where_positive(self, test: __m512, x: __m512) -> __m512 {
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(test, _mm512_setzero_ps()), x) }
    }
}

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// e^r − 1 for |r| ≤ ln 2 / 2 by the degree-7 Taylor polynomial r(1 + r/2 + … + r⁶/7!)
/// (truncation r⁸/8! < 6e-9 relative to e^r, below half an ulp); with the constant term left
/// out it keeps full relative accuracy for small r, which [`tanh`] needs.
#[inline(always)]
fn expm1_reduced<L: Lanes>(l: L, r: L::V) -> L::V {
    let mut p = l.splat(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0] {
        p = l.mul_add(p, r, l.splat(c));
    }
    l.mul(p, r)
}

/// x = n·ln 2 + r with n = round(x·log2 e) and the Cody–Waite split of ln 2 (|r| ≤ ln 2 / 2).
#[inline(always)]
fn reduce<L: Lanes>(l: L, x: L::V) -> (L::V, L::V) {
    let n = l.round(l.mul(x, l.splat(std::f32::consts::LOG2_E)));
    let r = l.neg_mul_add(n, l.splat(LN2_HI), x);
    (n, l.neg_mul_add(n, l.splat(LN2_LO), r))
}

/// exp of every lane: x clamped to [−87, 88]; reduced by [`reduce`]; e^r by its degree-7
/// Taylor polynomial (Horner, constant term included); times 2ⁿ built in the exponent bits.
/// At most 2 ulp from the correctly rounded e^x on [−87, 88] with FMA (test
/// `exp8_is_within_two_ulp_of_exp`), ~1 ulp in [`Scalar`] (`fexp`'s test); e^−87 below the
/// range, e^88 above it (no ∞), NaN for NaN.
#[inline(always)]
pub(crate) fn exp<L: Lanes>(l: L, x: L::V) -> L::V {
    let x = l.clamp(x, -87.0, 88.0);
    let (n, r) = reduce(l, x);
    let mut p = l.splat(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = l.mul_add(p, r, l.splat(c));
    }
    // n ∈ [−126, 127] after the clamp, so 2ⁿ is a normal number.
    l.mul(p, l.pow2(n))
}

/// The logistic function 1 / (1 + e^−x) (`torch.sigmoid`); 0 < σ ≤ 1 (σ(−87) and below ≈
/// 6e-39, a subnormal or 0 on [`Avx512`]).
#[inline(always)]
pub(crate) fn sigmoid<L: Lanes>(l: L, x: L::V) -> L::V {
    let one = l.splat(1.0);
    l.div(one, l.add(one, exp(l, l.sub(l.splat(0.0), x))))
}

/// tanh of every lane (`torch.tanh`) as sign(x)·(−m)/(2 + m) with m = e^(−2|x|) − 1 ∈ (−1, 0]
/// computed as 2ⁿ·(e^r − 1) + (2ⁿ − 1): no cancellation anywhere, so the result keeps its
/// relative accuracy for small |x| too (the former (1 − e)/(1 + e) lost all but a few bits
/// of tanh(1e-6)). tanh(±0) = ±0, ±1 from |x| ≈ 9 on, NaN for NaN.
#[inline(always)]
pub(crate) fn tanh<L: Lanes>(l: L, x: L::V) -> L::V {
    // Below −87 (|x| > 43.5) m is −1 to the last bit anyway; the clamp keeps 2ⁿ normal.
    let y = l.clamp(l.mul(l.abs(x), l.splat(-2.0)), -87.0, 0.0);
    let (n, r) = reduce(l, y);
    let s = l.pow2(n);
    let m = l.mul_add(s, expm1_reduced(l, r), l.sub(s, l.splat(1.0)));
    let t = l.div(l.sub(l.splat(0.0), m), l.add(l.splat(2.0), m));
    l.with_sign_of(t, x)
}

/// exp of eight f32 lanes: [`exp`] on the [`Avx2Fma`] lanes (kept as a plain function for
/// the selective scan's hand-written AVX2 loop).
///
/// Accuracy (test `exp8_is_within_two_ulp_of_exp`): at most 2 ulp from the correctly rounded
/// e^x on [−87, 88], i.e. relative error < 2.4e-7; below −87 it returns e^−87 ≈ 1.6e-38
/// instead of a smaller number or 0 (absolute error < 1.7e-38), above 88 e^88 (no ∞). The
/// selective scan calls it with δ·A ≤ 0 (δ > 0, A < 0).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    exp(Avx2Fma(()), x)
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

    /// Signed distance-preserving order of f32 bit patterns (−0 and +0 coincide).
    fn ordered(x: f32) -> i64 {
        let i = x.to_bits() as i32;
        (if i < 0 { i32::MIN.wrapping_sub(i) } else { i }) as i64
    }

    /// Units in the last place between two finite f32s (any signs).
    fn ulp_dist(a: f32, b: f32) -> u64 {
        (ordered(a) - ordered(b)).unsigned_abs()
    }

    #[derive(Clone, Copy, Debug)]
    enum Fun {
        Sigmoid,
        Tanh,
    }

    /// `f` over `xs` in place on the lanes of `l`, the tail one lane at a time.
    #[inline(always)]
    fn apply<L: Lanes>(l: L, f: Fun, xs: &mut [f32]) {
        #[derive(Clone, Copy)]
        struct Apply(Fun, *mut f32);
        impl LaneBody for Apply {
            #[inline(always)]
            unsafe fn at<L: Lanes>(self, l: L, q: usize) {
                let v = l.load(self.1.add(q));
                let y = match self.0 {
                    Fun::Sigmoid => sigmoid(l, v),
                    Fun::Tanh => tanh(l, v),
                };
                l.store(self.1.add(q), y);
            }
        }
        // SAFETY: the body reads and writes elements below xs.len() of xs only.
        unsafe { for_each_lane(l, xs.len(), Apply(f, xs.as_mut_ptr())) }
    }

    /// [`apply`] as a body for [`run16`] / [`run8`].
    struct ApplyAll<'a>(Fun, &'a mut [f32]);

    impl WithLanes for ApplyAll<'_> {
        type Out = ();
        #[inline(always)]
        fn run<L: Lanes>(self, l: L) {
            apply(l, self.0, self.1)
        }
    }

    /// Inputs where the gate functions are hard: a fine grid over [−100, 100] (both
    /// saturating ranges), magnitudes from 1e-30 to 1e4 of both signs (small |x|, where tanh
    /// and σ − ½ lose bits to cancellation in naive formulas), ±0, subnormals, ±∞.
    fn hard_inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-100 * 256..=100 * 256).map(|i| i as f32 / 256.0).collect();
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let mag = 10f32.powf(-30.0 + 34.0 * u);
            xs.push(if s & 1 == 0 { mag } else { -mag });
        }
        xs.extend([
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1e-39,
            -1e-39,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        xs.extend([9.0, -9.0, 43.5, -43.5, 87.0, -87.0, 88.0, -88.0, 1e-4, -1e-4]);
        xs
    }

    /// The worst distances of `got` from the correctly rounded f64 function and from the
    /// one-lane results `scalar`: (ulp from truth, ulp from scalar, at x).
    fn distances(f: Fun, xs: &[f32], got: &[f32], scalar: &[f32]) -> (u64, u64, f32) {
        let (mut worst_truth, mut worst_scalar, mut at) = (0, 0, 0.0);
        for ((&x, &y), &ys) in xs.iter().zip(got).zip(scalar) {
            let truth = match f {
                Fun::Sigmoid => 1.0 / (1.0 + (-(x as f64)).exp()),
                Fun::Tanh => (x as f64).tanh(),
            } as f32;
            // σ below e^-87 ≈ 1.6e-38: the exp is clamped there (and AVX-512's reciprocal
            // estimate may flush the subnormal to 0); both are within 1e-38 of the truth.
            if matches!(f, Fun::Sigmoid) && x < -87.0 {
                assert!(y.abs() < 1e-37 && ys.abs() < 1e-37, "{f:?}({x}) = {y} / {ys}");
                continue;
            }
            let (dt, ds) = (ulp_dist(y, truth), ulp_dist(y, ys));
            if ds > worst_scalar {
                at = x;
            }
            worst_truth = worst_truth.max(dt);
            worst_scalar = worst_scalar.max(ds);
        }
        (worst_truth, worst_scalar, at)
    }

    /// The vector gate functions agree with the one-lane ones (which the portable build and
    /// the tails of every loop use) and with the correctly rounded function. Measured on
    /// this machine (AVX-512 Sapphire Rapids class): see the bounds asserted below.
    #[test]
    fn vector_gate_functions_match_scalar_and_truth() {
        let xs = hard_inputs();
        for f in [Fun::Sigmoid, Fun::Tanh] {
            let mut scalar = xs.clone();
            apply(Scalar, f, &mut scalar);
            let (t, _, _) = distances(f, &xs, &scalar, &scalar);
            eprintln!("{f:?} scalar: {t} ulp from the truth");
            assert!(t <= 3, "{f:?} scalar is {t} ulp off");
            // NaN stays NaN, tanh keeps the sign of zero, saturation is exact.
            let mut special = [f32::NAN, -0.0, 0.0, 50.0, -50.0, 1e-30, -1e-30, 20.0];
            apply(Scalar, f, &mut special);
            assert!(special[0].is_nan());
            if matches!(f, Fun::Tanh) {
                assert_eq!(special[1].to_bits(), (-0f32).to_bits());
                assert_eq!(special[2].to_bits(), 0);
                assert_eq!((special[3], special[4]), (1.0, -1.0));
                assert_eq!((special[5], special[6]), (1e-30, -1e-30));
            } else {
                assert_eq!((special[1], special[2], special[3]), (0.5, 0.5, 1.0));
            }
            #[cfg(target_arch = "x86_64")]
            {
                let mut runs: Vec<(&str, Vec<f32>)> = Vec::new();
                if let Some(l) = Avx512::detect() {
                    let mut v = xs.clone();
                    let mut sp = [
                        f32::NAN,
                        -0.0,
                        0.0,
                        50.0,
                        -50.0,
                        1e-30,
                        -1e-30,
                        20.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                    ];
                    // SAFETY: the token proves the features.
                    unsafe {
                        run16(ApplyAll(f, &mut v), l);
                        run16(ApplyAll(f, &mut sp), l);
                    }
                    assert!(sp[0].is_nan());
                    assert_eq!(sp[1].to_bits(), special[1].to_bits());
                    assert_eq!(&sp[2..8], &special[2..8]);
                    runs.push(("avx512", v));
                }
                if let Some(l) = Avx2Fma::detect() {
                    let mut v = xs.clone();
                    let mut sp = special_inputs8();
                    // SAFETY: the token proves the features.
                    unsafe {
                        run8(ApplyAll(f, &mut v), l);
                        run8(ApplyAll(f, &mut sp), l);
                    }
                    assert!(sp[0].is_nan());
                    let mut want = special_inputs8();
                    apply(Scalar, f, &mut want);
                    assert_eq!(sp[1].to_bits(), want[1].to_bits());
                    assert_eq!(&sp[2..], &want[2..]);
                    runs.push(("avx2", v));
                }
                for (name, v) in runs {
                    let (t, s, at) = distances(f, &xs, &v, &scalar);
                    eprintln!("{f:?} {name}: {t} ulp from the truth, {s} ulp from scalar (at x = {at})");
                    assert!(t <= 3, "{f:?} {name} is {t} ulp off the truth");
                    assert!(s <= 4, "{f:?} {name} is {s} ulp off the scalar path at x = {at}");
                }
            }
        }
    }

    fn special_inputs8() -> [f32; 8] {
        [f32::NAN, -0.0, 0.0, 50.0, -50.0, 1e-30, -1e-30, 20.0]
    }
}
