//! Optimizers (`torch.optim.AdamW`, `torch.optim.SGD`) and their checkpointable state.
//!
//! Both are built from `vs.trainable()` (a list of `(name, Var)`), take gradients either from
//! a [`GradStore`] ([`Optimizer::step`]) or as explicit `(Var, grad)` pairs
//! ([`Optimizer::step_with`]), and update each parameter: on the CPU (fused path) with one
//! loop over its storage, in place through a candle [`InplaceOp2`]; on other devices (and on
//! the CPU with [`crate::ops::Path::Composed`]) with candle tensor ops on the parameter's
//! device, the state staying there too (no host round trip per step). Both follow PyTorch's
//! single-tensor (CPU default) code path operation by operation, with the Python-float scalars
//! (bias corrections, step size) computed in f64 and rounded to f32 where PyTorch hands them
//! to a float32 kernel; the two paths differ only where a tensor op rounds differently.
//!
//! Optimizer state is kept per parameter as a `Vec<f32>` on the fused path, as tensors on the
//! parameter's device on the composed one (moved when the path changes), and exported as an
//! [`OptimizerState`] under PyTorch-like names (`exp_avg.<param>`, `exp_avg_sq.<param>`,
//! `step.<param>`, `momentum_buffer.<param>`), which [`OptimizerState::save_safetensors`]
//! writes and [`OptimizerState::load_safetensors`] reads back bit-exactly.

use crate::kernels::simd;
use crate::VarStore;
use candle_core::backprop::GradStore;
use candle_core::{bail, CpuStorage, DType, Device, InplaceOp2, Layout, Result, Tensor, TensorId, Var};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// A first-order optimizer over a fixed list of named parameters.
pub trait Optimizer {
    /// Updates every parameter that has a gradient in `grads`; parameters without one are
    /// skipped (their state and step count do not advance), as in PyTorch.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// Like [`Optimizer::step`] with explicit gradients; every `Var` must be one of the
    /// optimizer's parameters.
    fn step_with(&mut self, grads: &[(Var, Tensor)]) -> Result<()>;
    fn lr(&self) -> f64;
    fn set_lr(&mut self, lr: f64);
    /// The named parameters, in the order given at construction.
    fn params(&self) -> Vec<(String, Var)>;
    /// Everything needed to resume exactly: per-parameter buffers, step counts and `lr`.
    fn state_dict(&self) -> Result<OptimizerState>;
    /// Restores a state from [`Optimizer::state_dict`] (also `lr`). Errors name missing,
    /// unexpected or mis-shaped entries and leave the optimizer unchanged.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// Checkpointable optimizer state.
#[derive(Clone, Debug)]
pub struct OptimizerState {
    /// `"adamw"` or `"sgd"`.
    pub kind: String,
    /// Number of `step` calls so far.
    pub step: u64,
    /// Learning rate.
    pub lr: f64,
    /// `exp_avg.<param>` etc.; `step.<param>` is an i64 scalar.
    pub tensors: HashMap<String, Tensor>,
}

impl OptimizerState {
    /// Writes the state as safetensors (atomically); scalars go into the metadata.
    pub fn save_safetensors<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let md: HashMap<String, String> = [
            ("optimizer".to_string(), self.kind.clone()),
            ("step".to_string(), self.step.to_string()),
            // Rust's f64 Display is the shortest string that parses back to the same value.
            ("lr".to_string(), self.lr.to_string()),
        ]
        .into();
        crate::io::save_tensors_atomic(&self.tensors, path.as_ref(), Some(md))
    }

    /// Reads a file written by [`OptimizerState::save_safetensors`].
    pub fn load_safetensors<P: AsRef<Path>>(path: P) -> Result<Self> {
        let path = path.as_ref();
        let err = |m: String| candle_core::Error::Msg(format!("{}: {m}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
        let md = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| md.get(k).cloned().ok_or_else(|| err(format!("no `{k}` metadata")));
        let kind = get("optimizer")?;
        let step = get("step")?
            .parse::<u64>()
            .map_err(|e| err(format!("bad `step`: {e}")))?;
        let lr = get("lr")?.parse::<f64>().map_err(|e| err(format!("bad `lr`: {e}")))?;
        // CPU by design: a loaded state goes into host buffers; the composed path moves it to
        // the parameters' device at its first step (`Slot::to_device`).
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            kind,
            step,
            lr,
            tensors,
        })
    }
}

/// One parameter and its per-element state.
struct Slot {
    name: String,
    var: Var,
    /// Adam's `exp_avg` or SGD's momentum buffer (empty until first needed).
    buf1: Vec<f32>,
    /// Adam's `exp_avg_sq`.
    buf2: Vec<f32>,
    /// The same buffers on the parameter's device while the composed path updates it; the host
    /// vectors are then empty. `None` = not (yet) created.
    dev1: Option<Tensor>,
    dev2: Option<Tensor>,
    /// Steps this parameter has taken (PyTorch keeps one per parameter).
    step: u64,
    /// Whether weight decay applies (false for parameters in a "no decay" group).
    decay: bool,
}

/// Parameter list shared by both optimizers.
struct Params {
    slots: Vec<Slot>,
    index: HashMap<TensorId, usize>,
}

