//! The gradient sum of a data-parallel step over NCCL: every rank's GPU sums the gradient space
//! in place, device to device, instead of through host memory and MPI.
//!
//! The communicator is made once per run: rank 0 draws NCCL's unique id, the run's
//! [`Collective`] (MPI) carries it to the other ranks, and each rank joins with its GPU. The sum
//! runs on its own stream, which waits for the backward pass queued on the backend's stream and
//! which the backend's stream then waits for, so that the optimizer reads the summed gradients.
//! It is issued between recorded steps: a recorded step (graph) ends before it.
//!
//! cudarc opens `libnccl.so`; the wheels (`nvidia-nccl-cu13`) and PyTorch ship `libnccl.so.2`
//! only, so a folder holding a `libnccl.so` link to it goes on `LD_LIBRARY_PATH`
//! (`scripts/gpu-env.sh` does that).

use std::mem::MaybeUninit;
use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};

use super::{driver_err, CudaBackend, CudaError};
use crate::backend::{Buf, Space};
use crate::comm::Collective;

/// An NCCL communicator over the ranks of a run, and the stream its sums run on.
pub(super) struct Nccl {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was initialised and is destroyed once; its work is done
        // (the backend's stream waited for every sum).
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

fn nccl_err(what: &str, e: result::NcclError) -> CudaError {
    CudaError::Unsupported(format!("NCCL {what}: {:?}", e.0))
}

impl CudaBackend {
    /// Joins the ranks of `comm` in an NCCL communicator on this backend's GPU; from then on
    /// [`Backend::all_reduce`](crate::backend::Backend::all_reduce) of a gradient buffer runs
    /// over NCCL. Every rank calls it at the same point. Fails, naming the library, where NCCL
    /// cannot be loaded.
    pub fn join_nccl(&mut self, comm: &dyn Collective) -> Result<(), CudaError> {
        self.bind();
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Unsupported(
                "NCCL: libnccl.so cannot be opened; put a folder holding a libnccl.so link to \
                 libnccl.so.2 (from the nvidia-nccl-cu13 wheel or PyTorch's) on LD_LIBRARY_PATH, \
                 or set ELECTRA_NCCL=0 to sum gradients through host memory"
                    .into(),
            ));
        }
        self.check_one_rank_a_gpu(comm)?;
        let mut id = vec![];
        if comm.rank() == 0 {
            let unique = result::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            id = unique.internal.iter().map(|&c| c as u8).collect();
        }
        comm.broadcast(&mut id);
        let mut unique = sys::ncclUniqueId { internal: [0; 128] };
        if id.len() != unique.internal.len() {
            return Err(CudaError::Unsupported(format!(
                "NCCL: rank 0 sent a unique id of {} bytes, expected {}",
                id.len(),
                unique.internal.len()
            )));
        }
        for (dst, &src) in unique.internal.iter_mut().zip(&id) {
            *dst = src as _;
        }
        let (rank, world) = (comm.rank() as i32, comm.world() as i32);
        let mut raw = MaybeUninit::uninit();
        // SAFETY: `raw` receives the communicator; the id is rank 0's, the same on every rank.
        unsafe { result::comm_init_rank(raw.as_mut_ptr(), world, unique, rank) }
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        // SAFETY: initialised by the successful call above.
        let nccl_comm = unsafe { raw.assume_init() };
        let stream = self
            .ctx
            .new_stream()
            .map_err(|e| driver_err("creating the NCCL stream", e))?;
        self.nccl = Some(Nccl {
            comm: nccl_comm,
            stream,
        });
        Ok(())
    }

    /// Refuses, on every rank alike, a job in which two ranks share a GPU (by its UUID, which
    /// is the same whatever `CUDA_VISIBLE_DEVICES` numbers it), naming them: NCCL sums only
    /// between ranks on different GPUs, and its own refusal is a bare error code.
    fn check_one_rank_a_gpu(&self, comm: &dyn Collective) -> Result<(), CudaError> {
        let uuid = self
            .ctx
            .uuid()
            .map_err(|e| driver_err("reading the GPU's UUID", e))?;
        let mut mine: Vec<u8> = uuid.bytes.iter().map(|&b| b as u8).collect();
        let id = mine.len();
        mine.extend_from_slice(&(self.ctx.ordinal() as u32).to_le_bytes());
        let all = comm.all_gather(&mine);
        let ranks: Vec<&[u8]> = all.chunks(mine.len()).collect();
        let device = |r: usize| u32::from_le_bytes(ranks[r][id..].try_into().unwrap());
        for b in 1..ranks.len() {
            if let Some(a) = (0..b).find(|&a| ranks[a][..id] == ranks[b][..id]) {
                return Err(CudaError::Unsupported(format!(
                    "NCCL: ranks {a} and {b} share a GPU (rank {a}'s device {}, rank {b}'s \
                     device {}): NCCL sums only between ranks on different GPUs. Start at most \
                     one rank a GPU (`--device cuda` gives local rank r device r modulo the \
                     number the rank sees), or set ELECTRA_NCCL=0 to sum through host memory",
                    device(a),
                    device(b)
                )));
            }
        }
        Ok(())
    }

    /// Sums `buf` (f32, a parameter-shaped space) over the ranks with NCCL, in place; false when
    /// this backend has not joined a communicator.
    pub(super) fn nccl_all_reduce(&mut self, buf: Buf) -> bool {
        let Some(nccl) = &self.nccl else {
            return false;
        };
        assert!(
            matches!(buf.space, Space::Grad | Space::GradSum),
            "NCCL sums gradients, not {buf:?}"
        );
        let addr = self.addr(buf);
        self.last_kernel.set("ncclAllReduce");
        let ordered = |what: &str, r: Result<(), cudarc::driver::DriverError>| {
            r.unwrap_or_else(|e| panic!("CUDA: ordering the NCCL sum {what}: {e}"))
        };
        ordered("after the backward pass", nccl.stream.join(&self.stream));
        // SAFETY: `addr` holds `buf.len` f32 values on this backend's GPU (checked by `addr`);
        // in place is allowed; the stream belongs to the communicator's device.
        unsafe {
            result::all_reduce(
                addr as *const _,
                addr as *mut _,
                buf.len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                nccl.comm,
                nccl.stream.cu_stream() as _,
            )
        }
        .unwrap_or_else(|e| {
            panic!(
                "NCCL: ncclAllReduce of {} values failed: {:?}",
                buf.len, e.0
            )
        });
        ordered("before the update", self.stream.join(&nccl.stream));
        true
    }
}
