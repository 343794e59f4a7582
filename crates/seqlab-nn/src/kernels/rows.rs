//! In-place row gather of a decoding cache buffer: beam search's reorder without a fresh
//! buffer; and the gather of a cache read through its ancestor table into row order.

use candle_core::{bail, CpuStorage, InplaceOp1, InplaceOp2, Layout, Result};

/// Row i of a (B, cap, ...) buffer becomes former row `idx[i]` (i < idx.len() ≤ B), over the
/// first `filled` positions of dimension 1; rows past `idx.len()` and positions past `filled`
/// are left as they are. Only rows that change are copied, in [`copy_plan`]'s order (each row
/// read before it is overwritten; one temporary row per cycle of swapped rows).
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
        let mut temp: Vec<f32> = Vec::new();
        for op in copy_plan(self.idx) {
            match op {
                Move::Copy { dst, src } => data.copy_within(src * row..src * row + len, dst * row),
                Move::Save(r) => {
                    temp.clear();
                    temp.extend_from_slice(&data[r * row..r * row + len]);
                }
                Move::Restore(dst) => data[dst * row..dst * row + len].copy_from_slice(&temp),
            }
        }
        Ok(())
    }
}

/// Writes into a (N, cap, ...) buffer, at each of its first `filled` positions j of row i,
/// position j of row `slots[i · stride + j]` of a source (R, cap', ...) tensor (any strides
/// over its first two dims, the rest contiguous): a decoding cache read through its ancestor
/// table ([`super::attention::KvIndex`]) written out in row order, for the steps that cannot
/// read it through the table. Runs of positions in one source row are copied as one block.
pub struct GatherPositions<'a> {
    /// Source row of each (row, position), `stride` entries per row.
    pub slots: &'a [u32],
    /// Entries per row of `slots`, at least `filled`.
    pub stride: usize,
    /// Positions (dimension 1) to write.
    pub filled: usize,
}

impl InplaceOp2 for GatherPositions<'_> {
    fn name(&self) -> &'static str {
        "seqlab-gather-positions"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout, src: &CpuStorage, sl: &Layout) -> Result<()> {
        let (CpuStorage::F32(out), CpuStorage::F32(from)) = (dst, src) else {
            bail!("gather-positions: both buffers must be f32");
        };
        let (dd, sd) = (dl.dims(), sl.dims());
        let Some((start, end)) = dl.contiguous_offsets().filter(|_| dd.len() >= 2) else {
            bail!("gather-positions: the buffer must be contiguous with at least 2 dims, got {dd:?}");
        };
        let per_pos: usize = dd[2..].iter().product();
        // The source's dims past the first two must be laid out contiguously.
        let st = sl.stride();
        let mut want = 1;
        for (i, &n) in sd.iter().enumerate().skip(2).rev() {
            if n > 1 && st[i] != want {
                bail!("gather-positions: the source {sd:?} (strides {st:?}) is not contiguous past dim 1");
            }
            want *= n;
        }
        let (n, cap, t) = (dd[0], dd[1], self.filled);
        if sd.len() != dd.len()
            || sd[2..] != dd[2..]
            || t > cap
            || t > sd[1]
            || self.stride < t
            || self.slots.len() < n * self.stride
            || (0..n).any(|i| {
                self.slots[i * self.stride..i * self.stride + t]
                    .iter()
                    .any(|&r| r as usize >= sd[0])
            })
        {
            bail!(
                "gather-positions: {} slots ({} per row) for {t} positions do not fit {dd:?} from {sd:?}",
                self.slots.len(),
                self.stride
            );
        }
        let out = &mut out[start..end];
        let at = |r: usize, j: usize| sl.start_offset() + r * st[0] + j * st[1];
        for i in 0..n {
            let row = &self.slots[i * self.stride..i * self.stride + t];
            let mut j = 0;
            while j < t {
                let r = row[j] as usize;
                let run = row[j..].iter().take_while(|&&x| x as usize == r).count();
                // One block where the source's positions are contiguous, else position by position.
                let step = if st[1] == per_pos { run } else { 1 };
                for j0 in (j..j + run).step_by(step) {
                    let len = step * per_pos;
                    let o = (i * cap + j0) * per_pos;
                    out[o..o + len].copy_from_slice(&from[at(r, j0)..at(r, j0) + len]);
                }
                j += run;
            }
        }
        Ok(())
    }
}

/// One row move of [`copy_plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Move {
    /// Row `dst` becomes row `src` (whose values are still the original ones).
    Copy { dst: usize, src: usize },
    /// Row `r` (still original) is copied into the one temporary row.
    Save(usize),
    /// Row `dst` becomes the temporary row.
    Restore(usize),
}