impl Params {
    fn new(what: &str, params: Vec<(String, Var)>) -> Result<Self> {
        let mut index = HashMap::new();
        let mut slots = Vec::with_capacity(params.len());
        for (i, (name, var)) in params.into_iter().enumerate() {
            if var.dtype() != DType::F32 {
                bail!("{what}: parameter {name} is {:?}, only f32 is supported", var.dtype());
            }
            if !var.is_contiguous() {
                bail!("{what}: parameter {name} is not contiguous");
            }
            if index.insert(var.id(), i).is_some() {
                bail!("{what}: parameter {name} is listed twice");
            }
            slots.push(Slot {
                name,
                var,
                buf1: vec![],
                buf2: vec![],
                dev1: None,
                dev2: None,
                step: 0,
                decay: true,
            });
        }
        Ok(Self { slots, index })
    }

    fn grads_from_store(&self, grads: &GradStore) -> Vec<(usize, Tensor)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| grads.get(s.var.as_tensor()).map(|g| (i, g.clone())))
            .collect()
    }

    fn grads_from_pairs(&self, what: &str, grads: &[(Var, Tensor)]) -> Result<Vec<(usize, Tensor)>> {
        grads
            .iter()
            .map(|(v, g)| match self.index.get(&v.id()) {
                Some(&i) => Ok((i, g.clone())),
                None => bail!("{what}: step_with got a gradient for a Var that is not one of its parameters"),
            })
            .collect()
    }

    /// Puts the named parameters in a group without weight decay (PyTorch: a second param
    /// group with `weight_decay=0`). Unknown names are an error, naming them.
    fn exclude_from_decay(&mut self, what: &str, names: &[String]) -> Result<()> {
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !self.slots.iter().any(|s| &s.name == *n))
            .collect();
        if !unknown.is_empty() {
            bail!("{what}: no parameter named {unknown:?} to exclude from weight decay");
        }
        for s in &mut self.slots {
            if names.contains(&s.name) {
                s.decay = false;
            }
        }
        Ok(())
    }

    fn list(&self) -> Vec<(String, Var)> {
        self.slots.iter().map(|s| (s.name.clone(), s.var.clone())).collect()
    }

    /// Checks that `g` fits slot `i` before anything is modified.
    fn check_grads(&self, what: &str, grads: &[(usize, Tensor)]) -> Result<()> {
        for (i, g) in grads {
            let s = &self.slots[*i];
            if g.shape() != s.var.shape() {
                bail!(
                    "{what}: gradient of {} has shape {:?}, parameter {:?}",
                    s.name,
                    g.dims(),
                    s.var.dims()
                );
            }
            if g.dtype() != DType::F32 {
                bail!("{what}: gradient of {} is {:?}, expected f32", s.name, g.dtype());
            }
        }
        Ok(())
    }
}

/// Whether `var` is updated in place by the fused CPU loop (else by tensor ops on its device).
fn fused_update(var: &Var, grad: &Tensor) -> bool {
    crate::ops::use_fused(var.as_tensor()) && grad.device().is_cpu()
}

/// One piece of a parameter for the fused update: its elements, their gradients and the
/// optimizer's per-element buffers for them (`b1`/`b2` are empty when the optimizer keeps none).
struct Part<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    b1: &'a mut [f32],
    b2: &'a mut [f32],
}

/// An optimizer's per-element update over the pieces of one parameter; every element is
/// updated on its own, so the split does not change a value. `update` is plain scalar Rust
/// with exactly rounded operations only, marked `#[inline(always)]`: it runs inside
/// [`simd::run_widest`], which compiles it for the widest vector unit (same bits, see
/// [`simd::WithLanes`]; test `composed_update_equals_the_fused_loop_bit_for_bit`).
trait PartUpdate: Sync {
    fn update(&self, part: Part<'_>);
}

/// One piece's update as a [`simd::WithLanes`] body (a plain loop: the lanes go unused).
struct Widest<'k, 'p, K>(&'k K, Part<'p>);

impl<K: PartUpdate> simd::WithLanes for Widest<'_, '_, K> {
    type Out = ();
    #[inline(always)]
    fn run<L: simd::Lanes>(self, _: L) {
        self.0.update(self.1)
    }
}

/// Elements per parallel task of the fused update. An AdamW element costs ~20 instructions,
/// so a task is ~0.3 M instructions, far above rayon's dispatch cost; parameters of at most
/// this size (biases, norms) are updated on the calling thread. Before the split, the update
/// of every parameter ran on one thread whatever the thread count.
const UPDATE_CHUNK: usize = 1 << 14;

/// Runs `kernel` over one parameter's CPU storage, in place, with its buffers `b1`/`b2`
/// (each empty or of the parameter's size), in parallel pieces of [`UPDATE_CHUNK`] elements.
fn update_in_place<K: PartUpdate>(var: &Var, grad: &Tensor, b1: &mut [f32], b2: &mut [f32], kernel: &K) -> Result<()> {
    let grad = grad.contiguous()?;
    let op = Fused {
        bufs: RefCell::new([b1, b2]),
        kernel,
    };
    var.as_tensor().inplace_op2(&grad, &op)
}

struct Fused<'a, K> {
    bufs: RefCell<[&'a mut [f32]; 2]>,
    kernel: &'a K,
}

/// Splits `[a, b]` after `n` elements of each non-empty one.
fn split_bufs<'a>([a, b]: [&'a mut [f32]; 2], n: usize) -> ([&'a mut [f32]; 2], [&'a mut [f32]; 2]) {
    let cut = |x: &'a mut [f32]| {
        if x.is_empty() {
            (&mut [][..], x)
        } else {
            x.split_at_mut(n)
        }
    };
    let ((a0, a1), (b0, b1)) = (cut(a), cut(b));
    ([a0, b0], [a1, b1])
}

