//! Kinds `layer_norm`, `batch_norm1d`.

use super::{run_standard, run_with_params, Case, Computed};
use candle_core::Result;
use seqlab_nn::{BatchNorm1d, BatchNorm1dConfig, LayerNorm, LayerNormConfig, VarStore};

/// `nn.LayerNorm(normalized_shape, eps, elementwise_affine)(x)` → `y`.
pub fn layer_norm(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    let cfg = LayerNormConfig {
        normalized_shape: case.cfg_req("normalized_shape")?,
        eps: case.cfg_or("eps", 1e-5)?,
        elementwise_affine: case.cfg_or("elementwise_affine", true)?,
    };
    let ln = LayerNorm::new(&cfg, &vs)?;
    run_standard(case, &vs, |inp| {
        Ok([("y".to_string(), ln.forward(&inp.get("x")?)?)].into())
    })
}

/// Training-mode forward on `x` (→ `y`, running statistics as `state.*`), then
/// evaluation-mode forward on `x_eval` (→ `y_eval`).
pub fn batch_norm1d(case: &Case) -> Result<Computed> {
    let vs = VarStore::new(0, &super::device());
    // `momentum: null` is PyTorch's cumulative average; absent means the default 0.1.
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
    let mut params = case.params();
    for (name, t) in vs.state_dict() {
        if let std::collections::hash_map::Entry::Vacant(e) = params.entry(name) {
            e.insert(t.copy()?);
        }
    }
    run_with_params(case, &params, &vs, |inp| {
        let y = bn.forward(&inp.get("x")?, true)?;
        let y_eval = bn.forward(&inp.get("x_eval")?, false)?;
        Ok([("y".to_string(), y), ("y_eval".to_string(), y_eval)].into())
    })
}
