//! Mamba's selective scan (Gu & Dao, 2023, Algorithm 2) as ONE candle op on the CPU, with a
//! hand-written backward.
//!
//! Per sequence `b` and channel `d` (state size N):
//!
//! ```text
//! δ_t = softplus(delta_t + delta_bias)                    (PyTorch's softplus: x for x > 20)
//! h_t = exp(δ_t·A) ⊙ h_{t−1} + δ_t·B_t·u_t                h_{start−1} = 0,  h ∈ R^N
//! y_t = (C_t·h_t + D·u_t) · silu(z_t)
//! ```
//!
//! exactly `selective_scan_ref` of `state-spaces/mamba` with `delta_softplus=True`, a real A and
//! input-dependent B and C. Only the positions `[start_b, end_b)` of each sequence are real: the
//! state is zero before `start_b`, skips nothing inside and stops at `end_b`; the outputs (and
//! gradients) elsewhere are zero. That is how padded batches run without padding touching the
//! state.
//!
//! Memory: the forward keeps nothing but its inputs. The backward recomputes the states chunk by
//! chunk ([`CHUNK`] steps): one forward sweep keeps the state at each chunk start, then every
//! chunk, last first, is recomputed from its checkpoint into a small buffer and back-propagated.
//! Beyond the O(B·L·d_inner) gradients it holds O(B·L·d_inner·d_state / CHUNK) checkpoints and
//! per-task partial sums of dB and dC of O(B·L·d_state·d_inner / CHANNELS_PER_TASK), never the
//! O(B·L·d_inner·d_state) tensor of all states that autograd over the composed ops keeps.
//!
//! Work is split over (sequence, block of [`CHANNELS_PER_TASK`] channels) pairs with rayon.

use super::recurrence::{fexp, sigmoid};
use super::{contiguous, contiguous_f32, device_f32};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Time steps per recomputed chunk in the backward.
const CHUNK: usize = 64;
/// Channels one task scans; B_t and C_t are read once per step for all of them.
const CHANNELS_PER_TASK: usize = 16;

/// PyTorch's `F.softplus(x)` (beta 1, threshold 20).
#[inline(always)]
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// d softplus / dx as PyTorch's backward computes it (1 past the threshold).
#[inline(always)]
fn softplus_grad(x: f32) -> f32 {
    if x > 20.0 {
        1.0
    } else {
        sigmoid(x)
    }
}

/// Sizes of one scan and the real span `[start, end)` of each sequence.
#[derive(Clone, Debug)]
pub(crate) struct ScanSpec {
    pub batch: usize,
    pub seq_len: usize,
    pub d_inner: usize,
    pub d_state: usize,
    /// One `(start, end)` per sequence, `start < end <= seq_len`.
    pub spans: Vec<(usize, usize)>,
}

/// The op. Arguments (all contiguous f32):
/// - `seq` (3, B, L, D): `u`, `delta` (before bias and softplus), `z`;
/// - `bc` (2, B, L, N): `B`, `C`;
/// - `params` flat: `A` (D·N, the negative real A, not `A_log`), `D` (D), `delta_bias` (D).
///
/// Result flat: `y` (B·L·D) then the state at each sequence's end (B·D·N).
pub(crate) struct SelectiveScanOp {
    spec: ScanSpec,
}

/// A pointer that tasks writing disjoint elements share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes only the elements of its own (sequence, channel block), so no two
// threads touch the same element, and the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// # Safety
    /// `i` is in bounds of the buffer and no other thread writes element `i`.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Per-task partial gradients of the arguments shared across channels or sequences.
struct TaskGrads {
    b: usize,
    d0: usize,
    /// dB and dC of this sequence from this block's channels, (L, N) each.
    gb: Vec<f32>,
    gc: Vec<f32>,
    /// dA (blk, N), dD (blk), d delta_bias (blk) from this sequence.
    ga: Vec<f32>,
    gd: Vec<f32>,
    gbias: Vec<f32>,
}

/// Read-only views of the arguments.
struct Args<'a> {
    u: &'a [f32],
    delta: &'a [f32],
    z: &'a [f32],
    bm: &'a [f32],
    cm: &'a [f32],
    a: &'a [f32],
    dskip: &'a [f32],
    bias: &'a [f32],
}