impl<K: PartUpdate> InplaceOp2 for Fused<'_, K> {
    fn name(&self) -> &'static str {
        "seqlab-optimizer-update"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        use rayon::prelude::*;
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("optimizer update needs contiguous tensors");
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            bail!("optimizer update needs f32 tensors");
        };
        let (mut p, mut g) = (&mut p[a0..a1], &g[b0..b1]);
        let mut guard = self.bufs.borrow_mut();
        let [b1, b2] = &mut *guard;
        let mut bufs: [&mut [f32]; 2] = [&mut **b1, &mut **b2];
        if bufs.iter().any(|b| !b.is_empty() && b.len() != p.len()) {
            bail!("optimizer update: state buffer size differs from the parameter's");
        }
        let mut parts = Vec::with_capacity(p.len().div_ceil(UPDATE_CHUNK));
        while !p.is_empty() {
            let n = p.len().min(UPDATE_CHUNK);
            let (ph, pt) = std::mem::take(&mut p).split_at_mut(n);
            let (gh, gt) = g.split_at(n);
            let ([b1, b2], rest) = split_bufs(bufs, n);
            parts.push(Part { p: ph, g: gh, b1, b2 });
            (p, g, bufs) = (pt, gt, rest);
        }
        let run = |part| simd::run_widest(false, Widest(self.kernel, part));
        if parts.len() > 1 {
            parts.into_par_iter().for_each(run);
        } else {
            parts.into_iter().for_each(run);
        }
        Ok(())
    }
}

fn check_lr(what: &str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        bail!("{what}: lr must be finite and >= 0, got {lr}");
    }
    Ok(())
}

impl Slot {
    /// Whether buffer 1 (`exp_avg` / momentum) exists, on either side.
    fn has_buf1(&self) -> bool {
        !self.buf1.is_empty() || self.dev1.is_some()
    }

    /// Moves the buffers to host vectors (for the fused path), if they are on the device.
    fn to_host(&mut self) -> Result<()> {
        for (d, b) in [(&mut self.dev1, &mut self.buf1), (&mut self.dev2, &mut self.buf2)] {
            if let Some(t) = d.take() {
                *b = t.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        Ok(())
    }

    /// Moves the buffers onto the parameter's device (for the composed path), if they are
    /// host vectors.
    fn to_device(&mut self) -> Result<()> {
        let (shape, dev) = (self.var.shape().clone(), self.var.device().clone());
        for (d, b) in [(&mut self.dev1, &mut self.buf1), (&mut self.dev2, &mut self.buf2)] {
            if !b.is_empty() {
                *d = Some(Tensor::from_slice(b, &shape, &dev)?);
                *b = vec![];
            }
        }
        Ok(())
    }

    /// Buffer `k` as host values, wherever it lives (empty if it does not exist).
    fn host_values(&self, k: usize) -> Result<Vec<f32>> {
        let (d, b) = if k == 0 {
            (&self.dev1, &self.buf1)
        } else {
            (&self.dev2, &self.buf2)
        };
        match d {
            Some(t) => t.flatten_all()?.to_vec1::<f32>(),
            None => Ok(b.clone()),
        }
    }
}

/// Builds the tensors of a state dict from per-slot buffers.
fn export(slots: &[Slot], names: [&str; 2]) -> Result<HashMap<String, Tensor>> {
    let mut t = HashMap::new();
    for s in slots {
        if s.step == 0 && !s.has_buf1() {
            continue;
        }
        // CPU by design: the state dict is written to files from host buffers.
        t.insert(format!("step.{}", s.name), Tensor::new(s.step as i64, &Device::Cpu)?);
        for (k, n) in names.iter().enumerate() {
            let b = s.host_values(k)?;
            if !n.is_empty() && !b.is_empty() {
                // CPU by design: as the step above.
                t.insert(
                    format!("{n}.{}", s.name),
                    Tensor::from_vec(b, s.var.shape(), &Device::Cpu)?,
                );
            }
        }
    }
    Ok(t)
}

/// Reads per-slot buffers back. `required[k]` says whether buffer k must be present for a
/// parameter that has a step entry. Returns (step, buf1, buf2) per slot; nothing is modified.
#[allow(clippy::type_complexity)]
fn import(
    what: &str,
    slots: &[Slot],
    state: &OptimizerState,
    kind: &str,
    names: [&str; 2],
    required: [bool; 2],
) -> Result<Vec<(u64, Vec<f32>, Vec<f32>)>> {
    if state.kind != kind {
        bail!("{what}: state is for optimizer `{}`, not `{kind}`", state.kind);
    }
    let mut problems = Vec::new();
    let mut used = 0usize;
    let mut out = Vec::with_capacity(slots.len());
    for s in slots {
        let step = match state.tensors.get(&format!("step.{}", s.name)) {
            None => None,
            Some(t) => {
                used += 1;
                match t.to_dtype(DType::I64).and_then(|t| t.flatten_all()?.to_vec1::<i64>()) {
                    Ok(v) if v.len() == 1 && v[0] >= 0 => Some(v[0] as u64),
                    _ => {
                        problems.push(format!("step.{}: not a non-negative integer scalar", s.name));
                        None
                    }
                }
            }
        };
        let mut bufs = [vec![], vec![]];
        for k in 0..2 {
            if names[k].is_empty() {
                continue;
            }
            let key = format!("{}.{}", names[k], s.name);
            match state.tensors.get(&key) {
                None if step.is_some() && required[k] => problems.push(format!("missing key {key}")),
                None => {}
                Some(t) => {
                    used += 1;
                    if t.shape() != s.var.shape() || t.dtype() != DType::F32 {
                        problems.push(format!(
                            "{key}: {:?} {:?}, parameter is {:?} F32",
                            t.dims(),
                            t.dtype(),
                            s.var.dims()
                        ));
                    } else {
                        bufs[k] = t.flatten_all()?.to_vec1::<f32>()?;
                    }
                }
            }
        }
        let [b1, b2] = bufs;
        out.push((step.unwrap_or(0), b1, b2));
    }
    if used != state.tensors.len() {
        let known: std::collections::HashSet<String> = slots
            .iter()
            .flat_map(|s| {
                ["step", names[0], names[1]]
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .map(move |n| format!("{n}.{}", s.name))
            })
            .collect();
        for k in state.tensors.keys() {
            if !known.contains(k) {
                problems.push(format!("unexpected key {k}"));
            }
        }
    }
    if !problems.is_empty() {
        problems.sort();
        bail!("{what}: state does not fit the parameters: {}", problems.join("; "));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// AdamW

/// Hyper-parameters of [`AdamW`]; defaults are `torch.optim.AdamW`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Default 1e-3.
    pub lr: f64,
    /// Default (0.9, 0.999).
    pub betas: (f64, f64),
    /// Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay, default 0.01.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// The learning rate `lr` with the other fields at their defaults.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            ..Default::default()
        }
    }
}

/// `torch.optim.AdamW`: `p ← p·(1 − lr·wd)`, then the bias-corrected Adam update.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Params,
    steps: u64,
}

