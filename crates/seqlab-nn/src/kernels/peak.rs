//! The core's f32 multiply-add throughput: the hardware limit that `seqlab bench fma` reports
//! and `bench/run.py` sets beside the sgemm peak, so that a row's share of the hardware is
//! visible (gemm's 2048³ product ran at 0.84-0.91 of this limit on the AMD EPYC (Zen 5)
//! development machine, 2026-12-01).
//!
//! The loop is assembly: 24 (AVX-512) or 12 (AVX2) independent FMA chains on registers, enough
//! to keep two FMA pipes with 4-5 cycles of latency busy; written in Rust, the compiler merged
//! equal chains or spilled them to the stack and measured 98-225 instead of 271 GFLOP/s.

/// Runs `iters` rounds of independent FMAs on the calling thread with the widest FMA unit
/// the CPU has (AVX-512F: 24 × 16 lanes per round; AVX2 + FMA: 12 × 8) and returns the
/// floating-point operations done (2 per lane and FMA), or `None` where neither is available
/// (other x86-64 CPUs, other architectures: not measured there).
pub fn fma_flops(iters: u64) -> Option<u64> {
    let unit = fma_unit()?;
    if iters == 0 {
        return Some(0);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if unit == AVX512 {
            // SAFETY: the CPU has AVX-512F (`fma_unit`), the only extension the loop uses; it
            // touches registers only.
            unsafe { chains_avx512(iters) };
            return Some(iters * 24 * 16 * 2);
        }
        // SAFETY: the CPU has AVX2 and FMA (`fma_unit`); registers only.
        unsafe { chains_avx2(iters) };
        Some(iters * 12 * 8 * 2)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("fma_unit is None off x86-64 ({unit})")
}

const AVX512: &str = "AVX-512F";

/// The unit [`fma_flops`] uses here: `"AVX-512F"`, `"AVX2 + FMA"`, or `None`.
pub fn fma_unit() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Some(AVX512);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Some("AVX2 + FMA");
        }
    }
    None
}

/// `iters` (≥ 1; 0 would loop 2⁶⁴ times) rounds of 24 FMAs into zmm0-zmm23, which start at
/// zero, from two normal operands (1 and 2⁻²⁰, so no sum is ever subnormal and the values
/// stay finite); AVX-512F instructions only (`vpxord`, not the AVX512DQ `vxorps` on zmm).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_avx512(iters: u64) {
    use std::arch::x86_64::_mm512_set1_ps;
    debug_assert!(iters >= 1);
    std::arch::asm!(
        "vpxord zmm0, zmm0, zmm0",
        "vpxord zmm1, zmm1, zmm1",
        "vpxord zmm2, zmm2, zmm2",
        "vpxord zmm3, zmm3, zmm3",
        "vpxord zmm4, zmm4, zmm4",
        "vpxord zmm5, zmm5, zmm5",
        "vpxord zmm6, zmm6, zmm6",
        "vpxord zmm7, zmm7, zmm7",
        "vpxord zmm8, zmm8, zmm8",
        "vpxord zmm9, zmm9, zmm9",
        "vpxord zmm10, zmm10, zmm10",
        "vpxord zmm11, zmm11, zmm11",
        "vpxord zmm12, zmm12, zmm12",
        "vpxord zmm13, zmm13, zmm13",
        "vpxord zmm14, zmm14, zmm14",
        "vpxord zmm15, zmm15, zmm15",
        "vpxord zmm16, zmm16, zmm16",
        "vpxord zmm17, zmm17, zmm17",
        "vpxord zmm18, zmm18, zmm18",
        "vpxord zmm19, zmm19, zmm19",
        "vpxord zmm20, zmm20, zmm20",
        "vpxord zmm21, zmm21, zmm21",
        "vpxord zmm22, zmm22, zmm22",
        "vpxord zmm23, zmm23, zmm23",
        "2:",
        "vfmadd231ps zmm0, zmm30, zmm31",
        "vfmadd231ps zmm1, zmm30, zmm31",
        "vfmadd231ps zmm2, zmm30, zmm31",
        "vfmadd231ps zmm3, zmm30, zmm31",
        "vfmadd231ps zmm4, zmm30, zmm31",
        "vfmadd231ps zmm5, zmm30, zmm31",
        "vfmadd231ps zmm6, zmm30, zmm31",
        "vfmadd231ps zmm7, zmm30, zmm31",
        "vfmadd231ps zmm8, zmm30, zmm31",
        "vfmadd231ps zmm9, zmm30, zmm31",
        "vfmadd231ps zmm10, zmm30, zmm31",
        "vfmadd231ps zmm11, zmm30, zmm31",
        "vfmadd231ps zmm12, zmm30, zmm31",
        "vfmadd231ps zmm13, zmm30, zmm31",
        "vfmadd231ps zmm14, zmm30, zmm31",
        "vfmadd231ps zmm15, zmm30, zmm31",
        "vfmadd231ps zmm16, zmm30, zmm31",
        "vfmadd231ps zmm17, zmm30, zmm31",
        "vfmadd231ps zmm18, zmm30, zmm31",
        "vfmadd231ps zmm19, zmm30, zmm31",
        "vfmadd231ps zmm20, zmm30, zmm31",
        "vfmadd231ps zmm21, zmm30, zmm31",
        "vfmadd231ps zmm22, zmm30, zmm31",
        "vfmadd231ps zmm23, zmm30, zmm31",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters => _,
        in("zmm30") _mm512_set1_ps(1.0),
        in("zmm31") _mm512_set1_ps(1.0 / 1_048_576.0),
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _,
        out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        options(nostack, nomem),
    );
}

