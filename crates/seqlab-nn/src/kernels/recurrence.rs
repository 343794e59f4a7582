//! The whole recurrence of one layer and direction as ONE candle op, forward and backward.
//!
//! A time loop of small candle ops costs far more in per-op overhead (allocation, graph
//! nodes, thread dispatch) than in arithmetic, so the step loop runs here on plain slices:
//! per step one `gemm` for `h @ W_hh^T` plus fused gate nonlinearities and state update. The
//! forward keeps the gate activations; the backward (BPTT) runs in one op too, with one
//! per-step `gemm` for the hidden-state gradient and a single large `gemm` at the end for
//! `dW_hh` (and `dW_hr`).
//!
//! The input projection `x @ W_ih^T + b` is NOT part of the op: it is one ordinary matmul over
//! all time steps, done by the caller with differentiable candle ops, and its result `gx`
//! enters here.

use super::sgemm;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Which recurrent cell the op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedCell {
    RnnTanh,
    RnnRelu,
    /// Gates i, f, g, o (PyTorch's order).
    Lstm,
    /// Gates r, z, n (PyTorch's order).
    Gru,
}

impl FusedCell {
    /// Number of gate blocks of size `hidden` in `W_ih`/`W_hh`.
    pub fn gates(self) -> usize {
        match self {
            FusedCell::RnnTanh | FusedCell::RnnRelu => 1,
            FusedCell::Lstm => 4,
            FusedCell::Gru => 3,
        }
    }
}

/// Sizes and options of one fused recurrence.
#[derive(Clone, Debug)]
pub struct FusedSpec {
    /// Which cell.
    pub cell: FusedCell,
    /// T, the number of time steps.
    pub seq_len: usize,
    /// B.
    pub batch: usize,
    /// Cell size H (the size of `c` for LSTM).
    pub hidden: usize,
    /// Size P of the recurrent state `h`: `proj_size` for a projected LSTM, else `hidden`.
    pub out: usize,
    /// LSTM with `weight_hr` (h = (o * tanh c) @ W_hr^T).
    pub proj: bool,
    /// GRU with `b_hn` (which cannot be folded into `gx`, since it is multiplied by r).
    pub gru_bhn: bool,
    /// Runs from each sequence's last valid step down to 0.
    pub reverse: bool,
    /// Valid length of each sequence (all `seq_len` when `None`).
    pub lengths: Option<Vec<usize>>,
}

impl FusedSpec {
    fn gh(&self) -> usize {
        self.cell.gates() * self.hidden
    }
    fn state_len(&self) -> usize {
        self.batch * self.out
            + if self.cell == FusedCell::Lstm {
                self.batch * self.hidden
            } else {
                0
            }
    }
    fn w_len(&self) -> usize {
        self.gh() * self.out
            + if self.proj { self.out * self.hidden } else { 0 }
            + if self.gru_bhn { self.hidden } else { 0 }
    }
    fn len_of(&self, b: usize) -> usize {
        match &self.lengths {
            Some(l) => l[b],
            None => self.seq_len,
        }
    }
    /// Time index processed for sequence `b` at step `s`, or `None` once it has ended.
    #[inline]
    fn t_of(&self, s: usize, b: usize) -> Option<usize> {
        let len = self.len_of(b);
        if s >= len {
            None
        } else if self.reverse {
            Some(len - 1 - s)
        } else {
            Some(s)
        }
    }
}

/// What the forward keeps for the backward; all arrays are (T, B, ·) in TIME order, rows of
/// steps past a sequence's end stay zero.
#[derive(Default)]
struct Saved {
    w: Vec<f32>,
    /// h before the step (T, B, P).
    hprev: Vec<f32>,
    /// Gate activations (T, B, G*H); for RNN the new h.
    gates: Vec<f32>,
    /// LSTM: c before the step and tanh(c) after it (T, B, H).
    cprev: Vec<f32>,
    tc: Vec<f32>,
    /// Projected LSTM: o * tanh(c) (T, B, H).
    m: Vec<f32>,
    /// GRU: W_hn h + b_hn (T, B, H).
    hnp: Vec<f32>,
}

/// The op. Arguments: `gx` (T, B, G*H) contiguous; `state0` flat `[h0 (B*P), c0 (B*H) LSTM]`;
/// `w` flat `[W_hh (G*H*P), W_hr (P*H) if proj, b_hn (H) if gru_bhn]`. Result: flat
/// `[out (T*B*P), hn (B*P), cn (B*H) LSTM]`.
pub struct FusedRecurrence {
    spec: FusedSpec,
    saved: Mutex<Option<Saved>>,
    /// Whether any argument is part of an autograd graph; if not, nothing is kept.
    keep: bool,
}

