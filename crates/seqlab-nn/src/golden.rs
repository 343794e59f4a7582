//! PyTorch reference cases ("golden" files) and the code path that reproduces each.
//!
//! A case file holds `param.*`, `input.*`, `probe.*` and expected `output.*`, `grad.*`,
//! `state.*` tensors, plus `module`/`config`/`loss_outputs` metadata (see
//! `shared/golden/README.md`). [`run_case`] picks the seqlab code path from `module`;
//! [`compare`] checks every expected tensor. An unknown `module` or a tensor the code path
//! did not produce is an error, never a skip.

use crate::VarStore;
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tolerance on forward outputs and buffers (relative, ‖a−b‖/‖b‖).
pub const OUTPUT_TOL: f64 = 1e-5;
/// Tolerance on gradients (relative).
pub const GRAD_TOL: f64 = 1e-4;

/// One reference case.
pub struct Case {
    pub file: PathBuf,
    pub name: String,
    pub module: String,
    pub config: Value,
    pub loss_outputs: Vec<String>,
    pub tensors: HashMap<String, Tensor>,
}

impl Case {
    pub fn load(path: &Path) -> Result<Self> {
        let err = |m: String| candle_core::Error::Msg(format!("{}: {m}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
        let md = meta.metadata().clone().unwrap_or_default();
        let module = md
            .get("module")
            .cloned()
            .ok_or_else(|| err("no `module` metadata".into()))?;
        let config: Value = match md.get("config") {
            Some(s) => serde_json::from_str(s).map_err(|e| err(format!("bad `config` JSON: {e}")))?,
            None => Value::Object(Default::default()),
        };
        let loss_outputs: Vec<String> = match md.get("loss_outputs") {
            Some(s) => serde_json::from_str(s).map_err(|e| err(format!("bad `loss_outputs` JSON: {e}")))?,
            None => vec![],
        };
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            file: path.to_path_buf(),
            name,
            module,
            config,
            loss_outputs,
            tensors,
        })
    }

    /// A tensor by its full key, e.g. `input.x`.
    pub fn tensor(&self, key: &str) -> Result<Tensor> {
        match self.tensors.get(key) {
            Some(t) => Ok(t.clone()),
            None => bail!("case {}: missing tensor `{key}`", self.name),
        }
    }

    /// The `param.*` tensors under their state_dict names.
    pub fn params(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone())))
            .collect()
    }

    /// A config value, or `None` when absent or JSON null.
    pub fn cfg<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| candle_core::Error::Msg(format!("case {}: config `{key}`: {e}", self.name))),
        }
    }

    /// A config value that must be present.
    pub fn cfg_req<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        match self.cfg(key)? {
            Some(v) => Ok(v),
            None => bail!("case {}: config has no `{key}`", self.name),
        }
    }

    /// A config value with a default.
    pub fn cfg_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.cfg(key)?.unwrap_or(default))
    }
}

/// The case's inputs; float inputs with an expected `grad.input.*` are `Var`s.
pub struct Inputs {
    case_name: String,
    map: HashMap<String, Tensor>,
    vars: HashMap<String, Var>,
}

impl Inputs {
    pub fn new(case: &Case) -> Result<Self> {
        let mut map = HashMap::new();
        let mut vars = HashMap::new();
        for (k, t) in &case.tensors {
            if let Some(n) = k.strip_prefix("input.") {
                if t.dtype() == DType::F32 && case.tensors.contains_key(&format!("grad.input.{n}")) {
                    let v = Var::from_tensor(t)?;
                    map.insert(n.to_string(), v.as_tensor().clone());
                    vars.insert(n.to_string(), v);
                } else {
                    map.insert(n.to_string(), t.clone());
                }
            }
        }
        Ok(Self {
            case_name: case.name.clone(),
            map,
            vars,
        })
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        match self.map.get(name) {
            Some(t) => Ok(t.clone()),
            None => bail!("case {}: missing tensor `input.{name}`", self.case_name),
        }
    }

    pub fn opt(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).cloned()
    }
}

/// What a code path produced, keyed like the file without the prefix kind:
/// `outputs["y"]` ↔ `output.y`, `grads["param.weight"]` ↔ `grad.param.weight`,
/// `states["running_mean"]` ↔ `state.running_mean`.
#[derive(Default)]
pub struct Computed {
    pub outputs: HashMap<String, Tensor>,
    pub grads: HashMap<String, Tensor>,
    pub states: HashMap<String, Tensor>,
}

