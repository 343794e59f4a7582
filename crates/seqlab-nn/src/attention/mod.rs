//! Scaled dot-product attention (`F.scaled_dot_product_attention`) and
//! `nn.MultiheadAttention`, both on one fused CPU kernel ([`crate::kernels::attention`]), or
//! on other devices (and with [`crate::ops::Path::Composed`]) the same function composed from
//! candle ops.
//!
//! Masks are typed ([`AttnMask`], [`KeyPaddingMask`]): the variant says whether a nonzero
//! entry blocks or allows attention, so PyTorch's two opposite boolean conventions cannot be
//! mixed up. Multi-head attention takes its arguments by name in an [`MhaInput`]:
//!
//! ```
//! # use seqlab_nn::{AttnMask, KeyPaddingMask, MhaInput, MultiheadAttention, MultiheadAttentionConfig, ReturnWeights, VarStore};
//! # use candle_core::{Device, Tensor};
//! let vs = VarStore::new(0, &Device::Cpu);
//! let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs)?;
//! let x = Tensor::zeros((2, 5, 8), candle_core::DType::F32, &Device::Cpu)?; // (B, L, E)
//! let padding = Tensor::new(&[[0u8, 0, 0, 1, 1], [0, 0, 0, 0, 0]], &Device::Cpu)?; // 1 = pad
//! let out = mha.forward(
//!     &MhaInput::self_attention(&x)
//!         .attn_mask(AttnMask::Causal)
//!         .key_padding_mask(KeyPaddingMask::Padded(padding))
//!         .weights(ReturnWeights::Averaged),
//! )?;
//! assert_eq!(out.output.dims(), [2, 5, 8]);
//! assert_eq!(out.weights.unwrap().dims(), [2, 5, 5]); // (B, L, S)
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Fully masked rows (every key masked for some query) give zero probabilities, so a zero
//! output and zero gradients there, as PyTorch's `scaled_dot_product_attention` does (its
//! `nn.MultiheadAttention(need_weights=True)` path returns NaN instead). Nothing panics.

mod composed;
pub mod mask;

pub use mask::{causal_mask, AttnMask, KeyPaddingMask};

use crate::kernels::attention::{run_fused, single_query_lanes, FusedRun, KvIndex, PreparedMasks, QkvInput};
use crate::kernels::linear::{linear_act, linear_act_dropout, TransposedLinear};
use crate::kernels::rows::{GatherPositions, GatherRows};
use crate::linear::Linear;
use crate::{ops, Init, SharedRng, VarStore};
use candle_core::{bail, Result, Tensor};
use mask::Masks;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Options of [`scaled_dot_product_attention`]; defaults follow
/// `F.scaled_dot_product_attention` (no mask, scale 1/√D, no dropout).
#[derive(Clone, Default)]
pub struct SdpaOptions {
    /// Broadcastable to (B, H, L, S). PyTorch's boolean `attn_mask` of this function is
    /// [`AttnMask::Allowed`] ([`AttnMask::from_torch_sdpa`]); `is_causal=True` is
    /// [`AttnMask::Causal`].
    pub attn_mask: Option<AttnMask>,
    /// Default 1/√D.
    pub scale: Option<f64>,
    /// Dropout on the attention probabilities, applied only when `train` is true. Default 0.
    pub dropout_p: f64,
    /// Training mode (dropout active). Default `false`.
    pub train: bool,
    /// The RNG dropout draws from; needed when `dropout_p > 0` and `train`.
    pub rng: Option<SharedRng>,
}

/// `F.scaled_dot_product_attention(q, k, v, ...)`: q (B, H, L, D), k (B, H, S, D),
/// v (B, H, S, Dv) → (B, H, L, Dv). Differentiable in q, k, v. Rejects tensors of another
/// rank, shapes that do not fit together, non-f32 inputs, a mask of the wrong shape or dtype
/// for its variant, and dropout in training without an `rng`.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &SdpaOptions) -> Result<Tensor> {
    for (n, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 4 {
            bail!("sdpa: {n} must be (B, H, L, D), got {:?}", t.dims());
        }
    }
    let (b, h, l, d) = q.dims4()?;
    let s = k.dim(2)?;
    let masks = Masks {
        attn_mask: opts.attn_mask.clone(),
        ..Default::default()
    }
    .prepare((b, h, l, s))?;
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let dropout = if opts.train && opts.dropout_p > 0.0 {
        match &opts.rng {
            Some(r) => Some((opts.dropout_p, r)),
            None => bail!("sdpa: dropout in training needs an rng"),
        }
    } else {
        None
    };
    let (qt, kt, vt) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
    let (o, _) = run_attention(QkvInput::Separate(&qt, &kt, &vt), masks, scale, dropout)?;
    o.transpose(1, 2)
}

/// The attention probabilities of one run, for the weights PyTorch's `need_weights=True`
/// returns.
enum AttnRun {
    /// The fused kernel's run: [`FusedRun::weights`] recomputes the differentiable view.
    Fused(FusedRun),
    /// The composed path's probabilities after dropout (B, H, L, S), already differentiable.
    Composed(Tensor),
}

impl AttnRun {
    /// The probabilities after dropout (B, H, L, S), differentiable in the `q` (B, L, H, D) and
    /// `k` (B, S, H, D) the run was given.
    fn weights(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        match self {
            AttnRun::Fused(run) => run.weights(q, k),
            AttnRun::Composed(p) => Ok(p.clone()),
        }
    }
}

/// Attention on projected heads, O (B, L, H, Dv): the fused kernel when
/// [`ops::use_fused`] says so, else the composed candle ops.
fn run_attention(
    qkv: QkvInput,
    masks: PreparedMasks,
    scale: f64,
    dropout: Option<(f64, &SharedRng)>,
) -> Result<(Tensor, AttnRun)> {
    let first = match &qkv {
        QkvInput::Packed(x) | QkvInput::Separate(x, _, _) | QkvInput::Indexed(x, ..) => *x,
    };
    if ops::use_fused(first) {
        let (o, run) = run_fused(qkv, masks, scale, dropout)?;
        Ok((o, AttnRun::Fused(run)))
    } else {
        let (o, p) = composed::run(qkv, &masks, scale, dropout)?;
        Ok((o, AttnRun::Composed(p)))
    }
}

/// Straightforward candle-ops attention (no dropout): q (B, H, L, D), k (B, H, S, D),
/// v (B, H, S, Dv) with an additive mask broadcastable to (B, H, L, S) → (B, H, L, Dv). The
/// reference the fused kernel is tested and benchmarked against.
pub fn sdpa_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    additive_mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?;
    let scores = match additive_mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    ops::softmax(&scores, 3)?.matmul(v)
}

/// Configuration of [`MultiheadAttention`]; defaults follow `nn.MultiheadAttention`.
#[derive(Clone, Debug)]
pub struct MultiheadAttentionConfig {
    /// E, the model width; must be > 0 and divisible by `num_heads`.
    pub embed_dim: usize,
    /// H; must be > 0.
    pub num_heads: usize,
    /// Dropout on the attention probabilities, in [0, 1). Default 0.
    pub dropout: f64,
    /// `in_proj_bias` and `out_proj.bias`. Default `true`.
    pub bias: bool,
}

