//! Dropout drawn from the model's seeded RNG.

use crate::kernels::simd;
use crate::rng::SharedRng;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// Inverted dropout (`torch.nn.Dropout`): in training each element is zeroed with
/// probability `p` and the rest scaled by 1/(1-p); identity in evaluation.
#[derive(Clone)]
pub struct Dropout {
    /// Probability of zeroing an element, in [0, 1).
    pub p: f64,
    rng: SharedRng,
}

impl std::fmt::Debug for Dropout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dropout(p={})", self.p)
    }
}

impl Dropout {
    /// Inverted dropout with probability `p`, drawing from `rng` (the model's RNG). Rejects `p`
    /// outside [0, 1).
    pub fn new(p: f64, rng: SharedRng) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            bail!("Dropout: p must be in [0, 1), got {p}");
        }
        Ok(Self { p, rng })
    }

    /// Any shape → same shape.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        if crate::ops::use_fused(x) {
            let mask = self.rng.lock().unwrap().dropout_multipliers(x.elem_count(), self.p);
            return x.apply_op1(DropoutOp { mask: Arc::new(mask) });
        }
        let mask = self.rng.lock().unwrap().dropout_mask(x.shape(), self.p, x.device())?;
        x.mul(&mask)
    }
}

/// `x · mask` as one graph node that keeps its multipliers: forward and backward (`g · mask`)
/// are one vectorised pass each, with the values of `x.mul(&mask)` and its gradient (the same
/// products). Why: the mask as a tensor cost a zeroed buffer, a conversion pass and candle's
/// 4-lane multiply both ways; with dropout's draws, ~13 % of a 1-thread bert-mini step (perf,
/// session 12).
struct DropoutOp {
    mask: Arc<Vec<f32>>,
}

/// Elements per parallel task of [`DropoutOp`].
const CHUNK: usize = 1 << 15;

/// `out = a · m` element-wise, compiled for the widest vector unit.
struct Times<'a> {
    a: &'a [f32],
    m: &'a [f32],
    out: &'a mut [f32],
}

impl simd::WithLanes for Times<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: simd::Lanes>(self, _: L) {
        for ((o, &a), &m) in self.out.iter_mut().zip(self.a).zip(self.m) {
            *o = a * m;
        }
    }
}

impl DropoutOp {
    fn times(&self, a: &[f32]) -> Vec<f32> {
        let m = &self.mask[..];
        // SAFETY: `Times` writes every element of its piece.
        unsafe {
            crate::kernels::fill_chunks(a.len(), CHUNK, |at, out| {
                let r = at..at + out.len();
                simd::run_widest(
                    false,
                    Times {
                        a: &a[r.clone()],
                        m: &m[r],
                        out,
                    },
                )
            })
        }
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "seqlab-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernels::contiguous_f32("dropout", "x", s, l)?;
        if x.len() != self.mask.len() {
            bail!("dropout: {} elements, {} multipliers", x.len(), self.mask.len());
        }
        Ok((CpuStorage::F32(self.times(x)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let (sg, lg) = g.storage_and_layout();
        const OP: &str = "dropout backward";
        let gs = crate::kernels::contiguous(OP, "grad", crate::kernels::device_f32(OP, "grad", &sg)?, lg)?;
        if gs.len() != self.mask.len() {
            bail!(
                "dropout backward: {} gradients, {} multipliers",
                gs.len(),
                self.mask.len()
            );
        }
        Ok(Some(Tensor::from_vec(self.times(gs), arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeqRng;
    use candle_core::{DType, Device};

    fn masks(seed: u64) -> Vec<Vec<f32>> {
        let d = Dropout::new(0.3, SeqRng::shared(seed)).unwrap();
        let x = Tensor::ones((4, 16), DType::F32, &Device::Cpu).unwrap();
        (0..3)
            .map(|_| {
                d.forward(&x, true)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    /// The fused op gives the values and gradients of `x.mul(&mask)` with the same draws (the
    /// composed path), bit for bit: sizes below, at and above the parallel chunk, a ragged
    /// tail, p = 0.1 and 0.5.
    #[test]
    fn fused_equals_composed_bit_for_bit() {
        use crate::ops::{with_path, Path};
        use candle_core::Var;
        for (n, p) in [(37, 0.1), (CHUNK, 0.5), (3 * CHUNK + 5, 0.1)] {
            let run = |path: Path| {
                with_path(path, || {
                    let d = Dropout::new(p, SeqRng::shared(7)).unwrap();
                    let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 * 0.01 - 5.0).collect();
                    let gs: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 * 0.3 - 2.0).collect();
                    let x = Var::from_vec(xs, n, &Device::Cpu).unwrap();
                    let g = Tensor::from_vec(gs, n, &Device::Cpu).unwrap();
                    let y = d.forward(x.as_tensor(), true).unwrap();
                    let grads = y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                    let bits = |t: &Tensor| {
                        t.to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>()
                    };
                    (bits(&y), bits(grads.get(&x).unwrap()))
                })
            };
            let (fused, composed) = (run(Path::Fused), run(Path::Composed));
            assert!(fused.0.contains(&0) && fused.0.iter().any(|&b| b != 0));
            assert_eq!(fused, composed, "n {n}, p {p}");
        }
    }

    #[test]
    fn same_seed_same_masks_and_eval_is_identity() {
        let a = masks(11);
        assert_eq!(a, masks(11));
        assert_ne!(a, masks(12));
        // Successive calls draw fresh masks.
        assert_ne!(a[0], a[1]);
        let d = Dropout::new(0.3, SeqRng::shared(0)).unwrap();
        let x = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(d.forward(&x, false).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 8]);
        assert!(Dropout::new(1.0, SeqRng::shared(0)).is_err());
    }
}
