//! Named parameters and buffers under PyTorch `state_dict` names.
//!
//! A [`VarStore`] is a handle onto one model's table of tensors plus a path prefix, so a layer
//! built with `vs.pp("encoder").pp("layers.0")` names its weight
//! `encoder.layers.0.self_attn.in_proj_weight`, exactly as PyTorch does. Layers keep plain
//! `Tensor` clones of the `Var`s: loading a checkpoint writes into the same storage, so the
//! layers see the new values without being rebuilt.

use crate::rng::{SeqRng, SharedRng};
use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How a fresh parameter is filled. Draws come from the store's seeded RNG in creation order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Const(f64),
    Uniform { lo: f64, hi: f64 },
    Normal { mean: f64, std: f64 },
}

impl Init {
    /// PyTorch's default for Linear/RNN weights: U(-1/sqrt(fan), 1/sqrt(fan)).
    pub fn uniform_fan(fan: usize) -> Self {
        let b = 1.0 / (fan as f64).sqrt();
        Init::Uniform { lo: -b, hi: b }
    }

    /// Xavier/Glorot uniform, used by `nn.MultiheadAttention.in_proj_weight` and the
    /// `nn.Transformer` reset.
    pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Self {
        let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
        Init::Uniform { lo: -b, hi: b }
    }
}

struct Entry {
    var: Var,
    trainable: bool,
    /// Excluded from weight decay (PyTorch code marks such tensors `_no_weight_decay`).
    no_weight_decay: bool,
}

#[derive(Default)]
struct Table {
    order: Vec<String>,
    map: HashMap<String, Entry>,
}

/// Handle onto a model's parameters; cheap to clone.
#[derive(Clone)]
pub struct VarStore {
    table: Arc<Mutex<Table>>,
    rng: SharedRng,
    prefix: String,
    device: Device,
}

