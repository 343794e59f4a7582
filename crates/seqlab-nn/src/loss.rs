//! Loss functions: `F.cross_entropy` (with `ignore_index` and label smoothing) and
//! `F.mse_loss`.

use crate::ops::log_softmax;
use candle_core::{bail, DType, Result, Tensor, D};

/// How per-element losses are combined; PyTorch's `reduction` argument (default `Mean`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    #[default]
    Mean,
    Sum,
    None,
}

impl std::str::FromStr for Reduction {
    type Err = candle_core::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "sum" => Ok(Self::Sum),
            "none" => Ok(Self::None),
            _ => bail!("reduction must be \"mean\", \"sum\" or \"none\", got {s:?}"),
        }
    }
}

/// `F.cross_entropy(logits, target, ignore_index=..., label_smoothing=..., reduction=...)`
/// with class indices as targets.
///
/// Shapes: `logits` (N, C) with `target` (N), or (N, C, d1, ...) with (N, d1, ...); targets
/// are integer class ids (i64/u32/u8) in `[0, C)` or equal to `ignore_index`. Pass
/// `Some(-100)` for PyTorch's default; `None` ignores nothing. The loss of one element is
/// `(1 − ε)·(−log p[t]) + (ε/C)·Σ_c −log p[c]`; ignored elements contribute 0, and `Mean`
/// divides by the number of non-ignored elements (NaN when there are none, as PyTorch).
/// `None` returns the target's shape; `Mean`/`Sum` a scalar.
pub fn cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    ignore_index: Option<i64>,
    label_smoothing: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    let dims = logits.dims().to_vec();
    if dims.len() < 2 {
        bail!("cross_entropy: logits must be (N, C) or (N, C, d1, ...), got {dims:?}");
    }
    let c = dims[1];
    let mut tdims = dims.clone();
    tdims.remove(1);
    if target.dims() != tdims.as_slice() {
        bail!(
            "cross_entropy: target shape {:?} does not fit logits {dims:?} (expected {tdims:?})",
            target.dims()
        );
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        bail!("cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}");
    }
    if c == 0 {
        bail!("cross_entropy: no classes");
    }
    if !matches!(target.dtype(), DType::I64 | DType::U32 | DType::U8 | DType::I32) {
        bail!(
            "cross_entropy: target must hold integer class ids, got {:?}",
            target.dtype()
        );
    }
    // Class dimension last, everything else flattened: (M, C).
    let flat = if dims.len() == 2 {
        logits.clone()
    } else {
        let rank = dims.len();
        let mut perm: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
        perm.push(1);
        logits.permute(perm)?.contiguous()?.reshape(((), c))?
    };
    let ids = target.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    let mut keep = Vec::with_capacity(ids.len());
    let mut idx = Vec::with_capacity(ids.len());
    for &t in &ids {
        if Some(t) == ignore_index {
            keep.push(0f32);
            idx.push(0u32);
        } else if t < 0 || t as usize >= c {
            bail!(
                "cross_entropy: target {t} is outside [0, {c}){}",
                match ignore_index {
                    Some(i) => format!(" and is not ignore_index {i}"),
                    None => String::new(),
                }
            );
        } else {
            keep.push(1.0);
            idx.push(t as u32);
        }
    }
    let dev = logits.device();
    let m = ids.len();
    let count: f32 = keep.iter().sum();
    let per = if crate::ops::use_fused(&flat) {
        let op = crate::kernels::cross_entropy::CrossEntropyRows {
            target: idx,
            keep: keep.clone(),
            smoothing: label_smoothing as f32,
            lse: Default::default(),
        };
        flat.contiguous()?.apply_op1(op)?
    } else {
        per_row_composed(&flat, idx, label_smoothing)?
    };
    let keep = Tensor::from_vec(keep, m, dev)?.to_dtype(logits.dtype())?;
    let per = (per * keep)?;
    match reduction {
        Reduction::None => per.reshape(tdims),
        Reduction::Sum => per.sum_all(),
        // 0/0 = NaN when every target is ignored, which is what PyTorch returns.
        Reduction::Mean => per.sum_all()? / count as f64,
    }
}

