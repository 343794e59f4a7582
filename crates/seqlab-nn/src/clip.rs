//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`).

use candle_core::backprop::GradStore;
use candle_core::{bail, DType, Result, Tensor, Var};

fn check_max_norm(max_norm: f64) -> Result<()> {
    if !max_norm.is_finite() || max_norm < 0.0 {
        bail!("clip_grad_norm: max_norm must be finite and >= 0, got {max_norm}");
    }
    Ok(())
}

fn sum_sq(g: &Tensor) -> Result<f64> {
    // f64 accumulation: large models sum millions of squares.
    g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// The factor PyTorch multiplies every gradient by: `max_norm / (total + 1e-6)` clamped to 1.
/// A non-finite total gives a non-finite factor, as PyTorch's `error_if_nonfinite=False` does.
fn coef(total: f64, max_norm: f64) -> Option<f64> {
    let c = max_norm / (total + 1e-6);
    if c < 1.0 || !c.is_finite() {
        Some(c)
    } else {
        None
    }
}

/// Clips the gradients of `vars` in `grads` (in place) so that their total 2-norm is at most
/// `max_norm`, returning the norm before clipping. Vars without a gradient are ignored.
pub fn clip_grad_norm<'a>(
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
    max_norm: f64,
) -> Result<f64> {
    check_max_norm(max_norm)?;
    let vars: Vec<&Var> = vars.into_iter().collect();
    let mut total = 0.0;
    for v in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += sum_sq(g)?;
        }
    }
    let total = total.sqrt();
    if let Some(c) = coef(total, max_norm) {
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * c)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(total)
}

/// [`clip_grad_norm`] for explicit `(Var, grad)` pairs (see `Optimizer::step_with`).
pub fn clip_grad_norm_pairs(grads: &mut [(Var, Tensor)], max_norm: f64) -> Result<f64> {
    check_max_norm(max_norm)?;
    let mut total = 0.0;
    for (_, g) in grads.iter() {
        total += sum_sq(g)?;
    }
    let total = total.sqrt();
    if let Some(c) = coef(total, max_norm) {
        for (_, g) in grads.iter_mut() {
            *g = (&*g * c)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // expected values as PyTorch printed them
mod tests {
    use super::*;
    use candle_core::Device;

    /// `torch.nn.utils.clip_grad_norm_([a, b], 1.0)` with a.grad = [3., 4.], b.grad = [12.]
    /// returns 13.0 and leaves a.grad = [0.23076922, 0.30769229], b.grad = [0.92307687].
    #[test]
    fn clips_like_torch_and_only_when_needed() {
        let a = Var::new(&[0f32, 0.], &Device::Cpu).unwrap();
        let b = Var::new(&[0f32], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor() * Tensor::new(&[3f32, 4.], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() * 12.0).unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let total = clip_grad_norm(&mut grads, [&a, &b], 1.0).unwrap();
        assert!((total - 13.0).abs() < 1e-9);
        let ga = grads.get(&a).unwrap().to_vec1::<f32>().unwrap();
        let gb = grads.get(&b).unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in ga.iter().chain(&gb).zip([0.23076922f32, 0.30769229, 0.92307687]) {
            assert!((x - y).abs() < 1e-6, "{ga:?} {gb:?}");
        }
        let mut pairs = vec![(a.clone(), Tensor::new(&[0.3f32, 0.4], &Device::Cpu).unwrap())];
        let total = clip_grad_norm_pairs(&mut pairs, 1.0).unwrap();
        assert!((total - 0.5).abs() < 1e-6);
        assert_eq!(pairs[0].1.to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
        assert!(clip_grad_norm_pairs(&mut pairs, -1.0).is_err());
    }
}
