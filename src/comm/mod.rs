//! Collectives between the processes of a data-parallel run: each rank trains on its slice of
//! every global batch, and the ranks sum their gradients, losses and counts with these.
//!
//! A run started without a launcher is a world of one ([`Solo`], where every collective does
//! nothing). Under `mpirun` (or Slurm's `srun`) the `mpi` feature provides [`Mpi`], over the
//! system's MPI library: MPI launches, finds each rank and carries the CPU backend's
//! collectives. A failing collective never returns: MPI aborts the whole job (its default error
//! handler), so that no rank waits forever for one that died.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
use std::rc::Rc;

/// The ranks this process trains with: MPI's when an MPI launcher started it, else a world of
/// one. A launcher's job of several ranks with a build that has no MPI is an error, since each
/// rank would train alone on the same data.
pub fn join() -> Result<Rc<dyn Collective>, String> {
    let Some(ranks) = launcher_world_size() else {
        return Ok(Rc::new(Solo));
    };
    #[cfg(feature = "mpi")]
    {
        let _ = ranks;
        match Mpi::init() {
            Some(mpi) => Ok(Rc::new(mpi)),
            None => Err("MPI was initialised before in this process".into()),
        }
    }
    #[cfg(not(feature = "mpi"))]
    if ranks > 1 {
        Err(format!(
            "started as one of {ranks} ranks by an MPI launcher, but this electra was built \
             without MPI, so each rank would train alone; build it with `cargo build --release \
             --features mpi`"
        ))
    } else {
        Ok(Rc::new(Solo))
    }
}

/// What a data-parallel run needs of its ranks. Every rank calls every collective in the same
/// order with buffers of the same length; each returns once all ranks have joined it.
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world(&self) -> usize;

    /// This process's rank among those of its machine (which GPU it takes).
    fn local_rank(&self) -> usize;

    /// Sums `values` over the ranks, elementwise, in place. Every rank receives the same bits:
    /// each element is summed once, in an order that does not depend on the rank.
    fn all_reduce_sum_f32(&self, values: &mut [f32]);

    /// [`Collective::all_reduce_sum_f32`] for f64 (counts and loss sums).
    fn all_reduce_sum_f64(&self, values: &mut [f64]);

    /// Replaces `bytes` on every rank with rank 0's.
    fn broadcast(&self, bytes: &mut Vec<u8>);

    /// Every rank's `mine` (the same length on every rank), one after another in rank order,
    /// on every rank.
    fn all_gather(&self, mine: &[u8]) -> Vec<u8>;

    /// Returns once every rank has called it.
    fn barrier(&self);

    /// Ends every rank of the job with `code`, for an error this rank cannot share: the others
    /// may be waiting in a collective for it.
    fn abort(&self, code: i32) -> !;
}

/// The world of one process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn local_rank(&self) -> usize {
        0
    }

    fn all_reduce_sum_f32(&self, _values: &mut [f32]) {}

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {}

    fn broadcast(&self, _bytes: &mut Vec<u8>) {}

    fn all_gather(&self, mine: &[u8]) -> Vec<u8> {
        mine.to_vec()
    }

    fn barrier(&self) {}

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// How many ranks the MPI launcher that started this process (`mpirun`, `mpiexec`, or Slurm's
/// `srun`) says the job has, from the variables each of them sets in its ranks' environment;
/// None when no launcher started it.
pub fn launcher_world_size() -> Option<usize> {
    const SIZES: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];
    SIZES
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}
