//! `nn.Linear`.

use crate::{ops, Init, VarStore};
use candle_core::{Result, Tensor};

/// Configuration of [`Linear`]; defaults follow `torch.nn.Linear`.
#[derive(Clone, Debug)]
pub struct LinearConfig {
    /// Size of each input row; must be > 0.
    pub in_features: usize,
    /// Size of each output row; must be > 0.
    pub out_features: usize,
    /// Default `true`.
    pub bias: bool,
}

impl LinearConfig {
    /// The two sizes, with a bias.
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
    /// (out_features, in_features).
    pub weight: Tensor,
    /// (out_features), absent with `bias = false`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Creates `weight` and `bias` under `vs`. Rejects `in_features = 0` and `out_features = 0`.
    pub fn new(cfg: &LinearConfig, vs: &VarStore) -> Result<Self> {
        crate::check::positive(
            "Linear",
            &[("in_features", cfg.in_features), ("out_features", cfg.out_features)],
        )?;
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