impl AdamW {
    /// AdamW over the named parameters. Rejects an `lr` that is not finite and >= 0, `betas`
    /// outside [0, 1), a negative or non-finite `eps` or `weight_decay`, and non-f32 or duplicate
    /// parameters.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        check_lr("AdamW", cfg.lr)?;
        let (b1, b2) = cfg.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            bail!("AdamW: betas must be in [0, 1), got {:?}", cfg.betas);
        }
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(cfg.eps) || !ok(cfg.weight_decay) {
            bail!("AdamW: eps and weight_decay must be finite and >= 0, got {cfg:?}");
        }
        Ok(Self {
            params: Params::new("AdamW", params)?,
            cfg,
            steps: 0,
        })
    }

    /// Over every trainable parameter of `vs`, leaving those it marks
    /// [`VarStore::param_no_weight_decay`] out of weight decay.
    pub fn for_store(vs: &VarStore, cfg: AdamWConfig) -> Result<Self> {
        Self::new(vs.trainable(), cfg)?.without_weight_decay(&vs.no_weight_decay())
    }

    /// Excludes the named parameters from weight decay (their Adam update is unchanged).
    pub fn without_weight_decay(mut self, names: &[String]) -> Result<Self> {
        self.params.exclude_from_decay("AdamW", names)?;
        Ok(self)
    }

    /// The configuration (with the current `lr`).
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    fn apply(&mut self, grads: Vec<(usize, Tensor)>) -> Result<()> {
        self.params.check_grads("AdamW", &grads)?;
        let AdamWConfig {
            lr,
            betas: (beta1, beta2),
            eps,
            weight_decay,
        } = self.cfg;
        for (i, g) in grads {
            let slot = &mut self.params.slots[i];
            let n = slot.var.elem_count();
            let fused = fused_update(&slot.var, &g);
            if fused {
                slot.to_host()?;
                if slot.buf1.is_empty() {
                    slot.buf1 = vec![0.0; n];
                    slot.buf2 = vec![0.0; n];
                }
            } else {
                slot.to_device()?;
            }
            slot.step += 1;
            let step = slot.step as f64;
            // Scalars as PyTorch's Python code forms them (f64), rounded where a float32
            // kernel receives them.
            let decay = (1.0 - lr * weight_decay) as f32;
            let decays = weight_decay != 0.0 && slot.decay;
            let w = (1.0 - beta1) as f32;
            let b2 = beta2 as f32;
            let omb2 = (1.0 - beta2) as f32;
            let bc1 = 1.0 - beta1.powf(step);
            let bc2_sqrt = ((1.0 - beta2.powf(step)).sqrt()) as f32;
            let neg_step_size = (-(lr / bc1)) as f32;
            let eps = eps as f32;
            if !fused {
                // The same operations as the loop below, as tensor ops on the parameter's device.
                let p = slot.var.as_tensor();
                let g = g.to_dtype(DType::F32)?;
                let p = if decays {
                    p.affine(decay as f64, 0.0)?
                } else {
                    p.clone()
                };
                let zeros = || Tensor::zeros_like(&g);
                let m0 = slot.dev1.take().map_or_else(zeros, Ok)?;
                let v0 = slot.dev2.take().map_or_else(zeros, Ok)?;
                let m = if w.abs() < 0.5 {
                    (&m0 + (&g - &m0)?.affine(w as f64, 0.0)?)?
                } else {
                    (&g - (&g - &m0)?.affine((1.0 - w) as f64, 0.0)?)?
                };
                let v = (v0.affine(b2 as f64, 0.0)? + (g.affine(omb2 as f64, 0.0)? * &g)?)?;
                let scalar = |x: f32| Tensor::new(x, g.device());
                let denom = v.sqrt()?.broadcast_div(&scalar(bc2_sqrt)?)?.affine(1.0, eps as f64)?;
                let p = (p + (m.affine(neg_step_size as f64, 0.0)? / denom)?)?;
                slot.var.set(&p)?;
                // Detached: the state must not hold this step's graph alive into the next.
                (slot.dev1, slot.dev2) = (Some(m.detach()), Some(v.detach()));
                continue;
            }
            let kernel = AdamWUpdate {
                decay: if decays { decay } else { 1.0 },
                w,
                b2,
                omb2,
                bc2_sqrt,
                neg_step_size,
                eps,
            };
            update_in_place(&slot.var, &g, &mut slot.buf1, &mut slot.buf2, &kernel)?;
        }
        self.steps += 1;
        Ok(())
    }
}

