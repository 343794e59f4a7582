//! The fused CPU attention kernel behind [`crate::attention`]: per (batch, head),
//! scores = scale·Q Kᵀ (one `gemm` call), additive masks, softmax, optional dropout,
//! O = P V (a second `gemm`).
//!
//! It reads Q, K and V through their strides, so the heads of an in-projection output
//! (B, L, 3, H, D) are used in place with no transpose or contiguous copy, and it writes O as
//! (B, L, H, D), which is already the layout the output projection wants. The softmax
//! probabilities are kept for the hand-written backward:
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = scale·dS K, dK = scale·dSᵀ Q.
//! The same probabilities, after dropout, are what `FusedRun::weights` returns as a
//! differentiable function of Q and K (PyTorch's `need_weights=True`).
//!
//! Fully masked rows (every key masked for some query): the probabilities of that row are all
//! zero, so its output and its gradients are zero, as PyTorch's `scaled_dot_product_attention`
//! gives. Nothing panics.

use super::device_f32;
use super::MutPtr;
use crate::SharedRng;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
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

/// An additive mask of shape (bm, hm, L, S) with bm ∈ {1, B} and hm ∈ {1, H}.
#[derive(Clone, Debug)]
pub(crate) struct MaskData {
    pub(crate) data: Arc<Vec<f32>>,
    pub(crate) bm: usize,
    pub(crate) hm: usize,
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
    /// Query rows per key/value row (forward only): query row b attends over key and value
    /// row b / kv_group, so the beams of a sentence read one copy of its cross-attention
    /// keys and values. 1 = one key/value row per query row.
    kv_group: usize,
    /// Keys and values read through an ancestor table (a decoding step over a beam search's
    /// self-attention caches); forward only, single-query path only.
    kv_index: Option<KvIndex>,
}

/// Where each query row's keys and values are in a decoding cache whose rows do not follow
/// the query rows: position j of query row b is in key/value row `slots[b · stride + j]`
/// (at position j). Beam search appends each hypothesis's new position to the row it
/// decodes in and reorders this table, rows × positions u32, instead of the cache's
/// rows × positions × E floats (that memmove was ~6 % of beam-4 decoding, perf, 1 thread).
#[derive(Clone, Debug)]
pub(crate) struct KvIndex {
    /// Query rows × `stride` (positions past the keys unread).
    pub(crate) slots: Arc<Vec<u32>>,
    /// Entries per query row, at least the key count.
    pub(crate) stride: usize,
    /// Key/value rows (every entry read is below it).
    pub(crate) rows: usize,
}