impl MultiheadAttentionConfig {
    /// `embed_dim` and `num_heads` with the other fields at their defaults.
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        Self {
            embed_dim,
            num_heads,
            dropout: 0.0,
            bias: true,
        }
    }
}

/// A [`MultiheadAttention`]'s projections for decoding steps, transposed once
/// ([`MultiheadAttention::step_weights`]).
#[derive(Clone, Debug)]
pub struct MhaStepWeights {
    /// In-projection rows: q, k and v, or q only (`query_only`).
    in_proj: TransposedLinear,
    /// The output projection.
    out_proj: TransposedLinear,
    /// Only the query rows (cross-attention).
    query_only: bool,
}

/// A self-attention K/V cache for incremental decoding: (B, T, H, D) each.
///
/// Outside training, `k` and `v` are views of buffers with room for more positions: a step
/// writes its one position in place, where appending with `Tensor::cat` copied the whole
/// cache at every step (O(T²) copying over a sentence, per layer). The attention kernel reads
/// the views through their strides, so nothing is copied for it either. A clone shares the
/// filled positions but not the room after them: its next step copies them into a buffer of
/// its own, so two clones decoding on never write into each other's cache.
///
/// A reorder (beam search) on the CPU, where the next step's attention takes the fused
/// kernel's single-query path, moves no key or value: it reorders an ancestor table
/// ([`KvIndex`], rows × positions u32) that tells the kernel which buffer row holds position
/// j of row b, and each step writes row b's new position into buffer row b (no row's earlier
/// positions are ever overwritten, as every row is at the same position). `k` and `v` then
/// hold the buffer rows (R ≥ B, rows of finished sentences included) and are not in row
/// order. Moving the rows instead was ~6 % of beam-4 decoding (perf, 1 thread), growing with
/// the length. The rows are gathered into row order (fresh buffers) where the table cannot be
/// read: a growing buffer (which also drops finished rows), a step past the single-query path
/// (over 256 positions), more rows than the buffer has, training. Other reorders gather the
/// buffers' rows in place, so `k`/`v` tensors taken from the cache before a reorder may
/// change with it (copy them to keep them); a cache that was cloned gathers into fresh
/// buffers instead, since its clone still reads the old ones.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Projected keys of the positions so far, (B, T, H, D), or the buffer rows (R, T, H, D)
    /// that the ancestor table indexes.
    pub k: Option<Tensor>,
    /// Projected values of the positions so far, as `k`.
    pub v: Option<Tensor>,
    /// The (B or R, capacity, H, D) buffers `k` and `v` are views of (inference only).
    buf: Option<(Tensor, Tensor)>,
    /// `buf` is (or may be) read by a clone's `k`/`v`: no in-place reorder.
    shared: AtomicBool,
    /// Which buffer row holds each row's positions (`stride` = the buffers' capacity); `None`:
    /// row b's positions are in row b.
    index: Option<KvIndex>,
}

/// Positions a cache buffer starts with; it doubles when full.
const KV_START_CAPACITY: usize = 16;

impl Clone for KvCache {
    /// The same positions, without the buffer: both caches append at the same position next,
    /// which in one shared buffer would overwrite each other.
    fn clone(&self) -> Self {
        self.shared.store(true, Ordering::Relaxed);
        Self {
            k: self.k.clone(),
            v: self.v.clone(),
            buf: None,
            shared: AtomicBool::new(false),
            index: self.index.clone(),
        }
    }
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dim(1).unwrap_or(0))
    }

    /// No position cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one position, `k_new`/`v_new` (B, 1, H, D) contiguous. In training the cache
    /// is concatenated (differentiable); otherwise it is written into the buffers in place
    /// and stored detached: a `cat` would keep the previous cache alive through the autograd
    /// graph, so a T-step decode held all T prefixes (O(T²) memory).
    fn append(&mut self, k_new: Tensor, v_new: Tensor, train: bool) -> Result<()> {
        if train {
            self.in_row_order(self.len())?;
            let cat = |old: &Option<Tensor>, new: Tensor| match old {
                Some(old) => Tensor::cat(&[old, &new], 1),
                None => Ok(new),
            };
            self.k = Some(cat(&self.k, k_new)?);
            self.v = Some(cat(&self.v, v_new)?);
            self.buf = None;
            return Ok(());
        }
        let t = self.len();
        let (b, _, h, d) = k_new.dims4()?;
        let cap = self.buf.as_ref().map_or(0, |(k, _)| k.dim(1).unwrap_or(0));
        if self.buf.is_none() || cap == t {
            // A new buffer with room to double (a full one, one filled by training steps, or
            // a clone's): the filled positions copied once (in row order).
            let room = (2 * t).max(KV_START_CAPACITY);
            if self.index.is_some() {
                self.in_row_order(room)?;
            } else {
                let fresh = |new: &Tensor, old: Option<&Tensor>| -> Result<Tensor> {
                    let buf = Tensor::zeros((b, room, h, d), new.dtype(), new.device())?;
                    if let Some(old) = old.filter(|_| t > 0) {
                        buf.slice_set(&old.contiguous()?, 1, 0)?;
                    }
                    Ok(buf)
                };
                self.buf = Some((fresh(&k_new, self.k.as_ref())?, fresh(&v_new, self.v.as_ref())?));
                self.shared.store(false, Ordering::Relaxed);
            }
        }
        let (kb, vb) = self.buf.as_ref().expect("buffer made above");
        // Row b's new position goes into buffer row b (the only row there without the table).
        kb.narrow(0, 0, b)?.slice_set(&k_new, 1, t)?;
        vb.narrow(0, 0, b)?.slice_set(&v_new, 1, t)?;
        self.k = Some(kb.narrow(1, 0, t + 1)?.detach());
        self.v = Some(vb.narrow(1, 0, t + 1)?.detach());
        if let Some(ix) = &mut self.index {
            let slots = Arc::make_mut(&mut ix.slots);
            for r in 0..b {
                slots[r * ix.stride + t] = r as u32;
            }
            // Past the single-query path (no reorder came to gather them): in row order.
            if single_query_lanes(t + 1, h, d, d).is_none() {
                let cap = kb.dim(1)?;
                self.in_row_order(cap)?;
            }
        }
        Ok(())
    }

    /// Gathers the rows read through the ancestor table into fresh buffers in row order,
    /// with room for `cap` positions; nothing without a table.
    fn in_row_order(&mut self, cap: usize) -> Result<()> {
        let Some(ix) = self.index.take() else {
            return Ok(());
        };
        let t = self.len();
        let rows = ix.slots.len() / ix.stride;
        let gather = |src: &Option<Tensor>| -> Result<Tensor> {
            let src = src.as_ref().expect("a table indexes cached positions");
            let (_, _, h, d) = src.dims4()?;
            let buf = Tensor::zeros((rows, cap.max(t), h, d), src.dtype(), src.device())?;
            let op = GatherPositions {
                slots: &ix.slots,
                stride: ix.stride,
                filled: t,
            };
            buf.inplace_op2(src, &op)?;
            Ok(buf)
        };
        let (kb, vb) = (gather(&self.k)?, gather(&self.v)?);
        self.k = Some(kb.narrow(1, 0, t)?);
        self.v = Some(vb.narrow(1, 0, t)?);
        self.buf = Some((kb, vb));
        self.shared.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Row i continues former row `idx[i]` (u32 (N'), any N' ≥ 0): beams reordered and
    /// rows of finished sentences dropped. Where the next step's attention reads the ancestor
    /// table (see the type's doc), only the table is reordered. Otherwise, on the CPU with N'
    /// no more than the current rows, the filled positions of the rows that change are
    /// gathered in place (the buffers keep their room; dropped rows stay allocated until the
    /// buffers grow); otherwise (more rows, another device, a cloned cache) the buffers are
    /// gathered whole into fresh ones.
    pub fn reorder(&mut self, idx: &Tensor) -> Result<()> {
        let t = self.len();
        let n = idx.dim(0)?;
        if let Some((kb, _)) = self.buf.as_ref().filter(|_| t > 0) {
            let (r, cap, h, d) = kb.dims4()?;
            if n <= r && ops::use_fused(kb) && single_query_lanes(t + 1, h, d, d).is_some() {
                let ids = idx.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
                let rows = self.index.as_ref().map_or(r, |ix| ix.slots.len() / ix.stride);
                if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
                    bail!("KvCache::reorder: row {bad} of {rows}");
                }
                let mut slots = vec![0u32; n * cap];
                for (row, &i) in slots.chunks_exact_mut(cap).zip(&ids) {
                    match &self.index {
                        Some(ix) => row[..t].copy_from_slice(&ix.slots[i as usize * cap..i as usize * cap + t]),
                        None => row[..t].fill(i),
                    }
                }
                self.index = Some(KvIndex {
                    slots: Arc::new(slots),
                    stride: cap,
                    rows: r,
                });
                return Ok(());
            }
        }
        if self.index.is_some() {
            let cap = self.buf.as_ref().map_or(t, |(kb, _)| kb.dim(1).unwrap_or(t));
            self.in_row_order(cap)?;
        }
        match &self.buf {
            Some((kb, vb)) => {
                let (kb, vb) = if n <= kb.dim(0)? && !self.shared.load(Ordering::Relaxed) && ops::use_fused(kb) {
                    let ids = idx.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
                    for b in [kb, vb] {
                        b.inplace_op1(&GatherRows { idx: &ids, filled: t })?;
                    }
                    (kb.narrow(0, 0, n)?, vb.narrow(0, 0, n)?)
                } else {
                    (kb.index_select(idx, 0)?, vb.index_select(idx, 0)?)
                };
                self.k = Some(kb.narrow(1, 0, t)?);
                self.v = Some(vb.narrow(1, 0, t)?);
                self.buf = Some((kb, vb));
                self.shared.store(false, Ordering::Relaxed);
            }
            None => {
                if let Some(k) = &self.k {
                    self.k = Some(k.contiguous()?.index_select(idx, 0)?);
                }
                if let Some(v) = &self.v {
                    self.v = Some(v.contiguous()?.index_select(idx, 0)?);
                }
            }
        }
        Ok(())
    }
}

