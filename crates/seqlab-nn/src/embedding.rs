//! `nn.Embedding` with `padding_idx`.

use crate::{Init, VarStore};
use candle_core::{bail, DType, Result, Tensor};

/// Configuration of [`Embedding`]; defaults follow `torch.nn.Embedding`.
#[derive(Clone, Debug)]
pub struct EmbeddingConfig {
    /// Vocabulary size (rows of the table); must be > 0.
    pub num_embeddings: usize,
    /// Width of each embedding; must be > 0.
    pub embedding_dim: usize,
    /// This row starts at zero and never receives a gradient. Default `None`.
    pub padding_idx: Option<usize>,
}

/// Lookup table `weight` (num_embeddings, embedding_dim), initialised N(0, 1).
#[derive(Clone, Debug)]
pub struct Embedding {
    /// (num_embeddings, embedding_dim).
    pub weight: Tensor,
    /// The row that starts at zero and never gets a gradient, if any.
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// `weight` (num_embeddings, embedding_dim) drawn N(0, 1), the `padding_idx` row zeroed, as
    /// PyTorch. Rejects `num_embeddings = 0`, `embedding_dim = 0` and `padding_idx >= num_embeddings`.
    pub fn new(cfg: &EmbeddingConfig, vs: &VarStore) -> Result<Self> {
        Self::with_init(cfg, Init::Normal { mean: 0.0, std: 1.0 }, vs)
    }

    /// Like [`Embedding::new`] with another initial distribution: a Transformer that scales
    /// embeddings by √d_model (and ties them to the output layer) wants N(0, d_model^-0.5), so
    /// that inputs and logits start at unit scale.
    pub fn with_init(cfg: &EmbeddingConfig, init: Init, vs: &VarStore) -> Result<Self> {
        crate::check::positive(
            "Embedding",
            &[
                ("num_embeddings", cfg.num_embeddings),
                ("embedding_dim", cfg.embedding_dim),
            ],
        )?;
        if let Some(p) = cfg.padding_idx {
            if p >= cfg.num_embeddings {
                bail!(
                    "Embedding: padding_idx {p} is out of range for {} embeddings",
                    cfg.num_embeddings
                );
            }
        }
        let weight = vs.param("weight", (cfg.num_embeddings, cfg.embedding_dim), init)?;
        if let Some(p) = cfg.padding_idx {
            let mut rows = weight.to_vec2::<f32>()?;
            rows[p].iter_mut().for_each(|v| *v = 0.0);
            let fresh = Tensor::new(rows, weight.device())?;
            vs.get(&vs.path("weight")).expect("just created").set(&fresh)?;
        }
        Ok(Self {
            weight,
            padding_idx: cfg.padding_idx,
        })
    }

    /// Integer ids of any shape `S` → `S × embedding_dim`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let shape = ids.dims().to_vec();
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let emb = self.weight.index_select(&flat, 0)?;
        let emb = match self.padding_idx {
            // Forward value unchanged; the padding positions' contribution is detached so the
            // padding row's gradient stays exactly zero, as in PyTorch.
            Some(p) => {
                let keep = flat.ne(p as u32)?.to_dtype(DType::F32)?.unsqueeze(1)?;
                let drop = (1.0 - &keep)?;
                (emb.broadcast_mul(&keep)? + emb.detach().broadcast_mul(&drop)?)?
            }
            None => emb,
        };
        let mut out = shape;
        out.push(self.weight.dim(1)?);
        emb.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_all_params_get_grad;
    use candle_core::Device;

    #[test]
    fn padding_row_starts_zero_and_gets_no_gradient() {
        let vs = VarStore::new(0, &Device::Cpu);
        let cfg = EmbeddingConfig {
            num_embeddings: 5,
            embedding_dim: 3,
            padding_idx: Some(0),
        };
        let e = Embedding::new(&cfg, &vs).unwrap();
        assert_eq!(e.weight.get(0).unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 3]);
        let ids = Tensor::new(&[[0u32, 1, 2], [3, 4, 0]], &Device::Cpu).unwrap();
        let y = e.forward(&ids).unwrap();
        assert_eq!(y.dims(), &[2, 3, 3]);
        let g = crate::testing::probe_loss(&y).unwrap().backward().unwrap();
        let gw = g.get(&e.weight).unwrap();
        assert_eq!(gw.get(0).unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 3]);
        let vs2 = VarStore::new(0, &Device::Cpu);
        let e2 = Embedding::new(
            &EmbeddingConfig {
                padding_idx: None,
                ..cfg
            },
            &vs2,
        )
        .unwrap();
        assert_all_params_get_grad(&vs2, &e2.forward(&ids).unwrap());
        assert!(Embedding::new(
            &EmbeddingConfig {
                num_embeddings: 5,
                embedding_dim: 3,
                padding_idx: Some(5)
            },
            &vs2
        )
        .is_err());
    }
}