/// One AdamW step's element update, PyTorch's single-tensor `_single_tensor_adamw` operation
/// by operation, with the scalars [`AdamW::apply`] forms.
struct AdamWUpdate {
    /// `1 − lr·weight_decay`, or 1 for a parameter without decay (multiplying by 1 is exact).
    decay: f32,
    /// `1 − beta1`, the lerp weight.
    w: f32,
    b2: f32,
    omb2: f32,
    bc2_sqrt: f32,
    neg_step_size: f32,
    eps: f32,
}

impl AdamWUpdate {
    /// The update with the lerp formula chosen outside the loop (`LOW`: `w` < 0.5), so that
    /// the loop has no branch to keep it from being vectorised.
    #[inline(always)]
    fn rows<const LOW: bool>(&self, Part { p, g, b1: m, b2: v }: Part<'_>) {
        let &Self {
            decay,
            w,
            b2,
            omb2,
            bc2_sqrt,
            neg_step_size,
            eps,
        } = self;
        for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
            *p *= decay;
            // `exp_avg.lerp_(grad, 1 - beta1)`: ATen's lerp switches formula at 0.5.
            *m = if LOW {
                *m + w * (g - *m)
            } else {
                g - (g - *m) * (1.0 - w)
            };
            // `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`
            *v = *v * b2 + omb2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            // `param.addcdiv_(exp_avg, denom, value=-step_size)`
            *p += neg_step_size * *m / denom;
        }
    }
}

impl PartUpdate for AdamWUpdate {
    #[inline(always)]
    fn update(&self, part: Part<'_>) {
        if self.w.abs() < 0.5 {
            self.rows::<true>(part)
        } else {
            self.rows::<false>(part)
        }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let g = self.params.grads_from_store(grads);
        self.apply(g)
    }

    fn step_with(&mut self, grads: &[(Var, Tensor)]) -> Result<()> {
        let g = self.params.grads_from_pairs("AdamW", grads)?;
        self.apply(g)
    }

    fn lr(&self) -> f64 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.params.list()
    }

    fn state_dict(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: "adamw".into(),
            step: self.steps,
            lr: self.cfg.lr,
            tensors: export(&self.params.slots, ["exp_avg", "exp_avg_sq"])?,
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_lr("AdamW", state.lr)?;
        let got = import(
            "AdamW",
            &self.params.slots,
            state,
            "adamw",
            ["exp_avg", "exp_avg_sq"],
            [true, true],
        )?;
        for (s, (step, b1, b2)) in self.params.slots.iter_mut().zip(got) {
            (s.step, s.buf1, s.buf2, s.dev1, s.dev2) = (step, b1, b2, None, None);
        }
        self.steps = state.step;
        self.cfg.lr = state.lr;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// SGD

/// Hyper-parameters of [`Sgd`]; defaults are `torch.optim.SGD`'s (lr has none there).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Default 0.
    pub momentum: f64,
    /// Default 0.
    pub dampening: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Default `false`; needs momentum > 0 and dampening 0.
    pub nesterov: bool,
}

impl SgdConfig {
    /// The learning rate `lr` with the other fields at their defaults.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// `torch.optim.SGD` with momentum, dampening, weight decay and Nesterov.
pub struct Sgd {
    cfg: SgdConfig,
    params: Params,
    steps: u64,
}

impl Sgd {
    /// SGD over the named parameters. Rejects an `lr` that is not finite and >= 0, a negative or
    /// non-finite `momentum`, `dampening` or `weight_decay`, `nesterov` without momentum or with
    /// dampening, and non-f32 or duplicate parameters.
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> Result<Self> {
        check_lr("SGD", cfg.lr)?;
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !(ok(cfg.momentum) && ok(cfg.dampening) && ok(cfg.weight_decay)) {
            bail!("SGD: momentum, dampening and weight_decay must be finite and >= 0, got {cfg:?}");
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            bail!("SGD: Nesterov momentum requires a momentum and zero dampening, got {cfg:?}");
        }
        Ok(Self {
            params: Params::new("SGD", params)?,
            cfg,
            steps: 0,
        })
    }

    /// Over every trainable parameter of `vs`, leaving those it marks
    /// [`VarStore::param_no_weight_decay`] out of weight decay.
    pub fn for_store(vs: &VarStore, cfg: SgdConfig) -> Result<Self> {
        Self::new(vs.trainable(), cfg)?.without_weight_decay(&vs.no_weight_decay())
    }

    /// Excludes the named parameters from weight decay.
    pub fn without_weight_decay(mut self, names: &[String]) -> Result<Self> {
        self.params.exclude_from_decay("SGD", names)?;
        Ok(self)
    }

    /// The configuration (with the current `lr`).
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }

