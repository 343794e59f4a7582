//! One decoding step of a Mamba mixer's convolution and SSM state on the CPU, each as ONE candle
//! op: the CPU counterpart of `mamba_ssm`'s `causal_conv1d_update` and
//! `selective_state_update` (Gu & Dao, 2023; `mamba_ssm/ops/triton/selective_state_update.py`).
//!
//! Per sequence `b` and channel `d` (state size N, conv width K):
//!
//! ```text
//! u   = silu(bias_d + Σ_j w[d, j] · window[b, d, j])        (window: the last K conv inputs)
//! δ   = softplus(dt)                                         (PyTorch's softplus: x for x > 20)
//! h  ← exp(δ·A[d]) ⊙ h + δ·u·B[b]                            h ∈ R^N
//! y   = (C[b]·h + D[d]·u) · silu(z)
//! ```
//!
//! Why: composed from candle ops the step is ~25 ops per layer, half of them broadcasts over the
//! (B, d_inner, d_state) state, and it ran at 0.42–0.52× of the reference's `Mamba.step` (quiet
//! machine, `bench/run.py --rows mamba-decode`): the state update's arithmetic is tiny, the
//! passes over memory and the per-op overhead are not. Here each (sequence, channel) is one pass
//! over its N states, with the 8-wide exp of the selective scan ([`super::selective_scan`]).
//!
//! Decoding only, as the reference's: neither op has a backward, so `backward()` through a step
//! on this path fails with candle's "backward not supported" error instead of returning a silently
//! incomplete gradient. The composed step (`SEQLAB_OPS=composed`, or any non-CPU tensor) is
//! differentiable.

use super::selective_scan::{channel_step, softplus, ChannelStep, LANES};
use super::simd::Avx2Fma;
use super::{contiguous_f32, storage_f32};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows (sequence, channel) per rayon task: one task costs ~N·20 instructions per row, so
/// 64 rows keep the split's overhead small while a batch of 32 × 512 channels still gives 256
/// tasks.
const ROWS_PER_TASK: usize = 64;

/// The conv step's op: window (B, D, K) contiguous, weight (D, K) contiguous → u (B, D). The
/// bias (D) is held by the op (a parameter's values; the op has no backward anyway).
struct ConvStep {
    bias: Option<Vec<f32>>,
}

impl CustomOp2 for ConvStep {
    fn name(&self) -> &'static str {
        "mamba-conv-step"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let window = contiguous_f32(op, "window", s1, l1)?;
        let weight = contiguous_f32(op, "weight", s2, l2)?;
        let (b, d, k) = l1.shape().dims3()?;
        if l2.shape().dims() != [d, k] {
            bail!(
                "{op}: weight {:?} does not fit a window of {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        if self.bias.as_ref().is_some_and(|v| v.len() != d) {
            bail!("{op}: bias does not have {d} channels");
        }
        let mut u = vec![0f32; b * d];
        u.par_chunks_mut(d).zip(window.par_chunks(d * k)).for_each(|(u, win)| {
            for (c, uc) in u.iter_mut().enumerate() {
                let w = &weight[c * k..(c + 1) * k];
                let x = &win[c * k..(c + 1) * k];
                let mut acc = self.bias.as_ref().map_or(0.0, |v| v[c]);
                for j in 0..k {
                    acc += w[j] * x[j];
                }
                *uc = acc / (1.0 + (-acc).exp());
            }
        });
        Ok((CpuStorage::F32(u), Shape::from((b, d))))
    }
}

/// `silu(bias + Σ_j weight[d, j] · window[b, d, j])`: window (B, d_inner, d_conv), `weight`
/// (d_inner, d_conv), `bias` (d_inner) → u (B, d_inner). f32 CPU tensors only.
pub(crate) fn conv_step(window: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    window.contiguous()?.apply_op2(&weight.contiguous()?, ConvStep { bias })
}

/// The state update's op: state (B, D, N) with any row strides (last dimension contiguous),
/// rows (3, B, D) contiguous = dt (before softplus), u, z; bc (B, 2N) contiguous = B, C → out
/// (B, D, N + 1): the new state in `[.., ..N]`, y in `[.., N]`. A = −exp(A_log) (D·N) and D (D)
/// are held by the op.
struct StateUpdate {
    a: Vec<f32>,
    d_skip: Vec<f32>,
}