impl VarStore {
    /// A new, empty store whose initial weights (and dropout masks) come from `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table::default())),
            rng: SeqRng::shared(seed),
            prefix: String::new(),
            device: device.clone(),
        }
    }

    /// The device every tensor of the store lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's RNG, shared with its dropout layers.
    pub fn rng(&self) -> SharedRng {
        self.rng.clone()
    }

    /// A sub-path: `vs.pp("layers").pp(0)` names `layers.0.*`.
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        let mut s = self.clone();
        s.prefix = self.path(&name.to_string());
        s
    }

    /// The full name of `name` under this handle's prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn create(&self, name: &str, shape: Shape, init: Init, trainable: bool) -> Result<Var> {
        self.create_typed(name, shape, init, trainable, DType::F32)
    }

    fn create_typed(&self, name: &str, shape: Shape, init: Init, trainable: bool, dtype: DType) -> Result<Var> {
        self.create_entry(name, shape, init, trainable, dtype, false)
    }

    fn create_entry(
        &self,
        name: &str,
        shape: Shape,
        init: Init,
        trainable: bool,
        dtype: DType,
        no_weight_decay: bool,
    ) -> Result<Var> {
        let full = self.path(name);
        let mut t = self.table.lock().unwrap();
        if let Some(e) = t.map.get(&full) {
            if e.no_weight_decay != no_weight_decay {
                bail!("parameter {full} exists with no_weight_decay = {}", e.no_weight_decay);
            }
            if e.var.shape() != &shape || e.var.dtype() != dtype {
                bail!(
                    "parameter {full} exists as {:?} {:?}, asked for {:?} {dtype:?}",
                    e.var.dtype(),
                    e.var.shape(),
                    shape
                );
            }
            return Ok(e.var.clone());
        }
        let tensor = {
            let mut rng = self.rng.lock().unwrap();
            match init {
                Init::Zeros => Tensor::zeros(shape, DType::F32, &self.device)?,
                Init::Ones => Tensor::ones(shape, DType::F32, &self.device)?,
                Init::Const(c) => (Tensor::ones(shape, DType::F32, &self.device)? * c)?,
                Init::Uniform { lo, hi } => rng.uniform(shape, lo, hi, &self.device)?,
                Init::Normal { mean, std } => rng.normal(shape, mean, std, &self.device)?,
            }
        };
        let var = Var::from_tensor(&tensor.to_dtype(dtype)?)?;
        t.order.push(full.clone());
        t.map.insert(
            full,
            Entry {
                var: var.clone(),
                trainable,
                no_weight_decay,
            },
        );
        Ok(var)
    }

    /// A trainable parameter (created and initialised on first use).
    pub fn param<S: Into<Shape>>(&self, name: &str, shape: S, init: Init) -> Result<Tensor> {
        Ok(self.create(name, shape.into(), init, true)?.as_tensor().clone())
    }

    /// A trainable parameter that optimizers built with `for_store` (e.g.
    /// [`crate::AdamW::for_store`]) leave out of weight decay, like a PyTorch tensor marked
    /// `_no_weight_decay` (Mamba's `A_log` and `D`).
    pub fn param_no_weight_decay<S: Into<Shape>>(&self, name: &str, shape: S, init: Init) -> Result<Tensor> {
        Ok(self
            .create_entry(name, shape.into(), init, true, DType::F32, true)?
            .as_tensor()
            .clone())
    }

    /// Full names of the parameters created with [`VarStore::param_no_weight_decay`], in
    /// creation order.
    pub fn no_weight_decay(&self) -> Vec<String> {
        let t = self.table.lock().unwrap();
        t.order.iter().filter(|n| t.map[*n].no_weight_decay).cloned().collect()
    }

    /// A non-trainable buffer such as BatchNorm's running statistics; update it with `Var::set`.
    pub fn buffer<S: Into<Shape>>(&self, name: &str, shape: S, init: Init) -> Result<Var> {
        self.create(name, shape.into(), init, false)
    }

    /// A non-trainable buffer of another dtype, e.g. BatchNorm's int64 `num_batches_tracked`,
    /// so that state_dicts round-trip with PyTorch's dtypes. Loading converts to this dtype.
    pub fn buffer_typed<S: Into<Shape>>(&self, name: &str, shape: S, init: Init, dtype: DType) -> Result<Var> {
        self.create_typed(name, shape.into(), init, false, dtype)
    }

    /// Trainable parameters in creation order, with full names.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let t = self.table.lock().unwrap();
        t.order
            .iter()
            .filter(|n| t.map[*n].trainable)
            .map(|n| (n.clone(), t.map[n].var.clone()))
            .collect()
    }

    /// Every parameter and buffer: PyTorch's `state_dict()`.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let t = self.table.lock().unwrap();
        t.order
            .iter()
            .map(|n| (n.clone(), t.map[n].var.as_tensor().clone()))
            .collect()
    }

    /// The parameter or buffer with this full (prefixed) name, if any.
    pub fn get(&self, full_name: &str) -> Option<Var> {
        self.table.lock().unwrap().map.get(full_name).map(|e| e.var.clone())
    }

    /// Copies values into the store. With `strict`, every entry of the store must be given
    /// and nothing unknown may be, as in PyTorch's `load_state_dict(strict=True)`. Nothing is
    /// copied unless everything fits: a failed load leaves the model as it was.
    pub fn load_state_dict(&self, tensors: &HashMap<String, Tensor>, strict: bool) -> Result<()> {
        let t = self.table.lock().unwrap();
        let mut problems = Vec::new();
        let mut fitting = Vec::new();
        for name in &t.order {
            match tensors.get(name) {
                None if strict => problems.push(format!("missing key {name}")),
                None => {}
                Some(v) => {
                    let e = &t.map[name];
                    if v.shape() != e.var.shape() {
                        problems.push(format!(
                            "{name}: shape {:?} in file, {:?} in model",
                            v.dims(),
                            e.var.dims()
                        ));
                    } else {
                        fitting.push((&e.var, v.to_dtype(e.var.dtype())?.to_device(&self.device)?));
                    }
                }
            }
        }
        if strict {
            for k in tensors.keys() {
                if !t.map.contains_key(k) {
                    problems.push(format!("unexpected key {k}"));
                }
            }
        }
        if !problems.is_empty() {
            problems.sort();
            bail!("state_dict does not fit the model: {}", problems.join("; "));
        }
        for (var, v) in fitting {
            var.set(&v)?;
        }
        Ok(())
    }

    /// Writes the state_dict as safetensors, atomically (temp file + rename).
    pub fn save_safetensors<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let sd: HashMap<String, Tensor> = self.state_dict().into_iter().collect();
        crate::io::save_tensors_atomic(&sd, path.as_ref(), None)
    }

    /// Loads a safetensors state_dict (e.g. one saved from PyTorch); errors name the file.
    pub fn load_safetensors<P: AsRef<Path>>(&self, path: P, strict: bool) -> Result<()> {
        let path = path.as_ref();
        let tensors = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        self.load_state_dict(&tensors, strict)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prefixes_and_same_seed_same_init() {
        let a = VarStore::new(3, &Device::Cpu);
        let w = a
            .pp("encoder")
            .pp("layers")
            .pp(0)
            .param("w", (2, 3), Init::uniform_fan(3))
            .unwrap();
        assert_eq!(a.trainable()[0].0, "encoder.layers.0.w");
        let b = VarStore::new(3, &Device::Cpu);
        let w2 = b
            .pp("encoder")
            .pp("layers")
            .pp(0)
            .param("w", (2, 3), Init::uniform_fan(3))
            .unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), w2.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn strict_load_reports_every_problem() {
        let vs = VarStore::new(0, &Device::Cpu);
        vs.param("a", 2, Init::Zeros).unwrap();
        vs.param("b", 2, Init::Zeros).unwrap();
        let mut m = HashMap::new();
        m.insert("a".to_string(), Tensor::ones(3, DType::F32, &Device::Cpu).unwrap());
        m.insert("c".to_string(), Tensor::ones(2, DType::F32, &Device::Cpu).unwrap());
        let e = vs.load_state_dict(&m, true).unwrap_err().to_string();
        assert!(
            e.contains("missing key b") && e.contains("unexpected key c") && e.contains("a: shape"),
            "{e}"
        );
    }

    #[test]
    fn safetensors_round_trip_updates_layers_in_place() {
        let dir = std::env::temp_dir().join(format!("seqlab-vs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.safetensors");
        let a = VarStore::new(1, &Device::Cpu);
        let wa = a.param("w", (2, 2), Init::Normal { mean: 0.0, std: 1.0 }).unwrap();
        a.save_safetensors(&f).unwrap();
        let b = VarStore::new(2, &Device::Cpu);
        let wb = b.param("w", (2, 2), Init::Zeros).unwrap();
        b.load_safetensors(&f, true).unwrap();
        assert_eq!(wa.to_vec2::<f32>().unwrap(), wb.to_vec2::<f32>().unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}
