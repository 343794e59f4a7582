//! `nn.RNN`, `nn.LSTM`, `nn.GRU` with PyTorch's semantics and parameter names, and the
//! [`RecurrentClassifier`] (recurrent layer → last step → `nn.Linear`).
//!
//! Each layer and direction runs as: one matmul `x @ W_ih^T + b` over all time steps (the
//! fused linear op, [`crate::kernels::linear`]), then the whole recurrence as one fused op
//! ([`crate::kernels::recurrence`]) with a hand-written BPTT backward. On other devices, and
//! with [`crate::ops::Path::Composed`], the same recurrence runs step by step from candle ops
//! ([`recurrence_composed`]) with autograd as BPTT; the PyTorch parity cases run both.
//!
//! Variable-length batches: `lengths[b]` is sequence b's valid length. Outputs past it are
//! zero, the final states are those of its last valid step, and the reverse direction starts
//! at its own last valid step — what PyTorch gives with `pack_padded_sequence(x, lengths,
//! enforce_sorted=False)` → RNN → `pad_packed_sequence(total_length=T)`.

use crate::kernels::recurrence::{FusedCell, FusedPair, FusedRecurrence, FusedSpec};
use crate::{Dropout, Init, Linear, LinearConfig, VarStore};
use candle_core::{bail, DType, Result, Tensor};

/// Nonlinearity of a plain RNN (`nonlinearity=` in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nonlinearity {
    Tanh,
    Relu,
}

/// The kind of recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    Rnn(Nonlinearity),
    Lstm,
    Gru,
}

impl CellKind {
    /// "rnn" (tanh), "rnn_relu", "lstm", "gru".
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "rnn" | "rnn_tanh" => CellKind::Rnn(Nonlinearity::Tanh),
            "rnn_relu" => CellKind::Rnn(Nonlinearity::Relu),
            "lstm" => CellKind::Lstm,
            "gru" => CellKind::Gru,
            other => bail!("unknown recurrent cell `{other}` (expected rnn, rnn_relu, lstm or gru)"),
        })
    }

    fn fused(self) -> FusedCell {
        match self {
            CellKind::Rnn(Nonlinearity::Tanh) => FusedCell::RnnTanh,
            CellKind::Rnn(Nonlinearity::Relu) => FusedCell::RnnRelu,
            CellKind::Lstm => FusedCell::Lstm,
            CellKind::Gru => FusedCell::Gru,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CellKind::Rnn(_) => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }
}

/// Configuration shared by [`Rnn`], [`Lstm`] and [`Gru`]; defaults follow PyTorch:
/// `num_layers = 1`, `bias = true`, `batch_first = false`, `dropout = 0.0` (applied to the
/// outputs of every layer but the last, in training only), `bidirectional = false`,
/// `proj_size = 0` (LSTM only; must be < `hidden_size`), `nonlinearity = Tanh` (RNN only).
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentConfig {
    /// Features per input step; must be > 0.
    pub input_size: usize,
    /// Features of the hidden state; must be > 0.
    pub hidden_size: usize,
    /// Stacked layers; must be > 0.
    pub num_layers: usize,
    /// `bias_ih_*`/`bias_hh_*` present.
    pub bias: bool,
    /// Input and output are (B, T, ·) instead of (T, B, ·).
    pub batch_first: bool,
    /// Dropout between layers (training only), in [0, 1).
    pub dropout: f64,
    /// A reverse direction per layer, outputs concatenated.
    pub bidirectional: bool,
    /// LSTM output projection size (0 = none); < hidden_size.
    pub proj_size: usize,
    /// Plain RNN only.
    pub nonlinearity: Nonlinearity,
}

/// `nn.RNN`'s arguments.
pub type RnnConfig = RecurrentConfig;
/// `nn.LSTM`'s arguments.
pub type LstmConfig = RecurrentConfig;
/// `nn.GRU`'s arguments.
pub type GruConfig = RecurrentConfig;

impl RecurrentConfig {
    /// The two sizes with PyTorch's defaults for the rest.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            proj_size: 0,
            nonlinearity: Nonlinearity::Tanh,
        }
    }

    fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Size of h: `proj_size` when set, else `hidden_size`.
    pub fn h_out(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    fn validate(&self, cell: CellKind) -> Result<()> {
        let n = cell.name();
        crate::check::positive(
            n,
            &[
                ("input_size", self.input_size),
                ("hidden_size", self.hidden_size),
                ("num_layers", self.num_layers),
            ],
        )?;
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("{n}: dropout must be in [0, 1), got {}", self.dropout);
        }
        if self.proj_size > 0 && cell != CellKind::Lstm {
            bail!("{n}: proj_size is only supported by LSTM");
        }
        if self.proj_size >= self.hidden_size && self.proj_size > 0 {
            bail!(
                "{n}: proj_size ({}) must be smaller than hidden_size ({})",
                self.proj_size,
                self.hidden_size
            );
        }
        Ok(())
    }
}

struct DirParams {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Option<Tensor>,
    b_hh: Option<Tensor>,
    w_hr: Option<Tensor>,
}

/// The common multi-layer, optionally bidirectional stack behind the three public types.
struct Stack {
    cell: CellKind,
    cfg: RecurrentConfig,
    /// `layers[l][d]`, d = 0 forward, 1 reverse.
    layers: Vec<Vec<DirParams>>,
    dropout: Dropout,
}

/// Final states and outputs of a stack.
struct StackOut {
    out: Tensor,
    hn: Tensor,
    cn: Option<Tensor>,
}

