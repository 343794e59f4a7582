//! In-place row gather of a decoding cache buffer: beam search's reorder without a fresh
//! buffer.

use candle_core::{bail, CpuStorage, InplaceOp1, Layout, Result};

/// Row i of a (B, cap, ...) buffer becomes former row `idx[i]` (i < idx.len() ≤ B), over the
/// first `filled` positions of dimension 1; rows past `idx.len()` and positions past `filled`
/// are left as they are. Only rows that change are copied; a source row that is overwritten
/// before it is read is saved first.
///
/// It replaces `index_select` of the whole buffer, which allocated a fresh (B, cap, ...)
/// buffer (room included) at every reorder: in beam-4 decoding that page-zeroing and copying
/// was ~5 % of the time (perf, session 7).
pub struct GatherRows<'a> {
    /// Former row of each new row.
    pub idx: &'a [u32],
    /// Positions (dimension 1) that hold values.
    pub filled: usize,
}

impl InplaceOp1 for GatherRows<'_> {
    fn name(&self) -> &'static str {
        "seqlab-gather-rows"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            bail!("gather-rows: the buffer must be f32");
        };
        let dims = layout.dims();
        let Some((start, end)) = layout.contiguous_offsets().filter(|_| dims.len() >= 2) else {
            bail!("gather-rows: the buffer must be contiguous with at least 2 dims, got {dims:?}");
        };
        let (b, cap) = (dims[0], dims[1]);
        let per_pos: usize = dims[2..].iter().product();
        let (row, len) = (cap * per_pos, self.filled * per_pos);
        if self.idx.len() > b || self.filled > cap || self.idx.iter().any(|&s| s as usize >= b) {
            bail!(
                "gather-rows: indices {:?} or {} filled positions do not fit a buffer {dims:?}",
                self.idx,
                self.filled
            );
        }
        let data = &mut data[start..end];
        let n = self.idx.len();
        let moves = |i: usize| self.idx[i] as usize != i;
        // Sources that are themselves destinations (and so overwritten): copied out first.
        let mut saved: Vec<(usize, Vec<f32>)> = Vec::new();
        for i in (0..n).filter(|&i| moves(i)) {
            let s = self.idx[i] as usize;
            if s < n && moves(s) && !saved.iter().any(|(r, _)| *r == s) {
                saved.push((s, data[s * row..s * row + len].to_vec()));
            }
        }
        for i in (0..n).filter(|&i| moves(i)) {
            let s = self.idx[i] as usize;
            match saved.iter().find(|(r, _)| *r == s) {
                Some((_, v)) => data[i * row..i * row + len].copy_from_slice(v),
                None => data.copy_within(s * row..s * row + len, i * row),
            }
        }
        Ok(())
    }
}

/// `x.index_select(idx, 0)` written into `x`'s own storage (x: contiguous f32 on the CPU,
/// at least 2 dims, `idx` no longer than its rows): the view of its first `idx.len()` rows.
/// Every other tensor that shares `x`'s storage sees the change, so the caller must hold the
/// storage alone.
pub fn gather_rows_in_place(x: &candle_core::Tensor, idx: &[u32]) -> Result<candle_core::Tensor> {
    let filled = x.dims().get(1).copied().unwrap_or(0);
    x.inplace_op1(&GatherRows { idx, filled })?;
    x.narrow(0, 0, idx.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Equals `index_select` on the filled positions, for permutations, repeats and shrinks
    /// (sources overwritten before being read included); rows and positions outside stay.
    #[test]
    fn gather_rows_equals_index_select() {
        let (b, cap, filled, d) = (6, 5, 3, 4);
        let vals: Vec<f32> = (0..b * cap * d).map(|i| i as f32).collect();
        for idx in [
            vec![0u32, 1, 2, 3, 4, 5],
            vec![1, 0, 3, 2, 5, 4],
            vec![5, 4, 3, 2, 1, 0],
            vec![0, 0, 0, 0, 1, 1],
            vec![2, 2, 5],
            vec![3, 1],
            vec![],
        ] {
            let buf = Tensor::from_vec(vals.clone(), (b, cap, d), &Device::Cpu).unwrap();
            let want = buf
                .narrow(1, 0, filled)
                .unwrap()
                .contiguous()
                .unwrap()
                .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
                .unwrap();
            buf.inplace_op1(&GatherRows { idx: &idx, filled }).unwrap();
            let n = idx.len();
            let got = buf.narrow(0, 0, n).unwrap().narrow(1, 0, filled).unwrap();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{idx:?}"
            );
            // Untouched: positions past `filled` of every row, rows past n.
            let all = buf.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for r in 0..b {
                for p in 0..cap {
                    if r < n && p < filled {
                        continue;
                    }
                    let o = (r * cap + p) * d;
                    assert_eq!(all[o..o + d], vals[o..o + d], "{idx:?}: row {r} position {p}");
                }
            }
        }
        let buf = Tensor::zeros((2, 3, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(buf.inplace_op1(&GatherRows { idx: &[2], filled: 1 }).is_err());
        assert!(buf
            .inplace_op1(&GatherRows {
                idx: &[0, 1, 1],
                filled: 1
            })
            .is_err());
        assert!(buf.inplace_op1(&GatherRows { idx: &[0], filled: 4 }).is_err());
    }
}
