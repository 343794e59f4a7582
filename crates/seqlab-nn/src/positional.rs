//! Position information for the Transformer: the paper's sinusoidal table and learned
//! position embeddings.

use crate::{Init, VarStore};
use candle_core::{bail, Device, Result, Tensor};

/// The table `pe[pos, 2i] = sin(pos / 10000^(2i/d))`, `pe[pos, 2i+1] = cos(pos / 10000^(2i/d))`
/// of shape (max_len, d_model) (Vaswani et al. 2017, §3.5). Computed in f64 and rounded once.
/// An odd `d_model` gets one more sine column than cosine columns.
pub fn sinusoidal_table(max_len: usize, d_model: usize, device: &Device) -> Result<Tensor> {
    if d_model == 0 {
        bail!("sinusoidal_table: d_model must be positive");
    }
    let mut v = vec![0f32; max_len * d_model];
    for pos in 0..max_len {
        for c in 0..d_model {
            let i2 = (c - c % 2) as f64;
            let angle = pos as f64 / 10000f64.powf(i2 / d_model as f64);
            v[pos * d_model + c] = if c % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    Tensor::from_vec(v, (max_len, d_model), device)
}

/// Which sinusoidal table a model adds to its embeddings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SinusoidalLayout {
    /// The paper's interleaved table ([`sinusoidal_table`]). The default.
    #[default]
    Paper,
    /// fairseq's `SinusoidalPositionalEmbedding`, which Hugging Face M2M100 uses
    /// ([`fairseq_sinusoidal_table`]): what a model needs to be exported to M2M100 and
    /// CTranslate2 with identical outputs.
    Fairseq,
}

/// Row `p` is fairseq's row `p + FAIRSEQ_OFFSET`: fairseq numbers positions from
/// `padding_idx + 1`, and `padding_idx` is 1 in its dictionaries (M2M100, and CTranslate2's
/// converter, which reads the table from row 2).
pub const FAIRSEQ_OFFSET: usize = 2;

/// fairseq's (and HF M2M100's) table for positions 0..max_len (fairseq's rows
/// `2 .. max_len + 2`): the first d/2 columns are `sin(p · f_i)`, the last d/2 `cos(p · f_i)`,
/// with `f_i = exp(-i · ln(10000) / (d/2 - 1))`, computed in f32 as fairseq computes it (so
/// that the tables agree to the last bit or so). Rejects an odd `d_model` or one below 4.
pub fn fairseq_sinusoidal_table(max_len: usize, d_model: usize, device: &Device) -> Result<Tensor> {
    if d_model < 4 || d_model % 2 != 0 {
        bail!("fairseq sinusoidal table: d_model must be even and >= 4, got {d_model}");
    }
    let half = d_model / 2;
    let step = (10000f64.ln() / (half - 1) as f64) as f32;
    let freq: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut v = vec![0f32; max_len * d_model];
    for p in 0..max_len {
        let pos = (p + FAIRSEQ_OFFSET) as f32;
        for (i, f) in freq.iter().enumerate() {
            let angle = pos * f;
            v[p * d_model + i] = angle.sin();
            v[p * d_model + half + i] = angle.cos();
        }
    }
    Tensor::from_vec(v, (max_len, d_model), device)
}

/// Adds the fixed sinusoidal table to a batch of embeddings (no parameters).
#[derive(Clone, Debug)]
pub struct SinusoidalPositionalEncoding {
    /// (max_len, d_model)
    pub table: Tensor,
}

impl SinusoidalPositionalEncoding {
    /// The paper's table for positions 0..max_len. Rejects `d_model = 0` (see
    /// [`sinusoidal_table`]).
    pub fn new(max_len: usize, d_model: usize, device: &Device) -> Result<Self> {
        Self::with_layout(max_len, d_model, SinusoidalLayout::Paper, device)
    }

    /// The table of `layout` for positions 0..max_len; rejects what its function rejects.
    pub fn with_layout(max_len: usize, d_model: usize, layout: SinusoidalLayout, device: &Device) -> Result<Self> {
        Ok(Self {
            table: match layout {
                SinusoidalLayout::Paper => sinusoidal_table(max_len, d_model, device)?,
                SinusoidalLayout::Fairseq => fairseq_sinusoidal_table(max_len, d_model, device)?,
            },
        })
    }

    /// Rows `offset .. offset + len` of the table: (len, d_model).
    pub fn rows(&self, offset: usize, len: usize) -> Result<Tensor> {
        let max = self.table.dim(0)?;
        if offset + len > max {
            bail!(
                "positional encoding: positions up to {} requested, table has {max} (raise max_len)",
                offset + len
            );
        }
        self.table.narrow(0, offset, len)
    }

    /// x (B, L, d_model) → x + pe[offset .. offset + L].
    pub fn forward(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, l, d) = x.dims3()?;
        if d != self.table.dim(1)? {
            bail!(
                "positional encoding: input width {d}, table width {}",
                self.table.dim(1)?
            );
        }
        x.broadcast_add(&self.rows(offset, l)?)
    }
}

