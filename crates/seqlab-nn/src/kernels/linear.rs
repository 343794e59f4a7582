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

/// Whether gemm multiplies `x Wᵀ` (rows × in by a weight out × in) with its blocked
/// micro-kernels whether the weight is given row-major or transposed, so that both give the
/// same bits: not for one row or rows · out ≤ 256 (with the row-major weight it takes its
/// dot-product kernels there), one output (a matrix-vector product) or a depth of at most 2
/// (its outer-product kernel). Shared by [`LinearOp`] and [`TransposedLinear`].
fn gemm_kernel_either_layout(rows: usize, out_f: usize, in_f: usize) -> bool {
    rows >= 2 && out_f >= 2 && in_f > 2 && rows * out_f > 256
}

/// `dst` (rows × out) = x (rows × in) · Wᵀ for the weight W (out × in), all row-major: with
/// `transposed`, through a transposed copy of W. gemm computes a row-major product as its
/// transpose W xᵀ, with W as the left operand, which it packs into column panels; from the
/// row-major W it gathers them one element at a time, from Wᵀ it copies 64 contiguous floats
/// per depth. The copy costs one vectorised transpose of W per call, the gather ran once per
/// block of gemm's loop (perf, `bench encoder`, 1 thread: the gather 1.7 % of the step).
/// Same bits either way where [`gemm_kernel_either_layout`] holds: the micro-kernel reads
/// the same packed panels.
fn product_x_wt(dst: &mut [f32], x: &[f32], w: &[f32], rows: usize, in_f: usize, out_f: usize, transposed: bool) {
    assert!(dst.len() == rows * out_f && x.len() == rows * in_f && w.len() == out_f * in_f);
    let wt = transposed.then(|| {
        // SAFETY: `transpose` writes all out·in elements.
        let mut wt = unsafe { super::uninit_f32(out_f * in_f) };
        super::transpose::transpose(w, out_f, in_f, &mut wt);
        wt
    });
    // Element (depth k, output j) of the right operand Wᵀ.
    let (rhs, rhs_cs, rhs_rs) = match &wt {
        Some(wt) => (wt.as_ptr(), 1, out_f as isize),
        None => (w.as_ptr(), in_f as isize, 1),
    };
    // SAFETY: x holds rows·in, W (and Wᵀ) out·in and dst rows·out contiguous elements
    // (asserted), read and written through the strides given.
    unsafe {
        gemm(
            rows,
            out_f,
            in_f,
            dst.as_mut_ptr(),
            1,
            out_f as isize,
            false,
            x.as_ptr(),
            1,
            in_f as isize,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par(),
        );
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
            product_x_wt(
                &mut out,
                x,
                w,
                rows,
                in_f,
                out_f,
                gemm_kernel_either_layout(rows, out_f, in_f),
            );
        }
        let n = out_f;
        let relu = self.relu;
        let chunk = n * rows_per_task(rows);
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
            for orow in o.chunks_mut(n) {
                bias_act(orow, Some(b), relu);
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
        // The incoming gradient is read in place (a copy of it was a serial memcpy of the
        // whole activation gradient); the ReLU/dropout gate writes a new one.
        let (sg, lg) = grad.storage_and_layout();
        let g_in = super::contiguous("linear", "grad", device_f32("linear", "grad", &sg)?, lg)?;
        let gated: Option<Vec<f32>> = {
            let g = g_in;
            if self.relu || self.dropout.is_some() {
                let (sr, lr) = res.storage_and_layout();
                let r = super::contiguous("linear", "output", device_f32("linear", "output", &sr)?, lr)?;
                let relu = self.relu;
                // With dropout multipliers m ≥ 0: output > 0 exactly when m > 0 and x + b > 0,
                // and where m = 0 the gradient is 0 anyway, so the output's sign is the gate.
                // Chunks of plain loops with the case chosen outside them: they vectorise
                // (blends), where the element-wise rayon iterator with the ReLU test inside
                // stayed scalar (perf: 7 % of a mt-bible-small training step).
                // SAFETY: both cases below write every element.
                let mut dz = unsafe { super::uninit_f32(g.len()) };
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
                Some(dz)
            } else {
                None
            }
        };
        let g: &[f32] = gated.as_deref().unwrap_or(g_in);
        let (sx, lx) = x_t.storage_and_layout();
        let (sw, lw) = w_t.storage_and_layout();
        let x = super::contiguous("linear", "x", device_f32("linear", "x", &sx)?, lx)?;
        let w = super::contiguous("linear", "weight", device_f32("linear", "weight", &sw)?, lw)?;
        // x outside the autograd graph (a recurrent stack's input features, say) needs no
        // gradient: skipping it saves a third of the backward's multiply-adds.
        let need_dx = x_t.track_op();
        // The products below overwrite dx and dw (read_dst false); zeros when there is
        // nothing to multiply.
        let products = rows > 0 && out_f > 0;
        // SAFETY: with `products` the two products below (gemm, and gemm + transpose) write
        // every element.
        let buffer = |n: usize| {
            if products {
                unsafe { super::uninit_f32(n) }
            } else {
                vec![0f32; n]
            }
        };
        let mut dx = buffer(if need_dx { rows * in_f } else { 0 });
        let mut dw = buffer(out_f * in_f);
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
            // dW = Gᵀ X   (out×rows)(rows×in)
            super::weight_grad(&mut dw, g, x, rows, out_f, in_f, false);
        }
        let n = out_f;
        // Column sums of each task's rows in parallel, then added in a fixed order: rayon's
        // `reduce` added them in a tree whose shape follows which thread stole what, so the
        // bias gradient (and the step) differed between runs at 2 threads. The order is the
        // tree `reduce` built on one thread called from outside the pool (as before: three
        // levels of halving, each leaf summed from zeros), so 1-thread results are unchanged.
        let parts: Vec<Vec<f32>> = g
            .par_chunks(n * rows_per_task(rows))
            .map(|c| {
                let mut acc = vec![0f32; n];
                for row in c.chunks(n) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .collect();
        let db = halving_sum(&parts, n, 3);
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

/// The element-wise sum of `parts` (each of length `n`) in a fixed tree: `depth` levels of
/// splitting in halves (the first half `len / 2` long, only while a half has an element),
/// each leaf added in order starting from zeros, halves added left + right.
fn halving_sum(parts: &[Vec<f32>], n: usize, depth: u32) -> Vec<f32> {
    if depth > 0 && parts.len() >= 2 {
        let mid = parts.len() / 2;
        let mut a = halving_sum(&parts[..mid], n, depth - 1);
        let b = halving_sum(&parts[mid..], n, depth - 1);
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        a
    } else {
        parts.iter().fold(vec![0f32; n], |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        })
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
            Some(Arc::new(rng.lock().unwrap().dropout_multipliers(rows * out_f, p)))
        }
        None => None,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp { relu, dropout: mask })
}

/// Rows per gemm call of [`TransposedLinear`] with several threads: gemm-common 0.19 packs
/// (copies into panels) an already column-major lhs whenever the call has more than 8·NR
/// columns (its `lhs_packing_threshold`, NR = 6 for the AVX2 and AVX-512 f32 kernels, 4 for
/// the scalar one), so a call of at most 32 rows multiplies the transposed weight where it
/// lies on any of them.
const T_ROWS: usize = 32;

/// The row chunks (first row, rows) of a one-thread [`TransposedLinear`] call over `rows` ≥ 2
/// rows: as many rows per gemm call as gemm multiplies without packing (8·NR, NR = the
/// micro-kernel's columns on this CPU), every chunk but the last a multiple of NR, none of
/// one row (gemm multiplies a single row in another order). gemm's micro-kernel takes NR
/// rows at a time, so a chunk of r rows costs ⌈r/NR⌉ kernel calls over the whole weight
/// panel: 128 rows (a beam-4 step of 32 sentences) in 32-row chunks were 4 × 6 = 24 calls
/// for 21⅓ calls' worth of rows, in these chunks 8 + 8 + 6 = 22.
fn aligned_row_chunks(rows: usize, nr: usize) -> Vec<(usize, usize)> {
    let max = 8 * nr;
    let mut out = Vec::with_capacity(rows / max + 1);
    let mut r0 = 0;
    while rows - r0 > max {
        out.push((r0, max));
        r0 += max;
    }
    let mut rest = rows - r0;
    if rest == 1 {
        if let Some(last) = out.last_mut() {
            last.1 -= nr;
            r0 -= nr;
            rest += nr;
        }
    }
    out.push((r0, rest));
    out
}

/// Outputs per gemm call of [`TransposedLinear`]: a (256, in) block of the weight (256 KB at
/// in = 256) stays in L2 while every row chunk passes over it.
const T_OUTS: usize = 256;

/// The output blocks of a weight with `out_f` outputs, (first output, outputs): T_OUTS each,
/// the last one taking the remainder (so every block of a weight with more than 64 outputs
/// has more than 64, and gemm chooses its depth blocks as for the whole product).
fn out_blocks(out_f: usize) -> Vec<(usize, usize)> {
    let n = (out_f / T_OUTS).max(1);
    (0..n)
        .map(|i| (i * T_OUTS, if i + 1 == n { out_f - i * T_OUTS } else { T_OUTS }))
        .collect()
}

/// `x Wᵀ + b` (+ ReLU) at inference, for the few rows of a decoding step (one per live
/// hypothesis): the weight (out, in) is kept transposed, copied once when decoding starts, as
/// one (in, outputs) row-major panel per block of 256 outputs, so that gemm multiplies it
/// where it lies, reading each panel front to back. With the plain layout gemm packed (copied)
/// the whole weight on every call; in beam-4 decoding of a d_model-256 model that packing was
/// ~24 % of the time (perf, session 7).
///
/// Values are those of [`linear_act`] bit for bit: gemm's f32 kernels accumulate each output
/// in one fused multiply-add chain per depth block, whatever the layout and packing, and the
/// depth blocks depend on `in` only. Where gemm would take another kernel for the plain
/// layout (one row, or rows · out ≤ 256: its dot-product kernels; a weight of ≤ 64 outputs
/// with `in` > 512: another depth block) and where the transposed layout would still be packed
/// (`out` not a multiple of 16), the call goes to [`linear_act`] itself.
///
/// No autograd: inference only (the result is a fresh tensor without a graph).
#[derive(Clone, Debug)]
pub struct TransposedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Wᵀ as the panels of [`out_blocks`] one after the other (block (c0, cn): in × cn
    /// row-major from offset c0 · in) and the bias values, when the transposed path applies.
    t: Option<Arc<(Vec<f32>, Option<Vec<f32>>)>>,
    in_f: usize,
    out_f: usize,
}

impl TransposedLinear {
    /// Copies `weight` (out, in) transposed (and `bias` (out)) when the transposed path applies
    /// (f32 on the CPU, `out` a multiple of 16, not ≤ 64 outputs over `in` > 512).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_f, in_f) = weight.dims2()?;
        if let Some(b) = bias {
            if b.dims() != [out_f] {
                bail!("linear: weight {:?} and bias {:?} do not fit", weight.dims(), b.dims());
            }
        }
        let fits = ops::use_fused(weight) && out_f % 16 == 0 && !(in_f > 512 && out_f <= 64);
        let t = if fits {
            let w = weight.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            // Each panel is the transpose of its cn rows of W (a strided gather here was ~2 %
            // of beam-4 decoding, as it runs for every batch).
            let mut panels = vec![0f32; out_f * in_f];
            for (c0, cn) in out_blocks(out_f) {
                let rows_w = &w[c0 * in_f..(c0 + cn) * in_f];
                super::transpose::transpose(rows_w, cn, in_f, &mut panels[c0 * in_f..(c0 + cn) * in_f]);
            }
            let b = match bias {
                Some(b) => Some(b.detach().to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?),
                None => None,
            };
            Some(Arc::new((panels, b)))
        } else {
            None
        };
        Ok(Self {
            weight: weight.clone(),
            bias: bias.cloned(),
            t,
            in_f,
            out_f,
        })
    }

    /// x (..., in) → (..., out), ReLU applied with `relu`.
    pub fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (in_f, out_f) = (self.in_f, self.out_f);
        let rows = x.elem_count() / in_f.max(1);
        let t = match &self.t {
            Some(t)
                if ops::use_fused(x)
                    && x.dims().last() == Some(&in_f)
                    && gemm_kernel_either_layout(rows, out_f, in_f) =>
            {
                t
            }
            _ => return linear_act(x, &self.weight, self.bias.as_ref(), relu),
        };
        let (wt, bias) = (&t.0, t.1.as_deref());
        let x = x.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let xs = match &*sx {
            candle_core::Storage::Cpu(c) => super::contiguous_f32("linear", "x", c, lx)?,
            _ => bail!("linear: x must be on the CPU"),
        };
        let mut out: Vec<f32> = Vec::with_capacity(rows * out_f);
        let dst = super::MutPtr(out.as_mut_ptr());
        // Jobs: output ranges × row chunks: with several threads of at most T_ROWS, sizes
        // within one of each other (never a one-row chunk); with one, [`aligned_row_chunks`]. An output range is a panel, or with several threads and
        // fewer than two jobs per thread, each half of the panels of 256 and more outputs
        // (so that a step's last few rows still keep both threads busy; every half has more
        // than 64 outputs, a multiple of 16).
        let threads = rayon::current_num_threads();
        let row_chunks: Vec<(usize, usize)> = if threads > 1 {
            let n = rows.div_ceil(T_ROWS);
            (0..n)
                .map(|j| (j * rows / n, (j + 1) * rows / n - j * rows / n))
                .collect()
        } else {
            aligned_row_chunks(rows, super::gemm_order::micro_kernel_columns())
        };
        let n_row = row_chunks.len();
        // (panel's first output, panel's outputs, range's first output, range's outputs)
        let mut ranges: Vec<(usize, usize, usize, usize)> = Vec::new();
        let blocks = out_blocks(out_f);
        let split = threads > 1 && blocks.len() * n_row < 2 * threads;
        for (c0, cn) in blocks {
            if split && cn >= 256 {
                let h = cn / 2 / 16 * 16;
                ranges.extend([(c0, cn, c0, h), (c0, cn, c0 + h, cn - h)]);
            } else {
                ranges.push((c0, cn, c0, cn));
            }
        }
        let n_out = ranges.len();
        let job = |jb: usize| {
            let ((p0, pw, c0, cn), (r0, rn)) = (ranges[jb / n_row], row_chunks[jb % n_row]);
            // SAFETY: x holds rows·in, wt in·out and dst rows·out elements; this job reads rows
            // r0.. of x and columns c0.. of the panel at p0 (pw columns, in rows), and writes
            // only its (rn, cn) tile of dst, which gemm fully writes before it is read
            // (read_dst = false: no read of the uninitialised dst).
            unsafe {
                let d = dst.get().add(r0 * out_f + c0);
                gemm(
                    rn,
                    cn,
                    in_f,
                    d,
                    1,
                    out_f as isize,
                    false,
                    xs.as_ptr().add(r0 * in_f),
                    1,
                    in_f as isize,
                    wt.as_ptr().add(p0 * in_f + (c0 - p0)),
                    1,
                    pw as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                for r in 0..rn {
                    let o = std::slice::from_raw_parts_mut(d.add(r * out_f), cn);
                    bias_act(o, bias.map(|b| &b[c0..c0 + cn]), relu);
                }
            }
        };
        let jobs = n_out * n_row;
        if threads > 1 && jobs > 1 {
            (0..jobs).into_par_iter().for_each(job);
        } else {
            (0..jobs).for_each(job);
        }
        drop(sx);
        // SAFETY: the jobs above wrote all rows·out elements.
        unsafe { out.set_len(rows * out_f) };
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("x has a last dimension") = out_f;
        Tensor::from_vec(out, dims, x.device())
    }
}

