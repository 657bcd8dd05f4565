//! [`MpiCommunicator`]: sums over the system's MPI library (feature `mpi`).

use candle_core::{DType, Tensor};
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};

use super::{Communicator, Launch, Launcher};
use crate::error::{Error, Result};

/// MPI's world communicator (the `mpi` crate over the system's MPI library). Sums travel
/// through host memory.
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    local_rank: usize,
    // Finalises MPI when dropped, so it must outlive `world`'s use.
    _universe: Universe,
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCommunicator")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

impl MpiCommunicator {
    /// Initialises MPI; MPI's own rank and size must agree with the launcher's variables
    /// when those are set.
    pub fn init(launch: &Launch) -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| Error::Launch {
            msg: "MPI is already initialised in this process".into(),
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if launch.launcher != Launcher::None && (rank, size) != (launch.rank, launch.world_size) {
            return Err(Error::Launch {
                msg: format!(
                    "MPI says rank {rank} of {size}, {} said rank {} of {}: was this \
                     process started by an MPI launcher (mpirun, srun --mpi=pmix)?",
                    launch.launcher, launch.rank, launch.world_size
                ),
            });
        }
        Ok(Self {
            world,
            local_rank: if launch.launcher == Launcher::None {
                rank
            } else {
                launch.local_rank
            },
            _universe: universe,
        })
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world_size(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn backend(&self) -> &'static str {
        "MPI"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let (device, n) = (t.device(), t.elem_count());
        let out = match t.dtype() {
            DType::F32 => {
                let send = t.to_vec1::<f32>()?;
                let mut recv = vec![0f32; n];
                self.world
                    .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                Tensor::from_vec(recv, n, device)?
            }
            DType::F64 => {
                let send = t.to_vec1::<f64>()?;
                let mut recv = vec![0f64; n];
                self.world
                    .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                Tensor::from_vec(recv, n, device)?
            }
            other => {
                return Err(
                    candle_core::Error::UnsupportedDTypeForOp(other, "all_reduce_sum").into(),
                )
            }
        };
        Ok(out)
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
