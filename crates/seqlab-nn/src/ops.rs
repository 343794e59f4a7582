//! Differentiable building blocks built from candle primitives that have a backward pass, and
//! the switch between seqlab's two implementations of every fused op ([`Path`]).
//!
//! candle-nn's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `sdpa` return no
//! gradient (silently), so nothing in seqlab that trains uses them.
//!
//! ## Fused or composed
//! Every op with a hand-written CPU kernel ([`crate::kernels`]: attention, linear (+ReLU,
//! +dropout), LayerNorm/RMSNorm, GELU, the RNN/LSTM/GRU recurrence, cross-entropy, Mamba's causal
//! conv1d and selective scan, the optimizers' update) also has a *composed* implementation
//! from plain candle ops (matmul, exp, sums, ...) through which candle's autograd reaches every
//! input. The composed one runs whenever a tensor is not an f32 CPU tensor (CUDA: cuBLAS GEMMs
//! and candle's reductions) and, on the CPU, when [`Path::Composed`] is selected: process-wide
//! with [`set_path`] or the environment variable `SEQLAB_OPS=composed` (read once, at the
//! first op), or for one thread with [`with_path`]. The PyTorch parity tests run both paths
//! on the CPU, which proves the composition where no GPU exists.

use candle_core::{DType, Result, Tensor, D};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation the fused ops use on the CPU (other devices always compose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// seqlab's hand-written CPU kernels (the default; the fast path).
    Fused,
    /// Plain candle ops, as on a GPU.
    Composed,
}

impl Path {
    /// `"fused"` or `"composed"` (the values of `SEQLAB_OPS`); anything else is an error
    /// naming the value.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fused" => Ok(Path::Fused),
            "composed" => Ok(Path::Composed),
            other => candle_core::bail!("unknown ops path `{other}` (expected fused or composed)"),
        }
    }
}

/// 0 = not yet read from the environment, 1 = fused, 2 = composed.
static GLOBAL_PATH: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static THREAD_PATH: Cell<Option<Path>> = const { Cell::new(None) };
}

/// Selects the path for the whole process (overrides `SEQLAB_OPS`).
pub fn set_path(path: Path) {
    GLOBAL_PATH.store(if path == Path::Fused { 1 } else { 2 }, Ordering::Relaxed);
}

/// The path `SEQLAB_OPS` selects (fused when unset); an invalid value is an error naming it.
/// The `seqlab` binary calls this at start-up, so a misspelt switch stops it with that error.
pub fn path_from_env() -> Result<Path> {
    match std::env::var("SEQLAB_OPS") {
        Ok(v) => Path::parse(&v).map_err(|e| candle_core::Error::Msg(format!("SEQLAB_OPS: {e}"))),
        Err(_) => Ok(Path::Fused),
    }
}

/// The path in effect on this thread: [`with_path`]'s, else [`set_path`]'s, else
/// `SEQLAB_OPS` (default fused; an invalid value is reported on stderr once and the fused path
/// used — the `seqlab` binary rejects it up front through [`path_from_env`]).
pub fn path() -> Path {
    if let Some(p) = THREAD_PATH.with(|c| c.get()) {
        return p;
    }
    match GLOBAL_PATH.load(Ordering::Relaxed) {
        1 => Path::Fused,
        2 => Path::Composed,
        _ => {
            let p = path_from_env().unwrap_or_else(|e| {
                eprintln!("warning: {e}; using the fused path");
                Path::Fused
            });
            set_path(p);
            p
        }
    }
}

/// Runs `f` with `path` selected on this thread only (the parity tests run both paths side by
/// side this way); the previous selection is restored afterwards, also on error.
pub fn with_path<R>(path: Path, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Path>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_PATH.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_PATH.with(|c| c.replace(Some(path))));
    f()
}

/// Whether an op on `x` runs seqlab's fused CPU kernel: `x` is an f32 CPU tensor and the
/// fused path is selected.
pub fn use_fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && path() == Path::Fused
}

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

/// Exact (erf) GELU, PyTorch's default `approximate='none'`: the fused kernel
/// ([`crate::kernels::gelu`]) on f32 CPU tensors, candle's `gelu_erf` otherwise.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if use_fused(x) {
        crate::kernels::gelu::gelu_fused(x)
    } else {
        x.gelu_erf()
    }
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

/// Repeats every row of `t` (dim 0) `k` times: row b becomes rows b·k .. b·k + k − 1
/// (PyTorch's `repeat_interleave(k, dim=0)`); `k ≤ 1` returns `t`. Beam search's per-beam
/// copies of a sentence's rows, and attention's keys/values shared by groups of query rows
/// on the composed path.
pub fn repeat_rows(t: &Tensor, k: usize) -> Result<Tensor> {
    if k <= 1 {
        return Ok(t.clone());
    }
    let b = t.dim(0)?;
    let idx: Vec<u32> = (0..b as u32).flat_map(|i| std::iter::repeat_n(i, k)).collect();
    t.contiguous()?
        .index_select(&Tensor::new(idx.as_slice(), t.device())?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_switch_selects_the_path_per_thread() {
        let x = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(with_path(Path::Fused, || use_fused(&x)));
        assert!(!with_path(Path::Composed, || use_fused(&x)));
        // Nested selections restore the outer one; other dtypes always compose.
        with_path(Path::Composed, || {
            assert!(with_path(Path::Fused, || use_fused(&x)));
            assert_eq!(path(), Path::Composed);
        });
        assert!(!with_path(Path::Fused, || use_fused(&x.to_dtype(DType::F64).unwrap())));
        assert_eq!(Path::parse(" Composed ").unwrap(), Path::Composed);
        assert!(Path::parse("gpu")
            .unwrap_err()
            .to_string()
            .contains("unknown ops path `gpu`"));
    }

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
