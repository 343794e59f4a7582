//! Mamba: the selective state-space layer (Gu & Dao, 2023, "Mamba: Linear-Time Sequence
//! Modeling with Selective State Spaces"), as `state-spaces/mamba`'s `Mamba` module
//! (`mamba_simple.py`, the slow path with `selective_scan_ref`), trained on the CPU.
//!
//! - [`Mamba`]: the mixer, x (B, L, d_model) → (B, L, d_model), with the reference's parameter
//!   names and initialisation, an optional [`Padding`] for variable-length batches, and a
//!   [`Mamba::step`] for incremental decoding with a [`MambaState`].
//! - [`scan`]: the selective scan (fused CPU kernel with a hand-written backward, and the
//!   composed reference).
//! - [`MambaBlock`], [`MambaModel`], [`MambaLmHead`]: residual block, stacked model and
//!   language model (`mamba_ssm/models/mixer_seq_simple.py`).

mod model;
pub mod scan;

pub use model::{
    MambaBlock, MambaBlockConfig, MambaCache, MambaLmHead, MambaLmHeadConfig, MambaModel, MambaModelConfig, NormKind,
};
pub use scan::{selective_scan, selective_scan_composed, ScanInputs, ScanOutput};

use crate::kernels::state_update;
use crate::{ops, Init, Linear, LinearConfig, VarStore};
use candle_core::{bail, DType, Device, Result, Tensor, D};

/// `dt_rank` of [`MambaConfig`]: the rank of the Δ projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtRank {
    /// The reference's `"auto"`: ceil(d_model / 16).
    Auto,
    Fixed(usize),
}

/// Configuration of [`Mamba`]; defaults are those of `mamba_simple.Mamba`.
#[derive(Clone, Debug, PartialEq)]
pub struct MambaConfig {
    /// Model width (input and output size).
    pub d_model: usize,
    /// SSM state size N per channel. Default 16.
    pub d_state: usize,
    /// Width of the depthwise causal convolution. Default 4.
    pub d_conv: usize,
    /// d_inner = expand · d_model (an integer here). Default 2.
    pub expand: usize,
    /// Default [`DtRank::Auto`] (ceil(d_model / 16)).
    pub dt_rank: DtRank,
    /// Initial Δ is drawn log-uniformly in [dt_min, dt_max]. Defaults 0.001 and 0.1.
    pub dt_min: f64,
    /// Upper end of the initial Δ range. Default 0.1.
    pub dt_max: f64,
    /// Floor of the initial Δ. Default 1e-4.
    pub dt_init_floor: f64,
    /// `dt_proj.weight` is U(±dt_scale · dt_rank^-0.5). Default 1.
    pub dt_scale: f64,
    /// Biases of `in_proj` and `out_proj`. Default `false`.
    pub bias: bool,
    /// Bias of `conv1d`. Default `true`.
    pub conv_bias: bool,
}

impl MambaConfig {
    /// The reference defaults for `d_model`: d_state 16, d_conv 4, expand 2, dt_rank auto.
    pub fn new(d_model: usize) -> Self {
        Self {
            d_model,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: DtRank::Auto,
            dt_min: 0.001,
            dt_max: 0.1,
            dt_init_floor: 1e-4,
            dt_scale: 1.0,
            bias: false,
            conv_bias: true,
        }
    }

    /// Inner width `expand * d_model` (the reference's `d_inner`).
    pub fn d_inner(&self) -> usize {
        self.expand * self.d_model
    }

    /// Rank of the Δ projection: `ceil(d_model / 16)` when auto.
    pub fn dt_rank(&self) -> usize {
        match self.dt_rank {
            DtRank::Auto => self.d_model.div_ceil(16),
            DtRank::Fixed(r) => r,
        }
    }

