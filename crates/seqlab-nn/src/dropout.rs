//! Dropout drawn from the model's seeded RNG.

use crate::rng::SharedRng;
use candle_core::{bail, Result, Tensor};

/// Inverted dropout (`torch.nn.Dropout`): in training each element is zeroed with
/// probability `p` and the rest scaled by 1/(1-p); identity in evaluation.
#[derive(Clone)]
pub struct Dropout {
    pub p: f64,
    rng: SharedRng,
}

impl std::fmt::Debug for Dropout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dropout(p={})", self.p)
    }
}

impl Dropout {
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
