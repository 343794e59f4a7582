//! Cross-entropy over rows of logits in one pass with an analytic backward (behind
//! [`crate::loss::cross_entropy`] on the CPU).

use super::rowexp::{row_max, RowExp};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Per-row `(1 − ε)·(lse − x[t]) + (ε/C)·(C·lse − Σx)` over (M, C) f32 logits in one pass,
/// with the analytic gradient `keep·g·(softmax − (1 − ε)·onehot(t) − ε/C)`. Ignored rows
/// (`keep` 0) give 0 and get no gradient.
pub(crate) struct CrossEntropyRows {
    /// Target class per row.
    pub(crate) target: Vec<u32>,
    /// 1 for rows that count, 0 for ignored rows.
    pub(crate) keep: Vec<f32>,
    /// Label smoothing ε.
    pub(crate) smoothing: f32,
    /// Each row's log-sum-exp, kept by the forward for the backward (which then takes one
    /// pass of exponentials over the logits instead of two). `Default` when constructing.
    pub(crate) lse: std::sync::Mutex<Option<Vec<f32>>>,
}

impl CrossEntropyRows {
    /// max and log-sum-exp of a row; exp in f32 ([`RowExp`]), sums in f64.
    #[inline]
    fn lse(exp: RowExp, row: &[f32]) -> (f32, f32) {
        let max = row_max(row);
        let s = exp.sum_exp_sub(row, max);
        (max, max + s.ln() as f32)
    }
}

/// log Σ exp(x) of one row of logits: the row's maximum m plus ln Σ exp(x − m), the
/// exponentials in f32 (≤ 2 ulp each, 0 below e^−87 after the shift), their sum in f64,
/// rounded once to f32 — the log-sum-exp of [`crate::loss::cross_entropy`], so a decoder's
/// log-probabilities (x − lse, as `torch.log_softmax`) are the ones the model was trained on.
/// Within a few f32 ulp of the exact value for finite rows; an empty row or one of −∞ only
/// gives −∞, a row holding +∞ NaN.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    CrossEntropyRows::lse(RowExp::new(), row).1
}

impl candle_core::CustomOp1 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "seqlab-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (m, c) = l.shape().dims2()?;
        let x = super::contiguous_f32("cross_entropy", "logits", s, l)?;
        let eps = self.smoothing;
        let exp = RowExp::new();
        // (loss, lse) per row; ignored rows get neither.
        let work = |(i, row): (usize, &[f32])| -> (f32, f32) {
            if self.keep[i] == 0.0 {
                return (0.0, 0.0);
            }
            let (_, lse) = Self::lse(exp, row);
            let nll = lse - row[self.target[i] as usize];
            let loss = if eps > 0.0 {
                let sum = exp.sum_f64(row);
                let smooth = c as f32 * lse - sum as f32;
                (1.0 - eps) * nll + eps / c as f32 * smooth
            } else {
                nll
            };
            (loss, lse)
        };
        let (out, lse): (Vec<f32>, Vec<f32>) = if m * c > 1 << 15 {
            x.par_chunks(c).enumerate().map(work).unzip()
        } else {
            x.chunks(c).enumerate().map(work).unzip()
        };
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(lse);
        Ok((candle_core::CpuStorage::F32(out), m.into()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (m, c) = x.dims2()?;
        // The logits are read in place: a copy of them (rows × vocabulary) was most of the
        // backward's memory traffic.
        let x = x.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let xv = super::contiguous(
            "cross_entropy",
            "logits",
            super::device_f32("cross_entropy", "logits", &sx)?,
            lx,
        )?;
        let gv = grad.to_vec1::<f32>()?;
        let eps = self.smoothing;
        let mut dx = vec![0f32; m * c];
        let exp = RowExp::new();
        let kept = self
            .lse
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|v| v.len() == m);
        let work = |(i, (row, drow)): (usize, (&[f32], &mut [f32]))| {
            let g = gv[i] * self.keep[i];
            if g == 0.0 {
                return;
            }
            let lse = match &kept {
                Some(v) => v[i],
                None => Self::lse(exp, row).1,
            };
            exp.scaled_exp_sub(row, lse, g, eps / c as f32, drow);
            drow[self.target[i] as usize] -= g * (1.0 - eps);
        };
        if m * c > 1 << 15 {
            xv.par_chunks(c).zip(dx.par_chunks_mut(c)).enumerate().for_each(work);
        } else {
            xv.chunks(c).zip(dx.chunks_mut(c)).enumerate().for_each(work);
        }
        Ok(Some(Tensor::from_vec(dx, (m, c), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::rowexp::row_max;
    use super::log_sum_exp;

    /// Against the exact value (f64 exponentials and sum, one rounding): rows of many lengths
    /// and spreads with zeros of both signs and masked (−∞) entries; the 16-lane maximum
    /// against the sequential fold; and the non-finite rows the docs name.
    #[test]
    fn log_sum_exp_is_within_a_few_ulp_and_row_max_equals_the_fold() {
        let exact = |r: &[f32]| {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            (m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()) as f32
        };
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for case in 0..400 {
            let spread = [0.5f32, 5.0, 17.0, 18.0, 25.0, 60.0, 200.0][case % 7];
            let n = 1 + case * 37 % 3000;
            let mut r: Vec<f32> = (0..n).map(|_| (uniform() - 0.9) * spread).collect();
            r[case % n] = if case % 2 == 0 { 0.0 } else { -0.0 };
            if case % 50 == 0 && n > 2 {
                r[n / 2] = f32::NEG_INFINITY;
            }
            let (a, b) = (log_sum_exp(&r), exact(&r));
            // 4 ulp of the larger of |lse| and 1 (lse near 0 is a sum of terms of size ~1).
            let tol = 4.0 * f32::EPSILON * b.abs().max(1.0);
            assert!((a - b).abs() <= tol, "case {case}: {a} vs {b}");
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            // Equal as numbers (a zero maximum's sign may differ, see `row_max`).
            assert_eq!(row_max(&r), m, "case {case}");
        }
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
        assert!(log_sum_exp(&[f32::INFINITY, 0.0]).is_nan());
        // NaN entries are ignored by the maximum and flushed by the exponential's mask.
        let with_nan = log_sum_exp(&[1.0, f32::NAN, -30.0]);
        assert!((with_nan - exact(&[1.0, -30.0])).abs() <= 4.0 * f32::EPSILON);
    }
}
