//! [`Collective`] over MPI (the `mpi` crate, bound to the system's MPI library).

use super::Collective;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// The ranks of an MPI job. MPI is initialised when this is made and finalised when it is
/// dropped; a process makes at most one.
pub struct Mpi {
    // Dropped last: finalising MPI ends the communicators.
    world: SimpleCommunicator,
    local_rank: usize,
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI; None when it was initialised before in this process.
    pub fn init() -> Option<Self> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        // The ranks that share this machine's memory: their order gives each its GPU.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Some(Mpi {
            world,
            local_rank,
            _universe: universe,
        })
    }

    /// Sums equal-length blocks of `values` over the ranks: each rank reduces one block of the
    /// buffer (padded to a multiple of the world size) and all gather the blocks, so every
    /// element is summed exactly once and every rank receives the same bits.
    fn sum_blocks<T>(&self, values: &mut [T])
    where
        T: Equivalence + Copy + Default,
    {
        let world = self.world();
        if world == 1 || values.is_empty() {
            return;
        }
        let block = values.len().div_ceil(world);
        let mut padded = vec![T::default(); block * world];
        padded[..values.len()].copy_from_slice(values);
        let mut mine = vec![T::default(); block];
        self.world
            .reduce_scatter_block_into(&padded[..], &mut mine[..], SystemOperation::sum());
        self.world.all_gather_into(&mine[..], &mut padded[..]);
        values.copy_from_slice(&padded[..values.len()]);
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) {
        self.sum_blocks(values);
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        self.sum_blocks(values);
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
    }

    fn all_gather(&self, mine: &[u8]) -> Vec<u8> {
        let mut all = vec![0; mine.len() * self.world()];
        self.world.all_gather_into(mine, &mut all[..]);
        all
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
