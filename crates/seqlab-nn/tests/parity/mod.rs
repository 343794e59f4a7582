//! The PyTorch-parity harness: loads reference cases ("golden" files), runs each through the
//! seqlab code path its `module` names, and compares every expected tensor.
//!
//! A case file holds `param.*`, `input.*`, `probe.*` and expected `output.*`, `grad.*`,
//! `state.*` tensors, plus `module`/`config`/`loss_outputs` metadata (the format is written
//! down in `tests/golden/README.md`; `scripts/make_torch_fixtures.py` generates every kind).
//! [`run_case`] picks the code path from `module`; [`compare`] checks every expected tensor.
//! An unknown `module` or a tensor the code path did not produce is a failure, never a skip.
//!
//! The runners use only seqlab-nn's public API, one file per family of kinds; adding a kind
//! is one runner function plus one line in [`run_case`].

mod attention;
mod basic;
mod mamba;
mod norm;
mod recurrent;
mod transformer;

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use seqlab_nn::VarStore;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tolerance on forward outputs and buffers (relative, ‖a−b‖/‖b‖).
pub const OUTPUT_TOL: f64 = 1e-5;
/// Tolerance on gradients (relative).
pub const GRAD_TOL: f64 = 1e-4;

/// What a runner returns: the named outputs of one forward pass.
pub type Outputs = HashMap<String, Tensor>;

/// One reference case.
pub struct Case {
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
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device()).map_err(|e| err(e.to_string()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
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
    pub outputs: Outputs,
    pub grads: HashMap<String, Tensor>,
    pub states: HashMap<String, Tensor>,
}

/// The common driver: loads `param.*` into `vs` (strictly), runs `forward`, forms
/// `L = Σ sum(output_k * probe_k)` over `loss_outputs`, back-propagates and collects the
/// gradients of every parameter and differentiable input, and reads `state.*` buffers back
/// from `vs`.
pub fn run_standard(case: &Case, vs: &VarStore, forward: impl FnOnce(&Inputs) -> Result<Outputs>) -> Result<Computed> {
    run_with_params(case, &case.params(), vs, forward)
}

/// [`run_standard`] with the parameters given explicitly (for modules whose case files omit
/// some of the state, e.g. fresh BatchNorm buffers).
pub fn run_with_params(
    case: &Case,
    params: &HashMap<String, Tensor>,
    vs: &VarStore,
    forward: impl FnOnce(&Inputs) -> Result<Outputs>,
) -> Result<Computed> {
    vs.load_state_dict(params, true)
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

/// The outcome of one case.
pub struct Report {
    pub checked: usize,
    /// Largest relative error over all checked tensors.
    pub worst: f64,
    /// The key of the tensor with the largest error.
    pub worst_key: String,
    pub failures: Vec<String>,
}

/// Checks every `output.*`, `grad.*` and `state.*` tensor of the case against `computed`.
// `!(e <= tol)` rather than `e > tol`: a NaN error must fail.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn compare(case: &Case, computed: &Computed) -> Result<Report> {
    let mut keys: Vec<&String> = case.tensors.keys().collect();
    keys.sort();
    let mut rep = Report {
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
        let e = seqlab_nn::testing::rel_err(got, want)?;
        rep.checked += 1;
        if !(e <= tol) {
            rep.failures.push(format!("{key}: relative error {e:.3e} > {tol:.0e}"));
        }
        if !(e <= rep.worst) {
            rep.worst = e;
            rep.worst_key = key.clone();
        }
    }
    if rep.checked == 0 && rep.failures.is_empty() {
        rep.failures
            .push("the case holds no output.*, grad.* or state.* tensor to check".into());
    }
    Ok(rep)
}

/// Runs a case through the seqlab code path named by its `module`.
pub fn run_case(case: &Case) -> Result<Computed> {
    match case.module.as_str() {
        "layer_norm" => norm::layer_norm(case),
        "batch_norm1d" => norm::batch_norm1d(case),
        "embedding" => basic::embedding(case),
        "positional_encoding" => basic::positional_encoding(case),
        "cross_entropy" => basic::cross_entropy_case(case),
        "adamw" => basic::adamw(case),
        "rnn" | "lstm" | "gru" => recurrent::recurrent(case),
        "seed_model" => recurrent::seed_model(case),
        "sdpa" => attention::sdpa(case),
        "mha" => attention::mha(case),
        "encoder_layer" => transformer::encoder_layer(case),
        "decoder_layer" => transformer::decoder_layer(case),
        "transformer" => transformer::transformer(case),
        "seq2seq_tied" => transformer::seq2seq_tied(case),
        "mamba" => mamba::mamba(case),
        other => bail!("case {}: unknown module `{other}`", case.name),
    }
}

/// Loads, runs and compares one file.
pub fn check_file(path: &Path) -> Result<Report> {
    let case = Case::load(path)?;
    let computed = run_case(&case)?;
    compare(&case, &computed)
}

/// The device the cases run on: `$SEQLAB_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`; default
/// `cpu`), so the same test binary, built with `--features cuda`, checks a GPU. A name that
/// cannot be opened panics with the reason (this is a test).
pub fn device() -> Device {
    let name = std::env::var("SEQLAB_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    seqlab_nn::parse_device(&name).unwrap_or_else(|e| panic!("SEQLAB_TEST_DEVICE: {e}"))
}

/// The fixture folder: `$SEQLAB_TORCH_FIXTURES`, else this crate's `tests/golden`.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("SEQLAB_TORCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"))
}