/// The lane count of the single-query path (one query row, no dropout) over `s` keys of `h`
/// heads of `d` (values `dv`) elements, `None` where gemm's calls stay: where gemm takes other
/// kernels (more than 256 keys, fewer than 3, a head size not a multiple of its lanes). The
/// decoding caches read it to know whether their rows may stay out of order
/// ([`KvIndex`]).
pub(crate) fn single_query_lanes(s: usize, h: usize, d: usize, dv: usize) -> Option<usize> {
    super::gemm_order::lanes().filter(|&n| (3..=256).contains(&s) && d.is_multiple_of(n) && h * dv > 1)
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
        let exp = super::rowexp::RowExp::new();
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
            // 16 lanes wide; a zero maximum's sign may differ from the fold's, which changes
            // no probability (exp(x − (±0)) is the same for every x).
            let max = super::rowexp::row_max(row);
            if max == f32::NEG_INFINITY {
                row.iter_mut().for_each(|x| *x = 0.0);
                continue;
            }
            let sum = exp.exp_sub_in_place(row, max);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    fn out_shape(&self) -> Shape {
        (self.b, self.l, self.h, self.dv).into()
    }

    /// The lane count of the single-query path for these views ([`single_query_lanes`] and
    /// what else it needs: one query row, no dropout, rows contiguous along the head), `None`
    /// where gemm's calls stay.
    fn single_query(&self, qv: View, kv: View, vv: View) -> Option<usize> {
        single_query_lanes(self.s, self.h, self.d, self.dv)
            .filter(|_| self.l == 1 && self.dropout.is_none() && qv.sd == 1 && kv.sd == 1 && vv.sd == 1 && vv.sl != 1)
    }

    /// Returns O (B, L, H, Dv) contiguous and P (B, H, L, S).
    fn forward(&self, q: &[f32], qv: View, k: &[f32], kv: View, v: &[f32], vv: View) -> (Vec<f32>, Vec<f32>) {
        self.forward_with(q, qv, k, kv, v, vv, false)
    }

    /// [`forward`](Self::forward); `gemm_only` keeps the gemm calls where the single-query
    /// path would replace them (for the test that compares the two).
    #[allow(clippy::too_many_arguments)]
    fn forward_with(
        &self,
        q: &[f32],
        qv: View,
        k: &[f32],
        kv: View,
        v: &[f32],
        vv: View,
        gemm_only: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let (b, l, s, h, d, dv) = (self.b, self.l, self.s, self.h, self.d, self.dv);
        let g = self.kv_group;
        let ls = l * s;
        let (n_out, n_probs) = (b * l * h * dv, b * h * ls);
        if ls == 0 || b * h == 0 {
            return (vec![0f32; n_out], vec![0f32; n_probs]);
        }
        // One query row (a decoding step) without dropout: the two products of each (batch,
        // head) written out in gemm's own order (`gemm_order`), instead of two gemm calls of
        // a few thousand multiply-adds each, whose dispatch and set-up dominated them
        // (attention over the caches was ~12 % of beam-4 decoding, perf, 1 thread). Where gemm
        // would take other kernels (more than 256 keys, fewer than 3, a head size not a
        // multiple of its lanes, strided heads) the calls stay.
        let lanes = self.single_query(qv, kv, vv).filter(|_| !gemm_only);
        let (mut out, mut probs) = match lanes {
            // SAFETY: the single-query path writes every element of both: per (batch, head)
            // its s probabilities and its dv outputs (L = 1, O contiguous).
            Some(_) => unsafe { (super::uninit_f32(n_out), super::uninit_f32(n_probs)) },
            None => (vec![0f32; n_out], vec![0f32; n_probs]),
        };
        let ov = View::contiguous(l, h, dv);
        let outp = MutPtr(out.as_mut_ptr());
        if let Some(n) = lanes {
            probs.par_chunks_mut(ls).enumerate().for_each(|(bh, pr)| {
                let (bi, hi) = (bh / h, bh % h);
                // The key/value row holding position j: the ancestor table's entry, or the
                // query row's own (shared by its group).
                let slots = self
                    .kv_index
                    .as_ref()
                    .map(|ix| &ix.slots[bi * ix.stride..bi * ix.stride + s]);
                let row = |j: usize| slots.map_or(bi / g, |r| r[j] as usize);
                let q0 = qv.at(bi, hi);
                let key = |j: usize| kv.at(row(j), hi) + j * kv.sl;
                super::gemm_order::dots(pr, &q[q0..q0 + d], k, key, n, self.scale);
                self.softmax_rows(bi, hi, pr);
                // SAFETY: each task writes only the (bi, hi) block of `out` (dv elements).
                let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(ov.at(bi, hi)), dv) };
                super::gemm_order::weighted_rows(o, pr, v, |c| vv.at(row(c), hi) + c * vv.sl);
            });
            return (out, probs);
        }
        // The gemm calls read each query row's own key/value rows: the callers check that an
        // ancestor table comes with the single-query path only (`Attn3::cpu_fwd`).
        assert!(
            self.kv_index.is_none(),
            "fused attention: an ancestor table needs the single-query path"
        );
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
                    k.as_ptr().add(kv.at(bi / g, hi)),
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
                    v.as_ptr().add(vv.at(bi / g, hi)),
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
        let (b, l, s, h, dv) = (self.b, self.l, self.s, self.h, self.dv);
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
            self.scores_backward(bi, hi, p, mask, &mut dp, (q, qv), (k, kv), (dq, dqv), (dk, dkv));
        });
    }

    /// The shared tail of both backward passes for one (b, h) block: from dPd, the gradient
    /// of the (dropped-out) probabilities (overwritten), dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale
    /// with dP = dPd ⊙ dropout, then dQ = dS K and dK = dSᵀ Q written into their views.
    #[allow(clippy::too_many_arguments)]
    fn scores_backward(
        &self,
        bi: usize,
        hi: usize,
        p: &[f32],
        mask: Option<&[f32]>,
        dp: &mut [f32],
        (q, qv): (&[f32], View),
        (k, kv): (&[f32], View),
        (dq, dqv): (MutPtr, View),
        (dk, dkv): (MutPtr, View),
    ) {
        let (l, s, d) = (self.l, self.s, self.d);
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
        // SAFETY: views were checked by the caller; each task writes only its (bi, hi) block.
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
        let rows = p.kv_index.as_ref().map_or(p.b / p.kv_group, |ix| ix.rows);
        check_view("k", lens.1, kv, (rows, p.s, p.h, p.d))?;
        check_view("v", lens.2, vv, (rows, p.s, p.h, p.dv))?;
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
            super::storage_f32("fused attention", "q", s1)?,
            super::storage_f32("fused attention", "k", s2)?,
            super::storage_f32("fused attention", "v", s3)?,
        );
        let (qv, kv, vv) = self.views(l1, l2, l3, (q.len(), k.len(), v.len()))?;
        if self.plan.kv_index.is_some() && self.plan.single_query(qv, kv, vv).is_none() {
            bail!("fused attention: keys and values read through an ancestor table need one query row of the single-query path");
        }
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
        if p.kv_group != 1 || p.kv_index.is_some() {
            bail!("fused attention: no backward with keys and values shared by query rows or read through an ancestor table");
        }
        let probs = p.saved_probs()?;
        let (sq, lq) = q_t.storage_and_layout();
        let (sk, lk) = k_t.storage_and_layout();
        let (sv, lv) = v_t.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (q, k, v, g) = (
            device_f32("fused attention", "q", &sq)?,
            device_f32("fused attention", "k", &sk)?,
            device_f32("fused attention", "v", &sv)?,
            device_f32("fused attention", "grad", &sg)?,
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
        let x = super::storage_f32("fused attention", "qkv", s)?;
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
        let (x, g) = (
            device_f32("fused attention", "qkv", &sx)?,
            device_f32("fused attention", "grad", &sg)?,
        );
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

/// Masks in the kernel's terms: an additive (bm, hm, L, S) mask, an additive (B, S)
/// key-padding mask, and the causal flag. Built from the public mask types by
/// [`crate::attention::mask`].
#[derive(Clone, Debug, Default)]
pub(crate) struct PreparedMasks {
    pub(crate) mask: Option<MaskData>,
    pub(crate) kpm: Option<Arc<Vec<f32>>>,
    pub(crate) causal: bool,
}

/// Runs the fused kernel; returns O (B, L, H, Dv) and a handle on this run (its probabilities).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_fused(
    qkv: QkvInput,
    masks: PreparedMasks,
    scale: f64,
    dropout: Option<(f64, &SharedRng)>,
) -> Result<(Tensor, FusedRun)> {
    let (b, l, s, h, d, dv) = qkv.dims()?;
    if d == 0 {
        bail!("attention: head dimension must be positive");
    }
    let dropout = draw_dropout(dropout, (b, h, l, s))?.map(Arc::new);
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
        probs,
        kv_group: qkv.kv_group(),
        kv_index: qkv.kv_index()?,
    };
    let run = FusedRun { plan: plan.clone() };
    let out = match qkv {
        QkvInput::Packed(x) => x.apply_op1(AttnPacked { plan })?,
        QkvInput::Separate(q, k, v) | QkvInput::Indexed(q, k, v, _) => {
            for (n, t) in [("q", q), ("k", k), ("v", v)] {
                if t.dtype() != DType::F32 {
                    bail!("attention: {n} must be f32, got {:?}", t.dtype());
                }
            }
            q.apply_op3(k, v, Attn3 { plan })?
        }
    };
    Ok((out, run))
}