/// The row moves that make row i equal former row `idx[i]` for every i with `idx[i] != i`,
/// in an order where each row is read before it is overwritten: a row is written once every
/// row that reads it has been written. Only rows on a cycle of the permutation (beams that
/// swap places) need the temporary row, one save per cycle; chains (beam search's usual
/// reorder within a sentence, e.g. [0, 0, 1, 2]: each beam continues the one before it) move
/// every row once. The former kernel saved every source that was also a destination, which
/// copied such rows twice and allocated a vector for each (perf, beam 4, 200 test sentences:
/// `memmove` 7.6 % of beam 4 against 2.1 % of greedy, which never reorders beams).
pub(crate) fn copy_plan(idx: &[u32]) -> Vec<Move> {
    let n = idx.len();
    let moves = |i: usize| idx[i] as usize != i;
    // readers[r]: rows not yet written that read row r (rows ≥ n are never written).
    let mut readers = vec![0usize; n];
    for i in (0..n).filter(|&i| moves(i)) {
        if let Some(c) = readers.get_mut(idx[i] as usize) {
            *c += 1;
        }
    }
    let mut done = vec![false; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| moves(i) && readers[i] == 0).rev().collect();
    let mut saved: Option<usize> = None;
    let mut plan = Vec::with_capacity(n + 1);
    let mut next_unwritten = 0;
    loop {
        while let Some(i) = ready.pop() {
            let s = idx[i] as usize;
            done[i] = true;
            if saved == Some(s) {
                plan.push(Move::Restore(i));
                continue;
            }
            plan.push(Move::Copy { dst: i, src: s });
            if s < n {
                readers[s] -= 1;
                if readers[s] == 0 && moves(s) && !done[s] {
                    ready.push(s);
                }
            }
        }
        // What is left are whole cycles (each left row has exactly one reader left): the
        // first left row is saved, written, and its reader takes the saved values.
        while next_unwritten < n && (done[next_unwritten] || !moves(next_unwritten)) {
            next_unwritten += 1;
        }
        if next_unwritten == n {
            return plan;
        }
        let r = next_unwritten;
        plan.push(Move::Save(r));
        saved = Some(r);
        readers[r] = 0;
        ready.push(r);
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

    /// Every changed row is written exactly once, by a copy or a restore; chains (beam
    /// search's usual reorders) need no temporary row, cycles one save each; and executing
    /// the plan on row labels gives `idx`, for every index vector over 4 rows (and shrinks).
    #[test]
    fn copy_plan_moves_each_row_once() {
        assert!(!copy_plan(&[0, 0, 1, 2]).iter().any(|m| matches!(m, Move::Save(_))));
        assert!(!copy_plan(&[0, 0, 0, 1, 3]).iter().any(|m| matches!(m, Move::Save(_))));
        let saves = |idx: &[u32]| copy_plan(idx).iter().filter(|m| matches!(m, Move::Save(_))).count();
        assert_eq!(saves(&[1, 0, 3, 2]), 2);
        assert_eq!(saves(&[1, 2, 0, 0]), 1);
        assert_eq!(saves(&[0, 1, 2]), 0);
        assert!(copy_plan(&[0, 1, 2]).is_empty());
        let mut count = 0;
        for n in 0..=4usize {
            let rows = 4usize;
            for code in 0..rows.pow(n as u32) {
                let idx: Vec<u32> = (0..n).map(|i| ((code / rows.pow(i as u32)) % rows) as u32).collect();
                let plan = copy_plan(&idx);
                let mut data: Vec<usize> = (0..rows).collect();
                let mut temp = None;
                let mut written = vec![0; n];
                for m in &plan {
                    match *m {
                        Move::Copy { dst, src } => {
                            data[dst] = data[src];
                            written[dst] += 1;
                        }
                        Move::Save(r) => temp = Some(data[r]),
                        Move::Restore(dst) => {
                            data[dst] = temp.expect("restore after a save");
                            written[dst] += 1;
                        }
                    }
                }
                for i in 0..n {
                    assert_eq!(data[i], idx[i] as usize, "{idx:?}: {plan:?}");
                    assert_eq!(written[i], usize::from(idx[i] as usize != i), "{idx:?}: {plan:?}");
                }
                count += 1;
            }
        }
        assert_eq!(count, 1 + 4 + 16 + 64 + 256);
    }

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
            vec![0, 0, 1, 2, 4, 4],
            vec![1, 2, 0, 4, 5, 3],
            vec![2, 0, 1, 1, 3, 5],
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
