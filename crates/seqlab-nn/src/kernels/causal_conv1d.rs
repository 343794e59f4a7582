//! Mamba's causal depthwise convolution followed by SiLU, as one CPU op with an analytic
//! backward (behind [`crate::mamba::Mamba`]; the reference's `causal_conv1d_fn(..., activation
//! = "silu")`):
//!
//! ```text
//! out[b, t, d] = silu(bias[d] + Σ_j w[d, j] · x[b, t − (K−1) + j, d]),   x[b, <0, d] = 0
//! ```
//!
//! Composed from candle ops the same thing took K narrowed copies, K multiplications, K
//! additions and a SiLU, each a pass over (B, L, D) in the forward and more in the backward
//! (one of the larger items of a Mamba training step after the scan; perf, 1 thread).
//! The backward recomputes the pre-activation (K multiply-adds per element) instead of
//! keeping it.

use super::recurrence::sigmoid;
use super::{contiguous, contiguous_f32, device_f32, dispatch};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x` (B, L, D) → silu(causal depthwise conv1d) (B, L, D); `weight` (D, K), `bias` (D).
/// CPU, f32.
pub(crate) fn causal_conv1d_silu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, _, d) = x.dims3()?;
    let (dw, k) = weight.dims2()?;
    if dw != d || bias.dims() != [d] || k == 0 {
        bail!(
            "causal conv1d: input {:?}, weight {:?}, bias {:?}; want weight (D, K) and bias (D) with D = {d}",
            x.dims(),
            weight.dims(),
            bias.dims()
        );
    }
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, CausalConvSilu)
}

struct CausalConvSilu;

/// Sizes (B, L, D, K) from the layouts of x and weight.
fn sizes(lx: &[usize], lw: &[usize]) -> (usize, usize, usize, usize) {
    (lx[0], lx[1], lx[2], lw[1])
}

/// The pre-activation of row t of one sequence `xs` (L·D) into `pre` (D), weights transposed
/// to `wt` (K, D).
#[inline(always)]
fn pre_row(xs: &[f32], wt: &[f32], bias: &[f32], t: usize, d: usize, k: usize, pre: &mut [f32]) {
    pre.fill(0.0);
    for j in 0..k {
        // Tap j reads position t − (K−1) + j.
        let Some(src) = (t + j).checked_sub(k - 1) else {
            continue;
        };
        let (xr, wr) = (&xs[src * d..(src + 1) * d], &wt[j * d..(j + 1) * d]);
        for c in 0..d {
            pre[c] += wr[c] * xr[c];
        }
    }
    for c in 0..d {
        pre[c] += bias[c];
    }
}

/// (D, K) → (K, D).
fn transpose(w: &[f32], d: usize, k: usize) -> Vec<f32> {
    let mut wt = vec![0f32; w.len()];
    for c in 0..d {
        for j in 0..k {
            wt[j * d + c] = w[c * k + j];
        }
    }
    wt
}

fn forward(x: &[f32], w: &[f32], bias: &[f32], (_, l, d, k): (usize, usize, usize, usize)) -> Vec<f32> {
    let wt = transpose(w, d, k);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(l * d).zip(x.par_chunks(l * d)).for_each(|(ys, xs)| {
        dispatch(|| {
            for t in 0..l {
                let yr = &mut ys[t * d..(t + 1) * d];
                pre_row(xs, &wt, bias, t, d, k, yr);
                for v in yr.iter_mut() {
                    *v *= sigmoid(*v);
                }
            }
        })
    });
    out
}

/// (dx, dweight (D, K), dbias (D)).
fn backward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    gy: &[f32],
    (_, l, d, k): (usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let wt = transpose(w, d, k);
    let mut gx = vec![0f32; x.len()];
    let parts: Vec<(Vec<f32>, Vec<f32>)> = gx
        .par_chunks_mut(l * d)
        .zip(x.par_chunks(l * d).zip(gy.par_chunks(l * d)))
        .map(|(gxs, (xs, gys))| {
            let mut gwt = vec![0f32; k * d];
            let mut gb = vec![0f32; d];
            let mut gpre = vec![0f32; d];
            dispatch(|| {
                for t in 0..l {
                    pre_row(xs, &wt, bias, t, d, k, &mut gpre);
                    let gr = &gys[t * d..(t + 1) * d];
                    for c in 0..d {
                        // d silu(p)/dp = s·(1 + p·(1 − s)).
                        let (p, s) = (gpre[c], sigmoid(gpre[c]));
                        gpre[c] = gr[c] * s * (1.0 + p * (1.0 - s));
                        gb[c] += gpre[c];
                    }
                    for j in 0..k {
                        let Some(src) = (t + j).checked_sub(k - 1) else {
                            continue;
                        };
                        let (xr, wr) = (&xs[src * d..(src + 1) * d], &wt[j * d..(j + 1) * d]);
                        let gxr = &mut gxs[src * d..(src + 1) * d];
                        let gwr = &mut gwt[j * d..(j + 1) * d];
                        for c in 0..d {
                            gxr[c] += wr[c] * gpre[c];
                            gwr[c] += xr[c] * gpre[c];
                        }
                    }
                }
            });
            (gwt, gb)
        })
        .collect();
    let mut gw = vec![0f32; d * k];
    let mut gb = vec![0f32; d];
    for (gwt, gbp) in parts {
        for c in 0..d {
            for j in 0..k {
                gw[c * k + j] += gwt[j * d + c];
            }
            gb[c] += gbp[c];
        }
    }
    (gx, gw, gb)
}

impl CustomOp3 for CausalConvSilu {
    fn name(&self) -> &'static str {
        "seqlab-causal-conv1d-silu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "causal conv1d";
        let x = contiguous_f32(op, "input", s1, l1)?;
        let w = contiguous_f32(op, "weight", s2, l2)?;
        let b = contiguous_f32(op, "bias", s3, l3)?;
        let dims = sizes(l1.dims(), l2.dims());
        Ok((CpuStorage::F32(forward(x, w, b, dims)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = "causal conv1d";
        let grad = grad.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let dims = sizes(lx.dims(), lw.dims());
        let (gx, gw, gb) = backward(
            contiguous(op, "input", device_f32(op, "input", &sx)?, lx)?,
            contiguous(op, "weight", device_f32(op, "weight", &sw)?, lw)?,
            contiguous(op, "bias", device_f32(op, "bias", &sb)?, lb)?,
            contiguous(op, "grad", device_f32(op, "grad", &sg)?, lg)?,
            dims,
        );
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), dev)?),
            Some(Tensor::from_vec(gw, w.shape(), dev)?),
            Some(Tensor::from_vec(gb, b.shape(), dev)?),
        ))
    }
}
