//! Dropout drawn from the model's seeded RNG.

use crate::rng::SharedRng;
use candle_core::{bail, Result, Tensor};

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
        let mask = self.rng.lock().unwrap().dropout_mask(x.shape(), self.p, x.device())?;
        x.mul(&mask)
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