impl SelectiveScanOp {
    pub(crate) fn new(spec: ScanSpec) -> Result<Self> {
        if spec.spans.len() != spec.batch {
            bail!(
                "selective scan: {} spans for a batch of {}",
                spec.spans.len(),
                spec.batch
            );
        }
        if let Some((b, s)) = spec
            .spans
            .iter()
            .enumerate()
            .find(|(_, &(s, e))| s >= e || e > spec.seq_len)
        {
            bail!(
                "selective scan: sequence {b} has span {s:?}, need start < end <= {}",
                spec.seq_len
            );
        }
        if spec.d_inner == 0 || spec.d_state == 0 {
            bail!("selective scan: d_inner and d_state must be positive, got {spec:?}");
        }
        Ok(Self { spec })
    }

    /// (B, L, D, N).
    fn sizes(&self) -> (usize, usize, usize, usize) {
        let s = &self.spec;
        (s.batch, s.seq_len, s.d_inner, s.d_state)
    }

    fn tasks(&self) -> usize {
        self.spec.batch * self.spec.d_inner.div_ceil(CHANNELS_PER_TASK)
    }

    /// Sequence and channel range of a task.
    fn task(&self, i: usize) -> (usize, usize, usize) {
        let blocks = self.spec.d_inner.div_ceil(CHANNELS_PER_TASK);
        let (b, k) = (i / blocks, i % blocks);
        let d0 = k * CHANNELS_PER_TASK;
        (b, d0, (d0 + CHANNELS_PER_TASK).min(self.spec.d_inner))
    }

