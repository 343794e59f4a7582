//! Normalisation layers: LayerNorm, RMSNorm (and BatchNorm1d).

use crate::kernels::layer_norm::{layer_norm_fused, rms_norm_fused};
use crate::{Init, VarStore};
use candle_core::{bail, DType, Result, Tensor, Var, D};

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
    /// `normalized_shape` (the size C of the last dimension) with the defaults.
    pub fn new(normalized_shape: usize) -> Self {
        Self {
            normalized_shape,
            eps: 1e-5,
            elementwise_affine: true,
        }
    }
}

/// Normalises over the last dimension with the biased variance, as PyTorch does.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// (C) scale, absent without affine parameters.
    pub weight: Option<Tensor>,
    /// (C) shift, absent without affine parameters.
    pub bias: Option<Tensor>,
    /// Added to the variance for numerical stability.
    pub eps: f64,
}

impl LayerNorm {
    /// `weight` (C) ones and `bias` (C) zeros when `elementwise_affine`. Rejects
    /// `normalized_shape = 0` and an `eps` that is not a finite number > 0.
    pub fn new(cfg: &LayerNormConfig, vs: &VarStore) -> Result<Self> {
        crate::check::positive("LayerNorm", &[("normalized_shape", cfg.normalized_shape)])?;
        crate::check::positive_f64("LayerNorm", "eps", cfg.eps)?;
        let (weight, bias) = if cfg.elementwise_affine {
            (
                Some(vs.param("weight", cfg.normalized_shape, Init::Ones)?),
                Some(vs.param("bias", cfg.normalized_shape, Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            weight,
            bias,
            eps: cfg.eps,
        })
    }

    /// (..., C) → (..., C). On CPU this is one fused kernel with a hand-written backward
    /// ([`layer_norm_fused`]); on other devices, or with [`crate::ops::Path::Composed`], the
    /// composed candle ops.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = *x.dims().last().unwrap_or(&0);
        if let Some(w) = &self.weight {
            if w.dims() != [c] {
                bail!(
                    "LayerNorm: input's last dimension is {c}, normalized_shape is {}",
                    w.dim(0)?
                );
            }
        }
        if crate::ops::use_fused(x) {
            layer_norm_fused(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
        } else {
            self.forward_composed(x)
        }
    }

    /// The same function from candle primitives (autograd through each op); kept for non-CPU
    /// devices and as the reference for the fused kernel.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
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

/// Configuration of [`RmsNorm`]; defaults follow `torch.nn.RMSNorm`.
#[derive(Clone, Debug)]
pub struct RmsNormConfig {
    /// Size of the last dimension.
    pub normalized_shape: usize,
    /// Added to the mean square. Default `None`: the input dtype's machine epsilon
    /// (`torch.finfo(torch.float32).eps` = 1.19e-7), as PyTorch does. Mamba uses 1e-5.
    pub eps: Option<f64>,
    /// Learnable `weight` (ones). Default `true`.
    pub elementwise_affine: bool,
}

impl RmsNormConfig {
    /// RMSNorm over the last `normalized_shape` features, default eps, with a learned weight.
    pub fn new(normalized_shape: usize) -> Self {
        Self {
            normalized_shape,
            eps: None,
            elementwise_affine: true,
        }
    }
}

/// `torch.nn.RMSNorm` over the last dimension: `y = x / sqrt(mean(x²) + eps) * weight`
/// (Zhang & Sennrich, 2019); no mean subtraction and no bias. Parameter `weight` (C).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// Per-feature scale (C), `None` without elementwise affine.
    pub weight: Option<Tensor>,
    /// Added to mean(x²) before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// Creates `weight` (ones) under `vs` when affine (PyTorch `nn.RMSNorm`). Rejects
    /// `normalized_shape = 0` and eps not positive and finite; eps defaults to f32 machine epsilon.
    pub fn new(cfg: &RmsNormConfig, vs: &VarStore) -> Result<Self> {
        let eps = cfg.eps.unwrap_or(f32::EPSILON as f64);
        if cfg.normalized_shape == 0 || !(eps > 0.0 && eps.is_finite()) {
            bail!("RMSNorm: normalized_shape must be positive and eps > 0, got {cfg:?}");
        }
        let weight = if cfg.elementwise_affine {
            Some(vs.param("weight", cfg.normalized_shape, Init::Ones)?)
        } else {
            None
        };
        Ok(Self { weight, eps })
    }

    /// (..., C) → (..., C): on the CPU in f32 one fused op with an analytic backward
    /// ([`rms_norm_fused`]); on other devices, or with [`crate::ops::Path::Composed`], the
    /// composed candle ops.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = *x.dims().last().unwrap_or(&0);
        if let Some(w) = &self.weight {
            if w.dims() != [c] {
                bail!(
                    "RMSNorm: input's last dimension is {c}, normalized_shape is {}",
                    w.dim(0)?
                );
            }
        }
        if crate::ops::use_fused(x) {
            rms_norm_fused(x, self.weight.as_ref(), self.eps)
        } else {
            self.forward_composed(x)
        }
    }

    /// The same from candle primitives (autograd through each op): other devices and dtypes,
    /// and the fused kernel's reference.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        match &self.weight {
            Some(w) => y.broadcast_mul(w),
            None => Ok(y),
        }
    }
}

