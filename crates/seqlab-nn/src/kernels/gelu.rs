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
//! erf is Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7 for all x), with the exponential of
//! [`super::simd::exp8`] on AVX2+FMA CPUs (8 lanes) and libm's `expf` elsewhere; both paths
//! use the same formula, so they agree to the exponential's few ulp. Against the exact GELU
//! the error is ≤ 1.5e-7·|x|/2 + an ulp (test `fused_gelu_matches_exact_gelu_and_gradient`).

use super::simd::{self, Avx2Fma};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

const P: f32 = 0.327_591_1;
const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `(Φ(x), φ(x))` for one element (the portable path).
#[inline]
fn phi_scalar(x: f32) -> (f32, f32) {
    let z = x * FRAC_1_SQRT_2;
    let az = z.abs();
    let t = 1.0 / (1.0 + P * az);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // e^(−z²) = e^(−x²/2): both erf's tail and the density use it.
    let e = (-az * az).exp();
    let erf_abs = 1.0 - poly * e;
    let erf = if z < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

/// `(Φ, φ)` of eight lanes, the same formula as [`phi_scalar`].
///
/// # Safety
/// AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn phi8(x: __m256) -> (__m256, __m256) {
    let sign = _mm256_set1_ps(-0.0);
    let z = _mm256_mul_ps(x, _mm256_set1_ps(FRAC_1_SQRT_2));
    let az = _mm256_andnot_ps(sign, z);
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(P), az, one));
    let mut poly = _mm256_set1_ps(A[4]);
    for a in [A[3], A[2], A[1], A[0]] {
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(a));
    }
    poly = _mm256_mul_ps(poly, t);
    let e = simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
    let erf_abs = _mm256_fnmadd_ps(poly, e, one);
    // Copy z's sign onto |erf|.
    let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(z, sign));
    let cdf = _mm256_mul_ps(_mm256_set1_ps(0.5), _mm256_add_ps(one, erf));
    (cdf, _mm256_mul_ps(_mm256_set1_ps(INV_SQRT_2PI), e))
}

/// [`phi8`] from and to arrays (the loads and stores compiled with AVX too: from a caller
/// without the target feature they were calls, 3 % of a bert-mini step).
///
/// # Safety
/// AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn phi8_arrays(x: &[f32; 8], cdf: &mut [f32; 8], pdf: &mut [f32; 8]) {
    let (c, p) = phi8(_mm256_loadu_ps(x.as_ptr()));
    _mm256_storeu_ps(cdf.as_mut_ptr(), c);
    _mm256_storeu_ps(pdf.as_mut_ptr(), p);
}

/// `out[i] = f(x[i], Φ(x[i]), φ(x[i]), aux[i])` (`aux[i]` 0 without `aux`) in chunks of eight
/// (a ragged tail padded with zeros through the same lanes, so a value does not depend on its
/// position).
#[inline]
fn map_phi(
    simd: Option<Avx2Fma>,
    x: &[f32],
    aux: Option<&[f32]>,
    out: &mut [f32],
    f: impl Fn(f32, f32, f32, f32) -> f32,
) {
    let mut cdf = [0f32; 8];
    let mut pdf = [0f32; 8];
    for (ci, (xs, ys)) in x.chunks(8).zip(out.chunks_mut(8)).enumerate() {
        let mut pad = [0f32; 8];
        pad[..xs.len()].copy_from_slice(xs);
        match simd {
            #[cfg(target_arch = "x86_64")]
            Some(_) => {
                // SAFETY: the token exists only where AVX2 and FMA are present; loads and
                // stores touch the 8-element arrays only.
                unsafe { phi8_arrays(&pad, &mut cdf, &mut pdf) };
            }
            _ => {
                for k in 0..8 {
                    (cdf[k], pdf[k]) = phi_scalar(pad[k]);
                }
            }
        }
        for (k, y) in ys.iter_mut().enumerate() {
            *y = f(pad[k], cdf[k], pdf[k], aux.map_or(0.0, |a| a[ci * 8 + k]));
        }
    }
}

/// The fused op (see the module docs); f32 CPU tensors of any shape.
pub(crate) struct GeluErf {
    simd: Option<Avx2Fma>,
}

impl GeluErf {
    /// `GELU(x)` element-wise.
    fn values(&self, x: &[f32]) -> Vec<f32> {
        self.run(x, None, |x, cdf, _, _| x * cdf)
    }

    /// `g · GELU'(x)` element-wise (`g.len() == x.len()`).
    fn grads(&self, x: &[f32], g: &[f32]) -> Vec<f32> {
        self.run(x, Some(g), |x, cdf, pdf, g| g * (cdf + x * pdf))
    }

    fn run(&self, x: &[f32], aux: Option<&[f32]>, f: impl Fn(f32, f32, f32, f32) -> f32 + Sync) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        let simd = self.simd;
        let work = |(k, o): (usize, &mut [f32])| {
            let at = k * CHUNK;
            let a = aux.map(|a| &a[at..at + o.len()]);
            map_phi(simd, &x[at..at + o.len()], a, o, &f);
        };
        if x.len() > CHUNK {
            out.par_chunks_mut(CHUNK).enumerate().for_each(work);
        } else {
            out.chunks_mut(CHUNK).enumerate().for_each(work);
        }
        out
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
    x.apply_op1(GeluErf {
        simd: Avx2Fma::detect(),
    })
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
        for simd in [Avx2Fma::detect(), None] {
            let op = GeluErf { simd };
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

    /// A value does not depend on where it sits (ragged tails go through the same lanes).
    #[test]
    fn values_do_not_depend_on_position() {
        let xs: Vec<f32> = (0..19).map(|i| i as f32 * 0.37 - 3.0).collect();
        let op = GeluErf {
            simd: Avx2Fma::detect(),
        };
        let all = op.values(&xs);
        for s in 0..19 {
            assert_eq!(&all[s..], &op.values(&xs[s..])[..], "start {s}");
        }
    }
}