    /// Rejects unusable values, naming the key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("d_model", self.d_model),
            ("d_state", self.d_state),
            ("d_conv", self.d_conv),
            ("expand", self.expand),
            ("dt_rank", self.dt_rank()),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("MambaConfig: `{key}` must be positive, got 0");
            }
        }
        let finite_pos = [
            ("dt_min", self.dt_min),
            ("dt_max", self.dt_max),
            ("dt_init_floor", self.dt_init_floor),
            ("dt_scale", self.dt_scale),
        ];
        for (key, v) in finite_pos {
            if !(v.is_finite() && v > 0.0) {
                bail!("MambaConfig: `{key}` must be a positive number, got {v}");
            }
        }
        if self.dt_min > self.dt_max {
            bail!(
                "MambaConfig: `dt_min` ({}) must not exceed `dt_max` ({})",
                self.dt_min,
                self.dt_max
            );
        }
        Ok(())
    }
}

/// Which positions of a batch are real. Each sequence's real tokens must be contiguous:
/// right padding (`[t t t p p]`), left padding (`[p p t t t]`) or both; a padded position
/// between real ones is rejected. Padded positions change neither the state nor the outputs
/// of real positions: their conv input is zeroed (so a first real token sees the same zeros as
/// in an unpadded run), the scan skips them, and the mixer outputs zero there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Padding {
    seq_len: usize,
    spans: Vec<(usize, usize)>,
}

impl Padding {
    /// Sequence `b` is real at `start_end[b].0 .. start_end[b].1` of `seq_len` positions.
    pub fn from_spans(start_end: Vec<(usize, usize)>, seq_len: usize) -> Result<Self> {
        if let Some((b, s)) = start_end.iter().enumerate().find(|(_, &(s, e))| s >= e || e > seq_len) {
            bail!("Padding: sequence {b} has real span {s:?}; need a non-empty span within 0..{seq_len}");
        }
        Ok(Self {
            seq_len,
            spans: start_end,
        })
    }

    /// Real tokens first: sequence `b` is real at `0..lengths[b]`.
    pub fn right(lengths: &[usize], seq_len: usize) -> Result<Self> {
        Self::from_spans(lengths.iter().map(|&n| (0, n)).collect(), seq_len)
    }

    /// Real tokens last: sequence `b` is real at `seq_len - lengths[b]..seq_len`.
    pub fn left(lengths: &[usize], seq_len: usize) -> Result<Self> {
        if let Some(&n) = lengths.iter().find(|&&n| n > seq_len) {
            bail!("Padding: length {n} exceeds the sequence length {seq_len}");
        }
        Self::from_spans(lengths.iter().map(|&n| (seq_len - n, seq_len)).collect(), seq_len)
    }

    /// From PyTorch's `key_padding_mask` convention: (B, L), nonzero = padded.
    pub fn from_key_padding_mask(mask: &Tensor) -> Result<Self> {
        let (bsz, l) = mask.dims2()?;
        let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut spans = Vec::with_capacity(bsz);
        for (b, row) in rows.iter().enumerate() {
            let real: Vec<usize> = (0..l).filter(|&t| row[t] == 0.0).collect();
            let (Some(&s), Some(&e)) = (real.first(), real.last()) else {
                bail!("Padding: sequence {b} of the key_padding_mask is all padding");
            };
            if e + 1 - s != real.len() {
                bail!("Padding: sequence {b} of the key_padding_mask has padding between real tokens (positions {s}..={e}); only left and right padding are supported");
            }
            spans.push((s, e + 1));
        }
        Self::from_spans(spans, l)
    }

    /// `(start, end)` of each sequence's real positions.
    pub fn spans(&self) -> &[(usize, usize)] {
        &self.spans
    }

    /// Padded sequence length L that this padding describes.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Checks that the padding describes a (batch, seq_len) input.
    fn check(&self, batch: usize, seq_len: usize) -> Result<()> {
        if self.spans.len() != batch || self.seq_len != seq_len {
            bail!(
                "Padding: describes {} sequences of {} positions, the input has {batch} of {seq_len}",
                self.spans.len(),
                self.seq_len
            );
        }
        Ok(())
    }