/// Which attention weights [`MultiheadAttention::forward`] returns (PyTorch's `need_weights`
/// and `average_attn_weights`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReturnWeights {
    /// None (`need_weights=False`); the fastest path.
    #[default]
    No,
    /// Averaged over the heads, (B, L, S) (`need_weights=True`, the default average).
    Averaged,
    /// Per head, (B, H, L, S) (`average_attn_weights=False`).
    PerHead,
}

/// The arguments of [`MultiheadAttention::forward`], by name: `nn.MultiheadAttention.forward`'s
/// with `batch_first=True`. Start from [`MhaInput::new`] or [`MhaInput::self_attention`] and
/// add what is needed:
/// `MhaInput::new(&q, &k, &v).key_padding_mask(KeyPaddingMask::Padded(pad)).train(true)`.
#[derive(Clone, Debug)]
pub struct MhaInput<'a> {
    /// (B, L, E).
    pub query: &'a Tensor,
    /// (B, S, E).
    pub key: &'a Tensor,
    /// (B, S, E).
    pub value: &'a Tensor,
    /// Which (query, key) pairs may attend; see [`AttnMask`] for the shapes.
    pub attn_mask: Option<AttnMask>,
    /// (B, S): which keys are padding.
    pub key_padding_mask: Option<KeyPaddingMask>,
    /// Which attention weights to return. Default [`ReturnWeights::No`].
    pub weights: ReturnWeights,
    /// Training mode: attention dropout active. Default `false`.
    pub train: bool,
}

impl<'a> MhaInput<'a> {
    /// Attention of `query` over `key`/`value`; no masks, no weights, evaluation mode.
    pub fn new(query: &'a Tensor, key: &'a Tensor, value: &'a Tensor) -> Self {
        Self {
            query,
            key,
            value,
            attn_mask: None,
            key_padding_mask: None,
            weights: ReturnWeights::No,
            train: false,
        }
    }

    /// Self-attention: `x` is query, key and value (one packed projection).
    pub fn self_attention(x: &'a Tensor) -> Self {
        Self::new(x, x, x)
    }

    /// Sets the attention mask.
    pub fn attn_mask(mut self, mask: AttnMask) -> Self {
        self.attn_mask = Some(mask);
        self
    }

    /// Sets the key-padding mask.
    pub fn key_padding_mask(mut self, mask: KeyPaddingMask) -> Self {
        self.key_padding_mask = Some(mask);
        self
    }

    /// Asks for attention weights.
    pub fn weights(mut self, weights: ReturnWeights) -> Self {
        self.weights = weights;
        self
    }

    /// Sets training mode (attention dropout).
    pub fn train(mut self, train: bool) -> Self {
        self.train = train;
        self
    }
}

/// What [`MultiheadAttention::forward`] returns.
#[derive(Clone, Debug)]
pub struct MhaOutput {
    /// (B, L, E).
    pub output: Tensor,
    /// The attention probabilities after dropout, as [`MhaInput::weights`] asked: (B, L, S)
    /// or (B, H, L, S). Differentiable, as in PyTorch: a loss on them reaches query, key and
    /// `in_proj_*`.
    pub weights: Option<Tensor>,
}

