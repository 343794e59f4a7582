//! Data-parallel training over the ranks of a [`Collective`] (MPI processes, see
//! `docs/LAUNCH.md`): what the [`crate::Trainer`] does beyond one process.
//!
//! - Every rank holds the whole model and takes its [`crate::trainer::Shard`] of each
//!   micro-batch; the loss terms' sums and counts are all-reduced, each rank backpropagates
//!   its sums over the global counts, and [`all_reduce_grads`] sums the gradients, so every
//!   rank applies the update one process would apply to the whole micro-batches.
//! - Dropout: rank 0 keeps the run's stream; rank r > 0 draws from [`rank_seed`]`(seed, r,
//!   step)`, so a run is reproducible for a fixed number of ranks, resumed or not.
//! - [`check_replicas`] compares a checksum of the weights across ranks (every
//!   `train.log_every` steps) and stops the run with an error naming the ranks that differ.
//! - Rank 0 alone writes checkpoints, metrics, plots, the lock and `config.toml`; every rank
//!   reads the checkpoint it resumes from (a shared file system across machines).
//!
//! Gradients travel in buckets: the gradients of consecutive parameters (creation order) are
//! copied into one flat `f32` buffer of up to [`BUCKET_ELEMS`] values, summed over ranks in
//! one all-reduce, and copied back. Candle computes the whole `GradStore` inside
//! `Tensor::backward` and offers no hook when one gradient is final, so a bucket cannot be
//! sent while backward still runs (PyTorch DDP's overlap); the buckets are reduced right
//! after backward instead, and the share of step time spent in collectives is logged as
//! `comm_share` in `metrics.jsonl`.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use seqlab_dist::Collective;

/// Values per gradient bucket: 4 Mi `f32` = 16 MiB, PyTorch DDP's default order of size
/// (25 MB): large enough that per-message latency is small against the bytes, small enough
/// that a model's gradients are not copied into one huge extra buffer.
pub const BUCKET_ELEMS: usize = 4 << 20;

fn ctx<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// The dropout seed of rank `rank` at update `step` (SplitMix64 of the three, so that
/// neighbouring ranks and steps get unrelated streams).
pub fn rank_seed(seed: u64, rank: usize, step: u64) -> u64 {
    let mut z = seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over the bits of every value of `vars` (as `f32`): equal weights give equal
/// checksums, and any differing bit almost surely changes it.
pub fn weights_checksum(vars: &[Var]) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in vars {
        let data = ctx(v
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>()))?;
        for x in data {
            for b in x.to_bits().to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(h)
}

/// Checks that every rank holds the same weights (a no-op on one rank): an error naming the
/// ranks whose checksum differs from rank 0's.
pub fn check_replicas(comm: &dyn Collective, vars: &[Var], step: u64) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let differ = seqlab_dist::ranks_differing_from_root(comm, weights_checksum(vars)?)?;
    if !differ.is_empty() {
        bail!(
            "data-parallel replicas diverged at step {step}: the weights of rank(s) {differ:?} differ from rank 0's (of {} ranks); the ranks must run the same seqlab build on the same data and config",
            comm.size()
        );
    }
    Ok(())
}