/// The common driver: loads `param.*` into `vs` (strictly), runs `forward`, forms
/// `L = Σ sum(output_k * probe_k)` over `loss_outputs`, back-propagates and collects the
/// gradients of every parameter and differentiable input, and reads `state.*` buffers back
/// from `vs`.
pub fn run_standard(
    case: &Case,
    vs: &VarStore,
    forward: impl FnOnce(&Inputs) -> Result<HashMap<String, Tensor>>,
) -> Result<Computed> {
    vs.load_state_dict(&case.params(), true)
        .map_err(|e| candle_core::Error::Msg(format!("case {}: {e}", case.name)))?;
    let inputs = Inputs::new(case)?;
    let outputs = forward(&inputs)?;
    let mut computed = Computed {
        outputs,
        ..Default::default()
    };
    if !case.loss_outputs.is_empty() {
        let mut loss: Option<Tensor> = None;
        for name in &case.loss_outputs {
            let out = match computed.outputs.get(name) {
                Some(o) => o,
                None => bail!("case {}: code path produced no output `{name}`", case.name),
            };
            let probe = case.tensor(&format!("probe.{name}"))?;
            let term = (out * probe.reshape(out.shape())?)?.sum_all()?;
            loss = Some(match loss {
                None => term,
                Some(l) => (l + term)?,
            });
        }
        let grads = loss.expect("non-empty").backward()?;
        for (name, var) in vs.trainable() {
            if let Some(g) = grads.get(&var) {
                computed.grads.insert(format!("param.{name}"), g.clone());
            }
        }
        for (name, var) in &inputs.vars {
            if let Some(g) = grads.get(var) {
                computed.grads.insert(format!("input.{name}"), g.clone());
            }
        }
    }
    for k in case.tensors.keys() {
        if let Some(n) = k.strip_prefix("state.") {
            if let Some(v) = vs.get(n) {
                computed.states.insert(n.to_string(), v.as_tensor().clone());
            }
        }
    }
    Ok(computed)
}

/// Relative error ‖a−b‖/‖b‖ (absolute when b is all zeros).
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

/// The outcome of one case.
pub struct Report {
    pub name: String,
    pub checked: usize,
    /// Largest relative error over all checked tensors.
    pub worst: f64,
    /// The key of the tensor with the largest error.
    pub worst_key: String,
    pub failures: Vec<String>,
}

/// Checks every `output.*`, `grad.*` and `state.*` tensor of the case against `computed`.
pub fn compare(case: &Case, computed: &Computed) -> Result<Report> {
    let mut keys: Vec<&String> = case.tensors.keys().collect();
    keys.sort();
    let mut rep = Report {
        name: case.name.clone(),
        checked: 0,
        worst: 0.0,
        worst_key: String::new(),
        failures: vec![],
    };
    for key in keys {
        let (got, tol) = if let Some(n) = key.strip_prefix("output.") {
            (computed.outputs.get(n), OUTPUT_TOL)
        } else if let Some(n) = key.strip_prefix("grad.") {
            (computed.grads.get(n), GRAD_TOL)
        } else if let Some(n) = key.strip_prefix("state.") {
            (computed.states.get(n), OUTPUT_TOL)
        } else {
            continue;
        };
        let want = &case.tensors[key];
        let Some(got) = got else {
            rep.failures.push(format!("{key}: not produced"));
            continue;
        };
        if got.elem_count() != want.elem_count() {
            rep.failures
                .push(format!("{key}: shape {:?}, expected {:?}", got.dims(), want.dims()));
            continue;
        }
        let e = rel_err(got, want)?;
        rep.checked += 1;
        if !(e <= tol) {
            rep.failures.push(format!("{key}: relative error {e:.3e} > {tol:.0e}"));
        }
        if !(e <= rep.worst) {
            rep.worst = e;
            rep.worst_key = key.clone();
        }
    }
    Ok(rep)
}

/// Runs a case through the seqlab code path named by its `module`.
pub fn run_case(case: &Case) -> Result<Computed> {
    match case.module.as_str() {
        "layer_norm" => crate::norm::golden_layer_norm(case),
        "batch_norm1d" => crate::norm::golden_batch_norm1d(case),
        "embedding" => crate::embedding::golden_embedding(case),
        "cross_entropy" => crate::loss::golden_cross_entropy(case),
        "adamw" => crate::optim::golden_adamw(case),
        "rnn" | "lstm" | "gru" => crate::recurrent::golden_recurrent(case),
        "seed_model" => crate::recurrent::golden_seed_model(case),
        "sdpa" => crate::attention::golden_sdpa(case),
        "mha" => crate::attention::golden_mha(case),
        "positional_encoding" => crate::positional::golden_positional_encoding(case),
        "encoder_layer" => crate::transformer::golden_encoder_layer(case),
        "decoder_layer" => crate::transformer::golden_decoder_layer(case),
        "transformer" => crate::transformer::golden_transformer(case),
        "seq2seq_tied" => crate::transformer::golden_seq2seq_tied(case),
        "mamba" => crate::mamba::golden_mamba(case),
        other => bail!("case {}: unknown module `{other}`", case.name),
    }
}

/// Loads, runs and compares one file.
pub fn check_file(path: &Path) -> Result<Report> {
    let case = Case::load(path)?;
    let computed = run_case(&case)?;
    compare(&case, &computed)
}