/// The epilogue of one output row of a linear product: `o += b` (when given), then ReLU
/// (with `relu`); shared by [`LinearOp`] and [`TransposedLinear`], whose values must agree.
#[inline]
fn bias_act(o: &mut [f32], b: Option<&[f32]>, relu: bool) {
    match b {
        Some(b) => o.iter_mut().zip(b).for_each(|(o, &bv)| {
            let v = *o + bv;
            *o = if relu { v.max(0.0) } else { v };
        }),
        None if relu => o.iter_mut().for_each(|o| *o = o.max(0.0)),
        None => {}
    }
}

/// `v` where the ReLU's output `r` is positive, else 0, as a bit mask (compare + and), which
/// the compiler vectorises where an `if` with a float 0 in a zipped loop stayed scalar.
#[inline(always)]
fn relu_gate(r: f32, v: f32) -> f32 {
    f32::from_bits(v.to_bits() & (0u32.wrapping_sub((r > 0.0) as u32)))
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

    /// The transposed copy gives `linear_act`'s values bit for bit, on the transposed path
    /// (up to 5 row chunks and 4 output blocks, halved at 2 threads, depth over and under
    /// gemm's 512 block; at one thread full chunks and a last one of every size, a one-row
    /// remainder folded into it) and on
    /// every fallback (one row, rows · out ≤ 256, out not a multiple of 16, no bias), at 1
    /// and 2 threads.
    /// The bias gradient has the same bits at any thread count (rayon's `reduce` added the
    /// per-task column sums in a tree that followed work stealing).
    #[test]
    fn bias_gradient_does_not_depend_on_the_thread_count() {
        let x = Var::from_tensor(&randn(1, &[3000, 16])).unwrap();
        let w = Var::from_tensor(&randn(2, &[40, 16])).unwrap();
        let b = Var::from_tensor(&randn(3, &[40])).unwrap();
        let probe = randn(4, &[3000, 40]);
        let db = |threads: usize| {
            crate::testing::in_pool(threads, || {
                let y = linear_act(&x, &w, Some(&b), false).unwrap();
                let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                crate::testing::bits(&g.get(&b).unwrap().to_vec1::<f32>().unwrap())
            })
        };
        let one = db(1);
        for threads in [2, 3, 4] {
            for _ in 0..5 {
                assert_eq!(db(threads), one, "{threads} threads");
            }
        }
    }

    #[test]
    fn transposed_linear_equals_linear_act_exactly() {
        let cases = [
            (2, 256, 64),
            (7, 48, 33),
            (33, 256, 256),
            (128, 768, 256),
            (130, 1024, 256),
            (97, 256, 1024),
            (20, 256, 1024),
            (49, 256, 256),
            (97, 768, 256),
            (100, 320, 256),
            (50, 256, 1024),
            (20, 576, 600),
            (64, 80, 700),
            (1, 256, 256),
            (4, 32, 32),
            (40, 100, 20),
            (9, 16, 3),
        ];
        for (i, &(rows, out_f, in_f)) in cases.iter().enumerate() {
            let x = randn(10 + i as u64, &[rows, in_f]);
            let w = randn(20 + i as u64, &[out_f, in_f]);
            let b = randn(30 + i as u64, &[out_f]);
            for (bias, relu) in [(true, false), (true, true), (false, false)] {
                let b = bias.then_some(&b);
                let t = TransposedLinear::new(&w, b).unwrap();
                for threads in [1, 2] {
                    let (got, want) = crate::testing::in_pool(threads, || {
                        (t.forward(&x, relu).unwrap(), linear_act(&x, &w, b, relu).unwrap())
                    });
                    let (got, want) = (got.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
                    let same = got
                        .iter()
                        .flatten()
                        .zip(want.iter().flatten())
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "rows {rows}, out {out_f}, in {in_f}, bias {bias}, relu {relu}, {threads} threads"
                    );
                }
            }
        }
        // 3-d input keeps its leading dimensions.
        let t = TransposedLinear::new(&randn(1, &[32, 8]), None).unwrap();
        assert_eq!(t.forward(&randn(2, &[3, 4, 8]), false).unwrap().dims(), &[3, 4, 32]);
        assert!(TransposedLinear::new(&randn(1, &[32, 8]), Some(&randn(2, &[31]))).is_err());
    }

    /// The training forward's transposed weight gives the row-major weight's products bit
    /// for bit (rows 1 to 2048, sizes off multiples of 16, depth over gemm's 512 block, 1 and 2
    /// threads), and the whole op (bias, ReLU, dropout) the old product's epilogue exactly.
    #[test]
    fn transposed_weight_product_equals_row_major_exactly() {
        let shapes = [
            (1, 64, 48),
            (2, 200, 33),
            (7, 48, 33),
            (7, 2, 40),
            (32, 2048, 256),
            (32, 17, 3),
            (33, 100, 700),
            (2048, 20, 16),
            (2048, 100, 70),
            (300, 512, 512),
        ];
        let bits = crate::testing::bits;
        for (i, &(rows, out_f, in_f)) in shapes.iter().enumerate() {
            let x = randn(40 + i as u64, &[rows, in_f]);
            let w = randn(50 + i as u64, &[out_f, in_f]);
            let b = randn(60 + i as u64, &[out_f]);
            let (xs, ws, bs) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.to_vec1::<f32>().unwrap(),
            );
            for threads in [1, 2] {
                crate::testing::in_pool(threads, || {
                    let mut old = vec![0f32; rows * out_f];
                    product_x_wt(&mut old, &xs, &ws, rows, in_f, out_f, false);
                    let mut new = vec![f32::NAN; rows * out_f];
                    product_x_wt(&mut new, &xs, &ws, rows, in_f, out_f, true);
                    let what = format!("rows {rows}, out {out_f}, in {in_f}, {threads} threads");
                    if gemm_kernel_either_layout(rows, out_f, in_f) {
                        assert_eq!(bits(&new), bits(&old), "{what}");
                    }
                    for (relu, p) in [(false, 0.0), (true, 0.0), (true, 0.3), (false, 0.2)] {
                        let rng = SeqRng::shared(7);
                        let mask = SeqRng::new(7).dropout_multipliers(rows * out_f, p);
                        let y = linear_act_dropout(&x, &w, Some(&b), relu, Some((p, &rng))).unwrap();
                        let mut want = old.clone();
                        for (r, o) in want.chunks_mut(out_f).enumerate() {
                            bias_act(o, Some(&bs), relu);
                            if p > 0.0 {
                                o.iter_mut().zip(&mask[r * out_f..]).for_each(|(o, &m)| *o *= m);
                            }
                        }
                        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        assert_eq!(bits(&y), bits(&want), "{what}, relu {relu}, dropout {p}");
                    }
                });
            }
        }
    }

    /// The one-thread row chunks cover the rows in order, none over 8·NR rows or of one row,
    /// all but the last a multiple of NR, with the fewest micro-kernel calls (⌈rows/NR⌉).
    #[test]
    fn aligned_row_chunks_cover_rows_without_one_row_chunks() {
        for nr in [4, 6] {
            for rows in 2..400 {
                let c = aligned_row_chunks(rows, nr);
                let mut next = 0;
                for (i, &(r0, rn)) in c.iter().enumerate() {
                    assert_eq!(r0, next, "rows {rows}");
                    assert!((2..=8 * nr).contains(&rn), "rows {rows}: chunk {rn}");
                    assert!(i + 1 == c.len() || rn % nr == 0, "rows {rows}: chunk {rn}");
                    next += rn;
                }
                assert_eq!(next, rows);
                let calls: usize = c.iter().map(|&(_, rn)| rn.div_ceil(nr)).sum();
                assert_eq!(calls, rows.div_ceil(nr), "rows {rows}");
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
