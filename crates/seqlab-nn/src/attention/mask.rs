//! Attention masks that carry their meaning.
//!
//! PyTorch reads boolean attention masks in two opposite ways: `nn.MultiheadAttention` and
//! `nn.Transformer*` take `True` as "may NOT attend", `F.scaled_dot_product_attention` takes
//! `True` as "may attend". A bare integer tensor handed from one to the other silently inverts
//! the mask, so seqlab's attention takes an [`AttnMask`] whose variant states the convention,
//! and a [`KeyPaddingMask`] whose variant states what a nonzero entry means. The
//! `from_torch_*` constructors read a tensor the way the named PyTorch function does.

use crate::kernels::attention::{MaskData, PreparedMasks};
use candle_core::{bail, DType, Device, Result, Tensor};
use std::sync::Arc;

/// Which (query, key) pairs attention may use. Shapes: (L, S), (B·H, L, S), or broadcastable
/// (B|1, H|1, L, S), for L queries and S keys.
#[derive(Clone, Debug)]
pub enum AttnMask {
    /// Integer tensor (u8/u32/i64): nonzero = this query may NOT attend this key.
    /// `nn.MultiheadAttention`'s and `nn.Transformer`'s boolean `attn_mask`.
    Blocked(Tensor),
    /// Integer tensor (u8/u32/i64): nonzero = this query MAY attend this key.
    /// `F.scaled_dot_product_attention`'s boolean `attn_mask`.
    Allowed(Tensor),
    /// Float tensor added to the scores before the softmax (0 = attend, −∞ = never).
    Additive(Tensor),
    /// Query i may attend keys j ≤ i only (top-left aligned, PyTorch's `is_causal=True`);
    /// needs no tensor.
    Causal,
}

impl AttnMask {
    /// Reads `mask` as `nn.MultiheadAttention(attn_mask=...)` and `nn.Transformer*` do:
    /// an integer (boolean) tensor is [`AttnMask::Blocked`], a float one [`AttnMask::Additive`].
    pub fn from_torch_mha(mask: &Tensor) -> Self {
        if mask.dtype().is_float() {
            Self::Additive(mask.clone())
        } else {
            Self::Blocked(mask.clone())
        }
    }

    /// Reads `mask` as `F.scaled_dot_product_attention(attn_mask=...)` does: an integer
    /// (boolean) tensor is [`AttnMask::Allowed`], a float one [`AttnMask::Additive`].
    pub fn from_torch_sdpa(mask: &Tensor) -> Self {
        if mask.dtype().is_float() {
            Self::Additive(mask.clone())
        } else {
            Self::Allowed(mask.clone())
        }
    }

    /// The causal mask as a tensor: `nn.Transformer.generate_square_subsequent_mask(n)` in
    /// boolean form, [`AttnMask::Blocked`] with ones strictly above the diagonal (n, n).
    /// [`AttnMask::Causal`] means the same without a tensor.
    pub fn causal_blocked(n: usize, device: &Device) -> Result<Self> {
        Ok(Self::Blocked(causal_mask(n, device)?))
    }

    /// The additive values (0 / −∞ for the integer variants), flattened; rejects a float
    /// tensor in an integer variant and the other way round.
    fn additive_values(&self) -> Result<Option<Vec<f32>>> {
        let (t, nonzero_blocks) = match self {
            Self::Causal => return Ok(None),
            Self::Additive(t) => {
                if !t.dtype().is_float() {
                    bail!(
                        "AttnMask::Additive needs a float tensor, got {:?}; an integer mask is \
                         AttnMask::Blocked (1 = may not attend) or AttnMask::Allowed (1 = may attend)",
                        t.dtype()
                    );
                }
                return Ok(Some(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?));
            }
            Self::Blocked(t) => (t, true),
            Self::Allowed(t) => (t, false),
        };
        if t.dtype().is_float() {
            bail!(
                "AttnMask::{} needs an integer tensor (u8/u32/i64), got {:?}; a float mask is AttnMask::Additive",
                if nonzero_blocks { "Blocked" } else { "Allowed" },
                t.dtype()
            );
        }
        Ok(Some(integer_to_additive(t, nonzero_blocks)?))
    }
}

/// Which keys are padding, per batch element: shape (B, S).
#[derive(Clone, Debug)]
pub enum KeyPaddingMask {
    /// Integer tensor (u8/u32/i64): nonzero = padded key, ignored by every query
    /// (PyTorch's boolean `key_padding_mask`).
    Padded(Tensor),
    /// Float tensor added to the scores of each key.
    Additive(Tensor),
}

