//! The selective scan's public entry point: the fused CPU kernel
//! ([`crate::kernels::selective_scan`]) and the same function composed from candle ops (other
//! devices, and the reference the kernel is tested against).

use crate::kernels::selective_scan::{ScanSpec, SelectiveScanOp};
use candle_core::{bail, DType, Result, Tensor, D};

/// The inputs of `selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)`
/// of `state-spaces/mamba`, batch-first. Shapes with B batch, L time, D = d_inner channels,
/// N = d_state:
#[derive(Clone, Copy, Debug)]
pub struct ScanInputs<'a> {
    /// `u` (B, L, D): the scanned input (the conv branch after SiLU).
    pub u: &'a Tensor,
    /// `delta` (B, L, D): the step size before `delta_bias` and softplus.
    pub delta: &'a Tensor,
    /// `A` (D, N): the (negative) state matrix diagonal, `-exp(A_log)`.
    pub a: &'a Tensor,
    /// `B` (B, L, N): input-dependent input matrix.
    pub b: &'a Tensor,
    /// `C` (B, L, N): input-dependent output matrix.
    pub c: &'a Tensor,
    /// `D` (D): skip connection.
    pub d: &'a Tensor,
    /// `z` (B, L, D): the gate, applied as `y · silu(z)`.
    pub z: &'a Tensor,
    /// `delta_bias` (D): added to `delta` before softplus (`dt_proj.bias`).
    pub delta_bias: &'a Tensor,
}

/// The result of a scan.
#[derive(Clone, Debug)]
pub struct ScanOutput {
    /// (B, L, D); zero outside each sequence's real span.
    pub y: Tensor,
    /// (B, D, N): the state after each sequence's last real position.
    pub last_state: Tensor,
}

impl ScanInputs<'_> {
    /// (B, L, D, N) after checking every shape against `u`.
    fn dims(&self) -> Result<(usize, usize, usize, usize)> {
        let (bsz, l, dn) = self.u.dims3()?;
        let n = self.a.dim(D::Minus1)?;
        let want: [(&str, &Tensor, Vec<usize>); 7] = [
            ("delta", self.delta, vec![bsz, l, dn]),
            ("z", self.z, vec![bsz, l, dn]),
            ("A", self.a, vec![dn, n]),
            ("B", self.b, vec![bsz, l, n]),
            ("C", self.c, vec![bsz, l, n]),
            ("D", self.d, vec![dn]),
            ("delta_bias", self.delta_bias, vec![dn]),
        ];
        for (name, t, dims) in want {
            if t.dims() != dims.as_slice() {
                bail!(
                    "selective scan: `{name}` has shape {:?}, expected {dims:?} (u is {:?})",
                    t.dims(),
                    self.u.dims()
                );
            }
            if t.dtype() != DType::F32 {
                bail!("selective scan: `{name}` is {:?}, expected f32", t.dtype());
            }
        }
        Ok((bsz, l, dn, n))
    }
}

/// Checks per-sequence spans `[start, end)` (all of `0..L` when `None`).
fn spans_or_full(spans: Option<&[(usize, usize)]>, batch: usize, seq_len: usize) -> Vec<(usize, usize)> {
    match spans {
        Some(s) => s.to_vec(),
        None => vec![(0, seq_len); batch],
    }
}

/// The selective scan (see [`crate::kernels::selective_scan`] for the equations), over the real
/// span `[start, end)` of each sequence (`None`: all positions). Fused kernel with a
/// hand-written, chunk-recomputing backward on the CPU; composed candle ops elsewhere.
pub fn selective_scan(x: ScanInputs, spans: Option<&[(usize, usize)]>) -> Result<ScanOutput> {
    let (batch, seq_len, d_inner, d_state) = x.dims()?;
    if !crate::ops::use_fused(x.u) {
        return selective_scan_composed(x, spans);
    }
    let spec = ScanSpec {
        batch,
        seq_len,
        d_inner,
        d_state,
        spans: spans_or_full(spans, batch, seq_len),
    };
    let seq = Tensor::stack(&[x.u, x.delta, x.z], 0)?;
    let bc = Tensor::stack(&[x.b, x.c], 0)?;
    let params = Tensor::cat(&[&x.a.flatten_all()?, x.d, x.delta_bias], 0)?;
    let (y, last_state) = SelectiveScanOp::run(spec, &seq, &bc, &params)?;
    Ok(ScanOutput { y, last_state })
}

/// PyTorch's `F.softplus` (threshold 20) from candle ops.
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    // log(1 + e^x) for x <= 20, computed on min(x, 20) so that no inf enters the graph.
    let capped = x.minimum(20f32)?;
    let soft = (capped.exp()? + 1.0)?.log()?;
    x.gt(20f32)?.where_cond(x, &soft)
}

/// The same scan from candle primitives, step by step as `selective_scan_ref` (autograd keeps
/// every state: O(B·L·D·N) memory). Used on non-CPU devices and as the kernel's reference.
pub fn selective_scan_composed(x: ScanInputs, spans: Option<&[(usize, usize)]>) -> Result<ScanOutput> {
    let (batch, seq_len, d_inner, d_state) = x.dims()?;
    let spans = spans_or_full(spans, batch, seq_len);
    if let Some((i, s)) = spans.iter().enumerate().find(|(_, &(s, e))| s >= e || e > seq_len) {
        bail!("selective scan: sequence {i} has span {s:?}, need start < end <= {seq_len}");
    }
    let dev = x.u.device();
    let dt = softplus(&x.delta.broadcast_add(x.delta_bias)?)?; // (B, L, D)
    let delta_a = dt
        .unsqueeze(3)?
        .broadcast_mul(&x.a.unsqueeze(0)?.unsqueeze(0)?)?
        .exp()?; // (B, L, D, N)
    let delta_bu = (&dt * x.u)?.unsqueeze(3)?.broadcast_mul(&x.b.unsqueeze(2)?)?; // (B, L, D, N)
    let mut h = Tensor::zeros((batch, d_inner, d_state), DType::F32, dev)?;
    let mut ys = Vec::with_capacity(seq_len);
    let mut live = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let m: Vec<f32> = spans
            .iter()
            .map(|&(s, e)| if (s..e).contains(&t) { 1.0 } else { 0.0 })
            .collect();
        let m = Tensor::from_vec(m, batch, dev)?;
        let step = (delta_a.narrow(1, t, 1)?.squeeze(1)? * &h)? + delta_bu.narrow(1, t, 1)?.squeeze(1)?;
        // Outside the span the state is carried unchanged.
        let keep = m.reshape((batch, 1, 1))?;
        h = (step?.broadcast_mul(&keep)? + h.broadcast_mul(&(1.0 - &keep)?)?)?;
        let ct = x.c.narrow(1, t, 1)?; // (B, 1, N)
        ys.push(h.broadcast_mul(&ct)?.sum(D::Minus1)?); // (B, D)
        live.push(m);
    }
    let y = Tensor::stack(&ys, 1)?; // (B, L, D)
    let y = (y + x.u.broadcast_mul(x.d)?)?;
    let y = (y * x.z.silu()?)?;
    let live = Tensor::stack(&live, 1)?.unsqueeze(2)?; // (B, L, 1)
    Ok(ScanOutput {
        y: y.broadcast_mul(&live)?,
        last_state: h,
    })
}