impl CustomOp3 for StateUpdate {
    fn name(&self) -> &'static str {
        "mamba-state-update"
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
        let op = self.name();
        let (bsz, dch, n) = l1.shape().dims3()?;
        let st = l1.stride();
        if st[2] != 1 {
            bail!("{op}: the state's last dimension must be contiguous");
        }
        let (s_b, s_d, start) = (st[0], st[1], l1.start_offset());
        let state = storage_f32(op, "state", s1)?;
        let rows = contiguous_f32(op, "rows", s2, l2)?;
        let bc = contiguous_f32(op, "bc", s3, l3)?;
        if l2.shape().dims() != [3, bsz, dch] || l3.shape().dims() != [bsz, 2 * n] {
            bail!(
                "{op}: rows {:?} and bc {:?} do not fit a state of {:?}",
                l2.shape(),
                l3.shape(),
                l1.shape()
            );
        }
        if self.a.len() != dch * n || self.d_skip.len() != dch {
            bail!("{op}: A or D does not fit {dch} channels of {n} states");
        }
        if bsz * dch > 0 {
            let last = start + (bsz - 1) * s_b + (dch - 1) * s_d + n;
            if last > state.len() {
                bail!("{op}: the state's layout reaches past its storage");
            }
        }
        let np = n.div_ceil(LANES) * LANES;
        // A padded to Np lanes per channel: a padded lane has A = 0, B = C = 0 and state 0, so it
        // stays 0 and adds nothing to y.
        let mut a_pad = vec![0f32; dch * np];
        for (dst, src) in a_pad.chunks_exact_mut(np).zip(self.a.chunks_exact(n.max(1))) {
            dst[..n].copy_from_slice(&src[..n]);
        }
        let (dt, u, z) = (
            &rows[..bsz * dch],
            &rows[bsz * dch..2 * bsz * dch],
            &rows[2 * bsz * dch..],
        );
        let w = n + 1;
        let mut out = vec![0f32; bsz * dch * w];
        let simd = Avx2Fma::detect();
        out.par_chunks_mut(ROWS_PER_TASK * w)
            .enumerate()
            .for_each(|(task, chunk)| {
                let mut h = vec![0f32; np];
                let (mut bp, mut cp) = (vec![0f32; np], vec![0f32; np]);
                let mut cur_b = usize::MAX;
                for (i, o) in chunk.chunks_exact_mut(w).enumerate() {
                    let row = task * ROWS_PER_TASK + i;
                    let (b, d) = (row / dch, row % dch);
                    if b != cur_b {
                        bp[..n].copy_from_slice(&bc[b * 2 * n..b * 2 * n + n]);
                        cp[..n].copy_from_slice(&bc[b * 2 * n + n..(b + 1) * 2 * n]);
                        cur_b = b;
                    }
                    let off = start + b * s_b + d * s_d;
                    h[..n].copy_from_slice(&state[off..off + n]);
                    let delta = softplus(dt[row]);
                    let uv = u[row];
                    let ch = channel_step(
                        simd,
                        ChannelStep {
                            h: &mut h,
                            a: &a_pad[d * np..(d + 1) * np],
                            b: &bp,
                            c: &cp,
                            dt: delta,
                            du: delta * uv,
                            da_out: None,
                        },
                    );
                    let zv = z[row];
                    o[..n].copy_from_slice(&h[..n]);
                    o[n] = (ch + self.d_skip[d] * uv) * (zv / (1.0 + (-zv).exp()));
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((bsz, dch, w))))
    }
}

/// Inputs of [`state_update`], all f32 CPU tensors.
pub(crate) struct StateStep<'a> {
    /// The state h (B, d_inner, d_state); any layout whose last dimension is contiguous.
    pub ssm: &'a Tensor,
    /// dt before softplus (B, d_inner): `dt_proj(x_proj(u)[.., ..dt_rank])` with its bias.
    pub dt: &'a Tensor,
    /// The conv step's output u (B, d_inner).
    pub u: &'a Tensor,
    /// The gate z (B, d_inner).
    pub z: &'a Tensor,
    /// B and C side by side (B, 2·d_state).
    pub bc: &'a Tensor,
    /// `A_log` (d_inner, d_state); A = −exp(A_log).
    pub a_log: &'a Tensor,
    /// The skip D (d_inner).
    pub d: &'a Tensor,
}

/// One step of the selective SSM for every (sequence, channel) → (new state (B, d_inner,
/// d_state), y (B, d_inner)). The new state is a view into the op's (B, d_inner, d_state + 1)
/// result, which the next step reads as it is.
pub(crate) fn state_update(x: StateStep) -> Result<(Tensor, Tensor)> {
    let n = x.ssm.dim(2)?;
    let a: Vec<f32> = x.a_log.exp()?.neg()?.flatten_all()?.to_vec1()?;
    let d_skip = x.d.to_vec1::<f32>()?;
    let rows = Tensor::stack(&[x.dt, x.u, x.z], 0)?.contiguous()?;
    let out = x.ssm.apply_op3(&rows, &x.bc.contiguous()?, StateUpdate { a, d_skip })?;
    Ok((out.narrow(2, 0, n)?, out.narrow(2, n, 1)?.squeeze(2)?))
}