    fn apply(&mut self, grads: Vec<(usize, Tensor)>) -> Result<()> {
        self.params.check_grads("SGD", &grads)?;
        let SgdConfig {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        } = self.cfg;
        let (wd, mom, damp, neg_lr) = (
            weight_decay as f32,
            momentum as f32,
            (1.0 - dampening) as f32,
            (-lr) as f32,
        );
        for (i, g) in grads {
            let slot = &mut self.params.slots[i];
            slot.step += 1;
            let decays = weight_decay != 0.0 && slot.decay;
            if !fused_update(&slot.var, &g) {
                // The same operations as the loop below, as tensor ops on the parameter's device.
                slot.to_device()?;
                let p = slot.var.as_tensor();
                let g = g.to_dtype(DType::F32)?;
                let mut d = if decays { (&g + p.affine(wd as f64, 0.0)?)? } else { g };
                if momentum != 0.0 {
                    let b = match slot.dev1.take() {
                        None => d.clone(),
                        Some(b) => (b.affine(mom as f64, 0.0)? + d.affine(damp as f64, 0.0)?)?,
                    };
                    d = if nesterov {
                        (&d + b.affine(mom as f64, 0.0)?)?
                    } else {
                        b.clone()
                    };
                    slot.dev1 = Some(b.detach());
                }
                slot.var.set(&(p + d.affine(neg_lr as f64, 0.0)?)?)?;
                continue;
            }
            slot.to_host()?;
            let first = slot.buf1.is_empty();
            if momentum != 0.0 && first {
                slot.buf1 = vec![0.0; slot.var.elem_count()];
            }
            let kernel = SgdUpdate {
                wd: if decays { Some(wd) } else { None },
                momentum: if momentum != 0.0 { Some((mom, damp)) } else { None },
                first,
                nesterov,
                neg_lr,
            };
            update_in_place(&slot.var, &g, &mut slot.buf1, &mut [], &kernel)?;
        }
        self.steps += 1;
        Ok(())
    }
}

/// One SGD step's element update (`torch.optim.SGD`'s single-tensor code path).
struct SgdUpdate {
    /// `weight_decay`, for a parameter that decays.
    wd: Option<f32>,
    /// (`momentum`, `1 − dampening`) when momentum is on.
    momentum: Option<(f32, f32)>,
    /// The momentum buffer is new: it takes the first step's direction as it is.
    first: bool,
    nesterov: bool,
    neg_lr: f32,
}

impl PartUpdate for SgdUpdate {
    #[inline(always)]
    fn update(&self, Part { p, g, b1: buf, .. }: Part<'_>) {
        let Self {
            wd,
            momentum,
            first,
            nesterov,
            neg_lr,
        } = *self;
        for (k, (p, &g)) in p.iter_mut().zip(g).enumerate() {
            let mut d = match wd {
                Some(wd) => g + wd * *p,
                None => g,
            };
            if let Some((mom, damp)) = momentum {
                let b = &mut buf[k];
                *b = if first { d } else { *b * mom + damp * d };
                d = if nesterov { d + mom * *b } else { *b };
            }
            *p += neg_lr * d;
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let g = self.params.grads_from_store(grads);
        self.apply(g)
    }

    fn step_with(&mut self, grads: &[(Var, Tensor)]) -> Result<()> {
        let g = self.params.grads_from_pairs("SGD", grads)?;
        self.apply(g)
    }

    fn lr(&self) -> f64 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.params.list()
    }

