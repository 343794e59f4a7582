//! Attention composed from candle ops — the path on non-CPU devices (cuBLAS batched GEMMs and
//! candle's reductions on CUDA) and on the CPU with [`crate::ops::Path::Composed`]: the same
//! function as the fused kernel ([`crate::kernels::attention`]), masks, fully masked rows and
//! dropout draws included, with candle's autograd as the backward.

use crate::kernels::attention::{draw_dropout, PreparedMasks, QkvInput};
use crate::{ops, SharedRng};
use candle_core::{bail, DType, Device, Result, Tensor};

/// Stands in for −∞ in the additive mask: exp(x − 1e30 − max) is exactly 0 in f32 wherever a
/// row has an allowed key, and a row with none stays finite (no −∞ − (−∞) = NaN in the
/// softmax); such rows are then zeroed by the row mask, as the kernel zeroes them.
const BLOCKED: f32 = -1e30;

/// Runs attention; returns O (B, L, H, Dv) contiguous and the probabilities after dropout
/// (B, H, L, S), differentiable in q and k (PyTorch's `need_weights=True`).
pub(crate) fn run(
    qkv: QkvInput,
    masks: &PreparedMasks,
    scale: f64,
    dropout: Option<(f64, &SharedRng)>,
) -> Result<(Tensor, Tensor)> {
    let (b, l, s, h, d, _) = qkv.dims()?;
    if d == 0 {
        bail!("attention: head dimension must be positive");
    }
    let g = qkv.kv_group();
    let (q, k, v) = match qkv {
        QkvInput::Packed(x) => {
            let part = |i: usize| -> Result<Tensor> { x.narrow(2, i, 1)?.squeeze(2) };
            (part(0)?, part(1)?, part(2)?)
        }
        // Keys and values shared by groups of query rows: repeated to one row each.
        QkvInput::Separate(q, k, v) => (q.clone(), ops::repeat_rows(k, g)?, ops::repeat_rows(v, g)?),
        // Made only where the fused kernel runs (`KvCache`).
        QkvInput::Indexed(..) => {
            bail!("attention: keys and values read through an ancestor table need the fused kernel")
        }
    };
    for (n, t) in [("q", &q), ("k", &k), ("v", &v)] {
        if t.dtype() != DType::F32 {
            bail!("attention: {n} must be f32, got {:?}", t.dtype());
        }
    }
    let dev = q.device().clone();
    // (B, L, H, D) → (B, H, L, D): batched GEMMs over (B, H).
    let heads = |t: &Tensor| -> Result<Tensor> { t.transpose(1, 2)?.contiguous() };
    let (q, k, v) = (heads(&q)?, heads(&k)?, heads(&v)?);
    let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?;
    let (mask, alive) = additive_mask(masks, (b, h, l, s), &dev)?;
    let scores = match &mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let p = ops::softmax(&scores, 3)?;
    let p = match &alive {
        Some(a) => p.broadcast_mul(a)?,
        None => p,
    };
    let p = match draw_dropout(dropout, (b, h, l, s))? {
        Some(m) => (p * Tensor::from_vec(m, (b, h, l, s), &dev)?)?,
        None => p,
    };
    let o = p.matmul(&v)?.transpose(1, 2)?.contiguous()?;
    Ok((o, p))
}

/// The kernel's masks as one additive tensor (B|1, H|1, L, S) on `dev` (attention mask +
/// key padding + causal, −∞ as [`BLOCKED`]), and a 0/1 row mask (B|1, H|1, L, 1) when some
/// row has no allowed key. `(None, None)` without masks.
fn additive_mask(
    m: &PreparedMasks,
    (b, _h, l, s): (usize, usize, usize, usize),
    dev: &Device,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if m.mask.is_none() && m.kpm.is_none() && !m.causal {
        return Ok((None, None));
    }
    let (mbm, mhm) = m.mask.as_ref().map_or((1, 1), |x| (x.bm, x.hm));
    let bo = if m.kpm.is_some() { b } else { mbm };
    let ho = mhm;
    let mut out = vec![0f32; bo * ho * l * s];
    let mut alive = vec![1f32; bo * ho * l];
    let mut any_dead = false;
    for bi in 0..bo {
        for hi in 0..ho {
            for i in 0..l {
                let row = &mut out[((bi * ho + hi) * l + i) * s..][..s];
                if let Some(x) = &m.mask {
                    let start = (((if x.bm == 1 { 0 } else { bi }) * x.hm + hi) * l + i) * s;
                    row.iter_mut().zip(&x.data[start..start + s]).for_each(|(r, a)| *r += a);
                }
                if let Some(k) = &m.kpm {
                    row.iter_mut().zip(&k[bi * s..(bi + 1) * s]).for_each(|(r, a)| *r += a);
                }
                if m.causal && i + 1 < s {
                    row[i + 1..].iter_mut().for_each(|r| *r = f32::NEG_INFINITY);
                }
                if row.iter().all(|&r| r == f32::NEG_INFINITY) {
                    alive[(bi * ho + hi) * l + i] = 0.0;
                    any_dead = true;
                }
                row.iter_mut()
                    .filter(|r| **r == f32::NEG_INFINITY)
                    .for_each(|r| *r = BLOCKED);
            }
        }
    }
    let mask = Tensor::from_vec(out, (bo, ho, l, s), dev)?;
    let alive = if any_dead {
        Some(Tensor::from_vec(alive, (bo, ho, l, 1), dev)?)
    } else {
        None
    };
    Ok((Some(mask), alive))
}
