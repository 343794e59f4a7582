//! The fused linear layer: `act(x Wᵀ + b)` then optional dropout as ONE graph node (used by
//! the Transformer's projections and feed-forward block).

use super::device_f32;
use crate::{ops, SharedRng};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::Arc;

/// `act(x Wᵀ + b)` then optional dropout, as ONE graph node: gemm, then the bias, ReLU and
/// dropout multipliers in one pass. Its backward gives dX = G W, dW = Gᵀ X (gemm, written
/// contiguous) and db = column sums, where G is the output gradient gated by ReLU/dropout.
/// Compared with candle's matmul + transpose + broadcast_add (+ relu + mul) this saves several
/// full passes and gradient accumulations over the (rows, out) activation.
struct LinearOp {
    relu: bool,
    /// Inverted-dropout multipliers (rows × out).
    dropout: Option<Arc<Vec<f32>>>,
}

fn rows_per_task(rows: usize) -> usize {
    (rows / 64).max(1)
}

fn par() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "seqlab-linear"
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
        let x = super::contiguous_f32("linear", "x", s1, l1)?;
        let w = super::contiguous_f32("linear", "weight", s2, l2)?;
        let b = super::contiguous_f32("linear", "bias", s3, l3)?;
        // x may have any rank (..., in): its leading dimensions are the rows, so no reshape
        // nodes (each costing a gradient accumulation pass) are needed around the op.
        let in_f = *l1.dims().last().unwrap_or(&0);
        let rows = l1.shape().elem_count().checked_div(in_f).unwrap_or(0);
        let (out_f, in_w) = l2.shape().dims2()?;
        if in_w != in_f || b.len() != out_f || out_f == 0 {
            bail!(
                "linear: x {:?}, weight {:?}, bias {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut out = vec![0f32; rows * out_f];
        if rows > 0 {
            // SAFETY: slices hold rows·in, out·in and rows·out contiguous elements.
            unsafe {
                gemm(
                    rows,
                    out_f,
                    in_f,
                    out.as_mut_ptr(),
                    1,
                    out_f as isize,
                    false,
                    x.as_ptr(),
                    1,
                    in_f as isize,
                    w.as_ptr(),
                    in_f as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par(),
                );
            }
        }
        let n = out_f;
        let relu = self.relu;
        let chunk = n * rows_per_task(rows);
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
            for orow in o.chunks_mut(n) {
                for (o, &bv) in orow.iter_mut().zip(b) {
                    let v = *o + bv;
                    *o = if relu { v.max(0.0) } else { v };
                }
            }
            if let Some(m) = &self.dropout {
                o.iter_mut().zip(&m[ci * chunk..]).for_each(|(o, &mv)| *o *= mv);
            }
        });
        let mut out_dims = l1.dims().to_vec();
        *out_dims.last_mut().expect("rank checked by caller") = out_f;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x_t: &Tensor,
        w_t: &Tensor,
        b_t: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let in_f = *x_t.dims().last().unwrap_or(&0);
        let rows = x_t.elem_count().checked_div(in_f).unwrap_or(0);
        let out_f = w_t.dim(0)?;
        let g: Vec<f32> = {
            let (sg, lg) = grad.storage_and_layout();
            let g = super::contiguous("linear", "grad", device_f32("linear", "grad", &sg)?, lg)?;
            if self.relu || self.dropout.is_some() {
                let (sr, lr) = res.storage_and_layout();
                let r = super::contiguous("linear", "output", device_f32("linear", "output", &sr)?, lr)?;
                let relu = self.relu;
                // With dropout multipliers m ≥ 0: output > 0 exactly when m > 0 and x + b > 0,
                // and where m = 0 the gradient is 0 anyway, so the output's sign is the gate.
                // Chunks of plain loops with the case chosen outside them: they vectorise
                // (blends), where the element-wise rayon iterator with the ReLU test inside
                // stayed scalar (perf: 7 % of a mt-bible-small training step).
                let mut dz = vec![0f32; g.len()];
                const CHUNK: usize = 1 << 14;
                let parts = dz
                    .par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(r.par_chunks(CHUNK));
                match &self.dropout {
                    Some(m) => parts.zip(m.par_chunks(CHUNK)).for_each(|(((d, g), r), m)| {
                        let n = d.len();
                        let (g, r, m) = (&g[..n], &r[..n], &m[..n]);
                        if relu {
                            for i in 0..n {
                                d[i] = relu_gate(r[i], g[i] * m[i]);
                            }
                        } else {
                            for i in 0..n {
                                d[i] = g[i] * m[i];
                            }
                        }
                    }),
                    None => parts.for_each(|((d, g), r)| {
                        let n = d.len();
                        let (g, r) = (&g[..n], &r[..n]);
                        for i in 0..n {
                            d[i] = relu_gate(r[i], g[i]);
                        }
                    }),
                }
                dz
            } else {
                g.to_vec()
            }
        };
        let (sx, lx) = x_t.storage_and_layout();
        let (sw, lw) = w_t.storage_and_layout();
        let x = super::contiguous("linear", "x", device_f32("linear", "x", &sx)?, lx)?;
        let w = super::contiguous("linear", "weight", device_f32("linear", "weight", &sw)?, lw)?;
        // x outside the autograd graph (a recurrent stack's input features, say) needs no
        // gradient: skipping it saves a third of the backward's multiply-adds.
        let need_dx = x_t.track_op();
        let mut dx = vec![0f32; if need_dx { rows * in_f } else { 0 }];
        let mut dw = vec![0f32; out_f * in_f];
        if rows > 0 && need_dx {
            // SAFETY: all buffers are contiguous with the sizes named in each call.
            unsafe {
                // dX = G W   (rows×out)(out×in)
                gemm(
                    rows,
                    in_f,
                    out_f,
                    dx.as_mut_ptr(),
                    1,
                    in_f as isize,
                    false,
                    g.as_ptr(),
                    1,
                    out_f as isize,
                    w.as_ptr(),
                    1,
                    in_f as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par(),
                );
            }
        }
        if rows > 0 {
            // SAFETY: as above.
            unsafe {
                // dW = Gᵀ X   (out×rows)(rows×in)
                gemm(
                    out_f,
                    in_f,
                    rows,
                    dw.as_mut_ptr(),
                    1,
                    in_f as isize,
                    false,
                    g.as_ptr(),
                    out_f as isize,
                    1,
                    x.as_ptr(),
                    1,
                    in_f as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par(),
                );
            }
        }
        let n = out_f;
        let db = g
            .par_chunks(n * rows_per_task(rows))
            .map(|c| {
                let mut acc = vec![0f32; n];
                for row in c.chunks(n) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .reduce(
                || vec![0f32; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let dev = x_t.device();
        let dx = if need_dx {
            Some(Tensor::from_vec(dx, x_t.shape(), dev)?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(dw, (out_f, in_f), dev)?),
            Some(Tensor::from_vec(db, out_f, b_t.device())?),
        ))
    }
}

/// `F.linear(x, w, b)` (x (..., in), w (out, in), b (out)), optionally followed by ReLU, with
/// the bias (and ReLU) fused into one pass on the CPU. Same values and gradients as
/// `ops::linear` (+ `relu`).
pub fn linear_act(x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    linear_act_dropout(x, w, b, relu, None)
}

/// [`linear_act`] followed by inverted dropout with probability `p` drawn from `rng` (the same
/// draws as [`crate::Dropout`]), all in one pass when on the CPU with a bias.
pub fn linear_act_dropout(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
    dropout: Option<(f64, &SharedRng)>,
) -> Result<Tensor> {
    let on_cpu = ops::use_fused(x);
    let dropout = dropout.filter(|(p, _)| *p > 0.0);
    let (Some(b), true) = (b, on_cpu) else {
        let y = ops::linear(x, w, b)?;
        let y = if relu { y.relu()? } else { y };
        return match dropout {
            Some((p, rng)) => crate::Dropout::new(p, rng.clone())?.forward(&y, true),
            None => Ok(y),
        };
    };
    let dims = x.dims().to_vec();
    let in_f = *dims.last().unwrap_or(&0);
    if in_f == 0 || w.rank() != 2 || w.dim(1)? != in_f || b.dims() != [w.dim(0)?] {
        bail!(
            "linear: x {:?}, weight {:?}, bias {:?} do not fit",
            dims,
            w.dims(),
            b.dims()
        );
    }
    let rows = x.elem_count() / in_f;
    let out_f = w.dim(0)?;
    let mask = match dropout {
        Some((p, rng)) => {
            if !(0.0..1.0).contains(&p) {
                bail!("dropout must be in [0, 1), got {p}");
            }
            let m = rng.lock().unwrap().dropout_mask((rows, out_f), p, x.device())?;
            Some(Arc::new(m.flatten_all()?.to_vec1::<f32>()?))
        }
        None => None,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp { relu, dropout: mask })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff as max_diff, randn};
    use crate::SeqRng;
    use candle_core::Var;

    /// The fused bias(+ReLU) equals `ops::linear` (+ `relu`) in value and gradient.
    #[test]
    fn linear_act_matches_ops_linear() {
        for relu in [false, true] {
            let x = Var::from_tensor(&randn(1, &[2, 3, 5])).unwrap();
            let w = Var::from_tensor(&randn(2, &[4, 5])).unwrap();
            let b = Var::from_tensor(&randn(3, &[4])).unwrap();
            let probe = randn(4, &[2, 3, 4]);
            let y1 = linear_act(&x, &w, Some(&b), relu).unwrap();
            let y2 = ops::linear(&x, &w, Some(&b)).unwrap();
            let y2 = if relu { y2.relu().unwrap() } else { y2 };
            assert!(max_diff(&y1, &y2) < 1e-6);
            let g1 = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
            }
        }
    }

    /// The fused ReLU + dropout equals `Dropout(relu(linear))` drawn from the same seed.
    #[test]
    fn linear_act_dropout_matches_separate_ops() {
        let x = Var::from_tensor(&randn(1, &[3, 4, 5])).unwrap();
        let w = Var::from_tensor(&randn(2, &[6, 5])).unwrap();
        let b = Var::from_tensor(&randn(3, &[6])).unwrap();
        let probe = randn(4, &[3, 4, 6]);
        let (r1, r2) = (SeqRng::shared(9), SeqRng::shared(9));
        let y1 = linear_act_dropout(&x, &w, Some(&b), true, Some((0.3, &r1))).unwrap();
        let y2 = ops::linear(&x, &w, Some(&b)).unwrap().relu().unwrap();
        let y2 = crate::Dropout::new(0.3, r2).unwrap().forward(&y2, true).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-6);
        let g1 = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
        }
    }
}

/// `v` where the ReLU's output `r` is positive, else 0, as a bit mask (compare + and), which
/// the compiler vectorises where an `if` with a float 0 in a zipped loop stayed scalar.
#[inline(always)]
fn relu_gate(r: f32, v: f32) -> f32 {
    f32::from_bits(v.to_bits() & (0u32.wrapping_sub((r > 0.0) as u32)))
}