/// Unmasked per-row losses from candle ops (autograd through log-softmax); the path for
/// non-CPU devices and the reference for the fused kernel.
fn per_row_composed(flat: &Tensor, idx: Vec<u32>, label_smoothing: f64) -> Result<Tensor> {
    let (m, c) = flat.dims2()?;
    let idx = Tensor::from_vec(idx, (m, 1), flat.device())?;
    let lp = log_softmax(flat, D::Minus1)?;
    let nll = lp.gather(&idx, 1)?.squeeze(1)?.neg()?;
    if label_smoothing > 0.0 {
        let smooth = lp.sum(1)?.neg()?;
        (nll * (1.0 - label_smoothing))? + (smooth * (label_smoothing / c as f64))?
    } else {
        Ok(nll)
    }
}

/// `F.mse_loss(input, target, reduction)`: `(input − target)²`, same shapes required.
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    if input.dims() != target.dims() {
        bail!(
            "mse_loss: input {:?} and target {:?} differ in shape",
            input.dims(),
            target.dims()
        );
    }
    let sq = (input - target)?.sqr()?;
    match reduction {
        Reduction::None => Ok(sq),
        Reduction::Sum => sq.sum_all(),
        Reduction::Mean => sq.mean_all(),
    }
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // expected values as PyTorch printed them
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn logits() -> Tensor {
        Tensor::new(
            &[
                [1.0f32, 2.0, 0.5, -1.0],
                [0.0, -0.5, 3.0, 1.0],
                [2.0, 2.0, 2.0, 2.0],
                [-1.0, 0.5, 0.25, 4.0],
            ],
            &Device::Cpu,
        )
        .unwrap()
    }

    fn target() -> Tensor {
        Tensor::new(&[1i64, 2, 0, 3], &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, want: &[f32]) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), want.len());
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} vs {want:?}");
        }
    }

    /// PyTorch 2.15, float32, x = `logits()`, t = `target()`:
    /// `F.cross_entropy(x, t, reduction='none')` = [0.49518189, 0.19500722, 1.38629436, 0.05869623];
    /// `F.cross_entropy(x, t)` = 0.53379494;
    /// `F.cross_entropy(x, t, reduction='sum', label_smoothing=0.2)` = 3.44767976;
    /// `F.cross_entropy(x, t, ignore_index=2, label_smoothing=0.1)` = 0.79464084 (mean over 3).
    #[test]
    fn matches_torch_for_several_settings() {
        let (x, t) = (logits(), target());
        close(
            &cross_entropy(&x, &t, Some(-100), 0.0, Reduction::None).unwrap(),
            &[0.49518189, 0.19500722, 1.38629436, 0.05869623],
        );
        close(
            &cross_entropy(&x, &t, None, 0.0, Reduction::Mean).unwrap(),
            &[0.53379494],
        );
        close(
            &cross_entropy(&x, &t, None, 0.2, Reduction::Sum).unwrap(),
            &[3.44767976],
        );
        close(
            &cross_entropy(&x, &t, Some(2), 0.1, Reduction::Mean).unwrap(),
            &[0.79464084],
        );
    }

    /// (N, C, L) logits: `F.cross_entropy(x.reshape(2, 2, 4), torch.tensor([[0, 1, 1, 0],
    /// [1, 1, 0, 0]]), ignore_index=0, label_smoothing=0.1, reduction='none')` =
    /// [[0, 2.45388985, 0.20388976, 0], [2.89858723, 1.62641335, 0, 0]] (PyTorch 2.15).
    #[test]
    fn class_dim_second_matches_torch() {
        let x = logits().reshape((2, 2, 4)).unwrap();
        let t = Tensor::new(&[[0i64, 1, 1, 0], [1, 1, 0, 0]], &Device::Cpu).unwrap();
        let a = cross_entropy(&x, &t, Some(0), 0.1, Reduction::None).unwrap();
        assert_eq!(a.dims(), &[2, 4]);
        close(
            &a,
            &[0.0, 2.45388985, 0.20388976, 0.0, 2.89858723, 1.62641335, 0.0, 0.0],
        );
    }

    /// The fused CPU kernel and its analytic gradient agree with the composed path.
    #[test]
    fn fused_kernel_matches_composed_ops() {
        let x = Var::from_tensor(&crate::SeqRng::new(3).normal((70, 600), 0.0, 4.0, &Device::Cpu).unwrap()).unwrap();
        let ids: Vec<u32> = (0..70u32).map(|i| (i * 37) % 600).collect();
        let keep: Vec<f32> = (0..70).map(|i| if i % 7 == 3 { 0.0 } else { 1.0 }).collect();
        let probe = crate::SeqRng::new(4).normal(70, 0.0, 1.0, &Device::Cpu).unwrap();
        for eps in [0.0f32, 0.15] {
            let op = crate::kernels::cross_entropy::CrossEntropyRows {
                target: ids.clone(),
                keep: keep.clone(),
                smoothing: eps,
                lse: Default::default(),
            };
            let keep_t = Tensor::new(keep.as_slice(), &Device::Cpu).unwrap();
            let fused = x.as_tensor().apply_op1(op).unwrap();
            let composed = (per_row_composed(x.as_tensor(), ids.clone(), eps as f64).unwrap() * &keep_t).unwrap();
            assert!(crate::testing::rel_err(&fused, &composed).unwrap() < 1e-6);
            let gf = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(crate::testing::rel_err(gf.get(&x).unwrap(), gc.get(&x).unwrap()).unwrap() < 1e-5);
        }
    }

    #[test]
    fn bad_targets_are_errors_and_all_ignored_is_nan() {
        let x = logits();
        let bad = Tensor::new(&[1i64, 2, 4, 0], &Device::Cpu).unwrap();
        assert!(cross_entropy(&x, &bad, Some(-100), 0.0, Reduction::Mean).is_err());
        let short = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
        assert!(cross_entropy(&x, &short, None, 0.0, Reduction::Mean).is_err());
        assert!(cross_entropy(&x, &target().to_dtype(DType::F32).unwrap(), None, 0.0, Reduction::Mean).is_err());
        let all = Tensor::new(&[-100i64; 4], &Device::Cpu).unwrap();
        let l = cross_entropy(&x, &all, Some(-100), 0.1, Reduction::Mean).unwrap();
        assert!(l.to_scalar::<f32>().unwrap().is_nan());
    }

    #[test]
    fn gradient_reaches_logits_except_ignored_rows() {
        let x = Var::from_tensor(&logits()).unwrap();
        let t = Tensor::new(&[1i64, 0, 2, 3], &Device::Cpu).unwrap();
        let g = cross_entropy(x.as_tensor(), &t, Some(0), 0.1, Reduction::Mean)
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(&x).unwrap().to_vec2::<f32>().unwrap();
        for (i, row) in g.iter().enumerate() {
            assert!(row.iter().all(|v| v.is_finite()));
            let nz = row.iter().any(|v| *v != 0.0);
            assert_eq!(nz, i != 1, "row {i}: {row:?}");
        }
    }

    /// `F.mse_loss(torch.tensor([1., 2., 3.]), torch.tensor([1.5, 2., 1.]))` = 1.41666663.
    #[test]
    fn mse_matches_torch() {
        let a = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.5f32, 2., 1.], &Device::Cpu).unwrap();
        close(&mse_loss(&a, &b, Reduction::Mean).unwrap(), &[1.41666663]);
        close(&mse_loss(&a, &b, Reduction::Sum).unwrap(), &[4.25]);
        assert!(mse_loss(&a, &b.reshape((3, 1)).unwrap(), Reduction::Mean).is_err());
    }
}
