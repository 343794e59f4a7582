//! Scaled dot-product attention (`F.scaled_dot_product_attention`) and
//! `nn.MultiheadAttention`, both on one fused CPU kernel.
//!
//! The kernel works per (batch, head): scores = scale·Q Kᵀ (one `gemm` call), mask, softmax,
//! optional dropout, O = P V (a second `gemm`). It reads Q, K and V through their strides, so
//! the heads of an in-projection output (B, L, 3, H, D) are used in place with no transpose or
//! contiguous copy, and it writes O as (B, L, H, D), which is already the layout the output
//! projection wants. The softmax probabilities are kept for the hand-written backward:
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = scale·dS K, dK = scale·dSᵀ Q.
//!
//! Fully masked rows (every key masked for some query): the probabilities of that row are all
//! zero, so its output and its gradients are zero. This is what PyTorch's
//! `scaled_dot_product_attention` gives, and what `nn.MultiheadAttention` gives on the path the
//! Transformer layers use (`need_weights=False`); PyTorch's `need_weights=True` path returns NaN
//! there instead. Nothing panics.

use crate::linear::Linear;
use crate::{ops, Init, SharedRng, VarStore};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Where the (b, h) slice of a (B, L, H, D)-shaped strided tensor starts, and its strides.
#[derive(Clone, Copy, Debug)]
struct View {
    off: usize,
    sb: usize,
    sl: usize,
    sh: usize,
    sd: usize,
}

impl View {
    fn from_layout4(l: &Layout) -> Result<Self> {
        let st = l.stride();
        if st.len() != 4 {
            bail!("fused attention: expected a rank-4 tensor, got shape {:?}", l.dims());
        }
        Ok(View {
            off: l.start_offset(),
            sb: st[0],
            sl: st[1],
            sh: st[2],
            sd: st[3],
        })
    }

    fn contiguous(l: usize, h: usize, d: usize) -> Self {
        View {
            off: 0,
            sb: l * h * d,
            sl: h * d,
            sh: d,
            sd: 1,
        }
    }

    fn at(&self, b: usize, h: usize) -> usize {
        self.off + b * self.sb + h * self.sh
    }
}

