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
//! Memory: the forward keeps, besides its result, δ (B·L·d_inner) and the state at the start
//! of every [`CHUNK`] steps (B·d_inner·d_state·L/CHUNK). The backward recomputes each chunk,
//! last first, from its checkpoint into a small buffer (states and exp(δ·A)) and
//! back-propagates it. Beyond the O(B·L·d_inner) gradients it holds per-task partial sums of dB
//! and dC of O(B·L·d_state·d_inner / CHANNELS_PER_TASK), never the O(B·L·d_inner·d_state)
//! tensor of all states that autograd over the composed ops keeps.
//!
//! Speed: the state dimension is processed in blocks of [`LANES`] (zero-padded, so any
//! d_state works) with independent accumulators, which the compiler turns into SIMD, and on
//! x86-64 the loops are compiled a second time for AVX2 + FMA and picked at run time. The
//! scalar version of this kernel (one element and one libm softplus at a time, the states
//! recomputed twice in the backward) took ~60% of a Shakespeare-preset training step
//! (perf, 1 thread: 8 blocks, d_inner 512, B32 × T128). The exponential stayed scalar after
//! the compiler (~29 instructions per state element), so on AVX2 + FMA the state update is
//! written with intrinsics and an 8-wide exp ([`super::simd::exp8`], ≤ 2 ulp): one forward +
//! backward call at B4 × L128, d_inner 512, d_state 16 went from 675.8 M to 340.3 M
//! instructions in the kernel (callgrind, 1 thread, dev profile; `examples/scan_one_call.rs`).
//!
//! Work is split over (sequence, block of [`CHANNELS_PER_TASK`] channels) pairs with rayon.

use super::recurrence::{fexp, sigmoid};
use super::simd::{self, Avx2Fma};
use super::{contiguous, contiguous_f32, device_f32, dispatch};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Time steps between the forward's state checkpoints (and per recomputed chunk).
const CHUNK: usize = 64;
/// Channels one task scans; B_t and C_t are read once per step for all of them.
const CHANNELS_PER_TASK: usize = 16;
/// The state dimension is handled in blocks of this many lanes (one AVX2 register).
pub(crate) const LANES: usize = 8;
type Lanes = [f32; LANES];

/// PyTorch's `F.softplus(x)` (beta 1, threshold 20).
#[inline(always)]
pub(crate) fn softplus(x: f32) -> f32 {
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

/// Sum of the lanes as a tree (what a SIMD horizontal add does).
#[inline(always)]
fn hsum(v: &Lanes) -> f32 {
    let a = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// Views a slice whose length is a multiple of [`LANES`] as lane blocks.
#[inline(always)]
fn blocks(x: &[f32]) -> &[Lanes] {
    x.as_chunks::<LANES>().0
}

#[inline(always)]
fn blocks_mut(x: &mut [f32]) -> &mut [Lanes] {
    x.as_chunks_mut::<LANES>().0
}

/// Sizes of one scan and the real span `[start, end)` of each sequence.
#[derive(Clone, Debug)]
pub(crate) struct ScanSpec {
    /// Batch size B.
    pub batch: usize,
    /// Padded sequence length L.
    pub seq_len: usize,
    /// Channels D (Mamba's `d_inner`).
    pub d_inner: usize,
    /// State size N per channel.
    pub d_state: usize,
    /// One `(start, end)` per sequence, `start < end <= seq_len`.
    pub spans: Vec<(usize, usize)>,
}

/// The op. Arguments (all contiguous f32):
/// - `seq` (3, B, L, D): `u`, `delta` (before bias and softplus), `z`;
/// - `bc` (2, B, L, N): `B`, `C`;
/// - `params` flat: `A` (D·N, the negative real A, not `A_log`), `D` (D), `delta_bias` (D).
///
/// Result flat: `y` (B·L·D), the state at each sequence's end (B·D·N), then what the backward
/// reuses: δ (B·L·D) and the state checkpoints (B·chunks·D·Np, Np = N rounded up to
/// [`LANES`]). [`SelectiveScanOp::run`] hands out only the first two.
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

    /// # Safety
    /// `i..i + len` is in bounds and written by no other thread while the slice lives.
    #[inline(always)]
    unsafe fn slice<'a>(self, i: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(i), len)
    }
}

