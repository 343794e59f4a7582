//! Exact (erf) GELU as ONE graph node, `y = x·Φ(x)` with `Φ(x) = ½(1 + erf(x/√2))`, and its
//! analytic backward `dy/dx = Φ(x) + x·φ(x)`, `φ(x) = e^(−x²/2)/√(2π)` (PyTorch's
//! `F.gelu(x, approximate='none')` and its derivative, `GeluBackward0`).
//!
//! Why: candle's `gelu_erf` is one op forward, but its backward is eight tensor ops (square,
//! negate, divide, exp, multiply, erf, adds), each allocating and passing over the whole
//! activation; in a `configs/bert-mini.toml` training step (perf, 1 thread) candle's
//! element-wise maps and their thread-pool dispatch were ~15 % of the samples, most of them
//! from this backward. Here the forward is one pass and the backward one pass (recomputing
//! Φ and φ from x instead of keeping them).
//!
//! erf is Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7 for all x), computed on the lanes of
//! the widest vector unit ([`simd::Lanes`]: 16 AVX-512, 8 AVX2 + FMA, 1 portable) with the
//! exponential of [`simd::exp`]. The vector widths perform the same operations lane by lane
//! (fused multiply-adds, a correctly rounded divide), so they give the same bits (test
//! `widths_agree_bit_for_bit`); the portable path rounds its multiply-adds twice. Against the
//! exact GELU the error is ≤ 1.5e-7·|x|/2 + an ulp (test
//! `fused_gelu_matches_exact_gelu_and_gradient`).
//!
//! Why the lanes all the way: the former loop ran Φ and φ on 8 AVX2 lanes through arrays and
//! then the product with x (and g) one element at a time, 5.5 % of a 1-thread bert-mini step
//! (perf, session 12).

use super::simd::{self, LaneBody, Lanes};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

const P: f32 = 0.327_591_1;
const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `(Φ(x), φ(x))` on every lane.
#[inline(always)]
fn phi<L: Lanes>(l: L, x: L::V) -> (L::V, L::V) {
    let one = l.splat(1.0);
    let z = l.mul(x, l.splat(FRAC_1_SQRT_2));
    let az = l.abs(z);
    let t = l.div_exact(one, l.mul_add(l.splat(P), az, one));
    let mut poly = l.splat(A[4]);
    for a in [A[3], A[2], A[1], A[0]] {
        poly = l.mul_add(poly, t, l.splat(a));
    }
    poly = l.mul(poly, t);
    // e^(−z²) = e^(−x²/2): both erf's tail and the density use it.
    let e = simd::exp(l, l.sub(l.splat(0.0), l.mul(az, az)));
    let erf = l.with_sign_of(l.neg_mul_add(poly, e, one), z);
    (l.mul(l.splat(0.5), l.add(one, erf)), l.mul(l.splat(INV_SQRT_2PI), e))
}

/// One lane group of the op: `x·Φ(x)` (`g` null) or `g·(Φ(x) + x·φ(x))`.
#[derive(Clone, Copy)]
struct Body {
    x: *const f32,
    g: *const f32,
    out: *mut f32,
}

impl LaneBody for Body {
    #[inline(always)]
    unsafe fn at<L: Lanes>(self, l: L, q: usize) {
        let x = l.load(self.x.add(q));
        let (cdf, pdf) = phi(l, x);
        let y = if self.g.is_null() {
            l.mul(x, cdf)
        } else {
            l.mul(l.load(self.g.add(q)), l.add(cdf, l.mul(x, pdf)))
        };
        l.store(self.out.add(q), y);
    }
}

/// [`Body`] over `x.len()` elements: whole vectors of `l`, then the ragged tail through the
/// same lanes, padded with zeros (so a value does not depend on its position).
#[inline(always)]
fn map<L: Lanes>(l: L, x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
    let n = x.len();
    let whole = n - n % L::N;
    let body = Body {
        x: x.as_ptr(),
        g: g.map_or(std::ptr::null(), |g| g.as_ptr()),
        out: out.as_mut_ptr(),
    };
    // SAFETY: x, g (when given) and out hold n elements; whole vectors stay below `whole`.
    unsafe {
        let mut q = 0;
        while q < whole {
            body.at(l, q);
            q += L::N;
        }
    }
    if whole < n {
        let (mut xp, mut gp, mut op) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let r = n - whole;
        xp[..r].copy_from_slice(&x[whole..]);
        if let Some(g) = g {
            gp[..r].copy_from_slice(&g[whole..]);
        }
        let pad = Body {
            x: xp.as_ptr(),
            g: if g.is_some() { gp.as_ptr() } else { std::ptr::null() },
            out: op.as_mut_ptr(),
        };
        // SAFETY: the pads hold 16 ≥ L::N elements.
        unsafe { pad.at(l, 0) };
        out[whole..].copy_from_slice(&op[..r]);
    }
}

/// [`map`] as a [`simd::WithLanes`] body.
struct Map<'a> {
    x: &'a [f32],
    g: Option<&'a [f32]>,
    out: &'a mut [f32],
}

impl simd::WithLanes for Map<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: Lanes>(self, l: L) {
        map(l, self.x, self.g, self.out)
    }
}

/// The fused op (see the module docs); f32 CPU tensors of any shape.
pub(crate) struct GeluErf {
    /// The one-lane path whatever the CPU (tests).
    portable: bool,
}

