//! LayerNorm and RMSNorm over the last dimension as one op with an analytic backward (behind
//! [`crate::LayerNorm`] and [`crate::RmsNorm`] on the CPU). RMSNorm is the same computation
//! without the mean: composed from candle ops it took ~15 passes over the activations per
//! norm (forward and backward), 9 norms per step of the Mamba Shakespeare preset.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Fused layer normalisation over the last dimension (biased variance, as PyTorch), with an
/// analytic backward. `weight` and `bias` are both given or both absent. CPU, f32 only.
pub fn layer_norm_fused(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    norm_fused(
        x,
        weight,
        bias,
        LayerNormOp {
            eps: eps as f32,
            rms: false,
        },
    )
}

/// Fused RMS normalisation over the last dimension, `x / sqrt(mean(x²) + eps) · weight`
/// (`torch.nn.RMSNorm`), with an analytic backward. CPU, f32 only.
pub fn rms_norm_fused(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    norm_fused(
        x,
        weight,
        None,
        LayerNormOp {
            eps: eps as f32,
            rms: true,
        },
    )
}

fn norm_fused(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, op: LayerNormOp) -> Result<Tensor> {
    // The kernel reads storage directly, so it wants dense inputs.
    let x = &x.contiguous()?;
    let weight = weight.map(|w| w.contiguous()).transpose()?;
    let bias = bias.map(|b| b.contiguous()).transpose()?;
    match (weight.as_ref(), bias.as_ref()) {
        (Some(w), Some(b)) => x.apply_op3(w, b, op),
        (None, None) => x.apply_op1(op),
        (Some(w), None) => {
            let b = w.zeros_like()?;
            x.apply_op3(w, &b, op)
        }
        (None, Some(b)) => {
            let w = b.ones_like()?;
            x.apply_op3(&w, b, op)
        }
    }
}

#[derive(Clone, Copy)]
struct LayerNormOp {
    eps: f32,
    /// RMSNorm: no centring (mean taken as 0).
    rms: bool,
}

/// Rows processed per rayon task; small inputs stay on one thread.
const ROWS_PER_TASK: usize = 64;

/// Mean and 1/sqrt(var + eps) of one row, two-pass for accuracy; with `rms` the mean is 0
/// (the mean square instead of the variance).
#[inline]
fn row_stats(x: &[f32], eps: f32, rms: bool) -> (f32, f32) {
    rows_stats::<1>(x, x.len(), eps, rms)[0]
}

/// Rows stepped together by [`ln_forward`]'s statistics.
const STAT_ROWS: usize = 8;

/// [`row_stats`] of the `R` rows of `x` (`c` values each) together. Each row's sums are the
/// same left-to-right f32 sums from −0.0 (what `Iterator::sum` computes), so the values are
/// bit for bit those of one row at a time; taking R rows per position gives R independent
/// chains of additions where one row is one chain, bound by the latency of each addition
/// (LayerNorm was ~4 % of beam-4 decoding, perf, 1 thread; its rows are 256 wide).
#[inline]
fn rows_stats<const R: usize>(x: &[f32], c: usize, eps: f32, rms: bool) -> [(f32, f32); R] {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * c..(r + 1) * c]);
    let n = c as f32;
    let mut mean = [0f32; R];
    if !rms {
        let mut s = [-0f32; R];
        for j in 0..c {
            for r in 0..R {
                s[r] += rows[r][j];
            }
        }
        mean = s.map(|v| v / n);
    }
    let mut q = [-0f32; R];
    for j in 0..c {
        for r in 0..R {
            let d = rows[r][j] - mean[r];
            q[r] += d * d;
        }
    }
    std::array::from_fn(|r| (mean[r], 1.0 / (q[r] / n + eps).sqrt()))
}

