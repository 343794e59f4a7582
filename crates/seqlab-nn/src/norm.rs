//! Normalisation layers: LayerNorm, RMSNorm (and BatchNorm1d).

use crate::{Init, VarStore};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, Var, D};
use rayon::prelude::*;

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
        Ok(Self {
            weight,
            bias,
            eps: cfg.eps,
        })
    }

    /// (..., C) → (..., C). On CPU this is one fused kernel with a hand-written backward
    /// ([`layer_norm_fused`]); on other devices the composed candle ops.
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
        if x.device().is_cpu() && x.dtype() == DType::F32 {
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
    pub weight: Option<Tensor>,
    pub eps: f64,
}

impl RmsNorm {
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

    /// (..., C) → (..., C), from candle primitives (autograd through each op).
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
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        match &self.weight {
            Some(w) => y.broadcast_mul(w),
            None => Ok(y),
        }
    }
}

/// Fused layer normalisation over the last dimension (biased variance, as PyTorch), with an
/// analytic backward. `weight` and `bias` are both given or both absent. CPU, f32 only.
pub fn layer_norm_fused(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let op = LayerNormOp { eps: eps as f32 };
    // The kernel reads storage directly, so it wants dense inputs.
    let x = &x.contiguous()?;
    let weight = weight.map(|w| w.contiguous()).transpose()?;
    let bias = bias.map(|b| b.contiguous()).transpose()?;
    match (weight.as_ref(), bias.as_ref()) {
        (Some(w), Some(b)) => x.apply_op3(w, b, op),
        (None, None) => x.apply_op1(op),
        (Some(w), None) => {
            let b = w.zeros_like()?;
            x.apply_op3(w, &b, op)
        }
        (None, Some(b)) => {
            let w = b.ones_like()?;
            x.apply_op3(&w, b, op)
        }
    }
}

#[derive(Clone, Copy)]
struct LayerNormOp {
    eps: f32,
}

/// A contiguous f32 slice of a CPU storage, or an error naming the op.

/// Rows processed per rayon task; small inputs stay on one thread.
const ROWS_PER_TASK: usize = 64;

/// Mean and 1/sqrt(var + eps) of one row, two-pass for accuracy.
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn ln_forward(x: &[f32], c: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let work = |(xr, yr): (&[f32], &mut [f32])| {
        for (xr, yr) in xr.chunks(c).zip(yr.chunks_mut(c)) {
            let (mean, rstd) = row_stats(xr, eps);
            match (w, b) {
                (Some(w), Some(b)) => {
                    for j in 0..c {
                        yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                    }
                }
                _ => {
                    for j in 0..c {
                        yr[j] = (xr[j] - mean) * rstd;
                    }
                }
            }
        }
    };
    let chunk = ROWS_PER_TASK * c;
    if x.len() > chunk {
        x.par_chunks(chunk).zip(y.par_chunks_mut(chunk)).for_each(work);
    } else {
        work((x, &mut y));
    }
    y
}

/// dx, and per-task partial sums of dweight and dbias (summed by the caller).
fn ln_backward(x: &[f32], gy: &[f32], c: usize, w: Option<&[f32]>, eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let work = |((xr, gr), dxr): ((&[f32], &[f32]), &mut [f32])| {
        let mut dw = vec![0f32; c];
        let mut db = vec![0f32; c];
        let mut g = vec![0f32; c];
        for ((xr, gr), dxr) in xr.chunks(c).zip(gr.chunks(c)).zip(dxr.chunks_mut(c)) {
            let (mean, rstd) = row_stats(xr, eps);
            // g = dL/dxhat; dx = rstd·(g − mean(g) − xhat·mean(g·xhat)).
            let (mut sg, mut sgx) = (0f32, 0f32);
            for j in 0..c {
                let xh = (xr[j] - mean) * rstd;
                dw[j] += gr[j] * xh;
                db[j] += gr[j];
                g[j] = match w {
                    Some(w) => gr[j] * w[j],
                    None => gr[j],
                };
                sg += g[j];
                sgx += g[j] * xh;
            }
            let (mg, mgx) = (sg / c as f32, sgx / c as f32);
            for j in 0..c {
                let xh = (xr[j] - mean) * rstd;
                dxr[j] = rstd * (g[j] - mg - xh * mgx);
            }
        }
        (dw, db)
    };
    let chunk = ROWS_PER_TASK * c;
    let parts: Vec<(Vec<f32>, Vec<f32>)> = if x.len() > chunk {
        x.par_chunks(chunk)
            .zip(gy.par_chunks(chunk))
            .zip(dx.par_chunks_mut(chunk))
            .map(work)
            .collect()
    } else {
        vec![work(((x, gy), &mut dx))]
    };
    let mut dw = vec![0f32; c];
    let mut db = vec![0f32; c];
    for (pw, pb) in parts {
        for j in 0..c {
            dw[j] += pw[j];
            db[j] += pb[j];
        }
    }
    (dx, dw, db)
}