/// The inverted-dropout multipliers (B, H, L, S) of one attention call, drawn on the CPU from
/// the model's seeded RNG (so the fused and the composed path, on any device, draw the same
/// numbers); `None` without dropout. Rejects p outside [0, 1).
pub(crate) fn draw_dropout(
    dropout: Option<(f64, &SharedRng)>,
    (b, h, l, s): (usize, usize, usize, usize),
) -> Result<Option<Vec<f32>>> {
    match dropout {
        Some((p, rng)) if p > 0.0 => {
            if !(0.0..1.0).contains(&p) {
                bail!("attention dropout must be in [0, 1), got {p}");
            }
            Ok(Some(rng.lock().unwrap().dropout_multipliers(b * h * l * s, p)))
        }
        _ => Ok(None),
    }
}

pub(crate) enum QkvInput<'a> {
    /// (B, L, 3, H, D)
    Packed(&'a Tensor),
    /// (B, L, H, D), (B', S, H, D), (B', S, H, Dv), B a multiple of B' (see
    /// [`QkvInput::kv_group`]).
    Separate(&'a Tensor, &'a Tensor, &'a Tensor),
    /// (B, L, H, D), (R, S, H, D), (R, S, H, Dv) with query row b's position j in key/value
    /// row `index` gives (forward only, one query row on the single-query path).
    Indexed(&'a Tensor, &'a Tensor, &'a Tensor, &'a KvIndex),
}

impl QkvInput<'_> {
    /// Query rows per key/value row: B / B' (1 when packed or B = B' = 0). Only the forward
    /// pass takes B' < B (decoding, where a sentence's beams share its cross-attention keys
    /// and values); the backward pass refuses it.
    pub(crate) fn kv_group(&self) -> usize {
        match self {
            QkvInput::Packed(_) | QkvInput::Indexed(..) => 1,
            QkvInput::Separate(q, k, _) => match (q.dim(0), k.dim(0)) {
                (Ok(b), Ok(kb)) if kb > 0 => b / kb,
                _ => 1,
            },
        }
    }

    /// The ancestor table of [`QkvInput::Indexed`], checked against the shapes: an entry for
    /// every query row and key, each naming a key/value row.
    fn kv_index(&self) -> Result<Option<KvIndex>> {
        let QkvInput::Indexed(q, k, _, ix) = self else {
            return Ok(None);
        };
        let (b, s, rows) = (q.dim(0)?, k.dim(1)?, k.dim(0)?);
        if ix.rows != rows || ix.stride < s || ix.slots.len() < b * ix.stride {
            bail!(
                "attention: an ancestor table of {} entries ({} per row, {} rows) for {b} query rows over ({rows}, {s}) keys",
                ix.slots.len(),
                ix.stride,
                ix.rows
            );
        }
        if (0..b).any(|r| {
            ix.slots[r * ix.stride..r * ix.stride + s]
                .iter()
                .any(|&j| j as usize >= rows)
        }) {
            bail!("attention: an ancestor table names a key/value row past the {rows} rows");
        }
        Ok(Some((*ix).clone()))
    }

    /// (B, L, S, H, D, Dv), checked.
    pub(crate) fn dims(&self) -> Result<(usize, usize, usize, usize, usize, usize)> {
        match self {
            QkvInput::Packed(x) => match *x.dims() {
                [b, l, 3, h, d] => Ok((b, l, l, h, d, d)),
                _ => bail!("attention: packed qkv must be (B, L, 3, H, D), got {:?}", x.dims()),
            },
            QkvInput::Separate(q, k, v) | QkvInput::Indexed(q, k, v, _) => {
                let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
                if qd.len() != 4 || kd.len() != 4 || vd.len() != 4 {
                    bail!("attention: q, k, v must be rank 4, got {qd:?}, {kd:?}, {vd:?}");
                }
                // Key/value rows shared by groups of query rows; any rows with a table.
                let grouped = matches!(self, QkvInput::Separate(..));
                if grouped && (kd[0] == 0 && qd[0] != 0 || kd[0] != 0 && !qd[0].is_multiple_of(kd[0]))
                    || vd[0] != kd[0]
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

/// A handle on one run of the fused kernel (its plan and, once it ran, its probabilities).
pub(crate) struct FusedRun {
    plan: Plan,
}

impl FusedRun {
    /// The attention probabilities of this run after dropout, (B, H, L, S), as a
    /// differentiable function of the `q` (B, L, H, D) and `k` (B, S, H, D) the run was given
    /// (views of a packed (B, L, 3, H, D) projection are fine): the values are the run's own,
    /// the backward pass is the kernel's dS → dQ, dK tail. PyTorch's `need_weights=True`.
    pub(crate) fn weights(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        q.apply_op2(
            k,
            AttnWeights {
                plan: self.plan.clone(),
            },
        )
    }
}

/// The op behind [`FusedRun::weights`]: forward = the saved probabilities ⊙ dropout
/// multipliers; backward = [`Plan::scores_backward`] with the weights' gradient as dPd.
struct AttnWeights {
    plan: Plan,
}

impl AttnWeights {
    fn views(&self, lq: &Layout, lk: &Layout, lens: (usize, usize)) -> Result<(View, View)> {
        let p = &self.plan;
        let (qv, kv) = (View::from_layout4(lq)?, View::from_layout4(lk)?);
        check_view("q", lens.0, qv, (p.b, p.l, p.h, p.d))?;
        check_view("k", lens.1, kv, (p.b, p.s, p.h, p.d))?;
        Ok((qv, kv))
    }
}

impl CustomOp2 for AttnWeights {
    fn name(&self) -> &'static str {
        "seqlab-attention-weights"
    }

    fn cpu_fwd(&self, _s1: &CpuStorage, _l1: &Layout, _s2: &CpuStorage, _l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.plan;
        let probs = p.saved_probs()?;
        let w = match &p.dropout {
            Some(m) => probs.iter().zip(m.iter()).map(|(a, b)| a * b).collect(),
            None => probs.as_ref().clone(),
        };
        Ok((CpuStorage::F32(w), (p.b, p.h, p.l, p.s).into()))
    }

    fn bwd(
        &self,
        q_t: &Tensor,
        k_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let p = &self.plan;
        let probs = p.saved_probs()?;
        let grad = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (sq, lq) = q_t.storage_and_layout();
        let (sk, lk) = k_t.storage_and_layout();
        let (q, k) = (
            device_f32("fused attention", "q", &sq)?,
            device_f32("fused attention", "k", &sk)?,
        );
        let (qv, kv) = self.views(lq, lk, (q.len(), k.len()))?;
        let mut dq = vec![0f32; p.b * p.l * p.h * p.d];
        let mut dk = vec![0f32; p.b * p.s * p.h * p.d];
        let (dqp, dkp) = (MutPtr(dq.as_mut_ptr()), MutPtr(dk.as_mut_ptr()));
        let (dqv, dkv) = (View::contiguous(p.l, p.h, p.d), View::contiguous(p.s, p.h, p.d));
        let ls = p.l * p.s;
        if ls > 0 {
            (0..p.b * p.h).into_par_iter().for_each(|bh| {
                let (bi, hi) = (bh / p.h, bh % p.h);
                let pr = &probs[bh * ls..(bh + 1) * ls];
                let mask = p.dropout.as_ref().map(|m| &m[bh * ls..(bh + 1) * ls]);
                let mut dp = grad[bh * ls..(bh + 1) * ls].to_vec();
                p.scores_backward(bi, hi, pr, mask, &mut dp, (q, qv), (k, kv), (dqp, dqv), (dkp, dkv));
            });
        }
        let dev = q_t.device();
        Ok((
            Some(Tensor::from_vec(dq, (p.b, p.l, p.h, p.d), dev)?),
            Some(Tensor::from_vec(dk, (p.b, p.s, p.h, p.d), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;

    /// Keys and values shared by groups of query rows (`kv_group`, a sentence's beams over
    /// its cross-attention keys) give the outputs of the same keys and values repeated to
    /// one row per query row, bit for bit: one query row (the decoding step's kernel) and
    /// three (gemm), with a key-padding mask that differs between the rows of a group.
    #[test]
    fn shared_kv_rows_equal_repeated_rows() {
        let (kb, g, s, h, d) = (3, 4, 7, 4, 16);
        let b = kb * g;
        let (k, v) = (randn(2, &[kb, s, h, d]), randn(3, &[kb, s, h, d]));
        let rep: Vec<u32> = (0..b as u32).map(|i| i / g as u32).collect();
        let rep = Tensor::new(rep.as_slice(), &candle_core::Device::Cpu).unwrap();
        let (kr, vr) = (k.index_select(&rep, 0).unwrap(), v.index_select(&rep, 0).unwrap());
        let kpm: Vec<f32> = (0..b * s)
            .map(|j| if j % s >= s - j / s % 3 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let masks = PreparedMasks {
            kpm: Some(Arc::new(kpm)),
            ..Default::default()
        };
        for l in [1, 3] {
            let q = randn(1, &[b, l, h, d]);
            let run = |k: &Tensor, v: &Tensor| {
                let (o, _) = run_fused(QkvInput::Separate(&q, k, v), masks.clone(), 0.25, None).unwrap();
                o.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let bits = |x: Vec<f32>| x.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(run(&k, &v)), bits(run(&kr, &vr)), "{l} query rows");
        }
        // Not a divisor of the query rows: refused.
        let q = randn(1, &[b, 1, h, d]);
        let k5 = randn(2, &[5, s, h, d]);
        assert!(run_fused(QkvInput::Separate(&q, &k5, &k5), PreparedMasks::default(), 0.25, None).is_err());
    }

    /// The single-query path (a decoding step) gives the gemm calls' outputs and
    /// probabilities bit for bit: q read from a packed (B, 1, 3, H, D) projection, k/v from
    /// cache buffers with room for more positions, with and without a key-padding mask, key
    /// counts from the smallest it takes to past the largest (where the calls stay).
    #[test]
    fn single_query_path_equals_gemm_calls_bitwise() {
        let (b, h, d) = (3, 4, 64);
        for (i, &s) in [3usize, 4, 17, 64, 200, 256, 300].iter().enumerate() {
            let cap = s + 5;
            let seed = 100 + 10 * i as u64;
            let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let q = flat(randn(seed, &[b, 1, 3, h, d]));
            let k = flat(randn(seed + 1, &[b, cap, h, d]));
            let v = flat(randn(seed + 2, &[b, cap, h, d]));
            let qv = View {
                off: 0,
                sb: 3 * h * d,
                sl: 3 * h * d,
                sh: d,
                sd: 1,
            };
            let kv = View {
                off: 0,
                sb: cap * h * d,
                sl: h * d,
                sh: d,
                sd: 1,
            };
            for padded in [false, true] {
                let kpm = padded.then(|| {
                    Arc::new(
                        (0..b * s)
                            .map(|j| {
                                if j % s >= s - 2 && j / s == 1 {
                                    f32::NEG_INFINITY
                                } else {
                                    0.0
                                }
                            })
                            .collect(),
                    )
                });
                let plan = Plan {
                    b,
                    l: 1,
                    s,
                    h,
                    d,
                    dv: d,
                    scale: 0.125,
                    causal: false,
                    mask: None,
                    kpm,
                    dropout: None,
                    probs: Arc::new(Mutex::new(None)),
                    kv_group: 1,
                    kv_index: None,
                };
                let fast = plan.forward_with(&q, qv, &k, kv, &v, kv, false);
                let slow = plan.forward_with(&q, qv, &k, kv, &v, kv, true);
                let bits = crate::testing::bits;
                assert_eq!(bits(&fast.0), bits(&slow.0), "output, s {s}, padded {padded}");
                assert_eq!(bits(&fast.1), bits(&slow.1), "probabilities, s {s}, padded {padded}");
            }
        }
    }

    /// Keys and values read through an ancestor table give, bit for bit, the outputs and
    /// probabilities of the same rows gathered into row order first: random tables over more
    /// cache rows than query rows, key counts across the single-query path, with a
    /// key-padding mask. Tables that name a row past the cache, or come with a step the
    /// single-query path does not take, are refused.
    #[test]
    fn indexed_rows_equal_gathered_rows_bitwise() {
        if super::super::gemm_order::lanes().is_none() {
            return;
        }
        let (b, r, h, d) = (5, 7, 4, 64);
        let mut lcg = crate::testing::Lcg(99u64);
        let mut next = |n: usize| lcg.below(n);
        for (i, &s) in [3usize, 4, 17, 64, 200, 256].iter().enumerate() {
            let cap = s + 3;
            let seed = 300 + 10 * i as u64;
            let q = randn(seed, &[b, 1, h, d]);
            let kb = randn(seed + 1, &[r, cap, h, d]);
            let vb = randn(seed + 2, &[r, cap, h, d]);
            let (k, v) = (kb.narrow(1, 0, s).unwrap(), vb.narrow(1, 0, s).unwrap());
            let stride = cap + 2;
            let slots: Vec<u32> = (0..b * stride).map(|_| next(r) as u32).collect();
            // Row order: query row b's position j from cache row slots[b·stride + j].
            let ordered = |x: &Tensor| {
                let rows: Vec<Tensor> = (0..b)
                    .map(|bi| {
                        let pos: Vec<Tensor> = (0..s)
                            .map(|j| {
                                x.narrow(0, slots[bi * stride + j] as usize, 1)
                                    .unwrap()
                                    .narrow(1, j, 1)
                                    .unwrap()
                            })
                            .collect();
                        Tensor::cat(&pos, 1).unwrap()
                    })
                    .collect();
                Tensor::cat(&rows, 0).unwrap()
            };
            let (ko, vo) = (ordered(&k), ordered(&v));
            let kpm: Vec<f32> = (0..b * s)
                .map(|j| {
                    if j / s == 2 && j % s >= s - 2 {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let masks = PreparedMasks {
                kpm: Some(Arc::new(kpm)),
                ..Default::default()
            };
            let ix = KvIndex {
                slots: Arc::new(slots.clone()),
                stride,
                rows: r,
            };
            let run = |qkv: QkvInput| {
                let (o, run) = run_fused(qkv, masks.clone(), 0.125, None).unwrap();
                let p = run.plan.saved_probs().unwrap();
                let o = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let bits = crate::testing::bits;
                (bits(&o), bits(&p))
            };
            let want = run(QkvInput::Separate(&q, &ko, &vo));
            let got = run(QkvInput::Indexed(&q, &k, &v, &ix));
            assert_eq!(got.0, want.0, "output, s {s}");
            assert_eq!(got.1, want.1, "probabilities, s {s}");
            // A table naming a row past the cache's.
            let mut bad = slots.clone();
            bad[stride + 1] = r as u32;
            let bad = KvIndex {
                slots: Arc::new(bad),
                ..ix.clone()
            };
            assert!(run_fused(QkvInput::Indexed(&q, &k, &v, &bad), masks.clone(), 0.125, None).is_err());
        }
        // Two query rows per step: not the single-query path, refused.
        let q = randn(1, &[b, 2, h, d]);
        let k = randn(2, &[r, 8, h, d]);
        let ix = KvIndex {
            slots: Arc::new(vec![0; b * 8]),
            stride: 8,
            rows: r,
        };
        assert!(run_fused(
            QkvInput::Indexed(&q, &k, &k, &ix),
            PreparedMasks::default(),
            0.125,
            None
        )
        .is_err());
    }
}