    fn state_dict(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: "sgd".into(),
            step: self.steps,
            lr: self.cfg.lr,
            tensors: export(&self.params.slots, ["momentum_buffer", ""])?,
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_lr("SGD", state.lr)?;
        let req = self.cfg.momentum != 0.0;
        let got = import(
            "SGD",
            &self.params.slots,
            state,
            "sgd",
            ["momentum_buffer", ""],
            [req, false],
        )?;
        for (s, (step, b1, _)) in self.params.slots.iter_mut().zip(got) {
            (s.step, s.buf1, s.dev1) = (step, b1, None);
        }
        self.steps = state.step;
        self.cfg.lr = state.lr;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // expected values as PyTorch printed them
mod tests {
    use super::*;
    use crate::{Init, VarStore};

    fn setup(seed: u64) -> (VarStore, Tensor) {
        let vs = VarStore::new(seed, &Device::Cpu);
        vs.param("w", (3, 4), Init::Normal { mean: 0.0, std: 1.0 }).unwrap();
        vs.param("b", 4, Init::Normal { mean: 0.0, std: 1.0 }).unwrap();
        // More than three pieces of the fused update's parallel split, the last one partial.
        vs.param(
            "e",
            (3 * UPDATE_CHUNK / 64 + 5, 64),
            Init::Normal { mean: 0.0, std: 1.0 },
        )
        .unwrap();
        let x = crate::SeqRng::new(99).normal((5, 3), 0.0, 1.0, &Device::Cpu).unwrap();
        (vs, x)
    }

    fn loss(vs: &VarStore, x: &Tensor) -> Tensor {
        let w = vs.get("w").unwrap();
        let b = vs.get("b").unwrap();
        let e = vs.get("e").unwrap();
        let y = x.matmul(w.as_tensor()).unwrap().broadcast_add(b.as_tensor()).unwrap();
        let big = e.as_tensor().tanh().unwrap().sqr().unwrap().sum_all().unwrap();
        (y.tanh().unwrap().sqr().unwrap().sum_all().unwrap() + big).unwrap()
    }

    fn values(vs: &VarStore) -> Vec<Vec<f32>> {
        vs.trainable()
            .iter()
            .map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    /// Runs `steps` updates of a fresh optimizer from `make`, the path of step k given by
    /// `path_at(k)`, and returns the parameters and the exported state after them.
    fn run_paths(
        make: &dyn Fn(&VarStore) -> Box<dyn Optimizer>,
        steps: usize,
        path_at: &dyn Fn(usize) -> crate::ops::Path,
    ) -> (Vec<Vec<f32>>, Vec<(String, Vec<f32>)>) {
        let (vs, x) = setup(11);
        let mut opt = make(&vs);
        for k in 0..steps {
            crate::ops::with_path(path_at(k), || {
                let grads = loss(&vs, &x).backward().unwrap();
                opt.step(&grads).unwrap();
            });
        }
        let st = opt.state_dict().unwrap();
        let mut t: Vec<(String, Vec<f32>)> = st
            .tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("step."))
            .map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        (values(&vs), t)
    }

    /// The composed update (tensor ops on the parameter's device: what CUDA runs) performs the
    /// fused loop's operations in the same order, so on the CPU both give the same bits: AdamW
    /// (weight decay, both lerp formulas) and SGD (momentum, dampening, Nesterov, weight decay),
    /// also when the path changes between steps (the state moves with it) and when the state is
    /// exported from the device side.
    #[test]
    fn composed_update_equals_the_fused_loop_bit_for_bit() {
        use crate::ops::Path::{Composed, Fused};
        let adamw = |beta1: f64| {
            move |vs: &VarStore| -> Box<dyn Optimizer> {
                Box::new(
                    AdamW::for_store(
                        vs,
                        AdamWConfig {
                            lr: 0.05,
                            betas: (beta1, 0.98),
                            eps: 1e-6,
                            weight_decay: 0.1,
                        },
                    )
                    .unwrap(),
                )
            }
        };
        let sgd = |nesterov: bool| {
            move |vs: &VarStore| -> Box<dyn Optimizer> {
                Box::new(
                    Sgd::for_store(
                        vs,
                        SgdConfig {
                            momentum: 0.9,
                            dampening: if nesterov { 0.0 } else { 0.2 },
                            weight_decay: 0.01,
                            nesterov,
                            ..SgdConfig::new(0.1)
                        },
                    )
                    .unwrap(),
                )
            }
        };
        let makers: Vec<(&str, Box<dyn Fn(&VarStore) -> Box<dyn Optimizer>>)> = vec![
            ("adamw", Box::new(adamw(0.9))),
            ("adamw beta1 0.3", Box::new(adamw(0.3))),
            ("sgd", Box::new(sgd(false))),
            ("sgd nesterov", Box::new(sgd(true))),
        ];
        for (name, make) in &makers {
            let fused = run_paths(make.as_ref(), 4, &|_| Fused);
            let composed = run_paths(make.as_ref(), 4, &|_| Composed);
            let mixed = run_paths(make.as_ref(), 4, &|k| if k % 2 == 0 { Composed } else { Fused });
            let mixed2 = run_paths(make.as_ref(), 3, &|k| if k == 2 { Composed } else { Fused });
            let fused3 = run_paths(make.as_ref(), 3, &|_| Fused);
            assert_eq!(fused, composed, "{name}: composed");
            assert_eq!(fused, mixed, "{name}: alternating paths");
            assert_eq!(fused3, mixed2, "{name}: state exported after a composed step");
            assert!(!fused.1.is_empty(), "{name}: no state exported");
        }
    }

    /// Expected values: `torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8,
    /// weight_decay=0.5)` with w = [1., -2., 3.] and a constant grad [0.5, -1., 0.] for two
    /// steps (PyTorch 2.15, float32): after step 1 [0.85, -1.8, 2.85], after step 2
    /// [0.70749998, -1.6099999, 2.7074999].
    #[test]
    fn adamw_matches_torch_on_a_small_case() {
        let w = Var::new(&[1f32, -2., 3.], &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
        let g = Tensor::new(&[0.5f32, -1., 0.], &Device::Cpu).unwrap();
        opt.step_with(&[(w.clone(), g.clone())]).unwrap();
        let a = w.to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip([0.85f32, -1.8, 2.85]) {
            assert!((x - y).abs() < 1e-6, "{a:?}");
        }
        opt.step_with(&[(w.clone(), g)]).unwrap();
        let a = w.to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip([0.70749998f32, -1.6099999, 2.7074999]) {
            assert!((x - y).abs() < 1e-6, "{a:?}");
        }
    }

    /// `torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)`, w =
    /// [1., -2.], constant grad [0.5, 1.], two steps (PyTorch 2.15): [0.886, -2.152],
    /// [0.72556597, -2.365912].
    #[test]
    fn sgd_nesterov_matches_torch() {
        let w = Var::new(&[1f32, -2.], &Device::Cpu).unwrap();
        let cfg = SgdConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            nesterov: true,
            ..SgdConfig::new(0.1)
        };
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], cfg).unwrap();
        let g = Tensor::new(&[0.5f32, 1.], &Device::Cpu).unwrap();
        opt.step_with(&[(w.clone(), g.clone())]).unwrap();
        let a = w.to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip([0.886f32, -2.152]) {
            assert!((x - y).abs() < 1e-6, "{a:?}");
        }
        opt.step_with(&[(w.clone(), g)]).unwrap();
        let a = w.to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip([0.72556597f32, -2.365912]) {
            assert!((x - y).abs() < 1e-6, "{a:?}");
        }
    }