    /// (B, L, 1): 1 at real positions, 0 at padding.
    pub fn keep_mask(&self, device: &Device) -> Result<Tensor> {
        let l = self.seq_len;
        let v: Vec<f32> = self
            .spans
            .iter()
            .flat_map(|&(s, e)| (0..l).map(move |t| if (s..e).contains(&t) { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_vec(v, (self.spans.len(), l, 1), device)
    }
}

/// Recurrent state of one [`Mamba`] layer for incremental decoding; shapes as the reference's
/// `allocate_inference_cache`.
#[derive(Clone, Debug)]
pub struct MambaState {
    /// (B, d_inner, d_conv): the last d_conv conv inputs, newest last.
    pub conv: Tensor,
    /// (B, d_inner, d_state): the SSM state h.
    pub ssm: Tensor,
}

/// How a stacked model re-initialises a mixer (`mixer_seq_simple._init_weights`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MixerInit {
    /// Zero the `in_proj`/`out_proj` biases (the model's `_init_weights`); the standalone
    /// module keeps PyTorch's default Linear init.
    pub zero_linear_bias: bool,
    /// `out_proj.weight` is divided by sqrt(n_layer) (GPT-2's residual scaling); 1 = none.
    pub n_layer: usize,
}

impl MixerInit {
    /// The module on its own: PyTorch's default Linear init, no residual scaling.
    pub const STANDALONE: Self = Self {
        zero_linear_bias: false,
        n_layer: 1,
    };
}

/// The Mamba mixer of `state-spaces/mamba` (`mamba_simple.Mamba`, slow path):
///
/// ```text
/// x, z = split(in_proj(hidden))                       d_model → 2·d_inner
/// x = silu(causal depthwise conv1d(x))                kernel d_conv, left zero padding
/// dt, B, C = split(x_proj(x))                         d_inner → dt_rank + 2·d_state
/// y = selective_scan(x, dt_proj.weight @ dt, A = −exp(A_log), B, C, D, z, dt_proj.bias)
/// out = out_proj(y)
/// ```
///
/// Parameters (reference `state_dict` names): `in_proj.weight` (2·d_inner, d_model)
/// [+ `in_proj.bias`], `conv1d.weight` (d_inner, 1, d_conv) [+ `conv1d.bias`],
/// `x_proj.weight` (dt_rank + 2·d_state, d_inner), `dt_proj.weight` (d_inner, dt_rank),
/// `dt_proj.bias` (d_inner), `A_log` (d_inner, d_state), `D` (d_inner), `out_proj.weight`
/// (d_model, d_inner) [+ `out_proj.bias`]. `A_log` and `D` are excluded from weight decay.
#[derive(Clone, Debug)]
pub struct Mamba {
    cfg: MambaConfig,
    in_proj: Linear,
    conv_weight: Tensor,
    conv_bias: Option<Tensor>,
    x_proj: Linear,
    dt_proj: Linear,
    a_log: Tensor,
    d: Tensor,
    out_proj: Linear,
}

impl Mamba {
    /// Builds the mixer with the reference's initialisation, drawing from `vs`'s seeded RNG:
    /// Linear and Conv1d layers as PyTorch (U(±1/√fan_in)), `dt_proj.weight` U(±dt_scale ·
    /// dt_rank^-0.5), `dt_proj.bias` = softplus⁻¹(Δ) with Δ log-uniform in [dt_min, dt_max]
    /// floored at dt_init_floor, `A_log[d, n] = log(n + 1)` (S4D-real), `D` = 1.
    pub fn new(cfg: &MambaConfig, vs: &VarStore) -> Result<Self> {
        Self::with_init(cfg, MixerInit::STANDALONE, vs)
    }

    pub(crate) fn with_init(cfg: &MambaConfig, init: MixerInit, vs: &VarStore) -> Result<Self> {
        cfg.validate()?;
        let (dm, di, n, k, r) = (cfg.d_model, cfg.d_inner(), cfg.d_state, cfg.d_conv, cfg.dt_rank());
        let linear = |name: &str, inp: usize, out: usize, bias: bool| -> Result<Linear> {
            let l = Linear::new(
                &LinearConfig {
                    bias,
                    ..LinearConfig::new(inp, out)
                },
                &vs.pp(name),
            )?;
            if init.zero_linear_bias && bias {
                set(
                    vs,
                    &format!("{name}.bias"),
                    &Tensor::zeros(out, DType::F32, vs.device())?,
                )?;
            }
            Ok(l)
        };
        let in_proj = linear("in_proj", dm, 2 * di, cfg.bias)?;
        // nn.Conv1d(groups=d_inner): fan_in = (in_channels / groups) · kernel = d_conv.
        let conv_init = Init::uniform_fan(k);
        let conv_weight = vs.pp("conv1d").param("weight", (di, 1, k), conv_init)?;
        let conv_bias = if cfg.conv_bias {
            Some(vs.pp("conv1d").param("bias", di, conv_init)?)
        } else {
            None
        };
        let x_proj = linear("x_proj", di, r + 2 * n, false)?;
        let std = cfg.dt_scale / (r as f64).sqrt();
        let dt_w = vs
            .pp("dt_proj")
            .param("weight", (di, r), Init::Uniform { lo: -std, hi: std })?;
        let dt_bias = {
            let u = vs.rng().lock().unwrap().uniform_vec(di, 0.0, 1.0);
            let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
            let v: Vec<f32> = u
                .iter()
                .map(|&u| {
                    let dt = (u as f64 * (hi - lo) + lo).exp().max(cfg.dt_init_floor);
                    // softplus⁻¹(dt) = dt + log(1 − e^−dt), written with expm1 for small dt.
                    (dt + (-(-dt).exp_m1()).ln()) as f32
                })
                .collect();
            let b = vs.pp("dt_proj").param("bias", di, Init::Zeros)?;
            set(vs, "dt_proj.bias", &Tensor::from_vec(v, di, vs.device())?)?;
            b
        };
        let dt_proj = Linear {
            weight: dt_w,
            bias: Some(dt_bias),
        };
        let a_log = vs.param_no_weight_decay("A_log", (di, n), Init::Zeros)?;
        let row: Vec<f32> = (1..=n).map(|i| (i as f32).ln()).collect();
        set(
            vs,
            "A_log",
            &Tensor::new(row, vs.device())?.unsqueeze(0)?.repeat((di, 1))?,
        )?;
        let d = vs.param_no_weight_decay("D", di, Init::Ones)?;
        let out_proj = linear("out_proj", di, dm, cfg.bias)?;
        if init.n_layer > 1 {
            // kaiming_uniform(a=√5) (= PyTorch's Linear default) divided by sqrt(n_layer).
            let b = 1.0 / ((di * init.n_layer) as f64).sqrt();
            let w = vs.rng().lock().unwrap().uniform((dm, di), -b, b, vs.device())?;
            set(vs, "out_proj.weight", &w)?;
        }
        Ok(Self {
            cfg: cfg.clone(),
            in_proj,
            conv_weight,
            conv_bias,
            x_proj,
            dt_proj,
            a_log,
            d,
            out_proj,
        })
    }

    /// The configuration this layer was built with.
    pub fn config(&self) -> &MambaConfig {
        &self.cfg
    }

    /// (B, L, d_model) → (B, L, d_model). With `padding`, real positions give exactly what
    /// their sequence alone gives, and padded positions output zero.
    pub fn forward(&self, x: &Tensor, padding: Option<&Padding>) -> Result<Tensor> {
        Ok(self.run(x, padding, false)?.0)
    }

    /// [`Mamba::forward`] that also returns the state after each sequence's last real position,
    /// from which [`Mamba::step`] continues (prefill).
    pub fn forward_with_state(&self, x: &Tensor, padding: Option<&Padding>) -> Result<(Tensor, MambaState)> {
        let (y, st) = self.run(x, padding, true)?;
        Ok((y, st.expect("asked for the state")))
    }

    fn run(&self, x: &Tensor, padding: Option<&Padding>, want_state: bool) -> Result<(Tensor, Option<MambaState>)> {
        let (bsz, l, dm) = x.dims3()?;
        if dm != self.cfg.d_model {
            bail!("Mamba: input has {dm} features, d_model is {}", self.cfg.d_model);
        }
        if l == 0 {
            bail!("Mamba: empty sequence");
        }
        if let Some(p) = padding {
            p.check(bsz, l)?;
        }
        let (di, n, k, r) = (
            self.cfg.d_inner(),
            self.cfg.d_state,
            self.cfg.d_conv,
            self.cfg.dt_rank(),
        );
        let keep = padding.map(|p| p.keep_mask(x.device())).transpose()?;
        let xz = self.in_proj.forward(x)?;
        let mut xs = xz.narrow(2, 0, di)?;
        let z = xz.narrow(2, di, di)?;
        if let Some(m) = &keep {
            // Zeroed padding cannot reach real positions through the convolution.
            xs = xs.broadcast_mul(m)?;
        }
        let u = self.conv_silu(&xs)?;
        let x_dbl = self.x_proj.forward(&u)?;
        let dt = x_dbl.narrow(2, 0, r)?;
        let bm = x_dbl.narrow(2, r, n)?.contiguous()?;
        let cm = x_dbl.narrow(2, r + n, n)?.contiguous()?;
        let delta = ops::linear(&dt, &self.dt_proj.weight, None)?;
        let a = self.a_log.exp()?.neg()?;
        let dt_bias = self.dt_proj.bias.as_ref().expect("dt_proj has a bias");
        let scan = selective_scan(
            ScanInputs {
                u: &u,
                delta: &delta,
                a: &a,
                b: &bm,
                c: &cm,
                d: &self.d,
                z: &z,
                delta_bias: dt_bias,
            },
            padding.map(|p| p.spans()),
        )?;
        let mut y = self.out_proj.forward(&scan.y)?;
        if let Some(m) = &keep {
            y = y.broadcast_mul(m)?;
        }
        let state = if want_state {
            // The last d_conv conv inputs before each sequence's end: xp is x shifted by k−1,
            // so x[end−k .. end] is xp[end−1 .. end−1+k].
            let xp = Tensor::cat(&[&Tensor::zeros((bsz, k - 1, di), DType::F32, x.device())?, &xs], 1)?;
            let ends: Vec<usize> = match padding {
                Some(p) => p.spans().iter().map(|s| s.1).collect(),
                None => vec![l; bsz],
            };
            let rows = ends
                .iter()
                .enumerate()
                .map(|(b, &e)| xp.get(b)?.narrow(0, e - 1, k)?.t())
                .collect::<Result<Vec<_>>>()?;
            Some(MambaState {
                conv: Tensor::stack(&rows, 0)?.contiguous()?,
                ssm: scan.last_state,
            })
        } else {
            None
        };
        Ok((y, state))
    }

    /// silu(causal depthwise conv1d(x)) of x (B, L, d_inner): the fused kernel on the CPU
    /// ([`crate::ops::use_fused`]), composed candle ops otherwise.
    fn conv_silu(&self, xs: &Tensor) -> Result<Tensor> {
        if !crate::ops::use_fused(xs) {
            return conv_silu_composed(xs, &self.conv_weight, self.conv_bias.as_ref());
        }
        let w = self.conv_weight.squeeze(1)?;
        let bias = match &self.conv_bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(w.dim(0)?, DType::F32, xs.device())?,
        };
        crate::kernels::causal_conv1d::causal_conv1d_silu(xs, &w, &bias)
    }

    /// Zero states for a batch of `batch` sequences (nothing seen yet).
    pub fn new_state(&self, batch: usize, device: &Device) -> Result<MambaState> {
        let (di, n, k) = (self.cfg.d_inner(), self.cfg.d_state, self.cfg.d_conv);
        Ok(MambaState {
            conv: Tensor::zeros((batch, di, k), DType::F32, device)?,
            ssm: Tensor::zeros((batch, di, n), DType::F32, device)?,
        })
    }

    /// One decoding step, the reference's `Mamba.step`: x (B, d_model) → (B, d_model), updating
    /// `state`. Stepping through a sequence from [`Mamba::new_state`] gives [`Mamba::forward`]'s
    /// outputs. On f32 CPU tensors with the fused path, the conv window and the SSM state are
    /// updated by one kernel each ([`crate::kernels::state_update`], as the reference's
    /// `selective_state_update`), which has no backward: a gradient through a step is an error
    /// there (train through [`Mamba::forward`]); the composed path is differentiable. After a
    /// fused step `state.ssm` is a view (last dimension contiguous) into the kernel's output.
    pub fn step(&self, x: &Tensor, state: &mut MambaState) -> Result<Tensor> {
        let (bsz, dm) = x.dims2()?;
        if dm != self.cfg.d_model {
            bail!("Mamba::step: input has {dm} features, d_model is {}", self.cfg.d_model);
        }
        let (di, n, k, r) = (
            self.cfg.d_inner(),
            self.cfg.d_state,
            self.cfg.d_conv,
            self.cfg.dt_rank(),
        );
        if state.conv.dims() != [bsz, di, k] || state.ssm.dims() != [bsz, di, n] {
            bail!(
                "Mamba::step: state shapes conv {:?} ssm {:?} do not fit a batch of {bsz} (want ({bsz}, {di}, {k}) and ({bsz}, {di}, {n}))",
                state.conv.dims(),
                state.ssm.dims()
            );
        }
        let xz = self.in_proj.forward(x)?;
        let xs = xz.narrow(1, 0, di)?;
        let z = xz.narrow(1, di, di)?;
        let conv = Tensor::cat(&[&state.conv.narrow(2, 1, k - 1)?, &xs.unsqueeze(2)?], 2)?;
        let fused = ops::use_fused(&conv);
        let u = if fused {
            state_update::conv_step(&conv, &self.conv_weight.squeeze(1)?, self.conv_bias.as_ref())?
        } else {
            let mut xc = conv.broadcast_mul(&self.conv_weight.squeeze(1)?)?.sum(D::Minus1)?;
            if let Some(b) = &self.conv_bias {
                xc = xc.broadcast_add(b)?;
            }
            xc.silu()?
        };
        let x_db = self.x_proj.forward(&u)?;
        let dt = ops::linear(&x_db.narrow(1, 0, r)?, &self.dt_proj.weight, self.dt_proj.bias.as_ref())?;
        let (ssm, y) = if fused {
            state_update::state_update(state_update::StateStep {
                ssm: &state.ssm,
                dt: &dt,
                u: &u,
                z: &z,
                bc: &x_db.narrow(1, r, 2 * n)?,
                a_log: &self.a_log,
                d: &self.d,
            })?
        } else {
            let dt = scan::softplus(&dt)?; // (B, d_inner)
            let bm = x_db.narrow(1, r, n)?;
            let cm = x_db.narrow(1, r + n, n)?;
            let a = self.a_log.exp()?.neg()?;
            let da = dt.unsqueeze(2)?.broadcast_mul(&a.unsqueeze(0)?)?.exp()?;
            let dbu = (&dt * &u)?.unsqueeze(2)?.broadcast_mul(&bm.unsqueeze(1)?)?;
            let ssm = ((&state.ssm * da)? + dbu)?;
            let y = ssm.broadcast_mul(&cm.unsqueeze(1)?)?.sum(D::Minus1)?;
            let y = ((y + u.broadcast_mul(&self.d)?)? * z.silu()?)?;
            (ssm, y)
        };
        state.conv = conv;
        state.ssm = ssm;
        self.out_proj.forward(&y)
    }
}

/// silu(causal depthwise conv1d(x)) from candle ops: x (B, L, D), weight (D, 1, K), bias (D);
/// out[t] = silu(bias + Σ_j w[j] · x[t − (K−1) + j]) with x[<0] = 0 (`nn.Conv1d(groups=D,
/// padding=K−1)` cut to the first L outputs). Other devices, and the kernel's reference.
pub(crate) fn conv_silu_composed(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (bsz, l, di) = xs.dims3()?;
    let k = weight.dim(2)?;
    let xp = Tensor::cat(&[&Tensor::zeros((bsz, k - 1, di), DType::F32, xs.device())?, xs], 1)?;
    let w = weight.squeeze(1)?.t()?; // (k, d_inner)
    let mut xc = xp.narrow(1, 0, l)?.broadcast_mul(&w.get(0)?)?;
    for j in 1..k {
        xc = (xc + xp.narrow(1, j, l)?.broadcast_mul(&w.get(j)?)?)?;
    }
    if let Some(b) = bias {
        xc = xc.broadcast_add(b)?;
    }
    xc.silu()
}

/// Overwrites parameter `name` (under `vs`'s prefix) with `value`.
fn set(vs: &VarStore, name: &str, value: &Tensor) -> Result<()> {
    let full = vs.path(name);
    match vs.get(&full) {
        Some(v) => v.set(value),
        None => bail!("Mamba: parameter {full} does not exist"),
    }
}

#[cfg(test)]
mod tests;