/// Per-task partial gradients of the arguments shared across channels or sequences.
struct TaskGrads {
    b: usize,
    d0: usize,
    /// dB and dC of this sequence from this block's channels, (L, Np) each.
    gb: Vec<f32>,
    gc: Vec<f32>,
    /// dA (blk, Np), dD (blk), d delta_bias (blk) from this sequence.
    ga: Vec<f32>,
    gd: Vec<f32>,
    gbias: Vec<f32>,
}

/// Read-only views of the arguments, with A, B and C copied into lane-padded rows of Np.
struct Args<'a> {
    u: &'a [f32],
    delta: &'a [f32],
    z: &'a [f32],
    dskip: &'a [f32],
    bias: &'a [f32],
    /// (D, Np), (B·L, Np), (B·L, Np), zero in the padding lanes (so padded lanes of the state
    /// stay zero and contribute nothing).
    a: Vec<f32>,
    bm: Vec<f32>,
    cm: Vec<f32>,
}

/// Copies rows of `n` into rows of `np` (the rest zero).
fn pad_rows(x: &[f32], n: usize, np: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / n * np];
    for (dst, src) in out.chunks_exact_mut(np).zip(x.chunks_exact(n)) {
        dst[..n].copy_from_slice(src);
    }
    out
}

/// One step of one channel: its state `h` and the step's inputs, all rows of Np lanes.
pub(crate) struct ChannelStep<'a> {
    /// The state h_{t−1}, overwritten with h_t.
    pub h: &'a mut [f32],
    /// The channel's row of A, and B_t, C_t.
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub c: &'a [f32],
    /// δ_t and δ_t·u_t.
    pub dt: f32,
    pub du: f32,
    /// Where exp(δ_t·A) goes, for the backward.
    pub da_out: Option<&'a mut [f32]>,
}

/// One channel's step over its state `h` (Np): h ← exp(δ·A) ⊙ h + δu·B; returns C·h. With
/// `da_out`, exp(δ·A) is stored there for the backward. With `simd` (AVX2 + FMA), the
/// hand-vectorised [`channel_step_avx2`]; else this portable loop, which the compiler
/// vectorises except for the exponential.
#[inline(always)]
pub(crate) fn channel_step(simd: Option<Avx2Fma>, step: ChannelStep) -> f32 {
    let ChannelStep {
        h,
        a,
        b,
        c,
        dt,
        du,
        da_out,
    } = step;
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = simd {
        // SAFETY: the token proves the CPU has AVX2 and FMA.
        return unsafe { channel_step_avx2(simd, h, a, b, c, dt, du, da_out) };
    }
    let _ = simd;
    let mut acc: Lanes = [0.0; LANES];
    let (h, a, b, c) = (blocks_mut(h), blocks(a), blocks(b), blocks(c));
    let mut store = da_out.map(blocks_mut);
    for v in 0..h.len() {
        let (hv, av, bv, cv) = (&mut h[v], &a[v], &b[v], &c[v]);
        let mut da: Lanes = [0.0; LANES];
        for l in 0..LANES {
            da[l] = fexp(dt * av[l]);
            hv[l] = da[l] * hv[l] + du * bv[l];
            acc[l] += cv[l] * hv[l];
        }
        if let Some(s) = store.as_mut() {
            s[v] = da;
        }
    }
    hsum(&acc)
}