/// `nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, batch_first=True)`.
///
/// Parameters `in_proj_weight` (3E, E) xavier-uniform, `in_proj_bias` (3E) zeros,
/// `out_proj.weight` (E, E) U(±1/√E), `out_proj.bias` zeros, as PyTorch initialises them.
#[derive(Clone)]
pub struct MultiheadAttention {
    /// (3E, E): the query, key and value projections stacked.
    pub in_proj_weight: Tensor,
    /// (3E), absent with `bias = false`.
    pub in_proj_bias: Option<Tensor>,
    /// The output projection (E → E).
    pub out_proj: Linear,
    /// E.
    pub embed_dim: usize,
    /// H.
    pub num_heads: usize,
    /// E / H.
    pub head_dim: usize,
    /// Dropout on the attention probabilities (training only).
    pub dropout: f64,
    rng: SharedRng,
}

impl std::fmt::Debug for MultiheadAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MultiheadAttention(E={}, heads={}, dropout={})",
            self.embed_dim, self.num_heads, self.dropout
        )
    }
}

impl MultiheadAttention {
    /// Creates the parameters under `vs`. Rejects `embed_dim = 0`, `num_heads = 0`,
    /// `embed_dim` not divisible by `num_heads`, and `dropout` outside [0, 1).
    pub fn new(cfg: &MultiheadAttentionConfig, vs: &VarStore) -> Result<Self> {
        let e = cfg.embed_dim;
        if e == 0 {
            bail!("MultiheadAttention: embed_dim must be > 0");
        }
        if cfg.num_heads == 0 {
            bail!("MultiheadAttention: num_heads must be > 0");
        }
        if !e.is_multiple_of(cfg.num_heads) {
            bail!(
                "MultiheadAttention: embed_dim {e} must be divisible by num_heads {}",
                cfg.num_heads
            );
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            bail!("MultiheadAttention: dropout must be in [0, 1), got {}", cfg.dropout);
        }
        let in_proj_weight = vs.param("in_proj_weight", (3 * e, e), Init::xavier_uniform(e, 3 * e))?;
        let in_proj_bias = if cfg.bias {
            Some(vs.param("in_proj_bias", 3 * e, Init::Zeros)?)
        } else {
            None
        };
        let ov = vs.pp("out_proj");
        let weight = ov.param("weight", (e, e), Init::uniform_fan(e))?;
        let bias = if cfg.bias {
            Some(ov.param("bias", e, Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            in_proj_weight,
            in_proj_bias,
            out_proj: Linear { weight, bias },
            embed_dim: e,
            num_heads: cfg.num_heads,
            head_dim: e / cfg.num_heads,
            dropout: cfg.dropout,
            rng: vs.rng(),
        })
    }

    fn check_input(&self, name: &str, x: &Tensor) -> Result<(usize, usize)> {
        match *x.dims() {
            [b, l, e] if e == self.embed_dim => Ok((b, l)),
            _ => bail!(
                "MultiheadAttention: {name} must be (B, L, {}), got {:?}",
                self.embed_dim,
                x.dims()
            ),
        }
    }

    /// Rows `[i·E, (i+n)·E)` of the in-projection applied to `x` (B, L, E) → (B, L, n·E).
    fn project(&self, x: &Tensor, i: usize, n: usize) -> Result<Tensor> {
        let e = self.embed_dim;
        if n == 3 {
            return linear_act(x, &self.in_proj_weight, self.in_proj_bias.as_ref(), false);
        }
        let w = self.in_proj_weight.narrow(0, i * e, n * e)?;
        let b = match &self.in_proj_bias {
            Some(b) => Some(b.narrow(0, i * e, n * e)?),
            None => None,
        };
        linear_act(x, &w, b.as_ref(), false)
    }

    /// Projected keys and values of `key`/`value` (B, S, E) → ((B, S, H, D), (B, S, H, D)), as
    /// used by cross-attention over a fixed memory (compute once, reuse every decoding step).
    pub fn project_kv(&self, key: &Tensor, value: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, s) = self.check_input("key", key)?;
        self.check_input("value", value)?;
        let (h, d) = (self.num_heads, self.head_dim);
        if key.id() == value.id() {
            let kv = self.project(key, 1, 2)?.reshape((b, s, 2, h, d))?;
            Ok((kv.narrow(2, 0, 1)?.squeeze(2)?, kv.narrow(2, 1, 1)?.squeeze(2)?))
        } else {
            Ok((
                self.project(key, 1, 1)?.reshape((b, s, h, d))?,
                self.project(value, 2, 1)?.reshape((b, s, h, d))?,
            ))
        }
    }

    /// Projected queries (B, L, E) → (B, L, H, D).
    pub fn project_q(&self, query: &Tensor) -> Result<Tensor> {
        let (b, l) = self.check_input("query", query)?;
        self.project(query, 0, 1)?
            .reshape((b, l, self.num_heads, self.head_dim))
    }

    fn dropout_arg(&self, train: bool) -> Option<(f64, &SharedRng)> {
        (train && self.dropout > 0.0).then_some((self.dropout, &self.rng))
    }

    /// The output projection of O (B, L, H, D), with the caller's residual-branch dropout
    /// `out_dropout` fused into its bias pass.
    fn out_projection(&self, o: &Tensor, out_dropout: Option<f64>) -> Result<Tensor> {
        let (b, l, h, d) = o.dims4()?;
        let drop = out_dropout.filter(|p| *p > 0.0).map(|p| (p, &self.rng));
        let (w, bias) = (&self.out_proj.weight, self.out_proj.bias.as_ref());
        linear_act_dropout(&o.reshape((b, l, h * d))?, w, bias, false, drop)
    }