impl Stack {
    fn new(cell: CellKind, cfg: &RecurrentConfig, vs: &VarStore) -> Result<Self> {
        let mut cfg = cfg.clone();
        if let CellKind::Rnn(nl) = cell {
            cfg.nonlinearity = nl;
        }
        cfg.validate(cell)?;
        let gh = cell.fused().gates() * cfg.hidden_size;
        let p = cfg.h_out();
        // PyTorch initialises every weight and bias U(-1/sqrt(hidden_size), +).
        let init = Init::uniform_fan(cfg.hidden_size);
        let mut layers = Vec::new();
        // Creation order = PyTorch's `_flat_weights_names`, so state_dict order matches.
        for l in 0..cfg.num_layers {
            let in_l = if l == 0 { cfg.input_size } else { p * cfg.directions() };
            let mut dirs = Vec::new();
            for d in 0..cfg.directions() {
                let sfx = if d == 1 { "_reverse" } else { "" };
                let w_ih = vs.param(&format!("weight_ih_l{l}{sfx}"), (gh, in_l), init)?;
                let w_hh = vs.param(&format!("weight_hh_l{l}{sfx}"), (gh, p), init)?;
                let (b_ih, b_hh) = if cfg.bias {
                    (
                        Some(vs.param(&format!("bias_ih_l{l}{sfx}"), gh, init)?),
                        Some(vs.param(&format!("bias_hh_l{l}{sfx}"), gh, init)?),
                    )
                } else {
                    (None, None)
                };
                let w_hr = if cfg.proj_size > 0 {
                    Some(vs.param(&format!("weight_hr_l{l}{sfx}"), (p, cfg.hidden_size), init)?)
                } else {
                    None
                };
                dirs.push(DirParams {
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                    w_hr,
                });
            }
            layers.push(dirs);
        }
        let dropout = Dropout::new(cfg.dropout, vs.rng())?;
        Ok(Self {
            cell,
            cfg,
            layers,
            dropout,
        })
    }

    /// Runs every layer and direction: validates the input, then per layer runs each
    /// direction's recurrence and applies dropout between layers (training only).
    fn forward(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
        train: bool,
    ) -> Result<StackOut> {
        let x = self.time_major_input(x, h0, c0, lengths)?;
        let bsz = x.dim(1)?;
        let cfg = &self.cfg;
        let lstm = self.cell == CellKind::Lstm;
        let state0 = InitialState {
            h0,
            c0,
            zeros: Tensor::zeros(
                bsz * cfg.h_out() + if lstm { bsz * cfg.hidden_size } else { 0 },
                DType::F32,
                x.device(),
            )?,
        };
        let mut layer_in = x;
        let (mut hns, mut cns) = (Vec::new(), Vec::new());
        for (l, dparams) in self.layers.iter().enumerate() {
            let mut outs = Vec::new();
            for (out, hn, cn) in self.run_layer(dparams, &layer_in, &state0, l, lengths)? {
                outs.push(out);
                hns.push(hn);
                cns.extend(cn);
            }
            let out = if outs.len() == 1 {
                outs.pop().unwrap()
            } else {
                Tensor::cat(&outs, 2)?
            };
            layer_in = if l + 1 < cfg.num_layers {
                self.dropout.forward(&out, train)?
            } else {
                out
            };
        }
        let out = if cfg.batch_first {
            layer_in.transpose(0, 1)?.contiguous()?
        } else {
            layer_in
        };
        let hn = Tensor::stack(&hns, 0)?;
        let cn = if lstm { Some(Tensor::stack(&cns, 0)?) } else { None };
        Ok(StackOut { out, hn, cn })
    }