/// [`channel_step`] with AVX2 + FMA intrinsics: one register per block of [`LANES`] states,
/// exp(δ·A) by [`simd::exp8`] (the portable loop's `fexp` stays scalar after the compiler:
/// callgrind counted ~29 instructions per state element for it alone). Results differ from the
/// portable loop in rounding only (fused multiply-adds). Positional arguments, not a
/// [`ChannelStep`]: with the struct LLVM stopped inlining it into the scan loops (callgrind:
/// 374 M instead of 340 M instructions per scan call).
///
/// # Safety
/// The CPU has AVX2 and FMA (an [`Avx2Fma`] exists).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn channel_step_avx2(
    _simd: Avx2Fma,
    h: &mut [f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    du: f32,
    da_out: Option<&mut [f32]>,
) -> f32 {
    use std::arch::x86_64::*;
    // Lane blocks move in and out of registers by value (a transmute, one unaligned move):
    // `_mm256_loadu_ps` copies through memory with a debug-build overlap check that callgrind
    // showed costing more than the arithmetic in the optimised dev profile.
    #[inline(always)]
    fn ld(x: &Lanes) -> __m256 {
        // SAFETY: [f32; 8] and __m256 have the same size and every bit pattern is valid.
        unsafe { std::mem::transmute::<Lanes, __m256>(*x) }
    }
    #[inline(always)]
    fn st(x: __m256) -> Lanes {
        // SAFETY: as in `ld`.
        unsafe { std::mem::transmute::<__m256, Lanes>(x) }
    }
    let (h, a, b, c) = (blocks_mut(h), blocks(a), blocks(b), blocks(c));
    let nb = h.len();
    assert!(a.len() == nb && b.len() == nb && c.len() == nb);
    let mut store = da_out.map(blocks_mut);
    assert!(store.as_ref().is_none_or(|s| s.len() == nb));
    let (vdt, vdu) = (_mm256_set1_ps(dt), _mm256_set1_ps(du));
    let mut acc = _mm256_setzero_ps();
    for v in 0..nb {
        let da = simd::exp8(_mm256_mul_ps(vdt, ld(&a[v])));
        let hv = _mm256_fmadd_ps(da, ld(&h[v]), _mm256_mul_ps(vdu, ld(&b[v])));
        h[v] = st(hv);
        acc = _mm256_fmadd_ps(ld(&c[v]), hv, acc);
        if let Some(s) = store.as_mut() {
            s[v] = st(da);
        }
    }
    simd::hsum8(acc)
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

    /// N rounded up to whole lane blocks.
    fn padded_state(&self) -> usize {
        self.spec.d_state.div_ceil(LANES) * LANES
    }

    /// Checkpoints per sequence (of the padded length).
    fn chunks(&self) -> usize {
        self.spec.seq_len.div_ceil(CHUNK)
    }

    /// Elements of the result: y, last state, δ, checkpoints.
    fn result_len(&self) -> usize {
        let (batch, l, dn, n) = self.sizes();
        2 * batch * l * dn + batch * dn * n + batch * self.chunks() * dn * self.padded_state()
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
        let np = self.padded_state();
        Ok(Args {
            u: &seq[..m],
            delta: &seq[m..2 * m],
            z: &seq[2 * m..],
            dskip: &params[dn * n..dn * n + dn],
            bias: &params[dn * n + dn..],
            a: pad_rows(&params[..dn * n], n, np),
            bm: pad_rows(&bc[..mn], n, np),
            cm: pad_rows(&bc[mn..], n, np),
        })
    }

    fn forward(&self, seq: &[f32], bc: &[f32], params: &[f32]) -> Result<Vec<f32>> {
        let x = self.args(seq, bc, params)?;
        let (batch, l, dn, n) = self.sizes();
        let np = self.padded_state();
        let m = batch * l * dn;
        let (dt_off, ck_off) = (m + batch * dn * n, 2 * m + batch * dn * n);
        let chunks = self.chunks();
        let mut out = vec![0f32; self.result_len()];
        let ptr = SharedMut(out.as_mut_ptr());
        (0..self.tasks()).into_par_iter().for_each(|task| {
            let (b, d0, d1) = self.task(task);
            let blk = d1 - d0;
            let (s, e) = self.spec.spans[b];
            let mut h = vec![0f32; blk * np];
            let simd = Avx2Fma::detect();
            dispatch(|| {
                for t in s..e {
                    if (t - s) % CHUNK == 0 {
                        let k = (t - s) / CHUNK;
                        // SAFETY: checkpoint k of (b, d0..d1) belongs to this task only.
                        unsafe { ptr.slice(ck_off + ((b * chunks + k) * dn + d0) * np, blk * np) }.copy_from_slice(&h);
                    }
                    let row = b * l + t;
                    let (brow, crow) = (&x.bm[row * np..(row + 1) * np], &x.cm[row * np..(row + 1) * np]);
                    for d in d0..d1 {
                        let j = d - d0;
                        let idx = row * dn + d;
                        let dt = softplus(x.delta[idx] + x.bias[d]);
                        let uu = x.u[idx];
                        let hj = &mut h[j * np..(j + 1) * np];
                        let step = ChannelStep {
                            h: hj,
                            a: &x.a[d * np..(d + 1) * np],
                            b: brow,
                            c: crow,
                            dt,
                            du: dt * uu,
                            da_out: None,
                        };
                        let acc = channel_step(simd, step);
                        let (ypre, zz) = (acc + x.dskip[d] * uu, x.z[idx]);
                        // SAFETY: idx = (b, t, d) with d in this task's block: in bounds, disjoint.
                        unsafe {
                            ptr.write(idx, ypre * zz * sigmoid(zz));
                            ptr.write(dt_off + idx, dt);
                        }
                    }
                }
            });
            for j in 0..blk {
                for k in 0..n {
                    // SAFETY: (b, d0 + j, k) of the state block belongs to this task only.
                    unsafe { ptr.write(m + (b * dn + d0 + j) * n + k, h[j * np + k]) };
                }
            }
        });
        Ok(out)
    }

    /// Gradients `(d seq, d bc, d params)` from the forward's result and its gradient.
    fn backward(&self, seq: &[f32], bc: &[f32], params: &[f32], res: &[f32], gres: &[f32]) -> Result<[Vec<f32>; 3]> {
        let x = self.args(seq, bc, params)?;
        let (batch, l, dn, n) = self.sizes();
        let np = self.padded_state();
        let m = batch * l * dn;
        if gres.len() < m + batch * dn * n || res.len() != self.result_len() {
            bail!(
                "selective scan: result/gradient have {}/{} elements, expected {}/at least {}",
                res.len(),
                gres.len(),
                self.result_len(),
                m + batch * dn * n
            );
        }
        let (dt_off, ck_off) = (m + batch * dn * n, 2 * m + batch * dn * n);
        let chunks = self.chunks();
        let dts = &res[dt_off..dt_off + m];
        let (gy, ghl) = (&gres[..m], &gres[m..m + batch * dn * n]);
        let mut gseq = vec![0f32; 3 * m];
        let ptr = SharedMut(gseq.as_mut_ptr());
        let parts: Vec<TaskGrads> = (0..self.tasks())
            .into_par_iter()
            .map(|task| {
                let (b, d0, d1) = self.task(task);
                let blk = d1 - d0;
                let (s, e) = self.spec.spans[b];
                let mut g = TaskGrads {
                    b,
                    d0,
                    gb: vec![0f32; l * np],
                    gc: vec![0f32; l * np],
                    ga: vec![0f32; blk * np],
                    gd: vec![0f32; blk],
                    gbias: vec![0f32; blk],
                };
                // Adjoint of the state flowing back from later steps; starts as d(last state).
                let mut adj = vec![0f32; blk * np];
                for j in 0..blk {
                    let src = (b * dn + d0 + j) * n;
                    adj[j * np..j * np + n].copy_from_slice(&ghl[src..src + n]);
                }
                // States h_t of the current chunk, t = t0.. (plus h_{t0-1} in front), and
                // exp(δ_t·A) of each step.
                let mut hs = vec![0f32; (CHUNK + 1) * blk * np];
                let mut das = vec![0f32; CHUNK * blk * np];
                let mut ypre = vec![0f32; CHUNK * blk];
                let simd = Avx2Fma::detect();
                dispatch(|| {
                    for k in (0..(e - s).div_ceil(CHUNK)).rev() {
                        let t0 = s + k * CHUNK;
                        let t1 = (t0 + CHUNK).min(e);
                        let ck = ck_off + ((b * chunks + k) * dn + d0) * np;
                        hs[..blk * np].copy_from_slice(&res[ck..ck + blk * np]);
                        for t in t0..t1 {
                            let i = t - t0;
                            let row = b * l + t;
                            let (brow, crow) = (&x.bm[row * np..(row + 1) * np], &x.cm[row * np..(row + 1) * np]);
                            let (prev, cur) = hs.split_at_mut((i + 1) * blk * np);
                            let hcur = &mut cur[..blk * np];
                            hcur.copy_from_slice(&prev[i * blk * np..]);
                            for d in d0..d1 {
                                let j = d - d0;
                                let idx = row * dn + d;
                                let dt = dts[idx];
                                let uu = x.u[idx];
                                let step = ChannelStep {
                                    h: &mut hcur[j * np..(j + 1) * np],
                                    a: &x.a[d * np..(d + 1) * np],
                                    b: brow,
                                    c: crow,
                                    dt,
                                    du: dt * uu,
                                    da_out: Some(&mut das[(i * blk + j) * np..(i * blk + j + 1) * np]),
                                };
                                let acc = channel_step(simd, step);
                                ypre[i * blk + j] = acc + x.dskip[d] * uu;
                            }
                        }
                        for t in (t0..t1).rev() {
                            let i = t - t0;
                            let row = b * l + t;
                            let brow = blocks(&x.bm[row * np..(row + 1) * np]);
                            let crow = blocks(&x.cm[row * np..(row + 1) * np]);
                            let gbr = blocks_mut(&mut g.gb[t * np..(t + 1) * np]);
                            let gcr = blocks_mut(&mut g.gc[t * np..(t + 1) * np]);
                            for d in d0..d1 {
                                let j = d - d0;
                                let idx = row * dn + d;
                                let (uu, zz) = (x.u[idx], x.z[idx]);
                                let dt = dts[idx];
                                let sz = sigmoid(zz);
                                let gyv = gy[idx];
                                // out = ypre · silu(z)
                                let gyp = gyv * zz * sz;
                                let gz = gyv * ypre[i * blk + j] * sz * (1.0 + zz * (1.0 - sz));
                                g.gd[j] += gyp * uu;
                                let du = dt * uu;
                                let cell = |base: usize| (base + j) * np..(base + j + 1) * np;
                                let arow = blocks(&x.a[d * np..(d + 1) * np]);
                                let hp = blocks(&hs[cell(i * blk)]);
                                let hc = blocks(&hs[cell((i + 1) * blk)]);
                                let da = blocks(&das[cell(i * blk)]);
                                let aj = blocks_mut(&mut adj[j * np..(j + 1) * np]);
                                let gaj = blocks_mut(&mut g.ga[j * np..(j + 1) * np]);
                                // Σ_k gh·B and Σ_k gh·h_{t−1}·exp(δA)·A, lane-wise.
                                let (mut ghb, mut gdta): (Lanes, Lanes) = ([0.0; LANES], [0.0; LANES]);
                                for v in 0..aj.len() {
                                    for q in 0..LANES {
                                        // Total adjoint of h_t: from y_t and from h_{t+1}.
                                        let gh = aj[v][q] + gyp * crow[v][q];
                                        gcr[v][q] += gyp * hc[v][q];
                                        gbr[v][q] += gh * du;
                                        ghb[q] += gh * brow[v][q];
                                        let ghda = gh * hp[v][q] * da[v][q];
                                        gdta[q] += ghda * arow[v][q];
                                        gaj[v][q] += ghda * dt;
                                        aj[v][q] = gh * da[v][q];
                                    }
                                }
                                let ghb = hsum(&ghb);
                                let gu = gyp * x.dskip[d] + dt * ghb;
                                let gdr = (hsum(&gdta) + uu * ghb) * softplus_grad(x.delta[idx] + x.bias[d]);
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
                });
                g
            })
            .collect();
        let mn = batch * l * n;
        let mut gbc = vec![0f32; 2 * mn];
        let mut gparams = vec![0f32; dn * n + 2 * dn];
        for p in parts {
            let blk = p.gd.len();
            for t in 0..l {
                let (dst, src) = ((p.b * l + t) * n, t * np);
                for k in 0..n {
                    gbc[dst + k] += p.gb[src + k];
                    gbc[mn + dst + k] += p.gc[src + k];
                }
            }
            for j in 0..blk {
                for k in 0..n {
                    gparams[(p.d0 + j) * n + k] += p.ga[j * np + k];
                }
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
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Read the arguments in place (they are contiguous: `run` made them so).
        let grad = grad_res.contiguous()?;
        let res = res.contiguous()?;
        let (sr, lr) = res.storage_and_layout();
        let (s1, l1) = arg1.storage_and_layout();
        let (s2, l2) = arg2.storage_and_layout();
        let (s3, l3) = arg3.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let op = "selective scan";
        let [gs, gbc, gp] = self.backward(
            contiguous(op, "u/delta/z", device_f32(op, "u/delta/z", &s1)?, l1)?,
            contiguous(op, "B/C", device_f32(op, "B/C", &s2)?, l2)?,
            contiguous(op, "A/D/delta_bias", device_f32(op, "A/D/delta_bias", &s3)?, l3)?,
            contiguous(op, "result", device_f32(op, "result", &sr)?, lr)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 step against the portable one on the same state, over the δ·A range of a real
    /// layer (δ from 1e-4 to 20, A from −1 to −16 as A_log's S4D-real init, and beyond).
    #[test]
    fn avx2_channel_step_matches_the_portable_one() {
        let Some(simd) = Avx2Fma::detect() else {
            eprintln!("no AVX2 + FMA here: nothing to compare");
            return;
        };
        let np = 24;
        let mut rng = crate::SeqRng::new(3);
        let mut draw = |lo: f64, hi: f64| rng.uniform_vec(np, lo, hi);
        let a: Vec<f32> = draw(0.0, 1.0)
            .iter()
            .enumerate()
            .map(|(k, u)| -(1.0 + k as f32) * (0.5 + u))
            .collect();
        let (b, c, h0) = (draw(-1.0, 1.0), draw(-1.0, 1.0), draw(-2.0, 2.0));
        for dt in [1e-4f32, 0.01, 0.3, 1.0, 5.0, 20.0] {
            let (mut h1, mut h2) = (h0.clone(), h0.clone());
            let (mut da1, mut da2) = (vec![0f32; np], vec![0f32; np]);
            let run = |simd, h: &mut [f32], da_out: &mut [f32]| {
                let step = ChannelStep {
                    h,
                    a: &a,
                    b: &b,
                    c: &c,
                    dt,
                    du: 0.7 * dt,
                    da_out: Some(da_out),
                };
                channel_step(simd, step)
            };
            let y1 = run(None, &mut h1, &mut da1);
            let y2 = run(Some(simd), &mut h2, &mut da2);
            for k in 0..np {
                assert!(
                    (da1[k] - da2[k]).abs() <= 5e-7 * da1[k].abs().max(1e-30),
                    "dt {dt} exp {k}: {} {}",
                    da1[k],
                    da2[k]
                );
                assert!(
                    (h1[k] - h2[k]).abs() <= 1e-6 * (1.0 + h1[k].abs()),
                    "dt {dt} state {k}: {} {}",
                    h1[k],
                    h2[k]
                );
            }
            assert!((y1 - y2).abs() <= 1e-5 * (1.0 + y1.abs()), "dt {dt}: C·h {y1} vs {y2}");
        }
    }
}