    /// Attention on already projected heads: q (B, L, H, D), k/v (B, S, H, D) → (B, L, E),
    /// output projection included (the decoder's cached cross-attention), with the step
    /// weights' copy of it when given (evaluation only). With `index`, k/v are (R, S, H, D)
    /// read through it (a reordered self-attention cache).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        index: Option<&KvIndex>,
        masks: &Masks,
        step: Option<&MhaStepWeights>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, l, h, d) = q.dims4()?;
        let s = k.dim(1)?;
        let pm = masks.prepare((b, h, l, s))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let qkv = match index {
            Some(ix) => QkvInput::Indexed(q, k, v, ix),
            None => QkvInput::Separate(q, k, v),
        };
        let (o, _) = run_attention(qkv, pm, scale, self.dropout_arg(train))?;
        match step.filter(|_| !train) {
            Some(w) => w.out_proj.forward(&o.reshape((b, l, h * d))?, false),
            None => self.out_projection(&o, None),
        }
    }

    /// Copies of the projections a decoding step multiplies, transposed once
    /// ([`TransposedLinear`]): the query, key and value rows of the in-projection
    /// (self-attention) or, with `query_only`, the query rows (cross-attention, whose keys and
    /// values are projected once per source), and the output projection. A snapshot: made
    /// again after the parameters change.
    pub fn step_weights(&self, query_only: bool) -> Result<MhaStepWeights> {
        let rows = if query_only { self.embed_dim } else { 3 * self.embed_dim };
        let w = self.in_proj_weight.narrow(0, 0, rows)?;
        let b = match &self.in_proj_bias {
            Some(b) => Some(b.narrow(0, 0, rows)?),
            None => None,
        };
        Ok(MhaStepWeights {
            in_proj: TransposedLinear::new(&w, b.as_ref())?,
            out_proj: TransposedLinear::new(&self.out_proj.weight, self.out_proj.bias.as_ref())?,
            query_only,
        })
    }

    /// [`project_q`](Self::project_q) with the step weights' copy of the query rows when
    /// given (made with `query_only`).
    pub fn project_q_step(&self, query: &Tensor, step: Option<&MhaStepWeights>) -> Result<Tensor> {
        match step {
            Some(w) if w.query_only => {
                let (b, l) = self.check_input("query", query)?;
                w.in_proj
                    .forward(query, false)?
                    .reshape((b, l, self.num_heads, self.head_dim))
            }
            _ => self.project_q(query),
        }
    }

    /// `mha(query, key, value, key_padding_mask, need_weights, attn_mask,
    /// average_attn_weights)` with `batch_first=True`: query (B, L, E), key/value (B, S, E) →
    /// output (B, L, E), plus the attention weights [`MhaInput::weights`] asks for. Rejects
    /// inputs whose last dimension is not E, batch or key/value lengths that differ, and masks
    /// of the wrong shape or dtype.
    pub fn forward(&self, input: &MhaInput) -> Result<MhaOutput> {
        let masks = Masks {
            attn_mask: input.attn_mask.clone(),
            key_padding_mask: input.key_padding_mask.clone(),
            causal: false,
        };
        self.forward_impl(
            input.query,
            input.key,
            input.value,
            &masks,
            input.weights,
            input.train,
            None,
        )
    }

    /// `out_dropout(forward(..).output)` without weights, the dropout (the caller's
    /// residual-branch dropout, same RNG) fused into the output projection's bias pass.
    pub(crate) fn forward_then_dropout(
        &self,
        (query, key, value): (&Tensor, &Tensor, &Tensor),
        masks: &Masks,
        out_dropout: Option<&crate::Dropout>,
        train: bool,
    ) -> Result<Tensor> {
        let p = out_dropout.filter(|_| train).map(|d| d.p);
        Ok(self
            .forward_impl(query, key, value, masks, ReturnWeights::No, train, p)?
            .output)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_impl(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &Masks,
        weights: ReturnWeights,
        train: bool,
        out_dropout: Option<f64>,
    ) -> Result<MhaOutput> {
        let (b, l) = self.check_input("query", query)?;
        let (bk, s) = self.check_input("key", key)?;
        let (bv, sv) = self.check_input("value", value)?;
        if bk != b || bv != b || sv != s {
            bail!(
                "MultiheadAttention: query {:?}, key {:?}, value {:?} do not fit together",
                query.dims(),
                key.dims(),
                value.dims()
            );
        }
        let (h, d) = (self.num_heads, self.head_dim);
        let pm = masks.prepare((b, h, l, s))?;
        let scale = 1.0 / (d as f64).sqrt();
        let drop = self.dropout_arg(train);
        // `qk`: the q and k the kernel read, for the differentiable weights.
        let (o, run, qk): (Tensor, AttnRun, Option<(Tensor, Tensor)>) =
            if query.id() == key.id() && key.id() == value.id() {
                let qkv = self.project(query, 0, 3)?.reshape((b, l, 3, h, d))?;
                let (o, run) = run_attention(QkvInput::Packed(&qkv), pm, scale, drop)?;
                let qk = match weights {
                    ReturnWeights::No => None,
                    _ => Some((qkv.narrow(2, 0, 1)?.squeeze(2)?, qkv.narrow(2, 1, 1)?.squeeze(2)?)),
                };
                (o, run, qk)
            } else {
                let q = self.project_q(query)?;
                let (k, v) = self.project_kv(key, value)?;
                let (o, run) = run_attention(QkvInput::Separate(&q, &k, &v), pm, scale, drop)?;
                (o, run, Some((q, k)))
            };
        let output = self.out_projection(&o, out_dropout)?;
        let weights = match (weights, qk) {
            (ReturnWeights::No, _) | (_, None) => None,
            (ReturnWeights::Averaged, Some((q, k))) => Some(run.weights(&q, &k)?.mean(1)?),
            (ReturnWeights::PerHead, Some((q, k))) => Some(run.weights(&q, &k)?),
        };
        Ok(MhaOutput { output, weights })
    }

    /// One incremental self-attention step: `x` (B, 1, E) is the newest position; its key and
    /// value are appended to `cache`, and it attends to every cached position → (B, 1, E).
    /// Equals row t of a full causal self-attention over positions 0..=t.
    pub fn self_attn_step(&self, x: &Tensor, cache: &mut KvCache, train: bool) -> Result<Tensor> {
        self.self_attn_step_with(x, cache, None, train)
    }

    /// [`self_attn_step`](Self::self_attn_step) with the step weights' copies of the
    /// projections (made without `query_only`; used outside training only). Same values.
    pub fn self_attn_step_with(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        step: Option<&MhaStepWeights>,
        train: bool,
    ) -> Result<Tensor> {
        let step = step.filter(|w| !train && !w.query_only);
        let (b, l) = self.check_input("x", x)?;
        if l != 1 {
            bail!(
                "MultiheadAttention::self_attn_step: x must hold one position, got {:?}",
                x.dims()
            );
        }
        let (h, d) = (self.num_heads, self.head_dim);
        let qkv = match step {
            Some(w) => w.in_proj.forward(x, false)?,
            None => self.project(x, 0, 3)?,
        };
        let qkv = qkv.reshape((b, 1, 3, h, d))?;
        let part = |i: usize| -> Result<Tensor> { qkv.narrow(2, i, 1)?.squeeze(2) };
        let (q, k_new, v_new) = (part(0)?, part(1)?.contiguous()?, part(2)?.contiguous()?);
        cache.append(k_new, v_new, train)?;
        let (k, v) = (cache.k.as_ref(), cache.v.as_ref());
        let (k, v) = k.zip(v).expect("append filled the cache");
        self.attend(&q, k, v, cache.index.as_ref(), &Masks::default(), step, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_all_params_get_grad, max_abs_diff as max_diff, randn};
    use candle_core::{DType, Device, Var};

    /// The fused kernel and its backward against plain candle ops, with an additive mask.
    #[test]
    fn fused_matches_reference_forward_and_backward() {
        let (b, h, l, s, d) = (2, 3, 5, 7, 4);
        let q = Var::from_tensor(&randn(1, &[b, h, l, d])).unwrap();
        let k = Var::from_tensor(&randn(2, &[b, h, s, d])).unwrap();
        let v = Var::from_tensor(&randn(3, &[b, h, s, d])).unwrap();
        let mask = randn(4, &[b, 1, l, s]);
        let probe = randn(5, &[b, h, l, d]);
        let opts = SdpaOptions {
            attn_mask: Some(AttnMask::Additive(mask.clone())),
            scale: Some(0.3),
            ..Default::default()
        };
        let y1 = scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
        let y2 = sdpa_reference(&q, &k, &v, Some(&mask), 0.3).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-5);
        let g1 = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&q, &k, &v] {
            assert!(max_diff(g1.get(var).unwrap(), g2.get(var).unwrap()) < 1e-5);
        }
    }

    /// `F.scaled_dot_product_attention` with a fully masked row returns zeros there (checked
    /// with torch 2.15); so do we, with zero (not NaN) gradients.
    #[test]
    fn fully_masked_rows_give_zeros_not_nan() {
        let q = Var::from_tensor(&randn(1, &[1, 2, 3, 4])).unwrap();
        let mask = Tensor::new(&[[1u8, 1], [0, 0], [1, 0]], &Device::Cpu).unwrap();
        let kv = randn(2, &[1, 2, 2, 4]);
        let opts = SdpaOptions {
            attn_mask: Some(AttnMask::Allowed(mask)),
            ..Default::default()
        };
        let y = scaled_dot_product_attention(&q, &kv, &kv, &opts).unwrap();
        let row = y
            .narrow(2, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(row.iter().all(|&x| x == 0.0));
        let other = y.narrow(2, 0, 1).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(other.to_scalar::<f32>().unwrap() > 0.0, "unmasked rows are not zero");
        let g = y.sum_all().unwrap().backward().unwrap();
        let gq = g.get(&q).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(gq.iter().all(|x| x.is_finite()));
    }

    /// The same pattern as a Blocked mask and as its complement Allowed mask (and as an
    /// additive mask) gives the same attention, in SDPA and in MHA; the causal variant equals
    /// its tensor form.
    #[test]
    fn blocked_and_allowed_masks_of_one_pattern_agree() {
        let blocked = Tensor::new(&[[0u8, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]], &Device::Cpu).unwrap();
        let allowed = (Tensor::ones((3, 4), DType::U8, &Device::Cpu).unwrap() - &blocked).unwrap();
        let additive = ops::bool_mask_to_additive(&blocked).unwrap();
        let (q, k, v) = (
            randn(1, &[2, 2, 3, 4]),
            randn(2, &[2, 2, 4, 4]),
            randn(3, &[2, 2, 4, 4]),
        );
        let run = |m: AttnMask| {
            let opts = SdpaOptions {
                attn_mask: Some(m),
                ..Default::default()
            };
            scaled_dot_product_attention(&q, &k, &v, &opts).unwrap()
        };
        let yb = run(AttnMask::Blocked(blocked.clone()));
        let ya = run(AttnMask::Allowed(allowed.clone()));
        let yf = run(AttnMask::Additive(additive));
        assert_eq!(max_diff(&yb, &ya), 0.0);
        assert_eq!(max_diff(&yb, &yf), 0.0);
        // Reading the pattern in the other convention changes the result: the test can fail.
        assert!(max_diff(&yb, &run(AttnMask::Allowed(blocked.clone()))) > 1e-3);

        let vs = VarStore::new(0, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let (x, m) = (randn(4, &[2, 3, 8]), randn(5, &[2, 4, 8]));
        let run = |mask: AttnMask| {
            let out = mha
                .forward(
                    &MhaInput::new(&x, &m, &m)
                        .attn_mask(mask)
                        .weights(ReturnWeights::PerHead),
                )
                .unwrap();
            (out.output, out.weights.unwrap())
        };
        let (yb, wb) = run(AttnMask::Blocked(blocked.clone()));
        let (ya, wa) = run(AttnMask::Allowed(allowed));
        assert_eq!(max_diff(&yb, &ya), 0.0);
        assert_eq!(max_diff(&wb, &wa), 0.0);
        let w = wb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pattern = blocked.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        for (i, wi) in w.iter().enumerate() {
            assert_eq!(pattern[i % 12] == 1, *wi == 0.0, "weight {i} = {wi}");
        }

        let x = randn(6, &[2, 4, 8]);
        let causal = mha
            .forward(&MhaInput::self_attention(&x).attn_mask(AttnMask::Causal))
            .unwrap();
        let tensor = mha
            .forward(&MhaInput::self_attention(&x).attn_mask(AttnMask::causal_blocked(4, &Device::Cpu).unwrap()))
            .unwrap();
        assert_eq!(max_diff(&causal.output, &tensor.output), 0.0);
    }

    /// A mask whose dtype does not fit its variant is an error, not a silent reinterpretation.
    #[test]
    fn mask_dtype_must_fit_its_variant() {
        let (q, k) = (randn(1, &[1, 1, 2, 4]), randn(2, &[1, 1, 3, 4]));
        let float = randn(3, &[2, 3]);
        let int = Tensor::zeros((2, 3), DType::U8, &Device::Cpu).unwrap();
        for (m, want) in [
            (AttnMask::Blocked(float.clone()), "integer"),
            (AttnMask::Allowed(float), "integer"),
            (AttnMask::Additive(int), "float"),
        ] {
            let opts = SdpaOptions {
                attn_mask: Some(m),
                ..Default::default()
            };
            let err = scaled_dot_product_attention(&q, &k, &k, &opts).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn mha_rejects_bad_config_and_shapes() {
        let vs = VarStore::new(0, &Device::Cpu);
        for (cfg, field) in [
            (MultiheadAttentionConfig::new(10, 3), "divisible"),
            (MultiheadAttentionConfig::new(0, 1), "embed_dim must be > 0"),
            (MultiheadAttentionConfig::new(8, 0), "num_heads must be > 0"),
        ] {
            let err = MultiheadAttention::new(&cfg, &vs).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = randn(1, &[2, 3, 8]);
        let bad = randn(1, &[2, 3, 6]);
        assert!(mha.forward(&MhaInput::new(&x, &bad, &bad)).is_err());
        let bad_kpm = Tensor::zeros((2, 4), DType::U8, &Device::Cpu).unwrap();
        let input = MhaInput::self_attention(&x).key_padding_mask(KeyPaddingMask::Padded(bad_kpm));
        assert!(mha.forward(&input).is_err());
    }

    #[test]
    fn mha_gradients_reach_every_parameter_self_and_cross() {
        for cross in [false, true] {
            let vs = VarStore::new(0, &Device::Cpu);
            let cfg = MultiheadAttentionConfig {
                dropout: 0.1,
                ..MultiheadAttentionConfig::new(8, 2)
            };
            let mha = MultiheadAttention::new(&cfg, &vs).unwrap();
            let x = randn(1, &[2, 3, 8]);
            let m = if cross { randn(2, &[2, 5, 8]) } else { x.clone() };
            let y = mha.forward(&MhaInput::new(&x, &m, &m).train(true)).unwrap().output;
            assert_all_params_get_grad(&vs, &y);
        }
    }

    /// Packed self-attention, separate q/k/v and the candle reference agree (values and grads).
    #[test]
    fn mha_packed_path_equals_separate_path() {
        let vs = VarStore::new(0, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = Var::from_tensor(&randn(1, &[2, 4, 8])).unwrap();
        let x2 = Var::from_tensor(x.as_tensor()).unwrap();
        let x2c = x2.as_tensor().copy().unwrap();
        let cm = AttnMask::causal_blocked(4, &Device::Cpu).unwrap();
        let run = |q: &Tensor, kv: &Tensor| {
            let input = MhaInput::new(q, kv, kv)
                .attn_mask(cm.clone())
                .weights(ReturnWeights::Averaged);
            let out = mha.forward(&input).unwrap();
            (out.output, out.weights.unwrap())
        };
        let (y1, w1) = run(&x, &x);
        let (y2, w2) = run(&x2, &x2c);
        assert!(max_diff(&y1, &y2) < 1e-6);
        assert!(max_diff(&w1, &w2) < 1e-6);
        // A loss on the output AND the weights: the weights' gradient flows on both paths.
        let (py, pw) = (randn(9, &[2, 4, 8]), randn(10, &[2, 4, 4]));
        let loss = |y: &Tensor, w: &Tensor| {
            ((y * &py).unwrap().sum_all().unwrap() + (w * &pw).unwrap().sum_all().unwrap()).unwrap()
        };
        let g1 = loss(&y1, &w1).backward().unwrap();
        let g2 = loss(&y2, &w2).backward().unwrap();
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x2).unwrap()) < 1e-5);
        let (name, w) = &vs.trainable()[0];
        assert_eq!(name, "in_proj_weight");
        assert!(max_diff(g1.get(w).unwrap(), g2.get(w).unwrap()) < 1e-5);
    }

    /// The returned weights are differentiable (PyTorch returns them so): a loss on the weights
    /// alone gives query and in_proj_weight the gradient of the same function built from candle
    /// ops, per head and averaged, with padding.
    /// The composed path (the GPU's) equals the fused kernel in outputs, weights and every
    /// gradient, with dropout (same draws), causal + padding masks and a fully masked row.
    #[test]
    fn composed_path_matches_fused_kernel() {
        use crate::ops::{with_path, Path};
        let run = |path: Path| {
            with_path(path, || {
                let vs = VarStore::new(0, &Device::Cpu);
                let mut cfg = MultiheadAttentionConfig::new(8, 2);
                cfg.dropout = 0.3;
                let mha = MultiheadAttention::new(&cfg, &vs).unwrap();
                let x = Var::from_tensor(&randn(1, &[2, 5, 8])).unwrap();
                // Batch 1 pads every key but the last; with the causal mask its first rows
                // have no allowed key at all.
                let pad = Tensor::new(&[[0u8, 0, 0, 1, 1], [1, 1, 1, 1, 0]], &Device::Cpu).unwrap();
                let out = mha
                    .forward(
                        &MhaInput::self_attention(&x)
                            .attn_mask(AttnMask::Causal)
                            .key_padding_mask(KeyPaddingMask::Padded(pad))
                            .weights(ReturnWeights::PerHead)
                            .train(true),
                    )
                    .unwrap();
                let (y, w) = (out.output, out.weights.unwrap());
                let loss = ((&y * randn(2, y.dims())).unwrap().sum_all().unwrap()
                    + (&w * randn(3, w.dims())).unwrap().sum_all().unwrap())
                .unwrap();
                let g = loss.backward().unwrap();
                let mut grads = vec![g.get(&x).unwrap().clone()];
                grads.extend(vs.trainable().iter().map(|(_, v)| g.get(v).unwrap().clone()));
                (y, w, grads)
            })
        };
        let (y1, w1, g1) = run(Path::Fused);
        let (y2, w2, g2) = run(Path::Composed);
        assert!(y1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
        assert!(max_diff(&y1, &y2) < 1e-5, "{}", max_diff(&y1, &y2));
        assert!(max_diff(&w1, &w2) < 1e-6);
        for (a, b) in g1.iter().zip(&g2) {
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
    }

    #[test]
    fn attention_weights_carry_the_reference_gradient() {
        let vs = VarStore::new(0, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let (b, s, d) = (2, 5, 4);
        let q_in = Var::from_tensor(&randn(1, &[b, 3, 8])).unwrap();
        let kv_in = randn(2, &[b, s, 8]);
        let pad = Tensor::new(&[[0u8, 0, 0, 1, 1], [0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
        for weights in [ReturnWeights::PerHead, ReturnWeights::Averaged] {
            let input = MhaInput::new(&q_in, &kv_in, &kv_in)
                .key_padding_mask(KeyPaddingMask::Padded(pad.clone()))
                .weights(weights);
            let w = mha.forward(&input).unwrap().weights.unwrap();
            // Reference: softmax(q kᵀ/√d + padding) from plain ops on the same projections.
            let q = mha
                .project_q(&q_in)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let (k, _) = mha.project_kv(&kv_in, &kv_in).unwrap();
            let k = k.transpose(1, 2).unwrap();
            let scores =
                (q.matmul(&k.transpose(2, 3).unwrap().contiguous().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let add = ops::bool_mask_to_additive(&pad).unwrap().reshape((b, 1, 1, s)).unwrap();
            let p = ops::softmax(&scores.broadcast_add(&add).unwrap(), 3).unwrap();
            let p = if weights == ReturnWeights::Averaged {
                p.mean(1).unwrap()
            } else {
                p
            };
            assert_eq!(p.dims(), w.dims());
            assert!(max_diff(&w, &p) < 1e-6);
            let probe = randn(3, p.dims());
            let g1 = (&w * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&p * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gq = g1.get(&q_in).expect("a loss on the weights reaches the query");
            assert!(gq.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
            assert!(max_diff(gq, g2.get(&q_in).unwrap()) < 1e-5);
            let (_, wv) = &vs.trainable()[0];
            assert!(max_diff(g1.get(wv).unwrap(), g2.get(wv).unwrap()) < 1e-5);
        }
    }

    /// In training the returned weights are the probabilities after dropout (PyTorch's
    /// `need_weights=True`): some entries are dropped, the kept ones are scaled by 1/(1-p), and
    /// they are exactly what multiplied V.
    #[test]
    fn training_weights_are_after_dropout() {
        let vs = VarStore::new(3, &Device::Cpu);
        let cfg = MultiheadAttentionConfig {
            dropout: 0.5,
            ..MultiheadAttentionConfig::new(8, 1)
        };
        let mha = MultiheadAttention::new(&cfg, &vs).unwrap();
        let (x, m) = (randn(1, &[2, 6, 8]), randn(2, &[2, 7, 8]));
        let out = mha
            .forward(&MhaInput::new(&x, &m, &m).weights(ReturnWeights::PerHead).train(true))
            .unwrap();
        let w = out.weights.unwrap();
        let vals = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(vals.contains(&0.0), "no entry dropped at p = 0.5");
        let row_sums = w.sum(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            row_sums.iter().any(|s| (s - 1.0).abs() > 1e-3),
            "rows still sum to 1: not after dropout"
        );
        // output = out_proj(weights @ V): recompute from the returned weights.
        let (_, v) = mha.project_kv(&m, &m).unwrap();
        let o = w.matmul(&v.transpose(1, 2).unwrap().contiguous().unwrap()).unwrap(); // (B, 1, L, D)
        let o = o.transpose(1, 2).unwrap().reshape((2, 6, 8)).unwrap();
        let y = mha.out_proj.forward(&o).unwrap();
        assert!(max_diff(&y, &out.output) < 1e-5);
    }

    /// Incremental self-attention equals full causal attention row by row.
    #[test]
    fn self_attn_step_equals_causal_full_run() {
        let vs = VarStore::new(0, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = randn(1, &[2, 5, 8]);
        let full = mha
            .forward(&MhaInput::self_attention(&x).attn_mask(AttnMask::Causal))
            .unwrap()
            .output;
        let mut cache = KvCache::default();
        for t in 0..5 {
            let y = mha
                .self_attn_step(&x.narrow(1, t, 1).unwrap(), &mut cache, false)
                .unwrap();
            assert!(max_diff(&y, &full.narrow(1, t, 1).unwrap()) < 1e-5);
            // Evaluation-mode caches hold no graph: a tracked cache chains every earlier
            // cache through `cat` (quadratic memory over a decode).
            assert!(!cache.k.as_ref().unwrap().track_op() && !cache.v.as_ref().unwrap().track_op());
        }
        assert_eq!(cache.len(), 5);
    }

    /// The in-place cache (buffers that grow past their first 16 positions, reordered and
    /// shrunk between steps) gives the outputs of the concatenating one (training mode,
    /// dropout 0), bit for bit.
    #[test]
    fn buffered_cache_equals_concatenated_cache() {
        let vs = VarStore::new(1, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = randn(2, &[3, 40, 8]);
        let (mut buffered, mut concat) = (KvCache::default(), KvCache::default());
        let mut rows = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
        for t in 0..40 {
            let xt = x.narrow(1, t, 1).unwrap().contiguous().unwrap();
            let xt = xt.index_select(&rows, 0).unwrap();
            let a = mha.self_attn_step(&xt, &mut buffered, false).unwrap();
            let b = mha.self_attn_step(&xt, &mut concat, true).unwrap();
            assert_eq!(max_diff(&a, &b), 0.0, "step {t}");
            let idx = match t {
                10 => Some(vec![1u32, 0, 0]),
                25 => Some(vec![2u32, 0]),
                _ => None,
            };
            if let Some(idx) = idx {
                let i = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
                buffered.reorder(&i).unwrap();
                concat.reorder(&i).unwrap();
                rows = rows.index_select(&i, 0).unwrap();
            }
        }
        assert_eq!(buffered.len(), 40);
        assert_eq!(buffered.k.as_ref().unwrap().dims(), &[2, 40, 2, 4]);
    }

    /// A cache read through its ancestor table gives the outputs of the concatenating cache
    /// (training mode, dropout 0), whose reorders copy the rows, bit for bit: random beam
    /// reorders (repeats, swaps, identities) at every step, rows leaving, rows coming back
    /// within the buffer's rows and past them, a clone taking over, the buffers growing,
    /// and past the 256 positions the single-query path reads (where the rows are gathered
    /// back into order).
    #[test]
    fn indexed_cache_equals_reordered_copies() {
        let vs = VarStore::new(7, &Device::Cpu);
        // Heads of 32: the sizes the single-query path (and so the table) takes.
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(64, 2), &vs).unwrap();
        let steps = 270;
        let x = randn(8, &[16, steps, 64]);
        let (mut indexed, mut copied) = (KvCache::default(), KvCache::default());
        // rows[i]: the input row that cache row i reads.
        let mut rows: Vec<u32> = (0..4).collect();
        let mut lcg = crate::testing::Lcg(12345u64);
        let mut next = |n: usize| lcg.below(n);
        let mut table_steps = 0;
        for t in 0..steps {
            let r = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
            let xt = x
                .narrow(1, t, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .index_select(&r, 0)
                .unwrap();
            let a = mha.self_attn_step(&xt, &mut indexed, false).unwrap();
            let b = mha.self_attn_step(&xt, &mut copied, true).unwrap();
            let bits = |y: &Tensor| {
                let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.into_iter().map(f32::to_bits).collect::<Vec<_>>()
            };
            assert_eq!(bits(&a), bits(&b), "step {t}, {} rows", rows.len());
            table_steps += usize::from(indexed.index.is_some());
            let n = rows.len();
            let idx: Vec<u32> = match t {
                // Widening: 4 → 8 rows (the buffer's rows), later past them.
                1 => (0..8).map(|i| i / 2).collect(),
                90 => (0..n as u32).chain([0, 1, 2, 3, 4]).collect(),
                _ if t % 40 == 39 && n > 2 => {
                    let drop = next(n);
                    (0..n as u32).filter(|&i| i as usize != drop).collect()
                }
                60 | 61 => (0..n as u32).chain([n as u32 - 1]).collect(),
                _ if t % 7 == 3 => (0..n as u32).collect(),
                _ => (0..n).map(|_| next(n) as u32).collect(),
            };
            if t == 120 {
                indexed = indexed.clone();
            }
            let i = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
            indexed.reorder(&i).unwrap();
            copied.reorder(&i).unwrap();
            rows = idx.iter().map(|&i| rows[i as usize]).collect();
        }
        // The table was read where the kernel allows it (3..=256 positions, here with lanes).
        if crate::kernels::gemm_order::lanes().is_some() {
            assert!(table_steps > 200, "{table_steps} steps read through the table");
        }
        assert!(indexed.index.is_none(), "past 256 positions the rows are in order");
    }

    /// Two clones of a buffered cache decode on with different inputs, past the buffer's
    /// growth: each gives the outputs of its own concatenating cache, so neither wrote into
    /// the other's positions.
    #[test]
    fn cloned_caches_decode_independently() {
        let vs = VarStore::new(3, &Device::Cpu);
        let mha = MultiheadAttention::new(&MultiheadAttentionConfig::new(8, 2), &vs).unwrap();
        let x = randn(4, &[2, 30, 8]);
        let y = randn(5, &[2, 30, 8]);
        let at = |x: &Tensor, t: usize| x.narrow(1, t, 1).unwrap().contiguous().unwrap();
        let (mut a, mut a_ref) = (KvCache::default(), KvCache::default());
        for t in 0..5 {
            mha.self_attn_step(&at(&x, t), &mut a, false).unwrap();
            mha.self_attn_step(&at(&x, t), &mut a_ref, true).unwrap();
        }
        let (mut b, mut b_ref) = (a.clone(), a_ref.clone());
        for t in 5..30 {
            let oa = mha.self_attn_step(&at(&x, t), &mut a, false).unwrap();
            let ob = mha.self_attn_step(&at(&y, t), &mut b, false).unwrap();
            let wa = mha.self_attn_step(&at(&x, t), &mut a_ref, true).unwrap();
            let wb = mha.self_attn_step(&at(&y, t), &mut b_ref, true).unwrap();
            assert_eq!(max_diff(&oa, &wa), 0.0, "original, step {t}");
            assert_eq!(max_diff(&ob, &wb), 0.0, "clone, step {t}");
        }
    }
}