#[derive(Clone, Copy)]
struct MutPtr(*mut f32);
unsafe impl Send for MutPtr {}
unsafe impl Sync for MutPtr {}
impl MutPtr {
    // A method (not field access) so that closures capture the whole Send wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// An additive mask of shape (bm, hm, L, S) with bm ∈ {1, B} and hm ∈ {1, H}.
#[derive(Clone, Debug)]
struct MaskData {
    data: Arc<Vec<f32>>,
    bm: usize,
    hm: usize,
}

/// Everything the kernel needs besides Q, K, V.
#[derive(Clone)]
struct Plan {
    b: usize,
    l: usize,
    s: usize,
    h: usize,
    d: usize,
    dv: usize,
    scale: f32,
    causal: bool,
    mask: Option<MaskData>,
    /// Additive key-padding mask (B, S).
    kpm: Option<Arc<Vec<f32>>>,
    /// Inverted-dropout multipliers (B, H, L, S) applied to the probabilities.
    dropout: Option<Arc<Vec<f32>>>,
    /// Softmax probabilities (B, H, L, S) from the forward pass, before dropout.
    probs: Arc<Mutex<Option<Arc<Vec<f32>>>>>,
}

impl Plan {
    fn softmax_rows(&self, bi: usize, hi: usize, scores: &mut [f32]) {
        let (l, s) = (self.l, self.s);
        let mask = self.mask.as_ref().map(|m| {
            let mb = if m.bm == 1 { 0 } else { bi };
            let mh = if m.hm == 1 { 0 } else { hi };
            let start = (mb * m.hm + mh) * l * s;
            &m.data[start..start + l * s]
        });
        let kpm = self.kpm.as_ref().map(|k| &k[bi * s..(bi + 1) * s]);
        for i in 0..l {
            let row = &mut scores[i * s..(i + 1) * s];
            if let Some(m) = mask {
                row.iter_mut().zip(&m[i * s..(i + 1) * s]).for_each(|(x, a)| *x += a);
            }
            if let Some(k) = kpm {
                row.iter_mut().zip(k).for_each(|(x, a)| *x += a);
            }
            if self.causal && i + 1 < s {
                row[i + 1..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            if max == f32::NEG_INFINITY {
                row.iter_mut().for_each(|x| *x = 0.0);
                continue;
            }
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    fn out_shape(&self) -> Shape {
        (self.b, self.l, self.h, self.dv).into()
    }

    /// Returns O (B, L, H, Dv) contiguous and P (B, H, L, S).
    fn forward(&self, q: &[f32], qv: View, k: &[f32], kv: View, v: &[f32], vv: View) -> (Vec<f32>, Vec<f32>) {
        let (b, l, s, h, d, dv) = (self.b, self.l, self.s, self.h, self.d, self.dv);
        let ls = l * s;
        let mut out = vec![0f32; b * l * h * dv];
        let mut probs = vec![0f32; b * h * ls];
        if ls == 0 || b * h == 0 {
            return (out, probs);
        }
        let ov = View::contiguous(l, h, dv);
        let outp = MutPtr(out.as_mut_ptr());
        probs.par_chunks_mut(ls).enumerate().for_each(|(bh, pr)| {
            let (bi, hi) = (bh / h, bh % h);
            // SAFETY: every view was checked against its storage length by the caller, and each
            // task writes only the (bi, hi) block of `out`.
            unsafe {
                gemm(
                    l,
                    s,
                    d,
                    pr.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    q.as_ptr().add(qv.at(bi, hi)),
                    qv.sd as isize,
                    qv.sl as isize,
                    k.as_ptr().add(kv.at(bi, hi)),
                    kv.sl as isize,
                    kv.sd as isize,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            self.softmax_rows(bi, hi, pr);
            let dropped;
            let pd: &[f32] = match &self.dropout {
                Some(m) => {
                    dropped = pr
                        .iter()
                        .zip(&m[bh * ls..(bh + 1) * ls])
                        .map(|(a, b)| a * b)
                        .collect::<Vec<_>>();
                    &dropped
                }
                None => pr,
            };
            unsafe {
                gemm(
                    l,
                    dv,
                    s,
                    outp.get().add(ov.at(bi, hi)),
                    1,
                    ov.sl as isize,
                    false,
                    pd.as_ptr(),
                    1,
                    s as isize,
                    v.as_ptr().add(vv.at(bi, hi)),
                    vv.sd as isize,
                    vv.sl as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
        (out, probs)
    }

    /// Writes dQ, dK, dV into the given buffers/views (regions of distinct (b, h) never overlap).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        probs: &[f32],
        (q, qv): (&[f32], View),
        (k, kv): (&[f32], View),
        (v, vv): (&[f32], View),
        (go, gv): (&[f32], View),
        (dq, dqv): (MutPtr, View),
        (dk, dkv): (MutPtr, View),
        (dvp, dvv): (MutPtr, View),
    ) {
        let (b, l, s, h, d, dv) = (self.b, self.l, self.s, self.h, self.d, self.dv);
        let ls = l * s;
        if ls == 0 || b * h == 0 {
            return;
        }
        (0..b * h).into_par_iter().for_each(|bh| {
            let (bi, hi) = (bh / h, bh % h);
            let p = &probs[bh * ls..(bh + 1) * ls];
            let mask = self.dropout.as_ref().map(|m| &m[bh * ls..(bh + 1) * ls]);
            let pd_buf;
            let pd: &[f32] = match mask {
                Some(m) => {
                    pd_buf = p.iter().zip(m).map(|(a, b)| a * b).collect::<Vec<_>>();
                    &pd_buf
                }
                None => p,
            };
            let mut dp = vec![0f32; ls];
            // SAFETY: views were checked by the caller; each task writes only its (bi, hi) block.
            unsafe {
                // dV = Pdᵀ dO   (S×L)(L×Dv)
                gemm(
                    s,
                    dv,
                    l,
                    dvp.get().add(dvv.at(bi, hi)),
                    dvv.sd as isize,
                    dvv.sl as isize,
                    false,
                    pd.as_ptr(),
                    s as isize,
                    1,
                    go.as_ptr().add(gv.at(bi, hi)),
                    gv.sd as isize,
                    gv.sl as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                // dP = dO Vᵀ   (L×Dv)(Dv×S)
                gemm(
                    l,
                    s,
                    dv,
                    dp.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    go.as_ptr().add(gv.at(bi, hi)),
                    gv.sd as isize,
                    gv.sl as isize,
                    v.as_ptr().add(vv.at(bi, hi)),
                    vv.sl as isize,
                    vv.sd as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            if let Some(m) = mask {
                dp.iter_mut().zip(m).for_each(|(x, a)| *x *= a);
            }
            for i in 0..l {
                let pr = &p[i * s..(i + 1) * s];
                let row = &mut dp[i * s..(i + 1) * s];
                let dot: f32 = row.iter().zip(pr).map(|(a, b)| a * b).sum();
                row.iter_mut()
                    .zip(pr)
                    .for_each(|(x, pi)| *x = pi * (*x - dot) * self.scale);
            }
            unsafe {
                // dQ = dS K   (L×S)(S×D)
                gemm(
                    l,
                    d,
                    s,
                    dq.get().add(dqv.at(bi, hi)),
                    dqv.sd as isize,
                    dqv.sl as isize,
                    false,
                    dp.as_ptr(),
                    1,
                    s as isize,
                    k.as_ptr().add(kv.at(bi, hi)),
                    kv.sd as isize,
                    kv.sl as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                // dK = dSᵀ Q   (S×L)(L×D)
                gemm(
                    s,
                    d,
                    l,
                    dk.get().add(dkv.at(bi, hi)),
                    dkv.sd as isize,
                    dkv.sl as isize,
                    false,
                    dp.as_ptr(),
                    s as isize,
                    1,
                    q.as_ptr().add(qv.at(bi, hi)),
                    qv.sd as isize,
                    qv.sl as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
    }

    fn saved_probs(&self) -> Result<Arc<Vec<f32>>> {
        match self.probs.lock().unwrap().clone() {
            Some(p) => Ok(p),
            None => bail!("fused attention: backward called before forward"),
        }
    }
}

/// Largest element index a view reaches for (b, rows, h, cols), to bounds-check unsafe reads.
fn check_view(name: &str, len: usize, v: View, dims: (usize, usize, usize, usize)) -> Result<()> {
    let (b, r, h, c) = dims;
    if b * r * h * c == 0 {
        return Ok(());
    }
    let last = v.off + (b - 1) * v.sb + (r - 1) * v.sl + (h - 1) * v.sh + (c - 1) * v.sd;
    if last >= len {
        bail!("fused attention: {name} view reaches element {last} of a storage of {len}");
    }
    Ok(())
}

fn device_f32<'a>(s: &'a Storage, what: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => crate::kernel::storage_f32("fused attention", what, c),
        _ => bail!("fused attention runs on the CPU only ({what} is on another device)"),
    }
}

/// The op on three separate tensors q (B, L, H, D), k (B, S, H, D), v (B, S, H, Dv).
struct Attn3 {
    plan: Plan,
}

impl Attn3 {
    fn views(&self, lq: &Layout, lk: &Layout, lv: &Layout, lens: (usize, usize, usize)) -> Result<(View, View, View)> {
        let p = &self.plan;
        let (qv, kv, vv) = (
            View::from_layout4(lq)?,
            View::from_layout4(lk)?,
            View::from_layout4(lv)?,
        );
        check_view("q", lens.0, qv, (p.b, p.l, p.h, p.d))?;
        check_view("k", lens.1, kv, (p.b, p.s, p.h, p.d))?;
        check_view("v", lens.2, vv, (p.b, p.s, p.h, p.dv))?;
        Ok((qv, kv, vv))
    }
}

impl CustomOp3 for Attn3 {
    fn name(&self) -> &'static str {
        "seqlab-fused-attention"
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
        let (q, k, v) = (
            crate::kernel::storage_f32("fused attention", "q", s1)?,
            crate::kernel::storage_f32("fused attention", "k", s2)?,
            crate::kernel::storage_f32("fused attention", "v", s3)?,
        );
        let (qv, kv, vv) = self.views(l1, l2, l3, (q.len(), k.len(), v.len()))?;
        let (out, probs) = self.plan.forward(q, qv, k, kv, v, vv);
        *self.plan.probs.lock().unwrap() = Some(Arc::new(probs));
        Ok((CpuStorage::F32(out), self.plan.out_shape()))
    }

    fn bwd(
        &self,
        q_t: &Tensor,
        k_t: &Tensor,
        v_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = &self.plan;
        let probs = p.saved_probs()?;
        let (sq, lq) = q_t.storage_and_layout();
        let (sk, lk) = k_t.storage_and_layout();
        let (sv, lv) = v_t.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (q, k, v, g) = (
            device_f32(&sq, "q")?,
            device_f32(&sk, "k")?,
            device_f32(&sv, "v")?,
            device_f32(&sg, "grad")?,
        );
        let (qv, kv, vv) = self.views(lq, lk, lv, (q.len(), k.len(), v.len()))?;
        let gv = View::from_layout4(lg)?;
        check_view("grad", g.len(), gv, (p.b, p.l, p.h, p.dv))?;
        let mut dq = vec![0f32; p.b * p.l * p.h * p.d];
        let mut dk = vec![0f32; p.b * p.s * p.h * p.d];
        let mut dv = vec![0f32; p.b * p.s * p.h * p.dv];
        p.backward(
            &probs,
            (q, qv),
            (k, kv),
            (v, vv),
            (g, gv),
            (MutPtr(dq.as_mut_ptr()), View::contiguous(p.l, p.h, p.d)),
            (MutPtr(dk.as_mut_ptr()), View::contiguous(p.s, p.h, p.d)),
            (MutPtr(dv.as_mut_ptr()), View::contiguous(p.s, p.h, p.dv)),
        );
        let dev = q_t.device();
        Ok((
            Some(Tensor::from_vec(dq, (p.b, p.l, p.h, p.d), dev)?),
            Some(Tensor::from_vec(dk, (p.b, p.s, p.h, p.d), dev)?),
            Some(Tensor::from_vec(dv, (p.b, p.s, p.h, p.dv), dev)?),
        ))
    }
}

/// The op on a packed self-attention projection qkv (B, L, 3, H, D): its gradient is one
/// packed tensor, so no narrow/cat round trip is needed in the backward pass.
struct AttnPacked {
    plan: Plan,
}

impl AttnPacked {
    fn views(&self, l: &Layout, len: usize) -> Result<(View, View, View)> {
        let st = l.stride();
        if st.len() != 5 {
            bail!("fused attention: packed qkv must be rank 5, got {:?}", l.dims());
        }
        let base = View {
            off: l.start_offset(),
            sb: st[0],
            sl: st[1],
            sh: st[3],
            sd: st[4],
        };
        let at = |i: usize| View {
            off: base.off + i * st[2],
            ..base
        };
        let p = &self.plan;
        for i in 0..3 {
            check_view("qkv", len, at(i), (p.b, p.l, p.h, p.d))?;
        }
        Ok((at(0), at(1), at(2)))
    }
}

impl CustomOp1 for AttnPacked {
    fn name(&self) -> &'static str {
        "seqlab-fused-self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernel::storage_f32("fused attention", "qkv", s)?;
        let (qv, kv, vv) = self.views(l, x.len())?;
        let (out, probs) = self.plan.forward(x, qv, x, kv, x, vv);
        *self.plan.probs.lock().unwrap() = Some(Arc::new(probs));
        Ok((CpuStorage::F32(out), self.plan.out_shape()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let p = &self.plan;
        let probs = p.saved_probs()?;
        let (sx, lx) = arg.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (x, g) = (device_f32(&sx, "qkv")?, device_f32(&sg, "grad")?);
        let (qv, kv, vv) = self.views(lx, x.len())?;
        let gv = View::from_layout4(lg)?;
        check_view("grad", g.len(), gv, (p.b, p.l, p.h, p.dv))?;
        let hd = p.h * p.d;
        let mut dx = vec![0f32; p.b * p.l * 3 * hd];
        let base = View {
            off: 0,
            sb: p.l * 3 * hd,
            sl: 3 * hd,
            sh: p.d,
            sd: 1,
        };
        let ptr = MutPtr(dx.as_mut_ptr());
        p.backward(
            &probs,
            (x, qv),
            (x, kv),
            (x, vv),
            (g, gv),
            (ptr, base),
            (ptr, View { off: hd, ..base }),
            (ptr, View { off: 2 * hd, ..base }),
        );
        Ok(Some(Tensor::from_vec(dx, (p.b, p.l, 3, p.h, p.d), arg.device())?))
    }
}

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
        let x = crate::kernel::contiguous_f32("linear", "x", s1, l1)?;
        let w = crate::kernel::contiguous_f32("linear", "weight", s2, l2)?;
        let b = crate::kernel::contiguous_f32("linear", "bias", s3, l3)?;
        // x may have any rank (..., in): its leading dimensions are the rows, so no reshape
        // nodes (each costing a gradient accumulation pass) are needed around the op.
        let in_f = *l1.dims().last().unwrap_or(&0);
        let rows = if in_f == 0 { 0 } else { l1.shape().elem_count() / in_f };
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
        let rows = if in_f == 0 { 0 } else { x_t.elem_count() / in_f };
        let out_f = w_t.dim(0)?;
        let g: Vec<f32> = {
            let (sg, lg) = grad.storage_and_layout();
            let g = crate::kernel::contiguous("linear", "grad", device_f32(&sg, "grad")?, lg)?;
            if self.relu || self.dropout.is_some() {
                let (sr, lr) = res.storage_and_layout();
                let r = crate::kernel::contiguous("linear", "output", device_f32(&sr, "output")?, lr)?;
                let relu = self.relu;
                // With dropout multipliers m ≥ 0: output > 0 exactly when m > 0 and x + b > 0,
                // and where m = 0 the gradient is 0 anyway, so the output's sign is the gate.
                match &self.dropout {
                    Some(m) => g
                        .par_iter()
                        .zip(r.par_iter())
                        .zip(m.par_iter())
                        .map(|((&g, &r), &m)| if !relu || r > 0.0 { g * m } else { 0.0 })
                        .collect(),
                    None => g
                        .par_iter()
                        .zip(r.par_iter())
                        .map(|(&g, &r)| if r > 0.0 { g } else { 0.0 })
                        .collect(),
                }
            } else {
                g.to_vec()
            }
        };
        let (sx, lx) = x_t.storage_and_layout();
        let (sw, lw) = w_t.storage_and_layout();
        let x = crate::kernel::contiguous("linear", "x", device_f32(&sx, "x")?, lx)?;
        let w = crate::kernel::contiguous("linear", "weight", device_f32(&sw, "weight")?, lw)?;
        let mut dx = vec![0f32; rows * in_f];
        let mut dw = vec![0f32; out_f * in_f];
        if rows > 0 {
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
        Ok((
            Some(Tensor::from_vec(dx, x_t.shape(), dev)?),
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
    let on_cpu = x.device().is_cpu() && x.dtype() == DType::F32;
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

/// Masks in the kernel's terms. Built by [`AttnMasks::prepare`] from PyTorch-style tensors.
#[derive(Clone, Debug, Default)]
struct PreparedMasks {
    mask: Option<MaskData>,
    kpm: Option<Arc<Vec<f32>>>,
    causal: bool,
}

/// How a boolean/integer mask is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolMask {
    /// 1 = this position may NOT be attended (`nn.MultiheadAttention`, `nn.Transformer*`).
    OneMeansMasked,
    /// 1 = this position may be attended (`F.scaled_dot_product_attention`).
    OneMeansAttend,
}

/// Integer masks (u8/u32/i64) become 0 / −∞ following `conv`; float masks are additive.
fn to_additive(mask: &Tensor, conv: BoolMask) -> Result<Vec<f32>> {
    let flat = mask.flatten_all()?;
    if mask.dtype().is_float() {
        return flat.to_dtype(DType::F32)?.to_vec1::<f32>();
    }
    let m = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let masked_when_nonzero = conv == BoolMask::OneMeansMasked;
    Ok(m.into_iter()
        .map(|x| {
            if (x != 0.0) == masked_when_nonzero {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect())
}

/// Attention masks in PyTorch's conventions.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnMasks<'a> {
    /// (L, S), (B·H, L, S) or broadcastable (B|1, H|1, L, S); integer (read per `bool_mask`)
    /// or additive float.
    pub attn_mask: Option<&'a Tensor>,
    /// (B, S); integer 1 = padded key (ignored), or additive float.
    pub key_padding_mask: Option<&'a Tensor>,
    /// Query i may attend keys j ≤ i only (top-left aligned, as `is_causal=True`).
    pub is_causal: bool,
}

impl<'a> AttnMasks<'a> {
    fn prepare(&self, conv: BoolMask, b: usize, h: usize, l: usize, s: usize) -> Result<PreparedMasks> {
        let mask = match self.attn_mask {
            None => None,
            Some(m) => {
                let (bm, hm) = match *m.dims() {
                    [ml, ms] if ml == l && ms == s => (1, 1),
                    [bh, ml, ms] if bh == b * h && ml == l && ms == s => (b, h),
                    [1, ml, ms] if ml == l && ms == s => (1, 1),
                    [mb, mh, ml, ms] if (mb == 1 || mb == b) && (mh == 1 || mh == h) && ml == l && ms == s => (mb, mh),
                    _ => bail!(
                        "attention mask has shape {:?}; expected ({l}, {s}), ({}, {l}, {s}) or (B|1, H|1, {l}, {s}) with B={b}, H={h}",
                        m.dims(),
                        b * h
                    ),
                };
                Some(MaskData {
                    data: Arc::new(to_additive(m, conv)?),
                    bm,
                    hm,
                })
            }
        };
        let kpm = match self.key_padding_mask {
            None => None,
            Some(k) => {
                if k.dims() != [b, s] {
                    bail!("key_padding_mask has shape {:?}, expected ({b}, {s})", k.dims());
                }
                Some(Arc::new(to_additive(k, BoolMask::OneMeansMasked)?))
            }
        };
        Ok(PreparedMasks {
            mask,
            kpm,
            causal: self.is_causal,
        })
    }
}

/// Runs the fused kernel; returns O (B, L, H, Dv) and a handle on the probabilities.
#[allow(clippy::too_many_arguments)]
fn run_fused(
    qkv: QkvInput,
    masks: PreparedMasks,
    scale: f64,
    dropout: Option<(f64, &SharedRng)>,
) -> Result<(Tensor, Arc<Mutex<Option<Arc<Vec<f32>>>>>)> {
    let (b, l, s, h, d, dv) = qkv.dims()?;
    if d == 0 {
        bail!("attention: head dimension must be positive");
    }
    let dropout = match dropout {
        Some((p, rng)) if p > 0.0 => {
            if !(0.0..1.0).contains(&p) {
                bail!("attention dropout must be in [0, 1), got {p}");
            }
            let m = rng
                .lock()
                .unwrap()
                .dropout_mask((b, h, l, s), p, &candle_core::Device::Cpu)?;
            Some(Arc::new(m.flatten_all()?.to_vec1::<f32>()?))
        }
        _ => None,
    };
    let probs = Arc::new(Mutex::new(None));
    let plan = Plan {
        b,
        l,
        s,
        h,
        d,
        dv,
        scale: scale as f32,
        causal: masks.causal,
        mask: masks.mask,
        kpm: masks.kpm,
        dropout,
        probs: probs.clone(),
    };
    let out = match qkv {
        QkvInput::Packed(x) => x.apply_op1(AttnPacked { plan })?,
        QkvInput::Separate(q, k, v) => {
            for (n, t) in [("q", q), ("k", k), ("v", v)] {
                if t.dtype() != DType::F32 {
                    bail!("attention: {n} must be f32, got {:?}", t.dtype());
                }
            }
            q.apply_op3(k, v, Attn3 { plan })?
        }
    };
    Ok((out, probs))
}

enum QkvInput<'a> {
    /// (B, L, 3, H, D)
    Packed(&'a Tensor),
    /// (B, L, H, D), (B, S, H, D), (B, S, H, Dv)
    Separate(&'a Tensor, &'a Tensor, &'a Tensor),
}

impl QkvInput<'_> {
    fn dims(&self) -> Result<(usize, usize, usize, usize, usize, usize)> {
        match self {
            QkvInput::Packed(x) => match *x.dims() {
                [b, l, 3, h, d] => Ok((b, l, l, h, d, d)),
                _ => bail!("attention: packed qkv must be (B, L, 3, H, D), got {:?}", x.dims()),
            },
            QkvInput::Separate(q, k, v) => {
                let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
                if qd.len() != 4 || kd.len() != 4 || vd.len() != 4 {
                    bail!("attention: q, k, v must be rank 4, got {qd:?}, {kd:?}, {vd:?}");
                }
                if kd[0] != qd[0]
                    || vd[0] != qd[0]
                    || kd[2] != qd[2]
                    || vd[2] != qd[2]
                    || kd[3] != qd[3]
                    || vd[1] != kd[1]
                {
                    bail!("attention: q {qd:?}, k {kd:?}, v {vd:?} do not fit together");
                }
                Ok((qd[0], qd[1], kd[1], qd[2], qd[3], vd[3]))
            }
        }
    }
}

/// Options of [`scaled_dot_product_attention`]; defaults follow
/// `F.scaled_dot_product_attention` (no mask, not causal, scale 1/√D, no dropout).
#[derive(Clone, Default)]
pub struct SdpaOptions<'a> {
    /// Broadcastable to (B, H, L, S). Integer masks: 1 = may attend (PyTorch's boolean
    /// convention for this function); float masks are added to the scores.
    pub attn_mask: Option<&'a Tensor>,
    pub is_causal: bool,
    /// Default 1/√D.
    pub scale: Option<f64>,
    /// Dropout on the attention probabilities, applied only when `train` is true.
    pub dropout_p: f64,
    pub train: bool,
    /// Needed when `dropout_p > 0` and `train`.
    pub rng: Option<SharedRng>,
}

/// `F.scaled_dot_product_attention(q, k, v, ...)`: q (B, H, L, D), k (B, H, S, D),
/// v (B, H, S, Dv) → (B, H, L, Dv). Differentiable in q, k, v.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &SdpaOptions) -> Result<Tensor> {
    for (n, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 4 {
            bail!("sdpa: {n} must be (B, H, L, D), got {:?}", t.dims());
        }
    }
    let (b, h, l, d) = q.dims4()?;
    let s = k.dim(2)?;
    if opts.attn_mask.is_some() && opts.is_causal {
        bail!("sdpa: give either attn_mask or is_causal, not both (as PyTorch requires)");
    }
    let masks = AttnMasks {
        attn_mask: opts.attn_mask,
        key_padding_mask: None,
        is_causal: opts.is_causal,
    }
    .prepare(BoolMask::OneMeansAttend, b, h, l, s)?;
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let dropout = if opts.train && opts.dropout_p > 0.0 {
        match &opts.rng {
            Some(r) => Some((opts.dropout_p, r)),
            None => bail!("sdpa: dropout in training needs an rng"),
        }
    } else {
        None
    };
    let (qt, kt, vt) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
    let (o, _) = run_fused(QkvInput::Separate(&qt, &kt, &vt), masks, scale, dropout)?;
    o.transpose(1, 2)
}

/// Straightforward candle-ops attention (no dropout): q (B, H, L, D) etc. with an additive mask
/// broadcastable to (B, H, L, S). The reference the fused kernel is tested against.
pub fn sdpa_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    additive_mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?;
    let scores = match additive_mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    ops::softmax(&scores, 3)?.matmul(v)
}

/// PyTorch's `nn.Transformer.generate_square_subsequent_mask(n)` as a u8 mask in this crate's
/// boolean convention (1 = may NOT attend): ones strictly above the diagonal.
pub fn causal_mask(n: usize, device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<u8> = (0..n * n).map(|i| u8::from(i % n > i / n)).collect();
    Tensor::from_vec(v, (n, n), device)
}

/// Configuration of [`MultiheadAttention`]; defaults follow `nn.MultiheadAttention`.
#[derive(Clone, Debug)]
pub struct MultiheadAttentionConfig {
    pub embed_dim: usize,
    pub num_heads: usize,
    /// Dropout on the attention probabilities. Default 0.
    pub dropout: f64,
    /// `in_proj_bias` and `out_proj.bias`. Default `true`.
    pub bias: bool,
}

impl MultiheadAttentionConfig {
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        Self {
            embed_dim,
            num_heads,
            dropout: 0.0,
            bias: true,
        }
    }
}

/// A self-attention K/V cache for incremental decoding: (B, T, H, D) each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dim(1).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, batch_first=True)`.
///
/// Parameters `in_proj_weight` (3E, E) xavier-uniform, `in_proj_bias` (3E) zeros,
/// `out_proj.weight` (E, E) U(±1/√E), `out_proj.bias` zeros, as PyTorch initialises them.
#[derive(Clone)]
pub struct MultiheadAttention {
    pub in_proj_weight: Tensor,
    pub in_proj_bias: Option<Tensor>,
    pub out_proj: Linear,
    pub embed_dim: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub dropout: f64,
    rng: SharedRng,
}

impl std::fmt::Debug for MultiheadAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MultiheadAttention(E={}, heads={}, dropout={})",
            self.embed_dim, self.num_heads, self.dropout
        )
    }
}

impl MultiheadAttention {
    pub fn new(cfg: &MultiheadAttentionConfig, vs: &VarStore) -> Result<Self> {
        let e = cfg.embed_dim;
        if e == 0 || cfg.num_heads == 0 {
            bail!("MultiheadAttention: embed_dim and num_heads must be positive, got {cfg:?}");
        }
        if e % cfg.num_heads != 0 {
            bail!(
                "MultiheadAttention: embed_dim {e} must be divisible by num_heads {}",
                cfg.num_heads
            );
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            bail!("MultiheadAttention: dropout must be in [0, 1), got {}", cfg.dropout);
        }
        let in_proj_weight = vs.param("in_proj_weight", (3 * e, e), Init::xavier_uniform(e, 3 * e))?;
        let in_proj_bias = if cfg.bias {
            Some(vs.param("in_proj_bias", 3 * e, Init::Zeros)?)
        } else {
            None
        };
        let ov = vs.pp("out_proj");
        let weight = ov.param("weight", (e, e), Init::uniform_fan(e))?;
        let bias = if cfg.bias {
            Some(ov.param("bias", e, Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            in_proj_weight,
            in_proj_bias,
            out_proj: Linear { weight, bias },
            embed_dim: e,
            num_heads: cfg.num_heads,
            head_dim: e / cfg.num_heads,
            dropout: cfg.dropout,
            rng: vs.rng(),
        })
    }

    fn check_input(&self, name: &str, x: &Tensor) -> Result<(usize, usize)> {
        match *x.dims() {
            [b, l, e] if e == self.embed_dim => Ok((b, l)),
            _ => bail!(
                "MultiheadAttention: {name} must be (B, L, {}), got {:?}",
                self.embed_dim,
                x.dims()
            ),
        }
    }

    /// Rows `[i·E, (i+n)·E)` of the in-projection applied to `x` (B, L, E) → (B, L, n·E).
    fn project(&self, x: &Tensor, i: usize, n: usize) -> Result<Tensor> {
        let e = self.embed_dim;
        if n == 3 {
            return linear_act(x, &self.in_proj_weight, self.in_proj_bias.as_ref(), false);
        }
        let w = self.in_proj_weight.narrow(0, i * e, n * e)?;
        let b = match &self.in_proj_bias {
            Some(b) => Some(b.narrow(0, i * e, n * e)?),
            None => None,
        };
        linear_act(x, &w, b.as_ref(), false)
    }

    /// Projected keys and values of `key`/`value` (B, S, E) → ((B, S, H, D), (B, S, H, D)), as
    /// used by cross-attention over a fixed memory (compute once, reuse every decoding step).
    pub fn project_kv(&self, key: &Tensor, value: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, s) = self.check_input("key", key)?;
        self.check_input("value", value)?;
        let (h, d) = (self.num_heads, self.head_dim);
        if key.id() == value.id() {
            let kv = self.project(key, 1, 2)?.reshape((b, s, 2, h, d))?;
            Ok((kv.narrow(2, 0, 1)?.squeeze(2)?, kv.narrow(2, 1, 1)?.squeeze(2)?))
        } else {
            Ok((
                self.project(key, 1, 1)?.reshape((b, s, h, d))?,
                self.project(value, 2, 1)?.reshape((b, s, h, d))?,
            ))
        }
    }

    /// Projected queries (B, L, E) → (B, L, H, D).
    pub fn project_q(&self, query: &Tensor) -> Result<Tensor> {
        let (b, l) = self.check_input("query", query)?;
        self.project(query, 0, 1)?
            .reshape((b, l, self.num_heads, self.head_dim))
    }

    fn dropout_arg(&self, train: bool) -> Option<(f64, &SharedRng)> {
        (train && self.dropout > 0.0).then_some((self.dropout, &self.rng))
    }

    fn finish(
        &self,
        o: Tensor,
        probs: Arc<Mutex<Option<Arc<Vec<f32>>>>>,
        need_weights: bool,
        average: bool,
        out_dropout: Option<f64>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, l, h, d) = o.dims4()?;
        let drop = out_dropout.filter(|p| *p > 0.0).map(|p| (p, &self.rng));
        let (w, bias) = (&self.out_proj.weight, self.out_proj.bias.as_ref());
        let y = linear_act_dropout(&o.reshape((b, l, h * d))?, w, bias, false, drop)?;
        if !need_weights {
            return Ok((y, None));
        }
        let p = probs.lock().unwrap().clone();
        let Some(p) = p else {
            bail!("MultiheadAttention: attention weights were not computed")
        };
        let s = p.len() / (b * h * l).max(1);
        let w = Tensor::from_vec(p.as_ref().clone(), (b, h, l, s), y.device())?;
        let w = if average { w.mean(1)? } else { w };
        Ok((y, Some(w)))
    }

    /// Attention on already projected heads: q (B, L, H, D), k/v (B, S, H, D) → (B, L, E),
    /// output projection included. `masks` use the MHA convention (integer 1 = may NOT attend).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, masks: &AttnMasks, train: bool) -> Result<Tensor> {
        let (b, l, h, _) = q.dims4()?;
        let s = k.dim(1)?;
        let pm = masks.prepare(BoolMask::OneMeansMasked, b, h, l, s)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (o, probs) = run_fused(QkvInput::Separate(q, k, v), pm, scale, self.dropout_arg(train))?;
        Ok(self.finish(o, probs, false, false, None)?.0)
    }

    /// `mha(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights)`
    /// with `batch_first=True`: query (B, L, E), key/value (B, S, E) → (B, L, E), plus the
    /// attention probabilities when `need_weights`: (B, L, S) averaged over heads, or
    /// (B, H, L, S). The weights are returned detached (no gradient flows through them) and
    /// before dropout.
    ///
    /// `key_padding_mask` (B, S): integer 1 = ignore that key, or additive float.
    /// `attn_mask` (L, S) or (B·H, L, S): integer 1 = may NOT attend, or additive float.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_padding_mask: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        need_weights: bool,
        average_attn_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let masks = AttnMasks {
            attn_mask,
            key_padding_mask,
            is_causal: false,
        };
        self.forward_masks(query, key, value, &masks, need_weights, average_attn_weights, train)
    }

    /// [`forward`](Self::forward) with the masks as one struct (it can also say `is_causal`,
    /// which costs no mask tensor).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_masks(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &AttnMasks,
        need_weights: bool,
        average_attn_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.forward_impl(
            query,
            key,
            value,
            masks,
            need_weights,
            average_attn_weights,
            train,
            None,
        )
    }

    /// `out_dropout(forward_masks(..))` without weights, the dropout (the caller's residual-branch
    /// dropout, same RNG) fused into the output projection's bias pass.
    pub fn forward_then_dropout(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &AttnMasks,
        out_dropout: Option<&crate::Dropout>,
        train: bool,
    ) -> Result<Tensor> {
        let p = out_dropout.filter(|_| train).map(|d| d.p);
        Ok(self.forward_impl(query, key, value, masks, false, false, train, p)?.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_impl(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &AttnMasks,
        need_weights: bool,
        average_attn_weights: bool,
        train: bool,
        out_dropout: Option<f64>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, l) = self.check_input("query", query)?;
        let (bk, s) = self.check_input("key", key)?;
        let (bv, sv) = self.check_input("value", value)?;
        if bk != b || bv != b || sv != s {
            bail!(
                "MultiheadAttention: query {:?}, key {:?}, value {:?} do not fit together",
                query.dims(),
                key.dims(),
                value.dims()
            );
        }
        let (h, d) = (self.num_heads, self.head_dim);
        let pm = masks.prepare(BoolMask::OneMeansMasked, b, h, l, s)?;
        let scale = 1.0 / (d as f64).sqrt();
        let drop = self.dropout_arg(train);
        let (o, probs) = if query.id() == key.id() && key.id() == value.id() {
            let qkv = self.project(query, 0, 3)?.reshape((b, l, 3, h, d))?;
            run_fused(QkvInput::Packed(&qkv), pm, scale, drop)?
        } else {
            let q = self.project_q(query)?;
            let (k, v) = self.project_kv(key, value)?;
            run_fused(QkvInput::Separate(&q, &k, &v), pm, scale, drop)?
        };
        self.finish(o, probs, need_weights, average_attn_weights, out_dropout)
    }

    /// One incremental self-attention step: `x` (B, 1, E) is the newest position; its key and
    /// value are appended to `cache`, and it attends to every cached position.
    /// Equals row t of a full causal self-attention over positions 0..=t.
    pub fn self_attn_step(&self, x: &Tensor, cache: &mut KvCache, train: bool) -> Result<Tensor> {
        let (b, l) = self.check_input("x", x)?;
        if l != 1 {
            bail!(
                "MultiheadAttention::self_attn_step: x must hold one position, got {:?}",
                x.dims()
            );
        }
        let (h, d) = (self.num_heads, self.head_dim);
        let qkv = self.project(x, 0, 3)?.reshape((b, 1, 3, h, d))?;
        let part = |i: usize| -> Result<Tensor> { qkv.narrow(2, i, 1)?.squeeze(2) };
        let (q, k_new, v_new) = (part(0)?, part(1)?.contiguous()?, part(2)?.contiguous()?);
        let k = match &cache.k {
            Some(k) => Tensor::cat(&[k, &k_new], 1)?,
            None => k_new,
        };
        let v = match &cache.v {
            Some(v) => Tensor::cat(&[v, &v_new], 1)?,
            None => v_new,
        };
        // Outside training the cache is stored detached: each `cat` would otherwise keep the
        // previous cache alive through the autograd graph, so a T-step decode held all T
        // prefixes (O(T²) memory: gigabytes for a beam over a long sentence).
        let keep = |t: &Tensor| if train { t.clone() } else { t.detach() };
        cache.k = Some(keep(&k));
        cache.v = Some(keep(&v));
        self.attend(&q, &k, &v, &AttnMasks::default(), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_all_params_get_grad, max_abs_diff as max_diff, randn};
    use crate::SeqRng;
    use candle_core::{Device, Var};

    /// The fused kernel and its backward against plain candle ops, with an additive mask.
    #[test]
    fn fused_matches_reference_forward_and_backward() {
        let (b, h, l, s, d) = (2, 3, 5, 7, 4);
        let q = Var::from_tensor(&randn(1, &[b, h, l, d])).unwrap();
        let k = Var::from_tensor(&randn(2, &[b, h, s, d])).unwrap();
        let v = Var::from_tensor(&randn(3, &[b, h, s, d])).unwrap();
        let mask = randn(4, &[b, 1, l, s]);
        let probe = randn(5, &[b, h, l, d]);
        let opts = SdpaOptions {
            attn_mask: Some(&mask),
            scale: Some(0.3),
            ..Default::default()
        };
        let y1 = scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
        let y2 = sdpa_reference(&q, &k, &v, Some(&mask), 0.3).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-5);
        let g1 = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&q, &k, &v] {
            assert!(max_diff(g1.get(var).unwrap(), g2.get(var).unwrap()) < 1e-5);
        }
    }

    /// `F.scaled_dot_product_attention` with a fully masked row returns zeros there (checked
    /// with torch 2.15); so do we, with zero (not NaN) gradients.
    #[test]
    fn fully_masked_rows_give_zeros_not_nan() {
        let q = Var::from_tensor(&randn(1, &[1, 2, 3, 4])).unwrap();
        let mask = Tensor::new(&[[1u8, 1], [0, 0], [1, 0]], &Device::Cpu).unwrap();
        let kv = randn(2, &[1, 2, 2, 4]);
        let opts = SdpaOptions {
            attn_mask: Some(&mask),
            ..Default::default()
        };
        let y = scaled_dot_product_attention(&q, &kv, &kv, &opts).unwrap();
        let row = y
            .narrow(2, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(row.iter().all(|&x| x == 0.0));
        let g = y.sum_all().unwrap().backward().unwrap();
        let gq = g.get(&q).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(gq.iter().all(|x| x.is_finite()));
    }

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

    #[test]
    fn mha_rejects_bad_config_and_shapes() {
        let vs = VarStore::new(0, &Device::Cpu);
        assert!(MultiheadAttention::new(&MultiheadAttentionConfig::new(10, 3), &vs).is_err());
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = randn(1, &[2, 3, 8]);
        let bad = randn(1, &[2, 3, 6]);
        assert!(mha.forward(&x, &bad, &bad, None, None, false, true, false).is_err());
        let bad_kpm = Tensor::zeros((2, 4), DType::U8, &Device::Cpu).unwrap();
        assert!(mha
            .forward(&x, &x, &x, Some(&bad_kpm), None, false, true, false)
            .is_err());
    }

    #[test]
    fn mha_gradients_reach_every_parameter_self_and_cross() {
        for cross in [false, true] {
            let vs = VarStore::new(0, &Device::Cpu);
            let cfg = MultiheadAttentionConfig {
                dropout: 0.1,
                ..MultiheadAttentionConfig::new(8, 2)
            };
            let mha = MultiheadAttention::new(&cfg, &vs).unwrap();
            let x = randn(1, &[2, 3, 8]);
            let m = if cross { randn(2, &[2, 5, 8]) } else { x.clone() };
            let (y, _) = mha.forward(&x, &m, &m, None, None, false, true, true).unwrap();
            assert_all_params_get_grad(&vs, &y);
        }
    }

    /// Packed self-attention, separate q/k/v and the candle reference agree (values and grads).
    #[test]
    fn mha_packed_path_equals_separate_path() {
        let vs = VarStore::new(0, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = Var::from_tensor(&randn(1, &[2, 4, 8])).unwrap();
        let x2 = Var::from_tensor(x.as_tensor()).unwrap();
        let cm = causal_mask(4, &Device::Cpu).unwrap();
        let (y1, w1) = mha.forward(&x, &x, &x, None, Some(&cm), true, true, false).unwrap();
        let x2c = x2.as_tensor().copy().unwrap();
        let (y2, w2) = mha
            .forward(&x2, &x2c, &x2c, None, Some(&cm), true, true, false)
            .unwrap();
        assert!(max_diff(&y1, &y2) < 1e-6);
        assert!(max_diff(&w1.unwrap(), &w2.unwrap()) < 1e-6);
        let probe = randn(9, &[2, 4, 8]);
        let g1 = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x2).unwrap()) < 1e-5);
        let (name, w) = &vs.trainable()[0];
        assert_eq!(name, "in_proj_weight");
        assert!(max_diff(g1.get(w).unwrap(), g2.get(w).unwrap()) < 1e-5);
    }

    /// Incremental self-attention equals full causal attention row by row.
    #[test]
    fn self_attn_step_equals_causal_full_run() {
        let vs = VarStore::new(0, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = randn(1, &[2, 5, 8]);
        let masks = AttnMasks {
            is_causal: true,
            ..Default::default()
        };
        let (full, _) = mha.forward_masks(&x, &x, &x, &masks, false, true, false).unwrap();
        let mut cache = KvCache::default();
        for t in 0..5 {
            let y = mha
                .self_attn_step(&x.narrow(1, t, 1).unwrap(), &mut cache, false)
                .unwrap();
            assert!(max_diff(&y, &full.narrow(1, t, 1).unwrap()) < 1e-5);
            // Evaluation-mode caches hold no graph: a tracked cache chains every earlier
            // cache through `cat` (quadratic memory over a decode).
            assert!(!cache.k.as_ref().unwrap().track_op() && !cache.v.as_ref().unwrap().track_op());
        }
        assert_eq!(cache.len(), 5);
    }
}