    /// Checks `x` (rank 3, f32, feature size, non-empty), `lengths` and the initial states, and
    /// returns `x` time-major (T, B, input_size).
    fn time_major_input(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<Tensor> {
        let n = self.cell.name();
        let cfg = &self.cfg;
        if x.rank() != 3 {
            bail!(
                "{n}: input must be 3-D ({}), got shape {:?}",
                if cfg.batch_first { "B, T, I" } else { "T, B, I" },
                x.dims()
            );
        }
        if x.dtype() != DType::F32 {
            bail!("{n}: input must be f32, got {:?}", x.dtype());
        }
        let x = if cfg.batch_first {
            x.transpose(0, 1)?.contiguous()?
        } else {
            x.clone()
        };
        let (t_len, bsz, i_size) = x.dims3()?;
        if i_size != cfg.input_size {
            bail!(
                "{n}: input feature size {i_size}, expected input_size {}",
                cfg.input_size
            );
        }
        if t_len == 0 || bsz == 0 {
            bail!("{n}: empty input of shape {:?}", x.dims());
        }
        if let Some(l) = lengths {
            if l.len() != bsz {
                bail!("{n}: {} lengths for a batch of {bsz}", l.len());
            }
            if let Some(bad) = l.iter().find(|&&v| v == 0 || v > t_len) {
                bail!("{n}: every length must be in 1..={t_len}, got {bad}");
            }
        }
        let states = cfg.num_layers * cfg.directions();
        for (s, what, size) in [(h0, "h0", cfg.h_out()), (c0, "c0", cfg.hidden_size)] {
            if let Some(s) = s {
                if s.dims() != [states, bsz, size] {
                    bail!(
                        "{n}: {what} must have shape {:?}, got {:?}",
                        [states, bsz, size],
                        s.dims()
                    );
                }
            }
        }
        Ok(x)
    }

    /// Layer `l`, every direction: `(out (T, B, H_out), hn, cn)` of each, forward first. A
    /// bidirectional layer on the fused path runs its directions as one [`FusedPair`] (side by
    /// side on the threads where that pays).
    fn run_layer(
        &self,
        dparams: &[DirParams],
        layer_in: &Tensor,
        state0: &InitialState,
        l: usize,
        lengths: Option<&[usize]>,
    ) -> Result<Vec<(Tensor, Tensor, Option<Tensor>)>> {
        let args = dparams
            .iter()
            .enumerate()
            .map(|(d, prm)| self.direction_args(prm, layer_in, state0, l * dparams.len() + d, d == 1, lengths))
            .collect::<Result<Vec<_>>>()?;
        let fused = crate::ops::use_fused(&args[0].1);
        if let ([(sf, gf, stf, wf), (sr, gr, str_, wr)], true) = (&args[..], fused) {
            return Ok(FusedPair::run([sf.clone(), sr.clone()], [gf, gr], [stf, str_], [wf, wr])?.into());
        }
        args.into_iter()
            .map(|(spec, gx, st, w)| {
                if fused {
                    FusedRecurrence::run(spec, &gx, &st, &w)
                } else {
                    recurrence_composed(&spec, &gx, &st, &w)
                }
            })
            .collect()
    }

    /// One layer and direction (`idx` = layer·D + direction): the input projection over all
    /// steps, and the recurrence's spec, flat initial state and weights.
    fn direction_args(
        &self,
        prm: &DirParams,
        layer_in: &Tensor,
        state0: &InitialState,
        idx: usize,
        reverse: bool,
        lengths: Option<&[usize]>,
    ) -> Result<(FusedSpec, Tensor, Tensor, Tensor)> {
        let (t_len, bsz, _) = layer_in.dims3()?;
        let (bias_x, b_hn) = self.split_biases(prm, layer_in.device())?;
        // The fused linear op: one gemm plus a bias pass, and a backward that is two gemms
        // and a column sum (candle's matmul + broadcast_add took several more full passes
        // over the (T·B, G·H) gradient, and always computed the input's gradient).
        let gx = crate::kernels::linear::linear_act(layer_in, &prm.w_ih, bias_x.as_ref(), false)?;
        let state0 = state0.flat(idx, bsz, &self.cfg, self.cell == CellKind::Lstm)?;
        let w = Self::recurrent_weights(prm, b_hn.as_ref())?;
        let spec = FusedSpec {
            cell: self.cell.fused(),
            seq_len: t_len,
            batch: bsz,
            hidden: self.cfg.hidden_size,
            out: self.cfg.h_out(),
            proj: prm.w_hr.is_some(),
            gru_bhn: b_hn.is_some(),
            reverse,
            lengths: lengths.map(|l| l.to_vec()),
        };
        Ok((spec, gx, state0, w))
    }

    /// The bias that joins the input projection, and GRU's `b_hn`. Bias terms that merely
    /// add can join the input projection; GRU's b_hn is multiplied by r and must stay inside
    /// the recurrence.
    fn split_biases(&self, prm: &DirParams, dev: &candle_core::Device) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = self.cfg.hidden_size;
        Ok(match (&prm.b_ih, &prm.b_hh) {
            (Some(bi), Some(bh)) if self.cell == CellKind::Gru => {
                let rz = bh.narrow(0, 0, 2 * h)?;
                let pad = Tensor::zeros(h, DType::F32, dev)?;
                (
                    Some((bi + Tensor::cat(&[&rz, &pad], 0)?)?),
                    Some(bh.narrow(0, 2 * h, h)?),
                )
            }
            (Some(bi), Some(bh)) => (Some((bi + bh)?), None),
            _ => (None, None),
        })
    }

    /// The fused op's recurrent weights, flattened and concatenated: W_hh, then W_hr
    /// (projection), then GRU's b_hn.
    fn recurrent_weights(prm: &DirParams, b_hn: Option<&Tensor>) -> Result<Tensor> {
        let mut wparts = vec![prm.w_hh.flatten_all()?];
        if let Some(w) = &prm.w_hr {
            wparts.push(w.flatten_all()?);
        }
        if let Some(b) = b_hn {
            wparts.push(b.clone());
        }
        if wparts.len() == 1 {
            Ok(wparts.pop().unwrap())
        } else {
            Tensor::cat(&wparts, 0)
        }
    }
}