/// exp for f32 with ~1 ulp error, branch-free so that loops over it vectorise (libm's
/// `expf` does not, and the nonlinearities would otherwise rival the matmuls in cost).
#[inline(always)]
pub(crate) fn fexp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from the integer n that sits in the low mantissa bits of `shifted` (MAGIC's bits
    // are 0x4B40_0000): integer ops only, which vectorise, unlike a float → int cast.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    p * scale
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fexp(-x))
}

#[inline(always)]
fn ftanh(x: f32) -> f32 {
    // tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): no cancellation for large |x|,
    // and for small |x| the (1 - e) loses at most a few ulp of a small number.
    let e = fexp(-2.0 * x.abs());
    let t = (1.0 - e) / (1.0 + e);
    if x < 0.0 {
        -t
    } else {
        t
    }
}

#[inline(always)]
fn add_into(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, a), b) in dst.iter_mut().zip(a).zip(b) {
        *d = a + b;
    }
}

impl FusedRecurrence {
    /// The op for one layer and direction; rejects a spec whose sizes do not fit together.
    pub fn new(spec: FusedSpec) -> Result<Self> {
        if let Some(l) = &spec.lengths {
            if l.len() != spec.batch {
                bail!("fused recurrence: {} lengths for a batch of {}", l.len(), spec.batch);
            }
            if l.iter().any(|&n| n == 0 || n > spec.seq_len) {
                bail!("fused recurrence: lengths must be in 1..={}, got {l:?}", spec.seq_len);
            }
        }
        if spec.proj && spec.cell != FusedCell::Lstm {
            bail!("fused recurrence: projection is LSTM-only");
        }
        if !spec.proj && spec.out != spec.hidden {
            bail!(
                "fused recurrence: out size {} != hidden {} without projection",
                spec.out,
                spec.hidden
            );
        }
        Ok(Self {
            spec,
            saved: Mutex::new(None),
            keep: true,
        })
    }

    /// Runs the op: returns `(out (T, B, P), hn (B, P), cn (B, H) for LSTM)`.
    pub fn run(spec: FusedSpec, gx: &Tensor, state0: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (t, b, p, h) = (spec.seq_len, spec.batch, spec.out, spec.hidden);
        let lstm = spec.cell == FusedCell::Lstm;
        let mut op = Self::new(spec)?;
        op.keep = gx.track_op() || state0.track_op() || w.track_op();
        let res = gx
            .contiguous()?
            .apply_op3(&state0.contiguous()?, &w.contiguous()?, op)?;
        let out = res.narrow(0, 0, t * b * p)?.reshape((t, b, p))?;
        let hn = res.narrow(0, t * b * p, b * p)?.reshape((b, p))?;
        let cn = if lstm {
            Some(res.narrow(0, t * b * p + b * p, b * h)?.reshape((b, h))?)
        } else {
            None
        };
        Ok((out, hn, cn))
    }

