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
//! development machine, 1 thread, medians of 18 timings in 6 runs (2026-12-01): forward 252.8 with panel 64
//! against 248.9 with 128, backward 253.8 against 233.8 (H 256: 249.4 against 244.1, 256.1
//! against 236.9); 2048³ 239-261; FMA limit 265-274 (the clock moves between runs).

use seqlab_nn::kernels::sgemm_serial;
use std::time::Instant;

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
    assert!(panels.iter().all(|&p| p > 0), "panel widths must be > 0");
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
                    sgemm_serial(
                        pr,
                        bsz,
                        p,
                        &mut hh[q0..],
                        1,
                        gh,
                        false,
                        &wpt[q0 * p..],
                        1,
                        pr,
                        &hcur,
                        1,
                        p,
                    );
                }
            });
            let bwd = rate(steps, flops, || {
                for c0 in (0..p).step_by(panel) {
                    let pc = panel.min(p - c0);
                    sgemm_serial(
                        bsz,
                        pc,
                        gh,
                        &mut dh[c0..],
                        p,
                        1,
                        false,
                        &dg,
                        gh,
                        1,
                        &wp[gh * c0..],
                        pc,
                        1,
                    );
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
            sgemm_serial(n, n, n, &mut c, n, 1, false, &a, n, 1, &a, n, 1)
        });
        println!("2048³: {r:.1} GFLOP/s");
    }
    for _ in 0..3 {
        let t0 = Instant::now();
        let Some(flops) = seqlab_nn::kernels::peak::fma_flops(100_000_000) else {
            break;
        };
        let r = flops as f64 / t0.elapsed().as_secs_f64() / 1e9;
        println!("FMA limit (independent FMA chains, `seqlab bench fma`): {r:.1} GFLOP/s");
    }
}
