//! Normalisation layers: LayerNorm (and BatchNorm1d).

use crate::{Init, VarStore};
use candle_core::{bail, Result, Tensor, D};

/// Configuration of [`LayerNorm`]; defaults follow `torch.nn.LayerNorm`.
#[derive(Clone, Debug)]
pub struct LayerNormConfig {
    /// Size of the last dimension.
    pub normalized_shape: usize,
    /// Default 1e-5.
    pub eps: f64,
    /// Learnable `weight` (ones) and `bias` (zeros). Default `true`.
    pub elementwise_affine: bool,
}

impl LayerNormConfig {
    pub fn new(normalized_shape: usize) -> Self {
        Self { normalized_shape, eps: 1e-5, elementwise_affine: true }
    }
}

/// Normalises over the last dimension with the biased variance, as PyTorch does.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(cfg: &LayerNormConfig, vs: &VarStore) -> Result<Self> {
        if cfg.normalized_shape == 0 || cfg.eps <= 0.0 {
            bail!("LayerNorm: normalized_shape must be positive and eps > 0, got {cfg:?}");
        }
        let (weight, bias) = if cfg.elementwise_affine {
            (
                Some(vs.param("weight", cfg.normalized_shape, Init::Ones)?),
                Some(vs.param("bias", cfg.normalized_shape, Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        Ok(Self { weight, bias, eps: cfg.eps })
    }

    /// (..., C) → (..., C).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = match &self.weight {
            Some(w) => y.broadcast_mul(w)?,
            None => y,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Golden case `layer_norm`: `nn.LayerNorm(normalized_shape, eps)(x)`.
pub(crate) fn golden_layer_norm(case: &crate::golden::Case) -> Result<crate::golden::Computed> {
    let vs = VarStore::new(0, &candle_core::Device::Cpu);
    let cfg = LayerNormConfig {
        normalized_shape: case.cfg_req("normalized_shape")?,
        eps: case.cfg_or("eps", 1e-5)?,
        elementwise_affine: case.cfg_or("elementwise_affine", true)?,
    };
    let ln = LayerNorm::new(&cfg, &vs)?;
    crate::golden::run_standard(case, &vs, |inp| {
        Ok([("y".to_string(), ln.forward(&inp.get("x")?)?)].into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_all_params_get_grad;
    use candle_core::Device;

    #[test]
    fn layer_norm_gradients_reach_params() {
        let vs = VarStore::new(0, &Device::Cpu);
        let ln = LayerNorm::new(&LayerNormConfig::new(8), &vs).unwrap();
        let x = crate::SeqRng::new(1).normal((2, 3, 8), 0.0, 1.0, &Device::Cpu).unwrap();
        assert_all_params_get_grad(&vs, &ln.forward(&x).unwrap());
    }
}