    fn forward(&self, gx: &[f32], state0: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        let sp = &self.spec;
        let (t_len, bsz, h, p, gh) = (sp.seq_len, sp.batch, sp.hidden, sp.out, sp.gh());
        if gx.len() != t_len * bsz * gh || state0.len() != sp.state_len() || w.len() != sp.w_len() {
            bail!(
                "fused recurrence: argument sizes gx {} state {} w {}, expected {} {} {}",
                gx.len(),
                state0.len(),
                w.len(),
                t_len * bsz * gh,
                sp.state_len(),
                sp.w_len()
            );
        }
        let whh = &w[..gh * p];
        let whr = if sp.proj { &w[gh * p..gh * p + p * h] } else { &[][..] };
        let bhn = if sp.gru_bhn { &w[w.len() - h..] } else { &[][..] };
        let lstm = sp.cell == FusedCell::Lstm;
        let mut res = vec![0f32; t_len * bsz * p + sp.state_len()];
        let mut hcur = state0[..bsz * p].to_vec();
        let mut ccur = if lstm { state0[bsz * p..].to_vec() } else { vec![] };
        let mut sv = Saved {
            hprev: vec![0.0; t_len * bsz * p],
            gates: vec![0.0; t_len * bsz * gh],
            ..Default::default()
        };
        if lstm {
            sv.cprev = vec![0.0; t_len * bsz * h];
            sv.tc = vec![0.0; t_len * bsz * h];
            if sp.proj {
                sv.m = vec![0.0; t_len * bsz * h];
            }
        }
        if sp.cell == FusedCell::Gru {
            sv.hnp = vec![0.0; t_len * bsz * h];
        }
        let mut hh = vec![0f32; bsz * gh];
        let mut mbuf = vec![0f32; if sp.proj { bsz * h } else { 0 }];
        let mut hproj = vec![0f32; if sp.proj { bsz * p } else { 0 }];
        for s in 0..t_len {
            // hh = h @ W_hh^T; W_hh^T read in place is column-major, which `gemm` streams
            // without packing (measured faster than a pre-transposed copy).
            sgemm(bsz, gh, p, &mut hh, gh, false, &hcur, p, 1, whh, 1, p);
            for b in 0..bsz {
                let Some(t) = sp.t_of(s, b) else { continue };
                let row = t * bsz + b;
                sv.hprev[row * p..(row + 1) * p].copy_from_slice(&hcur[b * p..(b + 1) * p]);
                let a = &hh[b * gh..(b + 1) * gh];
                let x = &gx[row * gh..(row + 1) * gh];
                let g = &mut sv.gates[row * gh..(row + 1) * gh];
                match sp.cell {
                    FusedCell::RnnTanh | FusedCell::RnnRelu => {
                        let hn = &mut hcur[b * p..(b + 1) * p];
                        add_into(g, a, x);
                        if sp.cell == FusedCell::RnnTanh {
                            g.iter_mut().for_each(|v| *v = ftanh(*v));
                        } else {
                            g.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                        hn.copy_from_slice(g);
                        res[row * p..(row + 1) * p].copy_from_slice(g);
                    }
                    FusedCell::Lstm => {
                        add_into(g, a, x);
                        g[..2 * h].iter_mut().for_each(|v| *v = sigmoid(*v));
                        g[2 * h..3 * h].iter_mut().for_each(|v| *v = ftanh(*v));
                        g[3 * h..].iter_mut().for_each(|v| *v = sigmoid(*v));
                        let c = &mut ccur[b * h..(b + 1) * h];
                        sv.cprev[row * h..(row + 1) * h].copy_from_slice(c);
                        let tc = &mut sv.tc[row * h..(row + 1) * h];
                        let (gi, rest) = g.split_at(h);
                        let (gf, rest) = rest.split_at(h);
                        let (gg, go) = rest.split_at(h);
                        for ((((c, tc), f), i), gg) in c.iter_mut().zip(tc.iter_mut()).zip(gf).zip(gi).zip(gg) {
                            *c = f * *c + i * gg;
                            *tc = ftanh(*c);
                        }
                        if sp.proj {
                            let m = &mut mbuf[b * h..(b + 1) * h];
                            for j in 0..h {
                                m[j] = go[j] * tc[j];
                            }
                            sv.m[row * h..(row + 1) * h].copy_from_slice(m);
                        } else {
                            let hn = &mut hcur[b * p..(b + 1) * p];
                            for j in 0..h {
                                hn[j] = go[j] * tc[j];
                            }
                            res[row * p..(row + 1) * p].copy_from_slice(hn);
                        }
                    }
                    FusedCell::Gru => {
                        let hnp = &mut sv.hnp[row * h..(row + 1) * h];
                        add_into(&mut g[..2 * h], &a[..2 * h], &x[..2 * h]);
                        g[..2 * h].iter_mut().for_each(|v| *v = sigmoid(*v));
                        for j in 0..h {
                            hnp[j] = a[2 * h + j] + if sp.gru_bhn { bhn[j] } else { 0.0 };
                        }
                        let (gr, rest) = g.split_at_mut(h);
                        let (gz, gn) = rest.split_at_mut(h);
                        let hn = &mut hcur[b * p..(b + 1) * p];
                        for j in 0..h {
                            gn[j] = ftanh(x[2 * h + j] + gr[j] * hnp[j]);
                            hn[j] = gn[j] + gz[j] * (hn[j] - gn[j]);
                        }
                        res[row * p..(row + 1) * p].copy_from_slice(hn);
                    }
                }
            }
            if sp.proj {
                // h = m @ W_hr^T for the whole batch; only rows still running take it.
                sgemm(bsz, p, h, &mut hproj, p, false, &mbuf, h, 1, whr, 1, h);
                for b in 0..bsz {
                    let Some(t) = sp.t_of(s, b) else { continue };
                    let row = t * bsz + b;
                    hcur[b * p..(b + 1) * p].copy_from_slice(&hproj[b * p..(b + 1) * p]);
                    res[row * p..(row + 1) * p].copy_from_slice(&hproj[b * p..(b + 1) * p]);
                }
            }
        }
        let base = t_len * bsz * p;
        res[base..base + bsz * p].copy_from_slice(&hcur);
        if lstm {
            res[base + bsz * p..].copy_from_slice(&ccur);
        }
        if self.keep {
            sv.w = w.to_vec();
            *self.saved.lock().unwrap() = Some(sv);
        }
        Ok(res)
    }

    /// BPTT. `gres` is the flat gradient of the result. Returns (dgx, dstate0, dw).
    fn backward(&self, gres: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let sp = &self.spec;
        let (t_len, bsz, h, p, gh) = (sp.seq_len, sp.batch, sp.hidden, sp.out, sp.gh());
        let guard = self.saved.lock().unwrap();
        let Some(sv) = guard.as_ref() else {
            bail!("fused recurrence: backward before forward")
        };
        let lstm = sp.cell == FusedCell::Lstm;
        let gru = sp.cell == FusedCell::Gru;
        let w = &sv.w;
        let whh = &w[..gh * p];
        let whr = if sp.proj { &w[gh * p..gh * p + p * h] } else { &[][..] };
        let dout = &gres[..t_len * bsz * p];
        let mut dh = gres[t_len * bsz * p..t_len * bsz * p + bsz * p].to_vec();
        let mut dc = if lstm {
            gres[t_len * bsz * p + bsz * p..].to_vec()
        } else {
            vec![]
        };
        // dgx in time order; for RNN/LSTM it is also the gradient of h @ W_hh^T.
        let mut dgx = vec![0f32; t_len * bsz * gh];
        // GRU: the gradient of h @ W_hh^T (+ b_hn) differs from dgx in the n block.
        let mut dhh = if gru { vec![0f32; t_len * bsz * gh] } else { vec![] };
        let mut dhs = if sp.proj { vec![0f32; t_len * bsz * p] } else { vec![] };
        let mut dm = vec![0f32; bsz * h];
        let mut dg_step = vec![0f32; bsz * gh];
        let mut tmp = vec![0f32; bsz * p];
        for s in (0..t_len).rev() {
            // Gradient arriving at this step's new h: carried + this step's output.
            for b in 0..bsz {
                let Some(t) = sp.t_of(s, b) else { continue };
                let row = t * bsz + b;
                for j in 0..p {
                    dh[b * p + j] += dout[row * p + j];
                }
                if sp.proj {
                    dhs[row * p..(row + 1) * p].copy_from_slice(&dh[b * p..(b + 1) * p]);
                }
            }
            if sp.proj {
                // dm = dh @ W_hr (B×P @ P×H).
                sgemm(bsz, h, p, &mut dm, h, false, &dh, p, 1, whr, h, 1);
            }
            dg_step.fill(0.0);
            for b in 0..bsz {
                let Some(t) = sp.t_of(s, b) else { continue };
                let row = t * bsz + b;
                let g = &sv.gates[row * gh..(row + 1) * gh];
                let dgs = &mut dg_step[b * gh..(b + 1) * gh];
                match sp.cell {
                    FusedCell::RnnTanh => {
                        for j in 0..h {
                            dgs[j] = dh[b * p + j] * (1.0 - g[j] * g[j]);
                        }
                    }
                    FusedCell::RnnRelu => {
                        for j in 0..h {
                            dgs[j] = if g[j] > 0.0 { dh[b * p + j] } else { 0.0 };
                        }
                    }
                    FusedCell::Lstm => {
                        let dmb: &[f32] = if sp.proj {
                            &dm[b * h..(b + 1) * h]
                        } else {
                            &dh[b * p..(b + 1) * p]
                        };
                        let tc = &sv.tc[row * h..(row + 1) * h];
                        let cp = &sv.cprev[row * h..(row + 1) * h];
                        let dcb = &mut dc[b * h..(b + 1) * h];
                        for j in 0..h {
                            let (i, f, gg, o) = (g[j], g[h + j], g[2 * h + j], g[3 * h + j]);
                            let d_o = dmb[j] * tc[j];
                            let dct = dcb[j] + dmb[j] * o * (1.0 - tc[j] * tc[j]);
                            dgs[j] = dct * gg * i * (1.0 - i);
                            dgs[h + j] = dct * cp[j] * f * (1.0 - f);
                            dgs[2 * h + j] = dct * i * (1.0 - gg * gg);
                            dgs[3 * h + j] = d_o * o * (1.0 - o);
                            dcb[j] = dct * f;
                        }
                    }
                    FusedCell::Gru => {
                        let hp = &sv.hprev[row * p..(row + 1) * p];
                        let hnp = &sv.hnp[row * h..(row + 1) * h];
                        let dx = &mut dgx[row * gh..(row + 1) * gh];
                        let dhb = &mut dh[b * p..(b + 1) * p];
                        for j in 0..h {
                            let (r, z, n) = (g[j], g[h + j], g[2 * h + j]);
                            let d = dhb[j];
                            let dan = d * (1.0 - z) * (1.0 - n * n);
                            let dar = dan * hnp[j] * r * (1.0 - r);
                            let daz = d * (hp[j] - n) * z * (1.0 - z);
                            dx[j] = dar;
                            dx[h + j] = daz;
                            dx[2 * h + j] = dan;
                            dgs[j] = dar;
                            dgs[h + j] = daz;
                            dgs[2 * h + j] = dan * r;
                            // The direct path z * dh; the gemm below adds the rest.
                            dhb[j] = d * z;
                        }
                    }
                }
                if gru {
                    dhh[row * gh..(row + 1) * gh].copy_from_slice(dgs);
                } else {
                    dgx[row * gh..(row + 1) * gh].copy_from_slice(dgs);
                }
            }
            // dh_prev = dG @ W_hh (B×GH @ GH×P) for rows still running; ended rows carry dh.
            sgemm(bsz, p, gh, &mut tmp, p, false, &dg_step, gh, 1, whh, p, 1);
            for b in 0..bsz {
                if sp.t_of(s, b).is_none() {
                    continue;
                }
                for j in 0..p {
                    if gru {
                        dh[b * p + j] += tmp[b * p + j];
                    } else {
                        dh[b * p + j] = tmp[b * p + j];
                    }
                }
            }
        }
        let mut dstate = dh;
        if lstm {
            dstate.extend_from_slice(&dc);
        }
        let mut dw = vec![0f32; sp.w_len()];
        let rows = t_len * bsz;
        let dgate_all: &[f32] = if gru { &dhh } else { &dgx };
        // dW_hh = dG^T @ H_prev over all steps at once (GH × TB @ TB × P).
        sgemm(
            gh,
            p,
            rows,
            &mut dw[..gh * p],
            p,
            false,
            dgate_all,
            1,
            gh,
            &sv.hprev,
            p,
            1,
        );
        if sp.proj {
            // dW_hr = dH^T @ M (P × TB @ TB × H).
            sgemm(
                p,
                h,
                rows,
                &mut dw[gh * p..gh * p + p * h],
                h,
                false,
                &dhs,
                1,
                p,
                &sv.m,
                h,
                1,
            );
        }
        if sp.gru_bhn {
            let off = dw.len() - h;
            for r in 0..rows {
                for j in 0..h {
                    dw[off + j] += dhh[r * gh + 2 * h + j];
                }
            }
        }
        Ok((dgx, dstate, dw))
    }
}

impl CustomOp3 for FusedRecurrence {
    fn name(&self) -> &'static str {
        "seqlab-fused-recurrence"
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
        let gx = super::contiguous_f32("fused recurrence", "gx", s1, l1)?;
        let st = super::contiguous_f32("fused recurrence", "state0", s2, l2)?;
        let w = super::contiguous_f32("fused recurrence", "weights", s3, l3)?;
        let res = self.forward(gx, st, w)?;
        let n = res.len();
        Ok((CpuStorage::F32(res), Shape::from(n)))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        arg3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let (dgx, dst, dw) = self.backward(&g)?;
        let dev = arg1.device();
        Ok((
            Some(Tensor::from_vec(dgx, arg1.shape(), dev)?),
            Some(Tensor::from_vec(dst, arg2.shape(), dev)?),
            Some(Tensor::from_vec(dw, arg3.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_math_is_accurate() {
        let mut worst_e = 0f64;
        let mut worst_t = 0f64;
        let mut x = -30.0f32;
        while x < 30.0 {
            let e = fexp(x) as f64;
            let ee = (x as f64).exp();
            worst_e = worst_e.max(((e - ee) / ee).abs());
            let t = ftanh(x) as f64;
            let tt = (x as f64).tanh();
            worst_t = worst_t.max((t - tt).abs() / tt.abs().max(1e-3));
            x += 0.0137;
        }
        assert!(worst_e < 5e-7, "exp rel err {worst_e}");
        assert!(worst_t < 5e-6, "tanh err {worst_t}");
        assert!(sigmoid(-200.0) < 1e-30 && sigmoid(200.0) == 1.0);
        assert!(ftanh(-100.0) == -1.0 && ftanh(0.0) == 0.0);
    }
}