fn ln_forward(x: &[f32], c: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f32, rms: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let normalize = |xr: &[f32], yr: &mut [f32], (mean, rstd): (f32, f32)| match (w, b) {
        (Some(w), Some(b)) => {
            for j in 0..c {
                yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
            }
        }
        _ => {
            for j in 0..c {
                yr[j] = (xr[j] - mean) * rstd;
            }
        }
    };
    let work = |(xr, yr): (&[f32], &mut [f32])| {
        let block = STAT_ROWS * c;
        let whole = xr.len() / block * block;
        let (head, tail) = xr.split_at(whole);
        let (yhead, ytail) = yr.split_at_mut(whole);
        for (xb, yb) in head.chunks(block).zip(yhead.chunks_mut(block)) {
            let stats = rows_stats::<STAT_ROWS>(xb, c, eps, rms);
            for ((xr, yr), st) in xb.chunks(c).zip(yb.chunks_mut(c)).zip(stats) {
                normalize(xr, yr, st);
            }
        }
        for (xr, yr) in tail.chunks(c).zip(ytail.chunks_mut(c)) {
            normalize(xr, yr, row_stats(xr, eps, rms));
        }
    };
    let chunk = ROWS_PER_TASK * c;
    if x.len() > chunk {
        x.par_chunks(chunk).zip(y.par_chunks_mut(chunk)).for_each(work);
    } else {
        work((x, &mut y));
    }
    y
}

/// dx, and per-task partial sums of dweight and dbias (summed by the caller).
fn ln_backward(
    x: &[f32],
    gy: &[f32],
    c: usize,
    w: Option<&[f32]>,
    eps: f32,
    rms: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let work = |((xr, gr), dxr): ((&[f32], &[f32]), &mut [f32])| {
        let mut dw = vec![0f32; c];
        let mut db = vec![0f32; c];
        let mut g = vec![0f32; c];
        for ((xr, gr), dxr) in xr.chunks(c).zip(gr.chunks(c)).zip(dxr.chunks_mut(c)) {
            let (mean, rstd) = row_stats(xr, eps, rms);
            // g = dL/dxhat; dx = rstd·(g − mean(g) − xhat·mean(g·xhat)), without the
            // mean(g) term for RMSNorm (no centring to differentiate).
            let (mut sg, mut sgx) = (0f32, 0f32);
            for j in 0..c {
                let xh = (xr[j] - mean) * rstd;
                dw[j] += gr[j] * xh;
                db[j] += gr[j];
                g[j] = match w {
                    Some(w) => gr[j] * w[j],
                    None => gr[j],
                };
                sg += g[j];
                sgx += g[j] * xh;
            }
            let (mg, mgx) = (if rms { 0.0 } else { sg / c as f32 }, sgx / c as f32);
            for j in 0..c {
                let xh = (xr[j] - mean) * rstd;
                dxr[j] = rstd * (g[j] - mg - xh * mgx);
            }
        }
        (dw, db)
    };
    let chunk = ROWS_PER_TASK * c;
    let parts: Vec<(Vec<f32>, Vec<f32>)> = if x.len() > chunk {
        x.par_chunks(chunk)
            .zip(gy.par_chunks(chunk))
            .zip(dx.par_chunks_mut(chunk))
            .map(work)
            .collect()
    } else {
        vec![work(((x, gy), &mut dx))]
    };
    let mut dw = vec![0f32; c];
    let mut db = vec![0f32; c];
    for (pw, pb) in parts {
        for j in 0..c {
            dw[j] += pw[j];
            db[j] += pb[j];
        }
    }
    (dx, dw, db)
}

impl LayerNormOp {
    /// The backward pass (CPU-only like the op), reading x, grad and weight in place (host
    /// copies of x and grad were a serial memcpy of two activations per layer norm).
    fn bwd_common(&self, x: &Tensor, w: Option<&Tensor>, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "layer_norm backward";
        let c = *x.dims().last().unwrap_or(&1);
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let w = w.map(|w| w.contiguous()).transpose()?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let xv = super::contiguous(OP, "x", super::device_f32(OP, "x", &xs)?, xl)?;
        let gv = super::contiguous(OP, "grad", super::device_f32(OP, "grad", &gs)?, gl)?;
        let ws = w.as_ref().map(|w| w.storage_and_layout());
        let wv = match &ws {
            Some((s, l)) => Some(super::contiguous(OP, "weight", super::device_f32(OP, "weight", s)?, l)?),
            None => None,
        };
        let (dx, dw, db) = ln_backward(xv, gv, c, wv, self.eps, self.rms);
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, c, x.device())?,
            Tensor::from_vec(db, c, x.device())?,
        ))
    }
}