impl LayerNormOp {
    /// Host copies of (x, grad, weight) for the backward pass, which is CPU-only like the op.
    fn bwd_common(&self, x: &Tensor, w: Option<&Tensor>, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let c = *x.dims().last().unwrap_or(&1);
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let gv = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let wv = match w {
            Some(w) => Some(w.to_vec1::<f32>()?),
            None => None,
        };
        let (dx, dw, db) = ln_backward(&xv, &gv, c, wv.as_deref(), self.eps);
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, c, x.device())?,
            Tensor::from_vec(db, c, x.device())?,
        ))
    }
}

impl CustomOp1 for LayerNormOp {
    fn name(&self) -> &'static str {
        "seqlab-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernel::contiguous_f32("layer_norm", "input", s, l)?;
        let c = *l.dims().last().unwrap_or(&0);
        if c == 0 {
            bail!("layer_norm: empty last dimension");
        }
        Ok((
            CpuStorage::F32(ln_forward(x, c, None, None, self.eps)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.bwd_common(x, None, grad)?.0))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "seqlab-layer-norm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernel::contiguous_f32("layer_norm", "input", s1, l1)?;
        let (w, b) = (
            crate::kernel::contiguous_f32("layer_norm", "weight", s2, l2)?,
            crate::kernel::contiguous_f32("layer_norm", "bias", s3, l3)?,
        );
        let c = *l1.dims().last().unwrap_or(&0);
        if c == 0 || w.len() != c || b.len() != c {
            bail!("layer_norm: last dimension {c}, weight {}, bias {}", w.len(), b.len());
        }
        Ok((
            CpuStorage::F32(ln_forward(x, c, Some(w), Some(b), self.eps)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.bwd_common(x, Some(w), grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
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
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Option<Var>,
    pub running_var: Option<Var>,
    /// int64 scalar, as in PyTorch's state_dict.
    pub num_batches_tracked: Option<Var>,
    cfg: BatchNorm1dConfig,
}

impl BatchNorm1d {
    pub fn new(cfg: &BatchNorm1dConfig, vs: &VarStore) -> Result<Self> {
        if cfg.num_features == 0 || cfg.eps.is_nan() || cfg.eps <= 0.0 {
            bail!("BatchNorm1d: num_features must be positive and eps > 0, got {cfg:?}");
        }
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

/// Golden case `batch_norm1d`: training-mode forward on `x` (→ `y`, running statistics),
/// then evaluation-mode forward on `x_eval` (→ `y_eval`).
pub(crate) fn golden_batch_norm1d(case: &crate::golden::Case) -> Result<crate::golden::Computed> {
    let vs = VarStore::new(0, &candle_core::Device::Cpu);
    let momentum: Option<f64> = match case.config.get("momentum") {
        Some(serde_json::Value::Null) => None,
        _ => Some(case.cfg_or("momentum", 0.1)?),
    };
    let cfg = BatchNorm1dConfig {
        num_features: case.cfg_req("num_features")?,
        eps: case.cfg_or("eps", 1e-5)?,
        momentum,
        affine: case.cfg_or("affine", true)?,
        track_running_stats: case.cfg_or("track_running_stats", true)?,
    };
    let bn = BatchNorm1d::new(&cfg, &vs)?;
    // The case holds parameters only; the buffers start from their fresh values, as in the
    // freshly built PyTorch module.
    let mut tensors = case.tensors.clone();
    for (name, t) in vs.state_dict() {
        tensors.entry(format!("param.{name}")).or_insert(t.copy()?);
    }
    let full = crate::golden::Case {
        file: case.file.clone(),
        name: case.name.clone(),
        module: case.module.clone(),
        config: case.config.clone(),
        loss_outputs: case.loss_outputs.clone(),
        tensors,
    };
    crate::golden::run_standard(&full, &vs, |inp| {
        let y = bn.forward(&inp.get("x")?, true)?;
        let y_eval = bn.forward(&inp.get("x_eval")?, false)?;
        Ok([("y".to_string(), y), ("y_eval".to_string(), y_eval)].into())
    })
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

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        crate::golden::rel_err(a, b).unwrap() as f32
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
