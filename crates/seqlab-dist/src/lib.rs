//! The collectives of data-parallel training behind one small trait, [`Collective`]: sum
//! all-reduce of `f32`/`f64` buffers, broadcast, barrier, rank/size, abort.
//!
//! Two implementations: [`SingleProcess`] (one rank; every operation is the identity) and,
//! with the cargo feature `mpi`, `MpiCollective` on `MPI_COMM_WORLD` through the `mpi` crate
//! (rsmpi; Open MPI from the distribution's packages). A GPU backend (NCCL) is one more
//! implementation of the trait; the run engine and the tasks only see `dyn Collective`.
//!
//! A process learns its world once, at start: [`init`] (called by the `seqlab` binary) sets
//! up MPI when the process was started by `mpirun`/`srun` and returns a guard that finalizes
//! MPI when dropped; [`world`] then returns the process's collective ([`SingleProcess`] when
//! [`init`] was not called or the process was not launched by an MPI launcher).

use anyhow::{bail, Result};
use std::sync::{Arc, OnceLock};

/// What every rank of a data-parallel job can do together. Every method is collective:
/// all ranks call it, in the same order, with buffers of the same length (a rank that
/// calls something else deadlocks the job; a rank that dies ends it, see [`Collective::abort`]).
pub trait Collective: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks (processes) in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place. Every rank receives the same bits (MPI's
    /// all-reduce gives every process the same result).
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum_f32`] for `f64` (token counts, loss sums, flags).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank by `root`'s bytes (any length: the length travels first).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Waits until every rank reaches it.
    fn barrier(&self) -> Result<()>;
    /// Ends every process of the job with exit status `code` (`MPI_Abort`): what a rank
    /// that failed calls so that the others, waiting in a collective, do not hang.
    fn abort(&self, code: i32) -> !;
    /// The backend's name for logs: `"single"`, `"mpi"`.
    fn backend(&self) -> &'static str;
}

/// One process: rank 0 of 1; reductions and broadcasts leave buffers as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>, root: usize) -> Result<()> {
        anyhow::ensure!(root == 0, "broadcast from rank {root} in a job of 1 rank");
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn backend(&self) -> &'static str {
        "single"
    }
}

/// True on every rank when `flag` is true on at least one.
pub fn any(comm: &dyn Collective, flag: bool) -> Result<bool> {
    let mut b = [f64::from(u8::from(flag))];
    comm.all_reduce_sum_f64(&mut b)?;
    Ok(b[0] > 0.0)
}

/// `root`'s string on every rank.
pub fn broadcast_string(comm: &dyn Collective, s: &str, root: usize) -> Result<String> {
    let mut b = s.as_bytes().to_vec();
    comm.broadcast_bytes(&mut b, root)?;
    Ok(String::from_utf8(b)?)
}

/// The ranks whose `value` differs from rank 0's (empty when all agree); every rank gets the
/// same answer. Used to check that replicas hold the same weights (a checksum).
pub fn ranks_differing_from_root(comm: &dyn Collective, value: u64) -> Result<Vec<usize>> {
    let mut b = value.to_le_bytes().to_vec();
    comm.broadcast_bytes(&mut b, 0)?;
    let root = u64::from_le_bytes(b.as_slice().try_into()?);
    let mut flags = vec![0.0f64; comm.size()];
    flags[comm.rank()] = f64::from(u8::from(root != value));
    comm.all_reduce_sum_f64(&mut flags)?;
    Ok((0..flags.len()).filter(|&r| flags[r] > 0.0).collect())
}

static WORLD: OnceLock<Arc<dyn Collective>> = OnceLock::new();

/// The collective of this process: MPI's world after [`init`] in a process started by an
/// MPI launcher, else [`SingleProcess`].
pub fn world() -> Arc<dyn Collective> {
    WORLD.get().cloned().unwrap_or_else(|| Arc::new(SingleProcess))
}

/// Number of processes an MPI launcher says it started (Open MPI's `mpirun`, Slurm's
/// `srun`, MPICH's Hydra), from their environment variables; `None` when the process was
/// started otherwise.
pub fn launcher_size() -> Option<usize> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if !launched {
        return None;
    }
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .or(Some(1))
}

/// The launcher's variables that hold a process's rank among the ranks on its machine, in
/// the order [`local_rank`] reads them: Open MPI's `mpirun`, MPICH's and Intel MPI's Hydra,
/// Slurm's `srun`.
pub const LOCAL_RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"];

/// This process's rank among the ranks on its machine (0 for a process not started by an
/// MPI launcher): what picks each rank's GPU when `train.device = "cuda"` names none.
pub fn local_rank() -> usize {
    local_rank_from(|k| std::env::var(k).ok())
}

/// [`local_rank`] with the environment as `var` (testable): the first of [`LOCAL_RANK_VARS`]
/// that is set and holds a number, else 0.
pub fn local_rank_from(var: impl Fn(&str) -> Option<String>) -> usize {
    LOCAL_RANK_VARS
        .iter()
        .find_map(|k| var(k)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Keeps MPI initialized; dropping it finalizes MPI (`MPI_Finalize`), which Open MPI expects
/// of every process that initialized it. Hold it in `main` until the process ends.
#[derive(Default)]
pub struct DistGuard {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Sets up this process's [`world`]: MPI when an MPI launcher started it (and seqlab was
/// built with the `mpi` feature), else one process. A process launched as one of several
/// ranks by a seqlab built without MPI is refused: each would train alone and all would
/// write the same run folder.
pub fn init() -> Result<DistGuard> {
    let Some(n) = launcher_size() else {
        return Ok(DistGuard::default());
    };
    #[cfg(feature = "mpi")]
    {
        let _ = n;
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialized"))?;
        let comm = mpi_backend::MpiCollective::new(universe.world());
        if WORLD.set(Arc::new(comm)).is_err() {
            bail!("seqlab_dist::init called twice");
        }
        Ok(DistGuard {
            _universe: Some(universe),
        })
    }
    #[cfg(not(feature = "mpi"))]
    {
        if n > 1 {
            bail!(
                "started as one of {n} processes by an MPI launcher (mpirun/srun), but this seqlab was built without MPI; rebuild with `cargo build --release -p seqlab-cli --features mpi` (needs Open MPI: apt-get install openmpi-bin libopenmpi-dev)"
            );
        }
        Ok(DistGuard::default())
    }
}

#[cfg(feature = "mpi")]
mod mpi_backend {
    use super::Collective;
    use anyhow::Result;
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::sync::Mutex;

    /// MPI's count arguments are `int`: larger buffers go in pieces of this many elements.
    const MAX_COUNT: usize = 1 << 28;

    /// `MPI_COMM_WORLD`. MPI's default error handler on it, `MPI_ERRORS_ARE_FATAL`, ends the
    /// whole job on a communication error (a peer that died), so no call here hangs on a
    /// dead rank: `mpirun` reports which rank ended and kills the others.
    pub struct MpiCollective {
        world: SimpleCommunicator,
        rank: usize,
        size: usize,
        /// MPI was initialized with `MPI_THREAD_SERIALIZED`: one call at a time.
        lock: Mutex<()>,
    }

    // SAFETY: the communicator handle is only used under `lock`, and MPI was initialized
    // with MPI_THREAD_SERIALIZED, which allows calls from any thread one at a time.
    unsafe impl Send for MpiCollective {}
    unsafe impl Sync for MpiCollective {}

    impl MpiCollective {
        pub fn new(world: SimpleCommunicator) -> Self {
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            Self {
                world,
                rank,
                size,
                lock: Mutex::new(()),
            }
        }

        fn sum<T: Equivalence + Copy>(&self, buf: &mut [T]) -> Result<()> {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            for part in buf.chunks_mut(MAX_COUNT) {
                let send = part.to_vec();
                self.world.all_reduce_into(&send[..], part, SystemOperation::sum());
            }
            Ok(())
        }
    }

    impl Collective for MpiCollective {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            self.sum(buf)
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            self.sum(buf)
        }
        fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
            anyhow::ensure!(
                root < self.size,
                "broadcast from rank {root} in a job of {} ranks",
                self.size
            );
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let p = self.world.process_at_rank(root as i32);
            let mut len = [buf.len() as u64];
            p.broadcast_into(&mut len[..]);
            buf.resize(len[0] as usize, 0);
            for part in buf.chunks_mut(MAX_COUNT) {
                p.broadcast_into(part);
            }
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.world.barrier();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn backend(&self) -> &'static str {
            "mpi"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_is_the_identity() {
        let c = SingleProcess;
        let mut a = [1.0f32, 2.0];
        c.all_reduce_sum_f32(&mut a).unwrap();
        assert_eq!(a, [1.0, 2.0]);
        assert!(any(&c, true).unwrap() && !any(&c, false).unwrap());
        assert_eq!(broadcast_string(&c, "x", 0).unwrap(), "x");
        assert!(ranks_differing_from_root(&c, 7).unwrap().is_empty());
        assert!(c.broadcast_bytes(&mut vec![], 1).is_err());
    }

    #[test]
    fn local_rank_reads_the_launchers_variables_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(local_rank_from(env(&[])), 0);
        assert_eq!(local_rank_from(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "3")])), 3);
        assert_eq!(local_rank_from(env(&[("SLURM_LOCALID", "2")])), 2);
        // Open MPI's own variable wins over Slurm's (mpirun inside an allocation).
        assert_eq!(
            local_rank_from(env(&[("SLURM_LOCALID", "0"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")])),
            1
        );
        // A value that is not a number is skipped.
        assert_eq!(
            local_rank_from(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "x"), ("MPI_LOCALRANKID", "5")])),
            5
        );
    }
}