/// Configuration of [`BatchNorm1d`]; defaults follow `torch.nn.BatchNorm1d`.
#[derive(Clone, Debug)]
pub struct BatchNorm1dConfig {
    /// C, the size of dimension 1 of the input.
    pub num_features: usize,
    /// Default 1e-5.
    pub eps: f64,
    /// Weight of the new batch in the running statistics, default `Some(0.1)`; `None` keeps
    /// a cumulative (equal-weight) average, as PyTorch's `momentum=None`.
    pub momentum: Option<f64>,
    /// Learnable `weight` (ones) and `bias` (zeros). Default `true`.
    pub affine: bool,
    /// Keep `running_mean`, `running_var`, `num_batches_tracked` and use them in evaluation.
    /// Default `true`; without them batch statistics are used in both modes.
    pub track_running_stats: bool,
}

impl BatchNorm1dConfig {
    /// `num_features` (C) with the defaults.
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// `nn.BatchNorm1d` over (N, C) or (N, C, L): per-channel statistics over all other dims.
#[derive(Clone, Debug)]
pub struct BatchNorm1d {
    /// (C) scale, absent without affine parameters.
    pub weight: Option<Tensor>,
    /// (C) shift, absent without affine parameters.
    pub bias: Option<Tensor>,
    /// (C) running mean (evaluation mode), absent without `track_running_stats`.
    pub running_mean: Option<Var>,
    /// (C) running unbiased variance, absent without `track_running_stats`.
    pub running_var: Option<Var>,
    /// int64 scalar, as in PyTorch's state_dict.
    pub num_batches_tracked: Option<Var>,
    cfg: BatchNorm1dConfig,
}

impl BatchNorm1d {
    /// `weight`/`bias` (C) when `affine`, buffers `running_mean`, `running_var`,
    /// `num_batches_tracked` when `track_running_stats`. Rejects `num_features = 0`, an `eps` that
    /// is not a finite number > 0, and a `momentum` outside [0, 1].
    pub fn new(cfg: &BatchNorm1dConfig, vs: &VarStore) -> Result<Self> {
        crate::check::positive("BatchNorm1d", &[("num_features", cfg.num_features)])?;
        crate::check::positive_f64("BatchNorm1d", "eps", cfg.eps)?;
        if let Some(m) = cfg.momentum {
            if !(0.0..=1.0).contains(&m) {
                bail!("BatchNorm1d: momentum must be in [0, 1], got {m}");
            }
        }
        let c = cfg.num_features;
        let (weight, bias) = if cfg.affine {
            (
                Some(vs.param("weight", c, Init::Ones)?),
                Some(vs.param("bias", c, Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        let (running_mean, running_var, num_batches_tracked) = if cfg.track_running_stats {
            (
                Some(vs.buffer("running_mean", c, Init::Zeros)?),
                Some(vs.buffer("running_var", c, Init::Ones)?),
                Some(vs.buffer_typed("num_batches_tracked", (), Init::Zeros, DType::I64)?),
            )
        } else {
            (None, None, None)
        };
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BatchNorm1dConfig {
        &self.cfg
    }

    /// (N, C) or (N, C, L) → same shape. In training (or without running statistics) the
    /// batch's mean and biased variance normalise, and the running statistics (if kept) move
    /// towards the batch mean and the *unbiased* variance; in evaluation the running ones are
    /// used.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims();
        let c = self.cfg.num_features;
        if !(dims.len() == 2 || dims.len() == 3) || dims[1] != c {
            bail!("BatchNorm1d({c}): input must be (N, {c}) or (N, {c}, L), got {dims:?}");
        }
        // Broadcast shape of per-channel vectors.
        let bshape: Vec<usize> = if dims.len() == 2 { vec![1, c] } else { vec![1, c, 1] };
        let use_batch = train || self.running_mean.is_none();
        let (xc, var) = if use_batch {
            let n = x.elem_count() / c;
            if n <= 1 && train {
                bail!("BatchNorm1d: expected more than 1 value per channel when training, got input {dims:?}");
            }
            // (N, C, L) → (C, N·L) view of the statistics.
            let x2 = if dims.len() == 2 {
                x.clone()
            } else {
                x.transpose(1, 2)?.reshape(((), c))?
            };
            let mean = x2.mean(0)?;
            let xc = x.broadcast_sub(&mean.reshape(bshape.as_slice())?)?;
            let var = if dims.len() == 2 {
                xc.sqr()?.mean(0)?
            } else {
                xc.sqr()?.transpose(1, 2)?.reshape(((), c))?.mean(0)?
            };
            if train {
                if let (Some(rm), Some(rv), Some(nbt)) =
                    (&self.running_mean, &self.running_var, &self.num_batches_tracked)
                {
                    let tracked = nbt.to_scalar::<i64>()? + 1;
                    nbt.set(&Tensor::new(tracked, x.device())?)?;
                    let f = match self.cfg.momentum {
                        Some(m) => m,
                        None => 1.0 / tracked as f64,
                    };
                    let unbiased = (var.detach() * (n as f64 / (n as f64 - 1.0)))?;
                    let new_m = ((mean.detach() * f)? + (rm.as_tensor() * (1.0 - f))?)?;
                    let new_v = ((unbiased * f)? + (rv.as_tensor() * (1.0 - f))?)?;
                    rm.set(&new_m)?;
                    rv.set(&new_v)?;
                }
            }
            (xc, var)
        } else {
            let rm = self.running_mean.as_ref().expect("checked").as_tensor();
            let rv = self.running_var.as_ref().expect("checked").as_tensor();
            (x.broadcast_sub(&rm.reshape(bshape.as_slice())?)?, rv.clone())
        };
        let inv = (var + self.cfg.eps)?.sqrt()?.recip()?;
        let y = xc.broadcast_mul(&inv.reshape(bshape.as_slice())?)?;
        let y = match &self.weight {
            Some(w) => y.broadcast_mul(&w.reshape(bshape.as_slice())?)?,
            None => y,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape(bshape.as_slice())?),
            None => Ok(y),
        }
    }
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

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        crate::testing::rel_err(a, b).unwrap() as f32
    }

    /// The fused kernel and its backward agree with the composed ops (which autograd
    /// differentiates), with and without affine parameters and for a transposed input.
    #[test]
    fn fused_layer_norm_matches_composed_forward_and_backward() {
        for affine in [true, false] {
            let vs = VarStore::new(3, &Device::Cpu);
            let ln = LayerNorm::new(
                &LayerNormConfig {
                    elementwise_affine: affine,
                    ..LayerNormConfig::new(37)
                },
                &vs,
            )
            .unwrap();
            if affine {
                // Non-trivial affine parameters.
                for (_, v) in vs.trainable() {
                    v.set(&crate::SeqRng::new(5).normal(37, 0.5, 1.0, &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
            let xv =
                Var::from_tensor(&crate::SeqRng::new(2).normal((300, 37), 1.0, 3.0, &Device::Cpu).unwrap()).unwrap();
            let probe = crate::SeqRng::new(4).normal((300, 37), 0.0, 1.0, &Device::Cpu).unwrap();
            let yf = ln.forward(xv.as_tensor()).unwrap();
            let yc = ln.forward_composed(xv.as_tensor()).unwrap();
            assert!(max_rel(&yf, &yc) < 1e-6);
            let gf = (&yf * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&yc * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_rel(gf.get(&xv).unwrap(), gc.get(&xv).unwrap()) < 1e-5);
            for (name, v) in vs.trainable() {
                assert!(max_rel(gf.get(&v).unwrap(), gc.get(&v).unwrap()) < 1e-5, "{name}");
            }
            let xt = xv.as_tensor().t().unwrap(); // (37, 300), non-contiguous
            let ln2 = LayerNorm {
                weight: None,
                bias: None,
                eps: 1e-5,
            };
            assert!(max_rel(&ln2.forward(&xt).unwrap(), &ln2.forward_composed(&xt).unwrap()) < 1e-6);
        }
        let vs = VarStore::new(0, &Device::Cpu);
        let ln = LayerNorm::new(&LayerNormConfig::new(4), &vs).unwrap();
        assert!(ln
            .forward(&Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap())
            .is_err());
    }

    fn bn_input(shape: &[usize], seed: u64) -> Tensor {
        crate::SeqRng::new(seed).normal(shape, 2.0, 3.0, &Device::Cpu).unwrap()
    }

    #[test]
    fn batch_norm_gradients_reach_params() {
        for shape in [vec![5, 4], vec![3, 4, 6]] {
            let vs = VarStore::new(0, &Device::Cpu);
            let bn = BatchNorm1d::new(&BatchNorm1dConfig::new(4), &vs).unwrap();
            assert_all_params_get_grad(&vs, &bn.forward(&bn_input(&shape, 1), true).unwrap());
        }
    }

    /// `momentum=None` in PyTorch weights batch k by 1/num_batches_tracked, so after two
    /// batches the running statistics are the plain averages of the two batches' mean and
    /// unbiased variance; evaluation then normalises with them.
    #[test]
    fn batch_norm_cumulative_average_and_eval_use_running_stats() {
        let vs = VarStore::new(0, &Device::Cpu);
        let cfg = BatchNorm1dConfig {
            momentum: None,
            ..BatchNorm1dConfig::new(3)
        };
        let bn = BatchNorm1d::new(&cfg, &vs).unwrap();
        let (a, b) = (bn_input(&[4, 3], 1), bn_input(&[4, 3], 2));
        bn.forward(&a, true).unwrap();
        bn.forward(&b, true).unwrap();
        // factor 1 then 1/2: running = mean of the two batch statistics.
        let both_mean = ((a.mean(0).unwrap() + b.mean(0).unwrap()).unwrap() * 0.5).unwrap();
        let rm = bn.running_mean.as_ref().unwrap().as_tensor();
        assert!(max_rel(rm, &both_mean) < 1e-6);
        let uvar = |t: &Tensor| {
            t.broadcast_sub(&t.mean_keepdim(0).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum(0)
                .unwrap()
                / 3.0
        };
        let both_var = ((uvar(&a).unwrap() + uvar(&b).unwrap()).unwrap() * 0.5).unwrap();
        assert!(max_rel(bn.running_var.as_ref().unwrap().as_tensor(), &both_var) < 1e-6);
        assert_eq!(bn.num_batches_tracked.as_ref().unwrap().to_scalar::<i64>().unwrap(), 2);
        // Eval: (x - running_mean) / sqrt(running_var + eps), weight 1, bias 0.
        let y = bn.forward(&a, false).unwrap();
        let want = a
            .broadcast_sub(rm)
            .unwrap()
            .broadcast_div(
                &(bn.running_var.as_ref().unwrap().as_tensor() + 1e-5)
                    .unwrap()
                    .sqrt()
                    .unwrap(),
            )
            .unwrap();
        assert!(max_rel(&y, &want) < 1e-6);
    }

    #[test]
    fn batch_norm_state_dict_round_trips_with_int64_counter() {
        let dir = std::env::temp_dir().join(format!("seqlab-bn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bn.safetensors");
        let vs = VarStore::new(0, &Device::Cpu);
        let bn = BatchNorm1d::new(&BatchNorm1dConfig::new(4), &vs).unwrap();
        for s in 0..3 {
            bn.forward(&bn_input(&[6, 4, 2], s), true).unwrap();
        }
        let names: Vec<String> = vs.state_dict().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
        );
        vs.save_safetensors(&f).unwrap();
        let vs2 = VarStore::new(1, &Device::Cpu);
        let bn2 = BatchNorm1d::new(&BatchNorm1dConfig::new(4), &vs2).unwrap();
        vs2.load_safetensors(&f, true).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let nbt = bn2.num_batches_tracked.as_ref().unwrap();
        assert_eq!((nbt.dtype(), nbt.to_scalar::<i64>().unwrap()), (DType::I64, 3));
        let x = bn_input(&[2, 4, 3], 9);
        assert_eq!(
            bn.forward(&x, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            bn2.forward(&x, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn batch_norm_rejects_bad_input_and_config() {
        let vs = VarStore::new(0, &Device::Cpu);
        assert!(BatchNorm1d::new(&BatchNorm1dConfig::new(0), &vs).is_err());
        assert!(BatchNorm1d::new(
            &BatchNorm1dConfig {
                momentum: Some(1.5),
                ..BatchNorm1dConfig::new(2)
            },
            &vs
        )
        .is_err());
        let bn = BatchNorm1d::new(&BatchNorm1dConfig::new(4), &vs).unwrap();
        assert!(bn.forward(&bn_input(&[3, 5], 0), true).is_err());
        assert!(bn.forward(&bn_input(&[3], 0), true).is_err());
        let e = bn.forward(&bn_input(&[1, 4], 0), true).unwrap_err().to_string();
        assert!(e.contains("more than 1 value"), "{e}");
        // Without running statistics evaluation uses the batch, and no buffers exist.
        let vs = VarStore::new(0, &Device::Cpu);
        let cfg = BatchNorm1dConfig {
            track_running_stats: false,
            affine: false,
            ..BatchNorm1dConfig::new(4)
        };
        let bn = BatchNorm1d::new(&cfg, &vs).unwrap();
        let x = bn_input(&[5, 4], 3);
        assert_eq!(
            bn.forward(&x, false).unwrap().to_vec2::<f32>().unwrap(),
            bn.forward(&x, true).unwrap().to_vec2::<f32>().unwrap()
        );
        assert!(vs.state_dict().is_empty());
    }

    /// The fused RMSNorm and its backward agree with the composed ops, with and without weight.
    #[test]
    fn fused_rms_norm_matches_composed_forward_and_backward() {
        for affine in [true, false] {
            let vs = VarStore::new(3, &Device::Cpu);
            let cfg = RmsNormConfig {
                elementwise_affine: affine,
                eps: Some(1e-5),
                ..RmsNormConfig::new(37)
            };
            let n = RmsNorm::new(&cfg, &vs).unwrap();
            for (_, v) in vs.trainable() {
                v.set(&crate::SeqRng::new(5).normal(37, 0.5, 1.0, &Device::Cpu).unwrap())
                    .unwrap();
            }
            let xv =
                Var::from_tensor(&crate::SeqRng::new(2).normal((300, 37), 1.0, 3.0, &Device::Cpu).unwrap()).unwrap();
            let probe = crate::SeqRng::new(4).normal((300, 37), 0.0, 1.0, &Device::Cpu).unwrap();
            let yf = n.forward(xv.as_tensor()).unwrap();
            let yc = n.forward_composed(xv.as_tensor()).unwrap();
            assert!(max_rel(&yf, &yc) < 1e-6);
            let gf = (&yf * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&yc * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_rel(gf.get(&xv).unwrap(), gc.get(&xv).unwrap()) < 1e-5);
            for (name, v) in vs.trainable() {
                assert!(max_rel(gf.get(&v).unwrap(), gc.get(&v).unwrap()) < 1e-5, "{name}");
            }
        }
    }

    #[test]
    fn rms_norm_matches_definition_and_reaches_weight() {
        let vs = VarStore::new(0, &Device::Cpu);
        let n = RmsNorm::new(
            &RmsNormConfig {
                eps: Some(1e-5),
                ..RmsNormConfig::new(3)
            },
            &vs,
        )
        .unwrap();
        let x = Tensor::new(&[[1f32, 2., 2.], [0., 0., 3.]], &Device::Cpu).unwrap();
        let y = n.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        // rows: mean square 3 and 3 -> divide by sqrt(3 + 1e-5)
        let s = (3f32 + 1e-5).sqrt();
        let want = [[1. / s, 2. / s, 2. / s], [0., 0., 3. / s]];
        for (a, b) in y.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        crate::testing::assert_all_params_get_grad(&vs, &n.forward(&x).unwrap());
        assert_eq!(
            RmsNorm::new(&RmsNormConfig::new(3), &vs).unwrap().eps,
            f32::EPSILON as f64
        );
        assert!(n
            .forward(&Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap())
            .is_err());
        assert!(RmsNorm::new(&RmsNormConfig::new(0), &vs).is_err());
    }
}