    fn args<'a>(&self, seq: &'a [f32], bc: &'a [f32], params: &'a [f32]) -> Result<Args<'a>> {
        let (batch, seq_len, dn, n) = self.sizes();
        let m = batch * seq_len * dn;
        let mn = batch * seq_len * n;
        if seq.len() != 3 * m || bc.len() != 2 * mn || params.len() != dn * n + 2 * dn {
            bail!(
                "selective scan: argument sizes {} {} {}, expected {} {} {}",
                seq.len(),
                bc.len(),
                params.len(),
                3 * m,
                2 * mn,
                dn * n + 2 * dn
            );
        }
        Ok(Args {
            u: &seq[..m],
            delta: &seq[m..2 * m],
            z: &seq[2 * m..],
            bm: &bc[..mn],
            cm: &bc[mn..],
            a: &params[..dn * n],
            dskip: &params[dn * n..dn * n + dn],
            bias: &params[dn * n + dn..],
        })
    }

    /// One step of channels `d0..d1` of sequence `b` at time `t`: updates `h` (blk, N) and
    /// returns nothing; `emit(j, idx, ypre)` receives C_t·h_t + D·u_t per channel.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        x: &Args,
        b: usize,
        t: usize,
        d0: usize,
        d1: usize,
        h: &mut [f32],
        mut emit: impl FnMut(usize, usize, f32),
    ) {
        let (l, dn, n) = (self.spec.seq_len, self.spec.d_inner, self.spec.d_state);
        let row = b * l + t;
        let brow = &x.bm[row * n..(row + 1) * n];
        let crow = &x.cm[row * n..(row + 1) * n];
        for d in d0..d1 {
            let j = d - d0;
            let idx = row * dn + d;
            let dt = softplus(x.delta[idx] + x.bias[d]);
            let du = dt * x.u[idx];
            let arow = &x.a[d * n..(d + 1) * n];
            let hj = &mut h[j * n..(j + 1) * n];
            let mut acc = 0f32;
            for k in 0..n {
                let v = fexp(dt * arow[k]) * hj[k] + du * brow[k];
                hj[k] = v;
                acc += crow[k] * v;
            }
            emit(j, idx, acc + x.dskip[d] * x.u[idx]);
        }
    }

    fn forward(&self, seq: &[f32], bc: &[f32], params: &[f32]) -> Result<Vec<f32>> {
        let x = self.args(seq, bc, params)?;
        let (batch, seq_len, dn, n) = self.sizes();
        let m = batch * seq_len * dn;
        let mut out = vec![0f32; m + batch * dn * n];
        let ptr = SharedMut(out.as_mut_ptr());
        (0..self.tasks()).into_par_iter().for_each(|task| {
            let (b, d0, d1) = self.task(task);
            let (s, e) = self.spec.spans[b];
            let mut h = vec![0f32; (d1 - d0) * n];
            for t in s..e {
                self.step(&x, b, t, d0, d1, &mut h, |_, idx, ypre| {
                    let zz = x.z[idx];
                    // SAFETY: idx = (b, t, d) with d in this task's block: in bounds, disjoint.
                    unsafe { ptr.write(idx, ypre * zz * sigmoid(zz)) };
                });
            }
            for (j, hv) in h.iter().enumerate() {
                // SAFETY: (b, d0 + j/n, j%n) of the state block belongs to this task only.
                unsafe { ptr.write(m + (b * dn + d0) * n + j, *hv) };
            }
        });
        Ok(out)
    }

    /// Gradients `(d seq, d bc, d params)` from the gradient of the result.
    fn backward(&self, seq: &[f32], bc: &[f32], params: &[f32], gres: &[f32]) -> Result<[Vec<f32>; 3]> {
        let x = self.args(seq, bc, params)?;
        let (batch, l, dn, n) = self.sizes();
        let m = batch * l * dn;
        if gres.len() != m + batch * dn * n {
            bail!(
                "selective scan: result gradient has {} elements, expected {}",
                gres.len(),
                m + batch * dn * n
            );
        }
        let (gy, ghl) = gres.split_at(m);
        let mut gseq = vec![0f32; 3 * m];
        let ptr = SharedMut(gseq.as_mut_ptr());
        let parts: Vec<TaskGrads> = (0..self.tasks())
            .into_par_iter()
            .map(|task| {
                let (b, d0, d1) = self.task(task);
                let blk = d1 - d0;
                let (s, e) = self.spec.spans[b];
                let chunks = (e - s).div_ceil(CHUNK);
                // State at the start of every chunk.
                let mut ckpt = vec![0f32; chunks * blk * n];
                let mut h = vec![0f32; blk * n];
                for k in 0..chunks {
                    ckpt[k * blk * n..(k + 1) * blk * n].copy_from_slice(&h);
                    for t in s + k * CHUNK..(s + (k + 1) * CHUNK).min(e) {
                        self.step(&x, b, t, d0, d1, &mut h, |_, _, _| {});
                    }
                }
                let mut g = TaskGrads {
                    b,
                    d0,
                    gb: vec![0f32; l * n],
                    gc: vec![0f32; l * n],
                    ga: vec![0f32; blk * n],
                    gd: vec![0f32; blk],
                    gbias: vec![0f32; blk],
                };
                // Adjoint of the state flowing back from later steps; starts as d(last state).
                let mut adj: Vec<f32> = ghl[(b * dn + d0) * n..(b * dn + d1) * n].to_vec();
                // States h_t of the current chunk, t = t0.. (plus h_{t0-1} in front).
                let mut hs = vec![0f32; (CHUNK + 1) * blk * n];
                let mut ypre = vec![0f32; CHUNK * blk];
                for k in (0..chunks).rev() {
                    let t0 = s + k * CHUNK;
                    let t1 = (t0 + CHUNK).min(e);
                    hs[..blk * n].copy_from_slice(&ckpt[k * blk * n..(k + 1) * blk * n]);
                    for t in t0..t1 {
                        let i = t - t0;
                        let (prev, cur) = hs.split_at_mut((i + 1) * blk * n);
                        let hcur = &mut cur[..blk * n];
                        hcur.copy_from_slice(&prev[i * blk * n..]);
                        self.step(&x, b, t, d0, d1, hcur, |j, _, y| ypre[i * blk + j] = y);
                    }
                    for t in (t0..t1).rev() {
                        let i = t - t0;
                        let row = b * l + t;
                        let brow = &x.bm[row * n..(row + 1) * n];
                        let crow = &x.cm[row * n..(row + 1) * n];
                        let hprev = &hs[i * blk * n..(i + 1) * blk * n];
                        let hcur = &hs[(i + 1) * blk * n..(i + 2) * blk * n];
                        let gbr = &mut g.gb[t * n..(t + 1) * n];
                        let gcr = &mut g.gc[t * n..(t + 1) * n];
                        for d in d0..d1 {
                            let j = d - d0;
                            let idx = row * dn + d;
                            let (uu, zz) = (x.u[idx], x.z[idx]);
                            let dr = x.delta[idx] + x.bias[d];
                            let dt = softplus(dr);
                            let sz = sigmoid(zz);
                            let gyv = gy[idx];
                            // out = ypre · silu(z)
                            let gyp = gyv * zz * sz;
                            let gz = gyv * ypre[i * blk + j] * sz * (1.0 + zz * (1.0 - sz));
                            g.gd[j] += gyp * uu;
                            let mut gu = gyp * x.dskip[d];
                            let mut gdt = 0f32;
                            let arow = &x.a[d * n..(d + 1) * n];
                            let aj = &mut adj[j * n..(j + 1) * n];
                            let gaj = &mut g.ga[j * n..(j + 1) * n];
                            let hp = &hprev[j * n..(j + 1) * n];
                            let hc = &hcur[j * n..(j + 1) * n];
                            let du = dt * uu;
                            for k in 0..n {
                                // Total adjoint of h_t: from y_t and from h_{t+1}.
                                let gh = aj[k] + gyp * crow[k];
                                let da = fexp(dt * arow[k]);
                                gcr[k] += gyp * hc[k];
                                gbr[k] += gh * du;
                                gu += gh * dt * brow[k];
                                let ghda = gh * hp[k] * da;
                                gdt += ghda * arow[k] + gh * brow[k] * uu;
                                gaj[k] += ghda * dt;
                                aj[k] = gh * da;
                            }
                            let gdr = gdt * softplus_grad(dr);
                            g.gbias[j] += gdr;
                            // SAFETY: (b, t, d) with d in this task's block: in bounds and
                            // written by no other task; the three planes are m apart.
                            unsafe {
                                ptr.write(idx, gu);
                                ptr.write(m + idx, gdr);
                                ptr.write(2 * m + idx, gz);
                            }
                        }
                    }
                }
                g
            })
            .collect();
        let mn = batch * l * n;
        let mut gbc = vec![0f32; 2 * mn];
        let mut gparams = vec![0f32; dn * n + 2 * dn];
        for p in parts {
            let blk = p.gd.len();
            let off = p.b * l * n;
            for (dst, v) in gbc[off..off + l * n].iter_mut().zip(&p.gb) {
                *dst += v;
            }
            for (dst, v) in gbc[mn + off..mn + off + l * n].iter_mut().zip(&p.gc) {
                *dst += v;
            }
            for (dst, v) in gparams[p.d0 * n..(p.d0 + blk) * n].iter_mut().zip(&p.ga) {
                *dst += v;
            }
            for j in 0..blk {
                gparams[dn * n + p.d0 + j] += p.gd[j];
                gparams[dn * n + dn + p.d0 + j] += p.gbias[j];
            }
        }
        Ok([gseq, gbc, gparams])
    }

    /// Runs the op: `(y (B, L, D), last state (B, D, N))`.
    pub(crate) fn run(spec: ScanSpec, seq: &Tensor, bc: &Tensor, params: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l, dn, n) = (spec.batch, spec.seq_len, spec.d_inner, spec.d_state);
        let op = Self::new(spec)?;
        let res = seq
            .contiguous()?
            .apply_op3(&bc.contiguous()?, &params.contiguous()?, op)?;
        let y = res.narrow(0, 0, b * l * dn)?.reshape((b, l, dn))?;
        let last = res.narrow(0, b * l * dn, b * dn * n)?.reshape((b, dn, n))?;
        Ok((y, last))
    }
}