/// The fused recurrence's function ([`FusedRecurrence::run`]: same arguments, same results)
/// composed from candle ops, one step at a time, so that autograd does the BPTT: the path on
/// non-CPU devices (one cuBLAS GEMM per step) and the fused kernel's reference. `gx`
/// (T, B, G·H) holds the input projection with the additive biases; `state0` and `w` are
/// flattened as the fused op takes them. Returns out (T, B, P) (zero past each length),
/// hn (B, P) and, for LSTM, cn (B, H), the states of each sequence's last valid step.
pub(crate) fn recurrence_composed(
    spec: &FusedSpec,
    gx: &Tensor,
    state0: &Tensor,
    w: &Tensor,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    // Check the spec as the fused op does (sizes, lengths, projection).
    let _checked = FusedRecurrence::new(spec.clone())?;
    let (t_len, bsz, h, p) = (spec.seq_len, spec.batch, spec.hidden, spec.out);
    let gh = spec.cell.gates() * h;
    let dev = gx.device();
    if gx.dims() != [t_len, bsz, gh] {
        bail!("recurrence: gx {:?}, expected ({t_len}, {bsz}, {gh})", gx.dims());
    }
    let whh = w.narrow(0, 0, gh * p)?.reshape((gh, p))?;
    let mut off = gh * p;
    let whr = if spec.proj {
        let t = w.narrow(0, off, p * h)?.reshape((p, h))?;
        off += p * h;
        Some(t)
    } else {
        None
    };
    let bhn = if spec.gru_bhn { Some(w.narrow(0, off, h)?) } else { None };
    let lstm = spec.cell == FusedCell::Lstm;
    let mut hs = state0.narrow(0, 0, bsz * p)?.reshape((bsz, p))?;
    let mut cs = if lstm {
        Some(state0.narrow(0, bsz * p, bsz * h)?.reshape((bsz, h))?)
    } else {
        None
    };
    // Step s of sequence b reads time t = perm(s, b) (s, or len−1−s when reversed); steps past
    // a sequence's end map to themselves (s ≥ len) and are masked. perm is an involution, so
    // the same index turns the step-ordered outputs back into time order.
    let len_of = |b: usize| spec.lengths.as_ref().map_or(t_len, |l| l[b]);
    let perm: Vec<u32> = (0..t_len)
        .flat_map(|s| {
            (0..bsz).map(move |b| {
                let len = len_of(b);
                let t = if spec.reverse && s < len { len - 1 - s } else { s };
                (t * bsz + b) as u32
            })
        })
        .collect();
    let identity = perm.iter().enumerate().all(|(i, &v)| i as u32 == v);
    let perm = Tensor::from_vec(perm, t_len * bsz, dev)?;
    let gx = if identity {
        gx.clone()
    } else {
        gx.reshape((t_len * bsz, gh))?
            .index_select(&perm, 0)?
            .reshape((t_len, bsz, gh))?
    };
    let varlen = spec.lengths.as_ref().is_some_and(|l| l.iter().any(|&n| n < t_len));
    // sigmoid from tanh: stable for any input, and its gradient is finite everywhere.
    let sigmoid = |x: &Tensor| -> Result<Tensor> { ((x * 0.5)?.tanh()? + 1.0)? * 0.5 };
    let mut outs = Vec::with_capacity(t_len);
    for s in 0..t_len {
        let (x, hh) = (gx.get(s)?, hs.matmul(&whh.t()?)?);
        let (h_new, c_new) = match spec.cell {
            FusedCell::RnnTanh => ((x + hh)?.tanh()?, None),
            FusedCell::RnnRelu => ((x + hh)?.relu()?, None),
            FusedCell::Lstm => {
                let a = (x + hh)?;
                let chunk = |i: usize| a.narrow(1, i * h, h);
                let (i, f) = (sigmoid(&chunk(0)?)?, sigmoid(&chunk(1)?)?);
                let (g, o) = (chunk(2)?.tanh()?, sigmoid(&chunk(3)?)?);
                let c = ((f * cs.as_ref().expect("LSTM state"))? + (i * g)?)?;
                let m = (o * c.tanh()?)?;
                let h_new = match &whr {
                    Some(whr) => m.matmul(&whr.t()?)?,
                    None => m,
                };
                (h_new, Some(c))
            }
            FusedCell::Gru => {
                // gx holds W_i x + b_i (+ b_hr, b_hz); W_h h has no bias, b_hn is added inside r·(…).
                let r = sigmoid(&(x.narrow(1, 0, h)? + hh.narrow(1, 0, h)?)?)?;
                let z = sigmoid(&(x.narrow(1, h, h)? + hh.narrow(1, h, h)?)?)?;
                let hn = match &bhn {
                    Some(b) => hh.narrow(1, 2 * h, h)?.broadcast_add(b)?,
                    None => hh.narrow(1, 2 * h, h)?,
                };
                let n = (x.narrow(1, 2 * h, h)? + (r * hn)?)?.tanh()?;
                let h_new = (&n + (z * (&hs - &n)?)?)?;
                (h_new, None)
            }
        };
        if varlen {
            // Sequences that ended keep their state and output zeros.
            let alive: Vec<f32> = (0..bsz).map(|b| f32::from(u8::from(s < len_of(b)))).collect();
            let alive = Tensor::from_vec(alive, (bsz, 1), dev)?;
            let keep =
                |new: &Tensor, old: &Tensor| -> Result<Tensor> { old + new.broadcast_sub(old)?.broadcast_mul(&alive)? };
            outs.push(h_new.broadcast_mul(&alive)?);
            hs = keep(&h_new, &hs)?;
            if let (Some(c_new), Some(c_old)) = (c_new, cs.as_ref()) {
                cs = Some(keep(&c_new, c_old)?);
            }
        } else {
            outs.push(h_new.clone());
            hs = h_new;
            if c_new.is_some() {
                cs = c_new;
            }
        }
    }
    let out = Tensor::stack(&outs, 0)?;
    let out = if identity {
        out
    } else {
        out.reshape((t_len * bsz, p))?
            .index_select(&perm, 0)?
            .reshape((t_len, bsz, p))?
    };
    Ok((out, hs, cs))
}

/// The caller's initial states (zeros when absent), sliced per layer and direction.
struct InitialState<'a> {
    h0: Option<&'a Tensor>,
    c0: Option<&'a Tensor>,
    /// h (and c) all zeros, flattened: the common case, built once.
    zeros: Tensor,
}

impl InitialState<'_> {
    /// The state of layer·direction `idx` as the fused op wants it: h (B·H_out) then, for
    /// LSTM, c (B·hidden_size), flattened.
    fn flat(&self, idx: usize, bsz: usize, cfg: &RecurrentConfig, lstm: bool) -> Result<Tensor> {
        if self.h0.is_none() && self.c0.is_none() {
            return Ok(self.zeros.clone());
        }
        let dev = self.zeros.device();
        let hs = match self.h0 {
            Some(t) => t.get(idx)?.flatten_all()?,
            None => Tensor::zeros(bsz * cfg.h_out(), DType::F32, dev)?,
        };
        if !lstm {
            return Ok(hs);
        }
        let cs = match self.c0 {
            Some(t) => t.get(idx)?.flatten_all()?,
            None => Tensor::zeros(bsz * cfg.hidden_size, DType::F32, dev)?,
        };
        Tensor::cat(&[&hs, &cs], 0)
    }
}

