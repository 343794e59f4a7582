//! The recurrences' per-step products alone, through `gemm` as `kernels::recurrence` calls it,
//! for a choice of panel widths; then gemm's 2048³ product and the core's FMA limit. This is
//! what chose the recurrence's `PANEL` (64 rows or columns of W_hh per gemm call).
//!
//!     RAYON_NUM_THREADS=1 cargo run --release -p seqlab-nn --example step_products -- [hidden] [batch] [panels]
//!
//! Defaults: hidden 512 (an LSTM: 4·hidden gate rows), batch 32, panels `64,128`. Forward:
//! hh (B × 4H) = h (B × H) @ W_hhᵀ, W_hhᵀ in column-major panels of `panel` rows (the
//! recurrence's `wpt`); backward: dh (B × H) = dG (B × 4H) @ W_hh, W_hh in row-major panels of
//! `panel` columns (`wp`). GFLOP/s of 2000 steps, three times each. The AMD EPYC (Zen 5)
//! development machine, 1 thread, three runs (2026-12-01; its clock moved between runs):
//! forward 255-269 with panel 64 against 235-247 with 128, backward 256-269 against 248-262
//! (H 256: 245-261 against 231-232, 255-268 against 238-246); 2048³ 241-261; FMA limit
//! 271-274.

use std::time::Instant;

/// dst = a @ b through gemm on this thread, strides given (row, column) as the recurrence's
/// `sgemm_serial` takes them.
#[allow(clippy::too_many_arguments)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1) * dst_cs);
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts keep every element gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn values(n: usize, mul: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * mul) % 1000) as f32 * 1e-3 - 0.5).collect()
}

/// GFLOP/s of `steps` calls of `f`, which does `flops` each.
fn rate(steps: usize, flops: f64, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    for _ in 0..steps {
        f();
    }
    flops * steps as f64 / t0.elapsed().as_secs_f64() / 1e9
}

/// `iters` rounds of 24 independent 16-lane FMAs (zmm0-zmm23, two operands in zmm30/31), in
/// assembly so that the compiler can neither merge nor spill the chains. Returns FMAs done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(iters: u64) -> u64 {
    std::arch::asm!(
        "vxorps xmm30, xmm30, xmm30",
        "vxorps xmm31, xmm31, xmm31",
        "2:",
        "vfmadd231ps zmm0, zmm30, zmm31", "vfmadd231ps zmm1, zmm30, zmm31",
        "vfmadd231ps zmm2, zmm30, zmm31", "vfmadd231ps zmm3, zmm30, zmm31",
        "vfmadd231ps zmm4, zmm30, zmm31", "vfmadd231ps zmm5, zmm30, zmm31",
        "vfmadd231ps zmm6, zmm30, zmm31", "vfmadd231ps zmm7, zmm30, zmm31",
        "vfmadd231ps zmm8, zmm30, zmm31", "vfmadd231ps zmm9, zmm30, zmm31",
        "vfmadd231ps zmm10, zmm30, zmm31", "vfmadd231ps zmm11, zmm30, zmm31",
        "vfmadd231ps zmm12, zmm30, zmm31", "vfmadd231ps zmm13, zmm30, zmm31",
        "vfmadd231ps zmm14, zmm30, zmm31", "vfmadd231ps zmm15, zmm30, zmm31",
        "vfmadd231ps zmm16, zmm30, zmm31", "vfmadd231ps zmm17, zmm30, zmm31",
        "vfmadd231ps zmm18, zmm30, zmm31", "vfmadd231ps zmm19, zmm30, zmm31",
        "vfmadd231ps zmm20, zmm30, zmm31", "vfmadd231ps zmm21, zmm30, zmm31",
        "vfmadd231ps zmm22, zmm30, zmm31", "vfmadd231ps zmm23, zmm30, zmm31",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
        out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
        out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _,
        out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _,
        out("zmm22") _, out("zmm23") _, out("zmm30") _, out("zmm31") _,
        options(nostack, nomem),
    );
    iters * 24
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let h: usize = args.get(1).map_or(512, |s| s.parse().expect("hidden"));
    let bsz: usize = args.get(2).map_or(32, |s| s.parse().expect("batch"));
    let panels: Vec<usize> = args
        .get(3)
        .map_or("64,128", |s| s.as_str())
        .split(',')
        .map(|s| s.parse().expect("panels"))
        .collect();
    let (gh, p, steps) = (4 * h, h, 2000);
    let flops = 2.0 * (bsz * gh * p) as f64;
    let w = values(gh * p, 7919);
    let hcur = values(bsz * p, 31);
    let dg = values(bsz * gh, 13);
    for &panel in &panels {
        // wpt: row panels of W_hh, each column-major; wp: column panels, each row-major.
        let mut wpt = vec![0f32; gh * p];
        let mut wp = vec![0f32; gh * p];
        for q0 in (0..gh).step_by(panel) {
            let pr = panel.min(gh - q0);
            for r in 0..pr {
                for c in 0..p {
                    wpt[q0 * p + c * pr + r] = w[(q0 + r) * p + c];
                }
            }
        }
        for c0 in (0..p).step_by(panel) {
            let pc = panel.min(p - c0);
            for r in 0..gh {
                wp[gh * c0 + r * pc..gh * c0 + (r + 1) * pc].copy_from_slice(&w[r * p + c0..r * p + c0 + pc]);
            }
        }
        let mut hh = vec![0f32; bsz * gh];
        let mut dh = vec![0f32; bsz * p];
        for _ in 0..3 {
            let fwd = rate(steps, flops, || {
                for q0 in (0..gh).step_by(panel) {
                    let pr = panel.min(gh - q0);
                    product(pr, bsz, p, &mut hh[q0..], 1, gh, &wpt[q0 * p..], 1, pr, &hcur, 1, p);
                }
            });
            let bwd = rate(steps, flops, || {
                for c0 in (0..p).step_by(panel) {
                    let pc = panel.min(p - c0);
                    product(bsz, pc, gh, &mut dh[c0..], p, 1, &dg, gh, 1, &wp[gh * c0..], pc, 1);
                }
            });
            println!("H {h}, B {bsz}, panel {panel}: forward {fwd:.1} GFLOP/s, backward {bwd:.1} GFLOP/s");
        }
        std::hint::black_box((&hh, &dh));
    }
    let n = 2048;
    let a = values(n * n, 97);
    let mut c = vec![0f32; n * n];
    for _ in 0..3 {
        let r = rate(3, 2.0 * (n * n * n) as f64, || {
            product(n, n, n, &mut c, n, 1, &a, n, 1, &a, n, 1)
        });
        println!("2048³: {r:.1} GFLOP/s");
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        for _ in 0..3 {
            let t0 = Instant::now();
            // SAFETY: the CPU has AVX-512F (checked above).
            let fmas = unsafe { fma_chains(100_000_000) };
            let r = fmas as f64 * 32.0 / t0.elapsed().as_secs_f64() / 1e9;
            println!("FMA limit (24 independent 16-lane chains): {r:.1} GFLOP/s");
        }
    }
}