    fn run_resume<O: Optimizer>(make: impl Fn(&VarStore) -> O, tag: &str) {
        let (k, total) = (3, 6);
        // Uninterrupted run.
        let (vs_a, x) = setup(5);
        let mut a = make(&vs_a);
        for _ in 0..total {
            a.step(&loss(&vs_a, &x).backward().unwrap()).unwrap();
        }
        // k steps, checkpoint params + optimizer to disk, resume in fresh objects.
        let (vs_b, _) = setup(5);
        let mut b = make(&vs_b);
        for _ in 0..k {
            b.step(&loss(&vs_b, &x).backward().unwrap()).unwrap();
        }
        b.set_lr(b.lr() * 0.5);
        let dir = std::env::temp_dir().join(format!("seqlab-optim-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        vs_b.save_safetensors(dir.join("model.safetensors")).unwrap();
        b.state_dict()
            .unwrap()
            .save_safetensors(dir.join("optim.safetensors"))
            .unwrap();
        let (vs_c, _) = setup(77);
        vs_c.load_safetensors(dir.join("model.safetensors"), true).unwrap();
        let mut c = make(&vs_c);
        c.load_state(&OptimizerState::load_safetensors(dir.join("optim.safetensors")).unwrap())
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(c.lr(), b.lr());
        assert_eq!(c.state_dict().unwrap().step, k as u64);
        c.set_lr(a.lr());
        for _ in k..total {
            c.step(&loss(&vs_c, &x).backward().unwrap()).unwrap();
        }
        assert_eq!(values(&vs_a), values(&vs_c), "{tag}: resumed run differs");
        assert_ne!(values(&vs_a), values(&setup(5).0));
    }

    #[test]
    fn adamw_resumes_bit_exactly() {
        run_resume(
            |vs| AdamW::new(vs.trainable(), AdamWConfig::new(0.05)).unwrap(),
            "adamw",
        );
    }

    #[test]
    fn sgd_resumes_bit_exactly() {
        let cfg = SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
            ..SgdConfig::new(0.05)
        };
        run_resume(|vs| Sgd::new(vs.trainable(), cfg.clone()).unwrap(), "sgd");
    }

    #[test]
    fn bad_config_and_state_are_errors() {
        let (vs, _) = setup(1);
        assert!(AdamW::new(
            vs.trainable(),
            AdamWConfig {
                betas: (1.0, 0.9),
                ..Default::default()
            }
        )
        .is_err());
        assert!(AdamW::new(vs.trainable(), AdamWConfig::new(-1.0)).is_err());
        assert!(Sgd::new(
            vs.trainable(),
            SgdConfig {
                nesterov: true,
                ..SgdConfig::new(0.1)
            }
        )
        .is_err());
        let mut opt = AdamW::new(vs.trainable(), AdamWConfig::default()).unwrap();
        let wrong = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let w = vs.get("w").unwrap();
        assert!(opt.step_with(&[(w, wrong.clone())]).is_err());
        let stranger = Var::new(&[1f32], &Device::Cpu).unwrap();
        assert!(opt
            .step_with(&[(stranger.clone(), stranger.as_tensor().clone())])
            .is_err());
        let mut st = opt.state_dict().unwrap();
        st.tensors.insert("exp_avg.nope".into(), wrong.clone());
        let e = opt.load_state(&st).unwrap_err().to_string();
        assert!(e.contains("unexpected key exp_avg.nope"), "{e}");
        st.kind = "sgd".into();
        assert!(opt.load_state(&st).is_err());
    }

    #[test]
    fn params_without_grad_are_skipped() {
        let (vs, x) = setup(2);
        let extra = vs.param("unused", 2, Init::Ones).unwrap();
        let mut opt = AdamW::new(vs.trainable(), AdamWConfig::default()).unwrap();
        opt.step(&loss(&vs, &x).backward().unwrap()).unwrap();
        assert_eq!(extra.to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
        assert!(!opt.state_dict().unwrap().tensors.contains_key("step.unused"));
    }

    #[test]
    fn no_weight_decay_params_are_only_adam_updated() {
        // With a zero gradient AdamW's Adam term is 0, so only the decay moves a parameter.
        let vs = VarStore::new(0, &Device::Cpu);
        let w = vs.param("w", 2, Init::Ones).unwrap();
        let a = vs.param_no_weight_decay("A_log", 2, Init::Ones).unwrap();
        assert_eq!(vs.no_weight_decay(), vec!["A_log".to_string()]);
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::new(0.1)
        };
        let mut opt = AdamW::for_store(&vs, cfg).unwrap();
        let zero = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let vars: Vec<Var> = vs.trainable().into_iter().map(|(_, v)| v).collect();
        opt.step_with(&[(vars[0].clone(), zero.clone()), (vars[1].clone(), zero.clone())])
            .unwrap();
        assert_eq!(w.to_vec1::<f32>().unwrap(), vec![0.95, 0.95]);
        assert_eq!(a.to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
        let mut sgd = Sgd::for_store(
            &vs,
            SgdConfig {
                weight_decay: 0.5,
                ..SgdConfig::new(0.1)
            },
        )
        .unwrap();
        sgd.step_with(&[(vars[0].clone(), zero.clone()), (vars[1].clone(), zero)])
            .unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
        assert!(w.to_vec1::<f32>().unwrap()[0] < 0.95);
        let e = AdamW::new(vs.trainable(), AdamWConfig::default())
            .unwrap()
            .without_weight_decay(&["nope".to_string()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