/// `iters` (≥ 1) rounds of 12 FMAs into ymm0-ymm11, which start at zero, from ymm14 and
/// ymm15 (the operands of `chains_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(iters: u64) {
    use std::arch::x86_64::_mm256_set1_ps;
    debug_assert!(iters >= 1);
    std::arch::asm!(
        "vxorps ymm0, ymm0, ymm0",
        "vxorps ymm1, ymm1, ymm1",
        "vxorps ymm2, ymm2, ymm2",
        "vxorps ymm3, ymm3, ymm3",
        "vxorps ymm4, ymm4, ymm4",
        "vxorps ymm5, ymm5, ymm5",
        "vxorps ymm6, ymm6, ymm6",
        "vxorps ymm7, ymm7, ymm7",
        "vxorps ymm8, ymm8, ymm8",
        "vxorps ymm9, ymm9, ymm9",
        "vxorps ymm10, ymm10, ymm10",
        "vxorps ymm11, ymm11, ymm11",
        "2:",
        "vfmadd231ps ymm0, ymm14, ymm15",
        "vfmadd231ps ymm1, ymm14, ymm15",
        "vfmadd231ps ymm2, ymm14, ymm15",
        "vfmadd231ps ymm3, ymm14, ymm15",
        "vfmadd231ps ymm4, ymm14, ymm15",
        "vfmadd231ps ymm5, ymm14, ymm15",
        "vfmadd231ps ymm6, ymm14, ymm15",
        "vfmadd231ps ymm7, ymm14, ymm15",
        "vfmadd231ps ymm8, ymm14, ymm15",
        "vfmadd231ps ymm9, ymm14, ymm15",
        "vfmadd231ps ymm10, ymm14, ymm15",
        "vfmadd231ps ymm11, ymm14, ymm15",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters => _,
        in("ymm14") _mm256_set1_ps(1.0),
        in("ymm15") _mm256_set1_ps(1.0 / 1_048_576.0),
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
        out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
        out("ymm10") _, out("ymm11") _,
        options(nostack, nomem),
    );
}

#[cfg(test)]
mod tests {
    use super::fma_flops;

    /// The count follows the CPU's widest unit, and the loop runs (and returns) for any count.
    #[test]
    fn counts_the_flops_of_the_widest_unit() {
        let Some(f) = fma_flops(10) else { return };
        assert!(f == 10 * 24 * 32 || f == 10 * 12 * 16, "{f}");
        assert_eq!(fma_flops(0), Some(0));
        assert_eq!(fma_flops(1), Some(f / 10));
    }

    /// The AVX2 loop runs too where AVX-512 takes precedence (CI machines may have AVX2 only).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_loop_runs() {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { super::chains_avx2(1000) };
        }
    }
}