/// Learned absolute position embeddings: parameter `weight` (max_len, d_model), initialised
/// N(0, 1) like `nn.Embedding`.
#[derive(Clone, Debug)]
pub struct LearnedPositionalEmbedding {
    /// (max_len, d_model), one learned vector per position.
    pub weight: Tensor,
}

impl LearnedPositionalEmbedding {
    /// `weight` (max_len, d_model) drawn N(0, 1). Rejects `max_len = 0` and `d_model = 0`.
    pub fn new(max_len: usize, d_model: usize, vs: &VarStore) -> Result<Self> {
        if max_len == 0 || d_model == 0 {
            bail!("LearnedPositionalEmbedding: sizes must be positive, got ({max_len}, {d_model})");
        }
        let weight = vs.param("weight", (max_len, d_model), Init::Normal { mean: 0.0, std: 1.0 })?;
        Ok(Self { weight })
    }

    /// x (B, L, d_model) → x + weight[offset .. offset + L].
    pub fn forward(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, l, d) = x.dims3()?;
        let (max, wd) = self.weight.dims2()?;
        if d != wd || offset + l > max {
            bail!("learned positions: input (_, {l}, {d}) at offset {offset} does not fit table ({max}, {wd})");
        }
        x.broadcast_add(&self.weight.narrow(0, offset, l)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_all_params_get_grad;

    #[test]
    fn table_values_and_offsets() {
        let t = sinusoidal_table(4, 6, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(t[0], vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        // pe[3, 2] = sin(3 / 10000^(2/6))
        assert!((t[3][2] - (3.0f64 / 10000f64.powf(2.0 / 6.0)).sin() as f32).abs() < 1e-7);
        let pe = SinusoidalPositionalEncoding::new(4, 6, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 2, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = pe.forward(&x, 2).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(y[0][1], t[3]);
        assert!(pe.forward(&x, 3).is_err());
    }

    /// Values of HF M2M100's `M2M100SinusoidalPositionalEmbedding.get_embedding(8, 6, 1)`,
    /// rows 2 and 5 (printed with transformers 5.24).
    #[test]
    fn fairseq_table_equals_m2m100s() {
        let t = fairseq_sinusoidal_table(4, 6, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let want = [
            [0.9092974, 0.019998666, 0.00019999998, -0.41614684, 0.99980003, 1.0],
            [
                -0.9589243,
                0.049979165,
                0.00049999997,
                0.2836622,
                0.99875027,
                0.99999988,
            ],
        ];
        for (row, w) in [0usize, 3].iter().zip(want) {
            for (a, b) in t[*row].iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "row {row}: {:?} vs {w:?}", t[*row]);
            }
        }
        assert!(fairseq_sinusoidal_table(4, 5, &Device::Cpu).is_err());
    }

    #[test]
    fn learned_positions_get_gradients() {
        let vs = VarStore::new(0, &Device::Cpu);
        let p = LearnedPositionalEmbedding::new(5, 4, &vs).unwrap();
        let x = Tensor::ones((2, 5, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_all_params_get_grad(&vs, &p.forward(&x, 0).unwrap());
    }
}