macro_rules! simple_recurrent {
    ($(#[$doc:meta])* $name:ident, $cell:expr) => {
        $(#[$doc])*
        pub struct $name {
            stack: Stack,
        }

        impl $name {
            /// Creates the parameters under `vs` with PyTorch's names and initialisation. Rejects
            /// `input_size = 0`, `hidden_size = 0`, `num_layers = 0`, `dropout` outside [0, 1) and
            /// `proj_size > 0` (LSTM only).
            pub fn new(cfg: &RecurrentConfig, vs: &VarStore) -> Result<Self> {
                Ok(Self { stack: Stack::new($cell(cfg), cfg, vs)? })
            }

            /// The configuration it was built with.
            pub fn config(&self) -> &RecurrentConfig {
                &self.stack.cfg
            }

            /// `x`: (T, B, input_size), or (B, T, input_size) with `batch_first`;
            /// `h0`: (D*num_layers, B, hidden_size), zeros when `None`; `lengths`: valid
            /// length of each sequence (see the module doc). Returns `out` (T, B, D*hidden_size)
            /// (batch-first if configured; zero past each length) and `hn` (D*num_layers, B,
            /// hidden_size), layer-major with the reverse direction second, as PyTorch.
            pub fn forward(
                &self,
                x: &Tensor,
                h0: Option<&Tensor>,
                lengths: Option<&[usize]>,
                train: bool,
            ) -> Result<(Tensor, Tensor)> {
                let r = self.stack.forward(x, h0, None, lengths, train)?;
                Ok((r.out, r.hn))
            }
        }
    };
}

simple_recurrent!(
    /// `nn.RNN`: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu per
    /// `cfg.nonlinearity`.
    Rnn,
    |c: &RecurrentConfig| CellKind::Rnn(c.nonlinearity)
);
simple_recurrent!(
    /// `nn.GRU`: r = σ(W_ir x + b_ir + W_hr h + b_hr), z likewise, n = tanh(W_in x + b_in +
    /// r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    Gru,
    |_c: &RecurrentConfig| CellKind::Gru
);

/// `nn.LSTM` with gates i, f, g, o, and optional projection (`proj_size`, parameter
/// `weight_hr_l{k}`): h = (o * tanh c) @ W_hr^T.
pub struct Lstm {
    stack: Stack,
}

impl Lstm {
    /// Creates the parameters under `vs` with PyTorch's names and initialisation. Rejects
    /// `input_size = 0`, `hidden_size = 0`, `num_layers = 0`, `dropout` outside [0, 1) and
    /// `proj_size >= hidden_size` (when set).
    pub fn new(cfg: &RecurrentConfig, vs: &VarStore) -> Result<Self> {
        Ok(Self {
            stack: Stack::new(CellKind::Lstm, cfg, vs)?,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RecurrentConfig {
        &self.stack.cfg
    }

    /// `x`: (T, B, input_size), or (B, T, input_size) with `batch_first`; `state0`:
    /// `(h0 (D*num_layers, B, H_out), c0 (D*num_layers, B, hidden_size))`, zeros when `None`;
    /// `lengths` as in the module doc. H_out = `proj_size` if set, else `hidden_size`.
    /// Returns `(out (T, B, D*H_out) [batch-first if configured], hn (D*num_layers, B, H_out),
    /// cn (D*num_layers, B, hidden_size))`.
    pub fn forward(
        &self,
        x: &Tensor,
        state0: Option<(&Tensor, &Tensor)>,
        lengths: Option<&[usize]>,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let r = self
            .stack
            .forward(x, state0.map(|s| s.0), state0.map(|s| s.1), lengths, train)?;
        Ok((r.out, r.hn, r.cn.expect("LSTM has a cell state")))
    }
}

/// Configuration of [`RecurrentClassifier`]. Defaults: `num_layers = 1`,
/// `bidirectional = false`, `dropout = 0.0` (between recurrent layers).
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentClassifierConfig {
    /// RNN, LSTM or GRU.
    pub cell: CellKind,
    /// Features per input step; must be > 0.
    pub input_size: usize,
    /// Features of the hidden state; must be > 0.
    pub hidden_size: usize,
    /// Stacked layers; must be > 0.
    pub num_layers: usize,
    /// A reverse direction per layer, outputs concatenated.
    pub bidirectional: bool,
    /// Dropout between layers (training only), in [0, 1).
    pub dropout: f64,
    /// LSTM only: project h to this size (`nn.LSTM`'s `proj_size`); 0 = off. Must be below
    /// `hidden_size`. Default 0.
    pub proj_size: usize,
    /// Output logits; must be > 0.
    pub num_classes: usize,
}

impl RecurrentClassifierConfig {
    /// The cell and sizes with the defaults for the rest.
    pub fn new(cell: CellKind, input_size: usize, hidden_size: usize, num_classes: usize) -> Self {
        Self {
            cell,
            input_size,
            hidden_size,
            num_layers: 1,
            bidirectional: false,
            dropout: 0.0,
            proj_size: 0,
            num_classes,
        }
    }
}

/// The classic sequence classifier: a batch-first recurrent layer (`rnn.*`), the feature of
/// each sequence's last step, then `nn.Linear` (`fc.*`).
///
/// The feature is the last layer's final hidden state: for one direction this is the output
/// at the sequence's last valid step (`out[:, -1]` when there is no padding, as in PyTorch's
/// reference model); bidirectional, it is the forward direction's output at the last valid
/// step concatenated with the backward direction's output at t = 0 (each direction's summary
/// of the whole sequence — unlike `out[:, -1]`, whose backward half has seen one step only).
pub struct RecurrentClassifier {
    cfg: RecurrentClassifierConfig,
    stack: Stack,
    /// The classifier head (D·h_out → num_classes; h_out is `proj_size` if set, else
    /// `hidden_size`).
    pub fc: Linear,
}

impl RecurrentClassifier {
    /// Creates `rnn.*` and `fc.*` under `vs`. Rejects `num_classes = 0` and whatever the
    /// recurrent layer rejects (`input_size = 0`, `hidden_size = 0`, `num_layers = 0`, `dropout`
    /// outside [0, 1), `proj_size` on a cell other than LSTM or not below `hidden_size`).
    pub fn new(cfg: &RecurrentClassifierConfig, vs: &VarStore) -> Result<Self> {
        crate::check::positive("RecurrentClassifier", &[("num_classes", cfg.num_classes)])?;
        let rc = RecurrentConfig {
            num_layers: cfg.num_layers,
            batch_first: true,
            dropout: cfg.dropout,
            bidirectional: cfg.bidirectional,
            proj_size: cfg.proj_size,
            ..RecurrentConfig::new(cfg.input_size, cfg.hidden_size)
        };
        let stack = Stack::new(cfg.cell, &rc, &vs.pp("rnn"))?;
        let d = if cfg.bidirectional { 2 } else { 1 };
        let fc = Linear::new(&LinearConfig::new(d * rc.h_out(), cfg.num_classes), &vs.pp("fc"))?;
        Ok(Self {
            cfg: cfg.clone(),
            stack,
            fc,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RecurrentClassifierConfig {
        &self.cfg
    }

    /// `x`: (B, T, input_size) f32 features (e.g. embeddings); `lengths`: valid length per
    /// sequence (all T when `None`). Returns logits (B, num_classes).
    pub fn forward(&self, x: &Tensor, lengths: Option<&[usize]>, train: bool) -> Result<Tensor> {
        let r = self.stack.forward(x, None, None, lengths, train)?;
        let dirs = if self.cfg.bidirectional { 2 } else { 1 };
        let last = r.hn.narrow(0, (self.cfg.num_layers - 1) * dirs, dirs)?;
        // (D, B, H) → (B, D*H), forward direction first.
        let feat = last.transpose(0, 1)?.contiguous()?.flatten_from(1)?;
        self.fc.forward(&feat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_all_params_get_grad;
    use crate::SeqRng;
    use candle_core::Device;

    fn input(shape: (usize, usize, usize)) -> Tensor {
        SeqRng::new(7).normal(shape, 0.0, 1.0, &Device::Cpu).unwrap()
    }

    fn bidir_cfg() -> RecurrentConfig {
        RecurrentConfig {
            num_layers: 2,
            bidirectional: true,
            ..RecurrentConfig::new(4, 6)
        }
    }

    #[test]
    fn parameter_names_shapes_and_order_follow_pytorch() {
        let vs = VarStore::new(0, &Device::Cpu);
        let cfg = RecurrentConfig {
            proj_size: 3,
            ..bidir_cfg()
        };
        Lstm::new(&cfg, &vs).unwrap();
        let sd: Vec<(String, Vec<usize>)> = vs
            .state_dict()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
        // torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3).state_dict()
        let want: Vec<(&str, Vec<usize>)> = vec![
            ("weight_ih_l0", vec![24, 4]),
            ("weight_hh_l0", vec![24, 3]),
            ("bias_ih_l0", vec![24]),
            ("bias_hh_l0", vec![24]),
            ("weight_hr_l0", vec![3, 6]),
            ("weight_ih_l0_reverse", vec![24, 4]),
            ("weight_hh_l0_reverse", vec![24, 3]),
            ("bias_ih_l0_reverse", vec![24]),
            ("bias_hh_l0_reverse", vec![24]),
            ("weight_hr_l0_reverse", vec![3, 6]),
            ("weight_ih_l1", vec![24, 6]),
            ("weight_hh_l1", vec![24, 3]),
            ("bias_ih_l1", vec![24]),
            ("bias_hh_l1", vec![24]),
            ("weight_hr_l1", vec![3, 6]),
            ("weight_ih_l1_reverse", vec![24, 6]),
            ("weight_hh_l1_reverse", vec![24, 3]),
            ("bias_ih_l1_reverse", vec![24]),
            ("bias_hh_l1_reverse", vec![24]),
            ("weight_hr_l1_reverse", vec![3, 6]),
        ];
        let want: Vec<(String, Vec<usize>)> = want.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
        assert_eq!(sd, want);
        let b = 1.0 / 6f32.sqrt();
        for (_, t) in vs.state_dict() {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.abs() <= b));
        }
    }

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        let vs = VarStore::new(0, &Device::Cpu);
        let c = RecurrentConfig::new(4, 6);
        assert!(Lstm::new(
            &RecurrentConfig {
                proj_size: 6,
                ..c.clone()
            },
            &vs
        )
        .is_err());
        assert!(Gru::new(
            &RecurrentConfig {
                proj_size: 2,
                ..c.clone()
            },
            &vs
        )
        .is_err());
        assert!(Rnn::new(
            &RecurrentConfig {
                dropout: 1.0,
                ..c.clone()
            },
            &vs
        )
        .is_err());
        assert!(Rnn::new(
            &RecurrentConfig {
                num_layers: 0,
                ..c.clone()
            },
            &vs
        )
        .is_err());
        let rnn = Rnn::new(&c, &vs).unwrap();
        assert!(rnn.forward(&input((3, 2, 5)), None, None, false).is_err());
        assert!(rnn.forward(&input((3, 2, 4)), None, Some(&[3, 4]), false).is_err());
        assert!(rnn.forward(&input((3, 2, 4)), None, Some(&[3]), false).is_err());
        assert!(rnn
            .forward(&input((3, 2, 4)), Some(&input((1, 3, 6))), None, false)
            .is_err());
        assert!(CellKind::parse("transformer").is_err());
    }

    /// A zero size names the config key, not a Debug dump of the struct (issue 13 §4).
    #[test]
    fn zero_sizes_name_the_config_key() {
        let vs = VarStore::new(0, &Device::Cpu);
        for (cfg, key) in [
            (RecurrentConfig::new(4, 0), "hidden_size must be > 0"),
            (RecurrentConfig::new(0, 6), "input_size must be > 0"),
            (
                RecurrentConfig {
                    num_layers: 0,
                    ..RecurrentConfig::new(4, 6)
                },
                "num_layers must be > 0",
            ),
        ] {
            for err in [
                Rnn::new(&cfg, &vs).err(),
                Lstm::new(&cfg, &vs).err(),
                Gru::new(&cfg, &vs).err(),
            ] {
                let msg = err.expect("a zero size is rejected").to_string();
                assert!(msg.contains(key) && !msg.contains("RecurrentConfig"), "{msg}");
            }
        }
        let cfg = RecurrentClassifierConfig::new(CellKind::Gru, 4, 6, 0);
        let msg = RecurrentClassifier::new(&cfg, &vs).err().unwrap().to_string();
        assert!(msg.contains("num_classes must be > 0"), "{msg}");
    }

    #[test]
    fn rnn_bidirectional_two_layers_gets_all_gradients() {
        let vs = VarStore::new(1, &Device::Cpu);
        let m = Rnn::new(&bidir_cfg(), &vs).unwrap();
        let (out, hn) = m.forward(&input((5, 3, 4)), None, Some(&[5, 2, 4]), true).unwrap();
        assert_eq!(out.dims(), &[5, 3, 12]);
        assert_eq!(hn.dims(), &[4, 3, 6]);
        assert_all_params_get_grad(&vs, &(out.sum_all().unwrap() + hn.sum_all().unwrap()).unwrap());
    }

    #[test]
    fn lstm_with_projection_bidirectional_gets_all_gradients() {
        let vs = VarStore::new(2, &Device::Cpu);
        let cfg = RecurrentConfig {
            proj_size: 3,
            batch_first: true,
            dropout: 0.3,
            ..bidir_cfg()
        };
        let m = Lstm::new(&cfg, &vs).unwrap();
        let (out, hn, cn) = m.forward(&input((3, 5, 4)), None, Some(&[5, 2, 4]), true).unwrap();
        assert_eq!(out.dims(), &[3, 5, 6]);
        assert_eq!(hn.dims(), &[4, 3, 3]);
        assert_eq!(cn.dims(), &[4, 3, 6]);
        // Padded outputs are exactly zero.
        let pad = out
            .get(1)
            .unwrap()
            .narrow(0, 2, 3)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(pad.to_scalar::<f32>().unwrap(), 0.0);
        assert_all_params_get_grad(
            &vs,
            &Tensor::cat(&[out.flatten_all().unwrap(), cn.flatten_all().unwrap()], 0).unwrap(),
        );
    }

    #[test]
    fn gru_bidirectional_two_layers_gets_all_gradients() {
        let vs = VarStore::new(3, &Device::Cpu);
        let m = Gru::new(&bidir_cfg(), &vs).unwrap();
        let (out, _) = m.forward(&input((5, 3, 4)), None, None, true).unwrap();
        assert_all_params_get_grad(&vs, &out);
    }

    #[test]
    fn classifier_gets_all_gradients() {
        let cells = [
            (CellKind::Rnn(Nonlinearity::Tanh), 0),
            (CellKind::Lstm, 0),
            (CellKind::Gru, 0),
            // A projected LSTM: the head reads 2 · proj_size features.
            (CellKind::Lstm, 4),
        ];
        for (cell, proj_size) in cells {
            let vs = VarStore::new(4, &Device::Cpu);
            let cfg = RecurrentClassifierConfig {
                num_layers: 2,
                bidirectional: true,
                proj_size,
                ..RecurrentClassifierConfig::new(cell, 4, 6, 3)
            };
            let m = RecurrentClassifier::new(&cfg, &vs).unwrap();
            let y = m.forward(&input((3, 5, 4)), Some(&[5, 1, 3]), true).unwrap();
            assert_eq!(y.dims(), &[3, 3]);
            assert_eq!(m.fc.weight.dims()[1], 2 * if proj_size > 0 { proj_size } else { 6 });
            assert_all_params_get_grad(&vs, &y);
        }
    }

    /// A sequence run alone equals the same sequence padded inside a batch.
    #[test]
    fn lengths_match_running_each_sequence_alone() {
        let vs = VarStore::new(5, &Device::Cpu);
        let m = Gru::new(
            &RecurrentConfig {
                batch_first: true,
                ..bidir_cfg()
            },
            &vs,
        )
        .unwrap();
        let x = input((2, 5, 4));
        let (out, hn) = m.forward(&x, None, Some(&[5, 3]), false).unwrap();
        let x1 = x.get(1).unwrap().narrow(0, 0, 3).unwrap().unsqueeze(0).unwrap();
        let (out1, hn1) = m.forward(&x1, None, None, false).unwrap();
        let a = out.get(1).unwrap().narrow(0, 0, 3).unwrap();
        let d = crate::testing::max_abs_diff(&a, &out1.get(0).unwrap());
        assert!(d < 1e-6, "{d}");
        let d = crate::testing::max_abs_diff(&hn.narrow(1, 1, 1).unwrap(), &hn1);
        assert!(d < 1e-6, "{d}");
    }

    /// Runs `f` on the fused and on the composed path; their tensors must agree within
    /// 2e-5 of each one's largest magnitude (at least 1).
    fn fused_matches_composed(f: impl Fn() -> Vec<Tensor>) {
        let fused = crate::ops::with_path(crate::ops::Path::Fused, &f);
        let composed = crate::ops::with_path(crate::ops::Path::Composed, &f);
        assert_eq!(fused.len(), composed.len());
        for (i, (a, c)) in fused.iter().zip(&composed).enumerate() {
            let scale = c.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let scale = scale.to_scalar::<f32>().unwrap().max(1.0);
            let d = crate::testing::max_abs_diff(a, c);
            assert!(d < 2e-5 * scale, "tensor {i} differs by {d} (scale {scale})");
        }
    }

    /// Outputs, final states and every parameter's gradient of `loss(out, hn, cn)`.
    fn with_grads(vs: &VarStore, out: Tensor, hn: Tensor, cn: Option<Tensor>, probe: &Tensor) -> Vec<Tensor> {
        let mut loss = ((&out * probe).unwrap().sum_all().unwrap() + hn.sum_all().unwrap()).unwrap();
        if let Some(cn) = cn {
            loss = (loss + cn.sqr().unwrap().sum_all().unwrap()).unwrap();
        }
        let g = loss.backward().unwrap();
        let mut all = vec![out, hn];
        all.extend(vs.trainable().iter().map(|(_, v)| g.get(v).unwrap().clone()));
        all
    }

    /// A bidirectional layer big enough for its directions to run side by side
    /// ([`FusedPair`], with 2 or more threads) gives what the composed path gives: outputs,
    /// final states and every parameter's gradient, with lengths. P 136, H 160 and G·H 640:
    /// the per-step products run over several weight panels (W_hh: 10 forward, 3 backward;
    /// W_hr: 3 each way).
    #[test]
    fn bidirectional_pair_matches_composed() {
        let vs = VarStore::new(3, &Device::Cpu);
        let (h, p) = (160, 136);
        let cfg = RecurrentConfig {
            num_layers: 2,
            bidirectional: true,
            proj_size: p,
            ..RecurrentConfig::new(8, h)
        };
        let m = Lstm::new(&cfg, &vs).unwrap();
        let (t, b) = (48, 4);
        let lengths = [48, 20, 47, 9];
        let spec = |reverse| FusedSpec {
            cell: FusedCell::Lstm,
            seq_len: t,
            batch: b,
            hidden: h,
            out: p,
            proj: true,
            gru_bhn: false,
            reverse,
            lengths: Some(lengths.to_vec()),
        };
        if rayon::current_num_threads() >= 2 {
            assert!(
                FusedPair::new([spec(false), spec(true)]).unwrap().is_some(),
                "the pair is not used"
            );
        }
        let x = input((t, b, 8));
        let probe = SeqRng::new(9).normal((t, b, 2 * p), 0.0, 1.0, &Device::Cpu).unwrap();
        fused_matches_composed(|| {
            let (out, hn, cn) = m.forward(&x, None, Some(&lengths), true).unwrap();
            with_grads(&vs, out, hn, Some(cn), &probe)
        });
    }

    /// A unidirectional projected LSTM over several panels of W_hh and W_hr (H 160, P 136),
    /// without lengths, on a team of threads where there are 2 (units 80 + 80, h columns
    /// 68 + 68: each thread's W_hr rows in panels of 64 + 4, its units' columns 64 + 16): the
    /// fused path gives what the composed path gives.
    #[test]
    fn projected_lstm_over_several_panels_matches_composed() {
        let vs = VarStore::new(5, &Device::Cpu);
        let (h, p) = (160, 136);
        let m = Lstm::new(
            &RecurrentConfig {
                num_layers: 2,
                proj_size: p,
                ..RecurrentConfig::new(8, h)
            },
            &vs,
        )
        .unwrap();
        let x = input((24, 6, 8));
        let probe = SeqRng::new(11).normal((24, 6, p), 0.0, 1.0, &Device::Cpu).unwrap();
        fused_matches_composed(|| {
            let (out, hn, cn) = m.forward(&x, None, None, true).unwrap();
            with_grads(&vs, out, hn, Some(cn), &probe)
        });
    }

    /// A unidirectional GRU over several weight panels (P 160, G·H 480; a team of threads
    /// where there are 2), without lengths (the backward reads dG in place at one thread):
    /// the fused path gives what the composed path gives.
    #[test]
    fn gru_over_several_panels_matches_composed() {
        let vs = VarStore::new(4, &Device::Cpu);
        let m = Gru::new(
            &RecurrentConfig {
                num_layers: 2,
                ..RecurrentConfig::new(8, 160)
            },
            &vs,
        )
        .unwrap();
        let x = input((24, 6, 8));
        let probe = SeqRng::new(10).normal((24, 6, 160), 0.0, 1.0, &Device::Cpu).unwrap();
        fused_matches_composed(|| {
            let (out, hn) = m.forward(&x, None, None, true).unwrap();
            with_grads(&vs, out, hn, None, &probe)
        });
    }
}