impl CustomOp3 for SelectiveScanOp {
    fn name(&self) -> &'static str {
        "seqlab-selective-scan"
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
        let seq = contiguous_f32("selective scan", "u/delta/z", s1, l1)?;
        let bc = contiguous_f32("selective scan", "B/C", s2, l2)?;
        let params = contiguous_f32("selective scan", "A/D/delta_bias", s3, l3)?;
        let res = self.forward(seq, bc, params)?;
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
        // Read the arguments in place (they are contiguous: `run` made them so).
        let grad = grad_res.contiguous()?;
        let (s1, l1) = arg1.storage_and_layout();
        let (s2, l2) = arg2.storage_and_layout();
        let (s3, l3) = arg3.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let op = "selective scan";
        let [gs, gbc, gp] = self.backward(
            contiguous(op, "u/delta/z", device_f32(op, "u/delta/z", &s1)?, l1)?,
            contiguous(op, "B/C", device_f32(op, "B/C", &s2)?, l2)?,
            contiguous(op, "A/D/delta_bias", device_f32(op, "A/D/delta_bias", &s3)?, l3)?,
            contiguous(op, "grad", device_f32(op, "grad", &sg)?, lg)?,
        )?;
        let dev = arg1.device();
        Ok((
            Some(Tensor::from_vec(gs, arg1.shape(), dev)?),
            Some(Tensor::from_vec(gbc, arg2.shape(), dev)?),
            Some(Tensor::from_vec(gp, arg3.shape(), dev)?),
        ))
    }
}