impl CustomOp1 for LayerNormOp {
    fn name(&self) -> &'static str {
        "seqlab-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32("layer_norm", "input", s, l)?;
        let c = *l.dims().last().unwrap_or(&0);
        if c == 0 {
            bail!("layer_norm: empty last dimension");
        }
        Ok((
            CpuStorage::F32(ln_forward(x, c, None, None, self.eps, self.rms)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.bwd_common(x, None, grad)?.0))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "seqlab-layer-norm-affine"
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
        let x = super::contiguous_f32("layer_norm", "input", s1, l1)?;
        let (w, b) = (
            super::contiguous_f32("layer_norm", "weight", s2, l2)?,
            super::contiguous_f32("layer_norm", "bias", s3, l3)?,
        );
        let c = *l1.dims().last().unwrap_or(&0);
        if c == 0 || w.len() != c || b.len() != c {
            bail!("layer_norm: last dimension {c}, weight {}, bias {}", w.len(), b.len());
        }
        Ok((
            CpuStorage::F32(ln_forward(x, c, Some(w), Some(b), self.eps, self.rms)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.bwd_common(x, Some(w), grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;

    /// The statistics of rows taken together are those of one row at a time (the sums of
    /// `Iterator::sum`) bit for bit, mean and 1/std, LayerNorm and RMSNorm, with rows of
    /// negative zeros (whose mean keeps its sign) and of large and tiny values.
    #[test]
    fn rows_stats_equal_row_at_a_time_bitwise() {
        let c = 37;
        let mut x = randn(3, &[STAT_ROWS * c]).to_vec1::<f32>().unwrap();
        x[..c].fill(-0.0);
        x[c..2 * c].iter_mut().for_each(|v| *v *= 1e30);
        x[2 * c..3 * c].iter_mut().for_each(|v| *v *= 1e-30);
        for rms in [false, true] {
            let together = rows_stats::<STAT_ROWS>(&x, c, 1e-5, rms);
            for (r, &(m, s)) in together.iter().enumerate() {
                let row = &x[r * c..(r + 1) * c];
                let mean = if rms { 0.0 } else { row.iter().sum::<f32>() / c as f32 };
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                let want = (mean, 1.0 / (var + 1e-5).sqrt());
                assert_eq!(
                    (m.to_bits(), s.to_bits()),
                    (want.0.to_bits(), want.1.to_bits()),
                    "row {r}, rms {rms}"
                );
            }
        }
        // Through the op: every row count around the blocks of rows gives the rows' own norms.
        for rows in [1, STAT_ROWS - 1, STAT_ROWS, 2 * STAT_ROWS + 3, 200] {
            let x = randn(4 + rows as u64, &[rows * c]).to_vec1::<f32>().unwrap();
            let (w, b) = (
                randn(5, &[c]).to_vec1::<f32>().unwrap(),
                randn(6, &[c]).to_vec1::<f32>().unwrap(),
            );
            let y = ln_forward(&x, c, Some(&w), Some(&b), 1e-5, false);
            for r in 0..rows {
                let row = &x[r * c..(r + 1) * c];
                let (mean, rstd) = row_stats(row, 1e-5, false);
                for j in 0..c {
                    let want = (row[j] - mean) * rstd * w[j] + b[j];
                    assert_eq!(y[r * c + j].to_bits(), want.to_bits(), "{rows} rows: row {r}, {j}");
                }
            }
        }
    }
}
