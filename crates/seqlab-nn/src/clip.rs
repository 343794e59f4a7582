//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`).

use candle_core::backprop::GradStore;
use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor, Var};

fn check_max_norm(max_norm: f64) -> Result<()> {
    if !max_norm.is_finite() || max_norm < 0.0 {
        bail!("clip_grad_norm: max_norm must be finite and >= 0, got {max_norm}");
    }
    Ok(())
}

/// Σ g² of one gradient in f64 (large models sum millions of squares), added in element order
/// from 0.0: the value candle's `to_dtype(F64)?.sqr()?.sum_all()` gives (its f64 sum is one
/// sequential loop), without its two temporary f64 copies when `g` is a contiguous f32 CPU
/// tensor.
fn sum_sq(g: &Tensor) -> Result<f64> {
    if g.dtype() == DType::F32 && g.device().is_cpu() && g.is_contiguous() {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(v[a..b].iter().fold(0.0f64, |s, &x| s + f64::from(x) * f64::from(x)));
        }
    }
    g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// The global 2-norm of `grads`: each gradient's Σ g² on its own (in parallel over the
/// gradients; the calling thread did them all one after the other before), then added in the
/// given order, so the value does not depend on the thread count.
fn total_norm(grads: &[&Tensor]) -> Result<f64> {
    use rayon::prelude::*;
    let sums = grads.par_iter().map(|g| sum_sq(g)).collect::<Result<Vec<f64>>>()?;
    Ok(sums.iter().fold(0.0, |t, s| t + s).sqrt())
}

/// `g * c`, element for element what candle's `affine(c, 0.0)` computes (`v * c + 0.0` in f32),
/// split over threads in pieces of [`SCALE_CHUNK`] when `g` is a large contiguous f32 CPU
/// tensor (candle's affine runs on one thread).
fn scaled(g: &Tensor, c: f64) -> Result<Tensor> {
    use rayon::prelude::*;
    if g.dtype() == DType::F32 && g.device().is_cpu() && g.elem_count() > SCALE_CHUNK {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            let (mul, add) = (c as f32, 0f32);
            // SAFETY: the loop below writes every element.
            let mut out = unsafe { crate::kernels::uninit_f32(b - a) };
            out.par_chunks_mut(SCALE_CHUNK)
                .zip(v[a..b].par_chunks(SCALE_CHUNK))
                .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = x * mul + add));
            return Tensor::from_vec(out, g.shape(), g.device());
        }
    }
    g * c
}

/// Elements per parallel task of [`scaled`] (one multiply-add each).
const SCALE_CHUNK: usize = 1 << 15;

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
    let present: Vec<&Tensor> = vars.iter().filter_map(|v| grads.get(v.as_tensor())).collect();
    let total = total_norm(&present)?;
    if let Some(c) = coef(total, max_norm) {
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = scaled(g, c)?;
                grads.insert(v.as_tensor(), g);
            }
        }
    }
    Ok(total)
}

/// [`clip_grad_norm`] for explicit `(Var, grad)` pairs (see `Optimizer::step_with`).
pub fn clip_grad_norm_pairs(grads: &mut [(Var, Tensor)], max_norm: f64) -> Result<f64> {
    check_max_norm(max_norm)?;
    let total = total_norm(&grads.iter().map(|(_, g)| g).collect::<Vec<_>>())?;
    if let Some(c) = coef(total, max_norm) {
        for (_, g) in grads.iter_mut() {
            *g = scaled(g, c)?;
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

    /// The one-pass f64 sum of squares (and the parallel scaling) gives the bits of candle's `to_dtype(F64)`, `sqr`,
    /// `sum_all` chain (the value the clipping factor was computed from before), also on a
    /// strided gradient (which takes that chain).
    #[test]
    fn sum_of_squares_equals_candles_chain_bit_for_bit() {
        let g = crate::SeqRng::new(5).normal((300, 77), 0.0, 3.0, &Device::Cpu).unwrap();
        let chain = |g: &Tensor| {
            g.to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert_eq!(sum_sq(&g).unwrap().to_bits(), chain(&g).to_bits());
        let t = g.t().unwrap();
        assert_eq!(sum_sq(&t).unwrap().to_bits(), chain(&t).to_bits());
        let big = crate::SeqRng::new(6).normal((700, 77), 0.0, 3.0, &Device::Cpu).unwrap();
        for x in [&g, &big] {
            let (ours, candle) = (scaled(x, 0.37).unwrap(), (x * 0.37).unwrap());
            let bits = |t: Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(ours), bits(candle));
        }
        let parts = [g.narrow(0, 0, 100).unwrap(), g.narrow(0, 100, 200).unwrap()];
        let total = total_norm(&[&parts[0], &parts[1]]).unwrap();
        assert_eq!(total.to_bits(), (chain(&parts[0]) + chain(&parts[1])).sqrt().to_bits());
    }
}