/// Sums the gradients of `vars` over all ranks, in place, in buckets of flattened
/// parameters; returns the wall seconds spent in the collectives. A parameter that has a
/// gradient on some rank gets one on every rank (zeros where its shard did not reach it); a
/// parameter no rank reached stays without one, as on one process.
pub fn all_reduce_grads(comm: &dyn Collective, grads: &mut GradStore, vars: &[Var]) -> Result<f64> {
    let mut seconds = 0.0;
    let mut present: Vec<f64> = vars
        .iter()
        .map(|v| f64::from(u8::from(grads.get(v).is_some())))
        .collect();
    let t0 = std::time::Instant::now();
    comm.all_reduce_sum_f64(&mut present)?;
    seconds += t0.elapsed().as_secs_f64();
    let reached: Vec<&Var> = vars
        .iter()
        .zip(&present)
        .filter(|(_, &p)| p > 0.0)
        .map(|(v, _)| v)
        .collect();
    let mut bucket: Vec<f32> = Vec::new();
    let mut members: Vec<&Var> = Vec::new();
    let mut flush = |bucket: &mut Vec<f32>, members: &mut Vec<&Var>, grads: &mut GradStore| -> Result<()> {
        let t0 = std::time::Instant::now();
        comm.all_reduce_sum_f32(bucket)?;
        seconds += t0.elapsed().as_secs_f64();
        let mut off = 0;
        for v in members.drain(..) {
            let n = v.elem_count();
            let t =
                ctx(Tensor::from_slice(&bucket[off..off + n], v.shape(), v.device())
                    .and_then(|t| t.to_dtype(v.dtype())))?;
            grads.insert(v, t);
            off += n;
        }
        bucket.clear();
        Ok(())
    };
    for v in reached {
        match grads.get(v) {
            Some(g) => bucket.extend(ctx(g
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>()))?),
            None => bucket.resize(bucket.len() + v.elem_count(), 0.0),
        }
        members.push(v);
        if bucket.len() >= BUCKET_ELEMS {
            flush(&mut bucket, &mut members, grads)?;
        }
    }
    if !members.is_empty() {
        flush(&mut bucket, &mut members, grads)?;
    }
    Ok(seconds)
}

/// The device rank `local_rank` (its index among the ranks on its machine,
/// [`seqlab_dist::local_rank`]) uses for `train.device = name`: plain `cuda` becomes
/// `cuda:<local_rank>`, one GPU per rank as `torchrun` does with `LOCAL_RANK`; `cpu` and an
/// explicit `cuda:N` are kept (every rank on a machine then opens GPU N, which is what a
/// launcher that sets `CUDA_VISIBLE_DEVICES` per rank wants with `cuda:0`). A process not
/// started by a launcher has local rank 0, so `cuda` stays `cuda:0`.
pub fn rank_device(name: &str, local_rank: usize) -> String {
    match name.trim() {
        "cuda" => format!("cuda:{local_rank}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_take_the_gpu_of_their_local_rank_unless_one_is_named() {
        assert_eq!(rank_device("cuda", 0), "cuda:0");
        assert_eq!(rank_device("cuda", 3), "cuda:3");
        assert_eq!(rank_device(" cuda ", 1), "cuda:1");
        assert_eq!(rank_device("cuda:2", 3), "cuda:2");
        assert_eq!(rank_device("cuda:0", 1), "cuda:0");
        assert_eq!(rank_device("cpu", 5), "cpu");
    }

    #[test]
    fn rank_seeds_differ_by_rank_and_step() {
        let s = rank_seed(42, 1, 0);
        assert_eq!(s, rank_seed(42, 1, 0));
        assert_ne!(s, rank_seed(42, 2, 0));
        assert_ne!(s, rank_seed(42, 1, 1));
        assert_ne!(s, rank_seed(43, 1, 0));
    }

    #[test]
    fn checksum_sees_one_changed_value() {
        let dev = candle_core::Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0, 3.0], &dev).unwrap()).unwrap();
        let h = weights_checksum(std::slice::from_ref(&a)).unwrap();
        a.set(&Tensor::new(&[1.0f32, 2.0, 3.0000002], &dev).unwrap()).unwrap();
        assert_ne!(h, weights_checksum(std::slice::from_ref(&a)).unwrap());
    }

    #[test]
    fn one_rank_all_reduce_keeps_gradients() {
        let dev = candle_core::Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[3.0f32], &dev).unwrap()).unwrap();
        let loss = a.as_tensor().sqr().unwrap().sum_all().unwrap();
        let mut g = loss.backward().unwrap();
        all_reduce_grads(&seqlab_dist::SingleProcess, &mut g, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(g.get(&a).unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 4.0]);
        assert!(
            g.get(&b).is_none(),
            "a parameter no rank reached stays without a gradient"
        );
    }
}
