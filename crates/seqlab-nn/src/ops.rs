//! Differentiable building blocks built from candle primitives that have a backward pass.
//!
//! candle-nn's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `sdpa` return no
//! gradient (silently), so nothing in seqlab that trains uses them.

use candle_core::{DType, Result, Tensor, D};

/// Softmax along `dim`, numerically stabilised; gradients flow through it.
pub fn softmax<Dm: candle_core::shape::Dim + Copy>(x: &Tensor, dim: Dm) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(dim)?)
}

/// Log-softmax along `dim`.
pub fn log_softmax<Dm: candle_core::shape::Dim + Copy>(x: &Tensor, dim: Dm) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(dim)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `x @ w.T + b` for `x` of shape (..., in), `w` (out, in), `b` (out): PyTorch's `F.linear`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_f = *dims.last().unwrap();
    let rows = x.elem_count() / in_f.max(1);
    let y = x.reshape((rows, in_f))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out)
}

/// Exact (erf) GELU, PyTorch's default `approximate='none'`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// Turns a PyTorch-style boolean mask (u8, 1 = masked out) into an additive f32 mask
/// (-inf where masked, 0 elsewhere).
pub fn bool_mask_to_additive(mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?;
    let neg = Tensor::full(f32::NEG_INFINITY, m.shape(), m.device())?;
    let zero = m.zeros_like()?;
    m.ne(0f32)?.where_cond(&neg, &zero)
}

/// Mean over the last dimension, keeping it.
pub fn mean_last(x: &Tensor) -> Result<Tensor> {
    x.mean_keepdim(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn softmax_has_gradient_and_sums_to_one() {
        let x = Var::new(&[[1f32, 2., 3.], [0., 0., 5.]], &Device::Cpu).unwrap();
        let p = softmax(x.as_tensor(), 1).unwrap();
        let s = p.sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6));
        let w = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.]], &Device::Cpu).unwrap();
        let g = (p * w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g
            .get(&x)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(gx > 0.0);
        let lp = log_softmax(x.as_tensor(), 1).unwrap().exp().unwrap();
        let d = (lp - softmax(x.as_tensor(), 1).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
