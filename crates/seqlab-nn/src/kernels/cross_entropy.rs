//! Cross-entropy over rows of logits in one pass with an analytic backward (behind
//! [`crate::loss::cross_entropy`] on the CPU).

use super::rowexp::RowExp;
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
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let s = exp.sum_exp_sub(row, max);
        (max, max + s.ln() as f32)
    }
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