impl GeluErf {
    /// `GELU(x)` element-wise.
    fn values(&self, x: &[f32]) -> Vec<f32> {
        self.run(x, None)
    }

    /// `g · GELU'(x)` element-wise (`g.len() == x.len()`).
    fn grads(&self, x: &[f32], g: &[f32]) -> Vec<f32> {
        self.run(x, Some(g))
    }

    fn run(&self, x: &[f32], g: Option<&[f32]>) -> Vec<f32> {
        let portable = self.portable;
        // SAFETY: `map` writes every element of its piece.
        unsafe {
            super::fill_chunks(x.len(), CHUNK, |at, out| {
                let r = at..at + out.len();
                simd::run_widest(
                    portable,
                    Map {
                        x: &x[r.clone()],
                        g: g.map(|g| &g[r]),
                        out,
                    },
                )
            })
        }
    }
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "seqlab-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32("gelu", "x", s, l)?;
        let y = self.values(x);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = arg.contiguous()?;
        let g = grad.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let xs = super::contiguous("gelu", "x", super::device_f32("gelu", "x", &sx)?, lx)?;
        let gs = super::contiguous("gelu", "grad", super::device_f32("gelu", "grad", &sg)?, lg)?;
        let dx = self.grads(xs, gs);
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Exact GELU of an f32 CPU tensor as one graph node (see the module docs); the composed
/// twin is candle's `gelu_erf`.
pub fn gelu_fused(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(GeluErf { portable: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Fused against candle's `gelu_erf` (f64 erf from libm): values and gradients for x from
    /// −12 to 12 (the saturating tails, 0, tiny values), both vector and portable paths.
    #[test]
    fn fused_gelu_matches_exact_gelu_and_gradient() {
        let mut xs: Vec<f32> = (-480..=480).map(|i| i as f32 * 0.025).collect();
        xs.extend([0.0, -0.0, 1e-20, -1e-20, 1e-4, -1e-4, 30.0, -30.0]);
        let n = xs.len();
        let gv: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 * 0.25 - 1.5).collect();
        let x = Var::from_vec(xs.clone(), n, &Device::Cpu).unwrap();
        let g = Tensor::from_vec(gv.clone(), n, &Device::Cpu).unwrap();
        let want_y = x.as_tensor().gelu_erf().unwrap();
        let want_dx = want_y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let want_y = want_y.to_vec1::<f32>().unwrap();
        let want_dx = want_dx.get(&x).unwrap().to_vec1::<f32>().unwrap();
        for portable in [false, true] {
            let op = GeluErf { portable };
            let y = op.values(&xs);
            let dx = op.grads(&xs, &gv);
            for i in 0..n {
                let tol_y = 1e-7 * xs[i].abs().max(1.0) + 1e-6 * want_y[i].abs();
                assert!(
                    (y[i] - want_y[i]).abs() <= tol_y,
                    "gelu({}) = {} vs {}",
                    xs[i],
                    y[i],
                    want_y[i]
                );
                let tol_d = 4e-7 * gv[i].abs().max(1.0) * xs[i].abs().max(1.0);
                assert!(
                    (dx[i] - want_dx[i]).abs() <= tol_d,
                    "gelu'({}) = {} vs {}",
                    xs[i],
                    dx[i],
                    want_dx[i]
                );
            }
        }
        // Through the graph: the op's own backward reaches x.
        let y = gelu_fused(x.as_tensor()).unwrap();
        let grads = y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&x).unwrap().to_vec1::<f32>().unwrap();
        for i in 0..n {
            assert!((dx[i] - want_dx[i]).abs() <= 4e-7 * gv[i].abs().max(1.0) * xs[i].abs().max(1.0));
        }
    }

    /// The 16- and 8-lane paths give the same bits (the former 8-lane loop's operations are
    /// the 8-lane path's, so training results did not move when the 16 lanes came), values
    /// and gradients, over [−20, 20] in steps of 1/512 plus tiny, huge and signed-zero inputs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn widths_agree_bit_for_bit() {
        use simd::{Avx2Fma, Avx512};
        let (Some(l16), Some(l8)) = (Avx512::detect(), Avx2Fma::detect()) else {
            eprintln!("skipped: this CPU lacks AVX-512 or AVX2");
            return;
        };
        let mut xs: Vec<f32> = (-20 * 512..=20 * 512).map(|i| i as f32 / 512.0).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-40, 1e4, -1e4, 88.0, -88.0, 3e38, -3e38]);
        let gs: Vec<f32> = (0..xs.len()).map(|i| ((i * 7919) % 13) as f32 * 0.25 - 1.5).collect();
        let bits = crate::testing::bits;
        for g in [None, Some(&gs[..])] {
            let (mut a, mut b) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
            // SAFETY: the tokens prove the features.
            unsafe {
                simd::run16(Map { x: &xs, g, out: &mut a }, l16);
                simd::run8(Map { x: &xs, g, out: &mut b }, l8);
            }
            assert_eq!(bits(&a), bits(&b), "gradients: {}", g.is_some());
        }
    }

    /// A value does not depend on where it sits (ragged tails go through the same lanes).
    #[test]
    fn values_do_not_depend_on_position() {
        let xs: Vec<f32> = (0..19).map(|i| i as f32 * 0.37 - 3.0).collect();
        let op = GeluErf { portable: false };
        let all = op.values(&xs);
        for s in 0..19 {
            assert_eq!(&all[s..], &op.values(&xs[s..])[..], "start {s}");
        }
    }
}
