//! `nn.Linear`.

use crate::{ops, Init, VarStore};
use candle_core::{bail, Result, Tensor};

/// Configuration of [`Linear`]; defaults follow `torch.nn.Linear`.
#[derive(Clone, Debug)]
pub struct LinearConfig {
    pub in_features: usize,
    pub out_features: usize,
    /// Default `true`.
    pub bias: bool,
}

impl LinearConfig {
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
        }
    }
}

/// `y = x W^T + b`; parameters `weight` (out, in) and `bias` (out), both initialised
/// U(-1/sqrt(in), 1/sqrt(in)) as PyTorch does.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(cfg: &LinearConfig, vs: &VarStore) -> Result<Self> {
        if cfg.in_features == 0 || cfg.out_features == 0 {
            bail!("Linear: in_features and out_features must be positive, got {cfg:?}");
        }
        let init = Init::uniform_fan(cfg.in_features);
        let weight = vs.param("weight", (cfg.out_features, cfg.in_features), init)?;
        let bias = if cfg.bias {
            Some(vs.param("bias", cfg.out_features, init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// (..., in) → (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_all_params_get_grad;
    use candle_core::Device;

    #[test]
    fn shapes_and_gradients() {
        let vs = VarStore::new(0, &Device::Cpu);
        let l = Linear::new(&LinearConfig::new(4, 3), &vs).unwrap();
        let x = Tensor::ones((2, 5, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 5, 3]);
        assert_all_params_get_grad(&vs, &y);
        assert!(Linear::new(&LinearConfig::new(0, 3), &vs).is_err());
    }
}