impl KeyPaddingMask {
    /// Reads `mask` as PyTorch's `key_padding_mask` arguments do: an integer (boolean) tensor
    /// is [`KeyPaddingMask::Padded`] (1 = padding), a float one [`KeyPaddingMask::Additive`].
    pub fn from_torch(mask: &Tensor) -> Self {
        if mask.dtype().is_float() {
            Self::Additive(mask.clone())
        } else {
            Self::Padded(mask.clone())
        }
    }

    fn tensor(&self) -> &Tensor {
        match self {
            Self::Padded(t) | Self::Additive(t) => t,
        }
    }

    fn additive_values(&self) -> Result<Vec<f32>> {
        match self {
            Self::Padded(t) if !t.dtype().is_float() => integer_to_additive(t, true),
            Self::Additive(t) if t.dtype().is_float() => t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>(),
            Self::Padded(t) => bail!(
                "KeyPaddingMask::Padded needs an integer tensor (1 = padding), got {:?}; a float mask is \
                 KeyPaddingMask::Additive",
                t.dtype()
            ),
            Self::Additive(t) => bail!(
                "KeyPaddingMask::Additive needs a float tensor, got {:?}; an integer mask is KeyPaddingMask::Padded",
                t.dtype()
            ),
        }
    }
}

/// An integer mask as additive values: −∞ where the entry blocks attention (nonzero when
/// `nonzero_blocks`, zero otherwise), 0 elsewhere.
fn integer_to_additive(mask: &Tensor, nonzero_blocks: bool) -> Result<Vec<f32>> {
    let m = mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(m.into_iter()
        .map(|x| {
            if (x != 0.0) == nonzero_blocks {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect())
}

/// PyTorch's `nn.Transformer.generate_square_subsequent_mask(n)` as an integer tensor in the
/// [`AttnMask::Blocked`] convention (1 = may NOT attend): ones strictly above the diagonal.
pub fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<u8> = (0..n * n).map(|i| u8::from(i % n > i / n)).collect();
    Tensor::from_vec(v, (n, n), device)
}

/// The masks of one attention call, as the Transformer layers hold them: an attention mask,
/// a key-padding mask, and `causal` (PyTorch's `is_causal`, which may come on top of a mask).
#[derive(Clone, Debug, Default)]
pub(crate) struct Masks {
    pub(crate) attn_mask: Option<AttnMask>,
    pub(crate) key_padding_mask: Option<KeyPaddingMask>,
    pub(crate) causal: bool,
}

impl Masks {
    /// Masks given as PyTorch's `nn.Transformer*` arguments (integer 1 = may NOT attend /
    /// padding; float = additive).
    pub(crate) fn from_torch(attn_mask: Option<&Tensor>, key_padding_mask: Option<&Tensor>, is_causal: bool) -> Self {
        Self {
            attn_mask: attn_mask.map(AttnMask::from_torch_mha),
            key_padding_mask: key_padding_mask.map(KeyPaddingMask::from_torch),
            causal: is_causal,
        }
    }

    /// The masks in the kernel's terms for B batch elements, H heads, L queries and S keys;
    /// shapes and dtypes are checked here.
    pub(crate) fn prepare(&self, (b, h, l, s): (usize, usize, usize, usize)) -> Result<PreparedMasks> {
        let mask = match &self.attn_mask {
            None | Some(AttnMask::Causal) => None,
            Some(am) => {
                let m = match am {
                    AttnMask::Blocked(t) | AttnMask::Allowed(t) | AttnMask::Additive(t) => t,
                    AttnMask::Causal => unreachable!("handled above"),
                };
                let (bm, hm) = match *m.dims() {
                    [ml, ms] if ml == l && ms == s => (1, 1),
                    [bh, ml, ms] if bh == b * h && ml == l && ms == s => (b, h),
                    [1, ml, ms] if ml == l && ms == s => (1, 1),
                    [mb, mh, ml, ms] if (mb == 1 || mb == b) && (mh == 1 || mh == h) && ml == l && ms == s => {
                        (mb, mh)
                    }
                    _ => bail!(
                        "attention mask has shape {:?}; expected ({l}, {s}), ({}, {l}, {s}) or (B|1, H|1, {l}, {s}) with B={b}, H={h}",
                        m.dims(),
                        b * h
                    ),
                };
                Some(MaskData {
                    data: Arc::new(am.additive_values()?.expect("a tensor mask")),
                    bm,
                    hm,
                })
            }
        };
        let kpm = match &self.key_padding_mask {
            None => None,
            Some(k) => {
                if k.tensor().dims() != [b, s] {
                    bail!(
                        "key_padding_mask has shape {:?}, expected ({b}, {s})",
                        k.tensor().dims()
                    );
                }
                Some(Arc::new(k.additive_values()?))
            }
        };
        Ok(PreparedMasks {
            mask,
            kpm,
            causal: self.causal || matches!(self.attn_mask, Some(AttnMask::Causal)),
        })
    }
}
